"""``compare_layers`` / ``dsxai layers --compare``: one row per layer, the randomised twin, the recommendation."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from _model_state import assert_unchanged, snapshot

from test_sanity import adapter, scene_image  # noqa: F401  (the shared fixtures: shapes YOLO, one scene)

from dsxai.cli import main
from dsxai.imaging import load_image
from dsxai.layercompare import CELL, JSON, MAX_ROWS, PNG, candidate_layers, compare_layers, stage_layers
from dsxai.render import text_style, write_png

LAYERS = ["model.15", "model.18"]


@pytest.fixture(scope="module")
def compared(adapter, scene_image, tmp_path_factory):
    before = snapshot(adapter.model)
    out = tmp_path_factory.mktemp("compare")
    result = compare_layers(adapter, scene_image, layers=LAYERS, out=out, max_dets=3)
    return result, out, before


def test_one_row_per_layer_and_the_random_maps_differ(compared):
    result, _, _ = compared
    assert [r.name for r in result.rows] == LAYERS
    assert len(result.detections) == 3
    for row in result.rows:
        assert 0 <= row.energy_in_box <= 1 and 0 <= row.peak_in_box <= 1
        assert row.rank_correlation < 0.999  # identical maps would give 1
        assert not torch.equal(result.maps[row.name], result.random_maps[row.name])


def test_the_recommendation_is_the_argmax_of_the_documented_criterion(compared):
    result, _, _ = compared
    scores = {r.name: r.energy_in_box - r.energy_in_box_random for r in result.rows}
    best = max((n for n in scores if not math.isnan(scores[n])), key=lambda n: scores[n])
    assert result.recommended == best and result.recommended in LAYERS
    row = next(r for r in result.rows if r.name == best)
    assert row.score == pytest.approx(scores[best], abs=1e-3)
    assert f"{row.energy_in_box:.3f}" in result.reason and f"{row.energy_in_box_random:.3f}" in result.reason


def test_the_grid_has_a_cell_per_detection_and_layer_and_the_json_the_table(compared):
    result, out, _ = compared
    picture = load_image(out / PNG)
    rows, cols = min(len(result.detections), MAX_ROWS), len(result.rows)
    assert picture.shape[1] == cols * (CELL + 4) + 4
    assert (picture.shape[0] - 4) % rows == 0 and (picture.shape[0] - 4) // rows > CELL + 4  # cell + titles
    scale, thickness, _ = text_style((CELL, CELL))
    assert cv2.getTextSize("model.15", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][1] >= 12
    doc = json.loads((out / JSON).read_text())
    assert [r["name"] for r in doc["rows"]] == LAYERS and doc["recommended"] == result.recommended
    assert doc["picture"]["rows"] == rows and doc["picture"]["columns"] == cols


def test_the_model_is_unchanged(adapter, compared):
    assert_unchanged(adapter.model, compared[2])


def test_default_candidates_are_the_defaults_then_thinned_stages(adapter, scene_image):
    example = adapter.preprocess(scene_image).tensor
    stages = stage_layers(adapter.model, example)
    assert stages == [f"model.{i}" for i in range(22)]  # the 4-D blocks before the Detect head
    candidates, skipped = candidate_layers(adapter, example, cap=4)
    assert candidates[0] == ("+".join(adapter.default_layers), list(adapter.default_layers))
    assert [c[0] for c in candidates[1:]] == ["model.0", "model.10", "model.21"]
    assert len(candidates) + len(skipped) == 1 + 22


def test_unknown_layer_and_an_output_folder_holding_the_image_are_refused(adapter, scene_image, tmp_path):
    with pytest.raises(ValueError, match="unknown layer name 'model.99'"):
        compare_layers(adapter, scene_image, layers=["model.15", "model.99"], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    image = write_png(tmp_path / "in" / "scene.png", scene_image)
    with pytest.raises(ValueError, match="output folder"):
        compare_layers(adapter, image, layers=["model.15"], out=tmp_path / "in")


def test_cli_compare_writes_files_and_prints_the_recommendation(scene_image, tmp_path, capsys):
    image = write_png(tmp_path / "in" / "scene.png", scene_image)
    out = tmp_path / "out"
    code = main(["layers", "shapes-yolo", "--compare", str(image), "--out", str(out), "--layers", "model.15",
                 "--conf", "0.5"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert (out / PNG).is_file() and (out / JSON).is_file()
    assert "recommended layer: model.15" in stdout
    assert main(["layers", "shapes-yolo", "--compare", str(image), "--out", str(out), "--layers", "nope"]) == 2
    assert "unknown layer name 'nope'" in capsys.readouterr().err
    assert main(["layers", "shapes-yolo", "--compare", str(image), "--out", str(out), "--max-layers", "0"]) == 2
    assert "--max-layers must be at least 1" in capsys.readouterr().err


def test_an_image_without_detections_is_refused_clearly(adapter, tmp_path):
    blank = np.full((96, 96, 3), 114, np.uint8)
    with pytest.raises(ValueError, match="no detections in the image"):
        compare_layers(adapter, blank, layers=["model.15"], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_recommendation_prefers_a_head_input_over_an_edge_detector(adapter, scene_image):
    """Known answer on the shapes YOLO scene: the stem's edge-like maps change completely with random weights
    but keep less of their mass in the boxes than the random twin does, while the head input P4 (model.18)
    keeps far more (measured: energy in box 0.507 vs 0.647 random at model.0, 0.941 vs 0.663 at model.18),
    so the weight-earned energy picks model.18."""
    result = compare_layers(adapter, scene_image, layers=["model.0", "model.18"], max_dets=4)
    rows = {r.name: r for r in result.rows}
    assert rows["model.18"].score > rows["model.0"].score + 0.1
    assert result.recommended == "model.18"

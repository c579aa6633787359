"""``+window``: per-box maps weighted by a soft window on their own box (parsing, known answers, entry points)."""
from __future__ import annotations

import json

import cv2
import pytest
import torch

import dsxai
from dsxai import bench
from dsxai.boxes import box_gaussians
from dsxai.cli import main
from dsxai.methods import get_method
from dsxai.metrics import baseline_maps
from dsxai.shapes import make_scenes
from dsxai.window import DEFAULT_SCALE, FLOOR, box_window, split_window


@pytest.fixture(scope="module")
def adapter():
    from dsxai.adapters import resolve

    return resolve("shapes-yolo", imgsz=160)


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(2, seed=4)


@pytest.mark.parametrize("name, expected", [
    ("layercam-level+window", ("layercam-level", DEFAULT_SCALE)),
    (" LayerCAM + Window:0.35 ", ("LayerCAM", 0.35)),
    ("gradcam", ("gradcam", None)),
])
def test_a_window_suffix_is_split_from_the_method_name(name, expected):
    assert split_window(name) == expected
    assert split_window(get_method("gradcam")) == (get_method("gradcam"), None)  # a class passes through


@pytest.mark.parametrize("name, words", [
    ("layercam+blur", "the one suffix is '+window'"),
    ("layercam+window:0", "must be a number in (0, 10]"),
    ("layercam+window:wide", "must be a number in (0, 10]"),
])
def test_a_bad_suffix_or_scale_names_the_fix(name, words):
    with pytest.raises(ValueError) as info:
        split_window(name)
    assert words in str(info.value)


def test_a_flat_map_becomes_the_window_and_a_zero_map_stays_zero():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 8.0, 8.0]])
    maps = torch.stack([torch.full((60, 80), 0.3), torch.zeros(60, 80)])
    out = box_window(maps, boxes)
    expected = box_gaussians(boxes[:1], (60, 80), DEFAULT_SCALE)[0]
    assert torch.allclose(out[0], expected, atol=1e-6)  # (flat + floor) x window, rescaled: the window itself
    assert float(out[0].max()) == pytest.approx(1.0) and float(out[0, 30, 30]) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(out[1], torch.zeros(60, 80))  # no evidence is not turned into the window's
    with pytest.raises(ValueError, match="one map"):
        box_window(maps, boxes[:1])


def test_evidence_keeps_its_order_and_silent_pixels_are_ordered_by_nearness_to_the_box():
    box = torch.tensor([[20.0, 20.0, 40.0, 40.0]])
    maps = torch.zeros(1, 60, 60)
    maps[0, 28:32, 28:32] = 1.0   # strong evidence at the centre
    maps[0, 22, 22] = 0.5         # weaker evidence in the box's corner
    maps[0, 33, 27] = 0.05        # faint evidence near the centre
    out = box_window(maps, box)[0]
    assert float(out[30, 30]) == pytest.approx(1.0, abs=0.01)
    assert float(out[30, 30]) > float(out[22, 22]) > float(out[33, 27]) > float(out[30, 45])
    # where the map is silent, the nearer pixel ranks higher, at the floor's weight only
    assert float(out[30, 45]) > float(out[30, 55]) > 0
    assert float(out[30, 45]) < 2 * FLOOR


def test_the_box_prior_is_the_same_gaussian_at_a_quarter_of_the_box():
    boxes = torch.tensor([[5.0, 10.0, 45.0, 30.0]])
    assert torch.equal(baseline_maps("box_gaussian", boxes, (40, 50)), box_gaussians(boxes, (40, 50), 0.25))


def test_dsxai_explain_windows_each_detections_map_and_records_the_scale(adapter, scenes):
    images = [s.image for s in scenes]
    plain = dsxai.explain(adapter, images, method="layercam-level", conf=0.3)
    windowed = dsxai.explain(adapter, images, method="layercam-level+window:0.4", conf=0.3)
    assert windowed.settings["method"] == "layercam-level+window:0.4" and windowed.settings["window"] == 0.4
    assert plain.settings["window"] is None
    assert sum(len(d) for d in windowed.detections) >= 2
    for dets, a, b in zip(plain.detections, plain.maps, windowed.maps):
        assert torch.allclose(b, box_window(a, dets.boxes, 0.4), atol=1e-6)
        inside = [f["energy_in_box"] for f in dsxai.explanation.map_figures(dets, b)]
        before = [f["energy_in_box"] for f in dsxai.explanation.map_figures(dets, a)]
        assert all(x >= y - 1e-6 for x, y in zip(inside, before))  # the window moves mass towards the box


def test_cli_explain_takes_a_windowed_method(tmp_path, scenes, capsys):
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scenes[0].image[:, :, ::-1])
    out = tmp_path / "out"
    code = main(["explain", "shapes-yolo", str(image), "--method", "layercam+window", "--imgsz", "160",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    settings = json.loads((out / "scene.json").read_text())["settings"]
    assert settings["method"] == "layercam+window" and settings["window"] == DEFAULT_SCALE
    code = main(["explain", "shapes-yolo", str(image), "--method", "layercam+blur", "--out", str(tmp_path / "bad")])
    assert code != 0 and "the one suffix is '+window'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_get_method_says_where_a_window_works():
    with pytest.raises(ValueError, match="'\\+window' name"):
        get_method("layercam+window")


def test_bench_scores_a_windowed_method_beside_the_plain_one(tmp_path):
    ann, images = bench.write_synthetic_coco(tmp_path / "data", scenes=2)
    adapter = bench.load_bench_adapter("shapes-yolo", imgsz=160)
    results = bench.run_benchmark(adapter, ann, images, tmp_path / "out", methods=["layercam", "layercam+window"],
                                  faithfulness=False, gallery=0, progress=False)
    plain, windowed = results["methods"]["layercam"], results["methods"]["layercam+window"]
    assert windowed["n_pairs"] == plain["n_pairs"] >= 2
    assert windowed["energy_box"]["mean"] >= plain["energy_box"]["mean"] - 1e-6
    with pytest.raises(bench.BenchError, match="the one suffix"):
        bench.run_benchmark(adapter, ann, images, tmp_path / "out2", methods=["layercam+blur"], progress=False)
    with pytest.raises(bench.BenchError, match="explain_model"):
        bench.run_benchmark(adapter, ann, images, tmp_path / "out3", methods=["layercam+window"], progress=False,
                            explain_model=adapter.model)


def test_the_sanity_check_windows_the_randomised_twin_alike(adapter, scenes):
    from dsxai.sanity import add_sanity, randomized_maps

    ex = dsxai.explain(adapter, scenes[0].image, method="layercam+window", conf=0.3)
    values = add_sanity(adapter, ex)
    assert len(values) == len(ex.detections[0]) >= 1 and all(v is None or -1 <= v <= 1 for v in values)
    dets, plain = randomized_maps(adapter, scenes[0].image, "layercam", conf=0.3)
    _, windowed = randomized_maps(adapter, scenes[0].image, "layercam+window", conf=0.3)
    assert torch.allclose(windowed[0], box_window(plain[0], dets[0].boxes), atol=1e-6)

"""The randomised-weights sanity check: rank correlation, the randomised twin, and ``explain --sanity``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _model_state import assert_unchanged, snapshot

from dsxai import bench, shapes, zoo
from dsxai.cli import main
from dsxai.pipeline import explain, explain_maps
from dsxai.render import write_png
from dsxai.sanity import SANITY_KEY, add_sanity, randomized_copy, randomized_maps, rank_correlation
from dsxai.explanation import Explanation


@pytest.fixture(scope="module")
def adapter():
    from dsxai.adapters import resolve

    return resolve("shapes-yolo")


@pytest.fixture(scope="module")
def scene_image() -> np.ndarray:
    return shapes.make_scenes(1, zoo.TEST_SEED)[0].image


def test_rank_correlation_known_answers():
    a = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(rank_correlation(a, a), torch.ones(3, dtype=torch.float64))
    # Spearman sees only the order: a monotone transform keeps 1, a reversal gives -1
    assert torch.allclose(rank_correlation(a, a.exp() * 3), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(rank_correlation(a, -a), -torch.ones(3, dtype=torch.float64))


def test_rank_correlation_gives_ties_their_mean_rank():
    a = torch.tensor([[[0.0, 0.0, 1.0, 2.0]]])
    b = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])
    ra, rb = np.array([0.5, 0.5, 2, 3]), np.array([0, 1, 2, 3.0])
    expected = np.corrcoef(ra, rb)[0, 1]
    assert rank_correlation(a, b).item() == pytest.approx(expected, abs=1e-12)
    scipy_stats = pytest.importorskip("scipy.stats")
    x, y = torch.rand(2, 1, 20, 20, generator=torch.Generator().manual_seed(1))
    x = (x * 4).floor()  # many ties, as in a ReLU'd map
    assert rank_correlation(x, y).item() == pytest.approx(scipy_stats.spearmanr(x.flatten(), y.flatten())[0],
                                                          abs=1e-9)


def test_rank_correlation_is_nan_for_a_constant_map_and_refuses_mismatched_shapes():
    a = torch.rand(2, 5, 5)
    b = a.clone()
    b[1] = 0
    out = rank_correlation(a, b)
    assert out[0] == pytest.approx(1.0) and torch.isnan(out[1])
    with pytest.raises(ValueError, match="one shape"):
        rank_correlation(a, a[:, :4])


def test_randomized_copy_reinitialises_a_copy_and_leaves_the_rest_alone():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model[1].running_mean.fill_(3.0)
    before = snapshot(model)
    rng = torch.random.get_rng_state()
    twin = randomized_copy(model, seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert_unchanged(model, before)
    assert not torch.equal(twin[0].weight, model[0].weight)
    assert torch.equal(twin[1].running_mean, torch.zeros(4))
    assert torch.equal(randomized_copy(model, seed=0)[0].weight, twin[0].weight)  # seeded
    assert bench.randomized_copy is randomized_copy  # still importable from the benchmark


def test_randomized_maps_explain_the_trained_detections_and_differ(adapter, scene_image):
    before = snapshot(adapter.model)
    dets, trained = explain_maps(adapter, scene_image, "layercam", ["model.15"])
    random_dets, random = randomized_maps(adapter, scene_image, "layercam", ["model.15"])
    assert_unchanged(adapter.model, before)
    assert len(dets[0]) >= 2
    assert torch.allclose(random_dets[0].boxes, dets[0].boxes)  # detections from the trained model
    corr = rank_correlation(trained[0], random[0])
    assert torch.isfinite(corr).all() and (corr < 0.999).all()


def test_add_sanity_puts_the_figure_in_figures_and_files(adapter, scene_image, tmp_path):
    ex = explain(adapter, [scene_image], layers=["model.15"], max_dets=2)
    values = add_sanity(adapter, ex)
    figures = ex.figures(0)
    assert len(values) == len(figures) == 2  # max_dets reached the randomised run too
    assert [f[SANITY_KEY] for f in figures] == values
    assert all(v is not None and -1 <= v < 0.999 for v in values)
    ex.save(tmp_path / "saved")
    back = Explanation.load(tmp_path / "saved")
    assert [f[SANITY_KEY] for f in back.figures(0)] == values


def test_add_sanity_runs_the_twin_with_the_explanations_own_options(adapter, scene_image):
    ex = explain(adapter, [scene_image], layers=["model.15"], max_dets=2, hflip=True, iou=0.3)
    values = add_sanity(adapter, ex)
    dets, same = randomized_maps(adapter, scene_image, "layercam", ["model.15"], method_options={"hflip": True},
                                 max_dets=2, iou=0.3)
    _, plain = randomized_maps(adapter, scene_image, "layercam", ["model.15"], max_dets=2, iou=0.3)
    assert torch.allclose(dets[0].boxes, ex.detections[0].boxes)
    expected = rank_correlation(ex.maps[0].float(), same[0].float())
    assert values == pytest.approx(expected.tolist(), abs=1e-6)
    # the mirrored average changes the twin's maps, so a twin without it would give other figures
    assert not np.allclose(values, rank_correlation(ex.maps[0].float(), plain[0].float()).tolist(), atol=1e-3)


def test_add_sanity_refuses_drise_with_the_reason(adapter, scene_image):
    ex = explain(adapter, [scene_image], method="drise", masks=16, mask_batch=8, max_dets=1)
    with pytest.raises(ValueError, match="needs a gradient method.*D-RISE"):
        add_sanity(adapter, ex)


def test_explain_cli_sanity_flag(scene_image, tmp_path, capsys):
    image = write_png(tmp_path / "in" / "scene.png", scene_image)
    code = main(["explain", "shapes-yolo", str(image), "--out", str(tmp_path / "out"), "--layers", "model.15",
                 "--sanity", "--max-dets", "2"])
    captured = capsys.readouterr()
    assert code == 0
    record = json.loads((tmp_path / "out" / "scene.json").read_text())
    values = [f[SANITY_KEY] for f in record["figures"]]
    assert values and all(isinstance(v, float) and v < 0.999 for v in values)
    assert "sanity rank correlation" in captured.err

"""Integrated gradients from a blurred copy: exactness, known answer, model state, errors, entry points."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import dsxai
from dsxai import bench, integrated
from dsxai.cli import main
from dsxai.metrics import blurred, pointing_game
from dsxai.pipeline import explain_maps
from dsxai.shapes import make_scenes
from _model_state import assert_unchanged, snapshot

FAST = {"steps": 4, "progress": False}


@pytest.fixture(scope="module")
def adapter():
    from dsxai.adapters import resolve

    return resolve("shapes-yolo", imgsz=160)


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(3, seed=3)


class _RegionScores:
    """A target scoring T fixed regions of a ``[K, 1, H, W]`` output: the sum of the output inside each."""

    def __init__(self, regions: torch.Tensor):
        self.regions = regions.float()

    def on_copies(self, output, image_index, rows=None):
        return torch.einsum("khw,thw->kt", output[:, 0], self.regions)


def _regions(h: int, w: int) -> torch.Tensor:
    regions = torch.zeros(2, h, w)
    regions[0, 2:6, 3:9] = 1
    regions[1, 8:, :5] = 1
    return regions


@pytest.mark.parametrize("steps, step_batch", [(1, 1), (5, 2), (16, 16)])
def test_linear_model_gets_weight_times_difference_exactly(steps, step_batch):
    """For a linear score the path gradient is constant: IG = w * (x - blurred x) whatever the steps."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 1, 1, bias=True)
    x = torch.rand(3, 12, 14) * 4
    target = _RegionScores(_regions(12, 14))
    options = integrated.IntegratedGradients(steps=steps, step_batch=step_batch, progress=False)
    attr = integrated.path_attributions(conv, target, x, 0, options)
    weight = conv.weight.detach()[0, :, 0, 0]
    expected = torch.einsum("c,chw->hw", weight, x - blurred(x))[None] * target.regions
    assert attr.shape == (2, 12, 14)
    assert torch.allclose(attr, expected, atol=1e-5 * float(expected.abs().max()))  # float32 of values ~1


def test_quadratic_model_attributions_add_up_to_the_score_change():
    """Along the straight path a quadratic score has a linear gradient, which the midpoint rule integrates
    exactly: the attributions sum to score(x) - score(blurred x) (completeness) with a nonlinear model."""
    torch.manual_seed(1)

    class Square(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, t):
            return self.conv(t) ** 2

    model, x = Square(), torch.rand(3, 12, 14)
    target = _RegionScores(_regions(12, 14))
    attr = integrated.path_attributions(model, target, x, 0, integrated.IntegratedGradients(steps=3, progress=False))
    with torch.no_grad():
        change = target.on_copies(model(x[None]), 0)[0] - target.on_copies(model(blurred(x)[None]), 0)[0]
    assert torch.allclose(attr.sum((1, 2)), change, atol=1e-4 * float(change.abs().max()) + 1e-6)
    assert float(change.abs().min()) > 1e-3  # the check is not 0 == 0


def test_known_answer_peak_in_own_box(adapter, scenes):
    hits = []
    for scene in scenes:
        dets, maps = explain_maps(adapter, scene.image, method="ig", method_options=FAST)
        assert maps[0].shape == (len(dets[0]), *scene.image.shape[:2])
        hits += pointing_game(maps[0], dets[0].boxes, tolerance=0).tolist()
    assert len(hits) >= 6 and sum(hits) / len(hits) >= 0.9, hits


def test_model_left_unchanged_with_mixed_gradient_flags(adapter, scenes):
    model = adapter.model
    model.train()
    frozen = next(model.parameters())
    frozen.requires_grad_(False)  # a partly frozen model comes back partly frozen
    try:
        before = snapshot(model)
        dets, maps = explain_maps(adapter, scenes[1].image, method="ig", method_options=FAST)
        assert_unchanged(model, before)
        assert len(dets[0]) and torch.isfinite(maps[0]).all() and not maps[0].requires_grad
        assert float(maps[0].amax((1, 2)).min()) > 0.99 and float(maps[0].min()) >= 0
    finally:
        model.eval()
        model.requires_grad_(True)


def test_step_chunks_do_not_change_the_maps(adapter, scenes):
    image = scenes[0].image
    _, a = explain_maps(adapter, image, method="ig", method_options={**FAST, "steps": 6, "step_batch": 6})
    _, b = explain_maps(adapter, image, method="ig", method_options={**FAST, "steps": 6, "step_batch": 4})
    _, c = explain_maps(adapter, image, method="ig", method_options={**FAST, "steps": 6, "smooth": 0})
    assert torch.allclose(a[0], b[0], atol=1e-4)  # maps in [0, 1]: float32 summation order only
    assert not torch.allclose(a[0], c[0], atol=1e-2)


@pytest.mark.parametrize("options, words", [
    ({"steps": 0}, "steps must be a whole number >= 1"),
    ({"smooth": -1}, "smooth must be a finite number >= 0"),
    ({"blur": 0}, "blur must be a finite number > 0"),
    ({"step_batch": 1.5}, "step_batch must be a whole number"),
    ({"step": 4}, "unknown integrated-gradients option(s) step"),
])
def test_bad_options_are_one_clear_error(adapter, scenes, options, words):
    with pytest.raises(ValueError) as info:
        explain_maps(adapter, scenes[0].image, method="ig", method_options=options)
    assert words in str(info.value)


def test_layers_are_refused(adapter, scenes):
    with pytest.raises(ValueError, match="take no layers"):
        explain_maps(adapter, scenes[0].image, method="ig", layers=["model.22"])
    with pytest.raises(ValueError, match="take no layers"):
        dsxai.explain(adapter, scenes[0].image, method="ig", layers="model.22", steps=2)


def test_through_dsxai_explain_with_window_and_sanity(adapter, scenes):
    from dsxai.sanity import add_sanity

    ex = dsxai.explain(adapter, [s.image for s in scenes[:2]], method="ig+window", steps=4, progress=False,
                       conf=0.3)
    assert ex.settings["method"] == "ig+window" and ex.settings["layers"] == []
    assert ex.settings["options"]["steps"] == 4
    for dets, maps, scene in zip(ex.detections, ex.maps, scenes):
        assert len(dets) and maps.shape == (len(dets), *scene.image.shape[:2])
        assert bool((dets.scores >= 0.3).all())
    values = add_sanity(adapter, ex, 0)
    assert len(values) == len(ex.detections[0])
    assert all(v is None or -1 <= v <= 1 for v in values) and any(v is not None for v in values)


def test_cli_explain_with_ig(tmp_path, scenes, capsys):
    import cv2

    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scenes[0].image[:, :, ::-1])
    out = tmp_path / "out"
    code = main(["explain", "shapes-yolo", str(image), "--method", "ig", "--ig-steps", "3", "--imgsz", "160",
                 "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "layer:" not in printed.out  # no layer is read, so none is named
    saved = json.loads((out / "scene.json").read_text())["settings"]
    assert saved["method"] == "ig" and saved["options"]["steps"] == 3
    assert (out / "scene_det0.png").is_file()
    for argv, words in ((["--method", "ig", "--ig-steps", "0"], "--ig-steps must be a whole number >= 1"),
                        (["--method", "ig", "--layers", "model.22"], "--layers does not apply to --method ig"),
                        (["--ig-steps", "4"], "--ig-steps applies to --method ig only")):
        code = main(["explain", "shapes-yolo", str(image), *argv, "--out", str(tmp_path / "bad")])
        assert code != 0 and words in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_bench_with_ig_on_a_tiny_synthetic_set(tmp_path):
    ann, images = bench.write_synthetic_coco(tmp_path / "data", scenes=2)
    adapter = bench.load_bench_adapter("shapes-yolo", imgsz=160)
    results = bench.run_benchmark(adapter, ann, images, tmp_path / "out", methods=["ig"], faithfulness=False,
                                  gallery=0, progress=False)
    entry = results["methods"]["ig"]
    assert entry["n_pairs"] >= 2
    assert entry["pointing_game_box"]["mean"] >= 0.9 > results["baselines"]["uniform"]["pointing_game_box"]["mean"]
    with pytest.raises(bench.BenchError, match="explain_model"):
        bench.run_benchmark(adapter, ann, images, tmp_path / "out2", methods=["ig"], progress=False,
                            explain_model=adapter.model)


def test_layer_workflows_name_where_ig_works():
    """The audit and the layer comparison read CAM layers: 'ig' there says where it does work."""
    from dsxai.methods import get_method

    with pytest.raises(ValueError, match="'ig' .* works in dsxai.explain, `dsxai explain` and `dsxai bench`"):
        get_method("ig")


@pytest.mark.parametrize("name", ["shapes-fasterrcnn", "shapes-maskrcnn", "shapes-unet"])
def test_known_answer_on_other_model_families(name, scenes):
    """Only the target's scores on copies are needed: a two-stage detector, its mask targets, a semantic U-Net."""
    ex = dsxai.explain(name, scenes[0].image, method="ig", **FAST)
    dets, maps = ex.detections[0], ex.maps[0]
    assert len(dets) >= 4 and maps.shape == (len(dets), *scenes[0].image.shape[:2])
    hits = pointing_game(maps, dets.boxes, tolerance=0).tolist()
    assert sum(hits) >= 0.8 * len(hits), hits  # 8/8, 7/8 and 5/5 when measured


def test_an_image_without_detections_gets_no_maps(adapter):
    import numpy as np

    blank = np.full((96, 128, 3), 114, np.uint8)
    dets, maps = explain_maps(adapter, [blank], method="ig", method_options=FAST, conf=0.99)
    assert len(dets[0]) == 0 and maps[0].shape == (0, 96, 128)

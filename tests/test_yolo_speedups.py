"""The Ultralytics adapter's fast path for class scores (``DenseOutput.pick``) changes no number.

A box target's score is read through the head's class branch at its anchor's level only, so the batched
backward skips the box branch and the other levels. These tests pin that the scores and the maps are the
ones the full head output gives, and that LayerCAM with ``fuse="max"`` still reproduces Ultralytics' own
``predict(visualize=True)`` map on a real checkpoint.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import dsxai

ultralytics = pytest.importorskip("ultralytics")
from ultralytics import YOLO  # noqa: E402

from conftest import SHARED_DATA  # noqa: E402
from dsxai.adapters.ultralytics_yolo import UltralyticsAdapter  # noqa: E402

BUS = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
FALL_PT = SHARED_DATA / "weights" / "yolov8s_fall_ultralytics" / "best.pt"
EPS = torch.finfo(torch.float32).eps


def without_pick(adapter: UltralyticsAdapter) -> UltralyticsAdapter:
    """The same adapter reading every score from the head's full output (the path before the fast one)."""
    dense = adapter.dense
    adapter.dense = lambda output: replace(dense(output), pick=None)
    return adapter


def maps_and_scores(adapter: UltralyticsAdapter, method: str, **target) -> tuple[torch.Tensor, torch.Tensor]:
    batch = adapter.preprocess(BUS)
    cam = dsxai.get_method(method)(adapter.model, adapter.default_layers)
    result = cam.explain(batch.tensor, adapter.box_target(batch, **target))
    return result.maps[0], result.scores[0]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: YOLO(name) for name in ("yolov8n.yaml", "yolo11n.yaml", "yolov8n-seg.yaml", "yolov10n.yaml")}


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo11n.yaml", "yolov8n-seg.yaml", "yolov10n.yaml"])
def test_picked_scores_equal_the_head_output_on_every_level(models, name):
    adapter = UltralyticsAdapter(models[name], imgsz=256)
    batch = adapter.preprocess([BUS, BUS])
    adapter.model.eval()
    with torch.no_grad():
        dense = adapter.dense(adapter.model(batch.tensor))
    assert dense.pick is not None
    sizes = [h * w for _, h, w in adapter.levels(batch.tensor.shape[-2:])]
    # anchors on every level, out of order, with repeats; classes anywhere
    anchors = torch.tensor([sum(sizes) - 1, 0, sizes[0], sizes[0] - 1, sizes[0] + sizes[1] + 3, 0, 7])
    labels = torch.tensor([0, 5, 79, 3, 1, 5, 42]) % adapter.head.nc
    with torch.no_grad():
        picked = dense.pick(slice(0, 2), anchors, labels)
    expected = dense.scores[:, anchors, labels]
    assert picked.shape == expected.shape == (2, len(anchors))
    torch.testing.assert_close(picked, expected, atol=4 * EPS, rtol=4 * EPS)


@pytest.mark.parametrize("name, method", [("yolov8n.yaml", "layercam"), ("yolo11n.yaml", "gradcam"),
                                          ("yolov8n-seg.yaml", "hirescam")])
def test_maps_equal_those_through_the_full_head_output(models, name, method):
    fast = UltralyticsAdapter(models[name], imgsz=256)
    slow = without_pick(UltralyticsAdapter(models[name], imgsz=256))
    target = dict(conf=0.0, max_dets=16)
    maps, scores = maps_and_scores(fast, method, **target)
    slow_maps, slow_scores = maps_and_scores(slow, method, **target)
    assert maps.shape[0] == 16
    torch.testing.assert_close(scores, slow_scores, atol=4 * EPS, rtol=0)
    # maps are in [0, 1] (scale 1): a few float32 roundings of the sums differ at most
    assert (maps - slow_maps).abs().max() <= 64 * EPS


def test_end_to_end_head_picks_from_its_one_to_one_branch(models):
    adapter = UltralyticsAdapter(models["yolov10n.yaml"], imgsz=256)
    adapter.head.end2end = True
    try:
        maps, scores = maps_and_scores(adapter, "layercam", conf=0.0, max_dets=8)
        slow_maps, slow_scores = maps_and_scores(without_pick(adapter), "layercam", conf=0.0, max_dets=8)
    finally:
        adapter.head.end2end = False
    torch.testing.assert_close(scores, slow_scores, atol=4 * EPS, rtol=0)
    assert maps.shape[0] == 8 and (maps - slow_maps).abs().max() <= 64 * EPS


def test_an_other_models_output_is_scored_through_its_own_output(models):
    """A target decoded with the trained model and explained on a randomised copy (the sanity check of
    tests/test_known_answer.py) must not read the copy's features through the trained head."""
    randomised = copy.deepcopy(models["yolov8n.yaml"].model)
    torch.manual_seed(1)
    for module in randomised.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    maps = []
    for adapter in (UltralyticsAdapter(models["yolov8n.yaml"], imgsz=256),
                    without_pick(UltralyticsAdapter(models["yolov8n.yaml"], imgsz=256))):
        batch = adapter.preprocess(BUS)
        target = adapter.box_target(batch, conf=0.0, max_dets=8)
        adapter.model.eval()
        with torch.no_grad():
            target(adapter.model(batch.tensor))
        maps.append(dsxai.LayerCAM(randomised, adapter.default_layers).explain(batch.tensor, target).maps[0])
    assert maps[0].shape[0] == 8 and (maps[0] - maps[1]).abs().max() <= 64 * EPS


needs_fall = pytest.mark.skipif(not FALL_PT.is_file(), reason=f"{FALL_PT} not present")


@needs_fall
@pytest.mark.shared_data
def test_layercam_max_fusion_reproduces_ultralytics_visualize(monkeypatch, tmp_path):
    """Ultralytics' map: max over its 16 best anchors (no NMS) of per-level-normalised LayerCAM, max over levels."""
    import cv2

    captured = []
    apply = cv2.applyColorMap
    monkeypatch.setattr(cv2, "applyColorMap", lambda cam, style: captured.append(cam.copy()) or apply(cam, style))
    yolo = YOLO(str(FALL_PT))
    conf = 0.25
    yolo.predict(str(BUS), visualize=True, conf=conf, imgsz=640, project=str(tmp_path), name="cam", verbose=False)
    monkeypatch.undo()
    assert len(captured) == 1
    theirs = torch.from_numpy(captured[0].astype(np.float32) / 255)

    adapter = UltralyticsAdapter(yolo, imgsz=640)
    batch = adapter.preprocess(BUS)
    target = adapter.box_target(batch, conf=conf, nms=False, max_dets=16)
    result = dsxai.LayerCAM(adapter.model, adapter.default_layers, fuse="max").explain(batch.tensor, target)
    assert len(result.maps[0]) == 16  # the bus has more than 16 anchors above conf, as Ultralytics caps
    ours = result.maps[0].amax(0).cpu()
    assert ours.shape == theirs.shape
    # their map is stored as bytes (truncated to 1/255); ours is exact
    assert (ours - theirs).abs().mean() <= 0.005

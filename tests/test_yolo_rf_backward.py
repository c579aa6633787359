"""Receptive-field crop gradients (``adapters/_yolo_rf.py``) change no number, only the time.

A YOLO box target's score reads one anchor through its level's class branch, so its gradient w.r.t. that
level's head input lives in a window of the branch's receptive field. The adapter reruns the branch on the
targets' stacked windows and takes one plain backward instead of a vmap over targets. These tests pin that
the gradients and maps are the batched backward's (borders included), that the gradient is zero outside the
receptive field, that other layers take the general path, and that the model comes back untouched.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import dsxai
from dsxai.gradient import GradientCAM

ultralytics = pytest.importorskip("ultralytics")
from ultralytics.nn.modules import conv as yolo_conv  # noqa: E402

from _model_state import assert_unchanged, snapshot  # noqa: E402
from dsxai import shapes, zoo  # noqa: E402
from dsxai.adapters._yolo_rf import ClassBranchCrops, branch_radius, crop_windows  # noqa: E402
from dsxai.adapters.ultralytics_yolo import UltralyticsAdapter, offline_yolo  # noqa: E402

BUS = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
EPS = torch.finfo(torch.float32).eps
CONTAINERS = (yolo_conv.Conv, yolo_conv.DWConv)
# Both paths sum the same float32 products in a different order (a k x k crop against the whole map, one
# backward against vmap): each gradient value is a sum of at most C * 9 * 3 ~ 2e3 terms per layer, so the
# roundings stay within a few hundred eps of the largest value; maps are in [0, 1] (scale 1).
GRAD_RTOL = 256 * EPS
MAP_ATOL = 256 * EPS


def without_crops(adapter: UltralyticsAdapter) -> UltralyticsAdapter:
    """The same adapter whose targets leave every gradient to the engine's batched backward (vmap)."""
    dense = adapter.dense
    adapter.dense = lambda output: replace(dense(output), rf=None)
    return adapter


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: offline_yolo(name, "detect") for name in ("yolov8n.yaml", "yolo11n.yaml")}


# ------------------------------------------------------------------------------------------- radius
def test_radius_comes_from_the_branch_modules(models):
    for yolo in models.values():
        branches = yolo.model.model[-1].one2many["cls_head"]
        # v8: two 3x3 Conv then a 1x1; YOLO11: two (3x3 depthwise, 1x1) pairs then a 1x1: radius 2 each
        assert [branch_radius(b.eval(), CONTAINERS) for b in branches] == [(2, 2)] * 3
    dilated = nn.Sequential(nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.SiLU(), nn.Conv2d(4, 4, (5, 1), padding=(2, 0)))
    assert branch_radius(dilated.eval(), CONTAINERS) == (4, 2)


@pytest.mark.parametrize("branch", [
    nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1)),                 # stride: not one cell per cell
    nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")),   # padding that is not zeros
    nn.Sequential(nn.Conv2d(4, 4, 3, padding=0)),                           # not "same"
    nn.Sequential(nn.Conv2d(4, 4, 2, padding=1)),                           # even kernel
    nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(3, 1, 1)),     # a module it does not know
])
def test_unrecognised_branches_have_no_radius(branch):
    assert branch_radius(branch.eval(), CONTAINERS) is None


def test_a_branch_in_training_mode_has_no_radius(models):
    branch = models["yolov8n.yaml"].model.model[-1].one2many["cls_head"][0]
    was = branch.training
    try:
        assert branch_radius(branch.train(), CONTAINERS) is None  # batch statistics mix positions
    finally:
        branch.train(was)


def test_windows_shift_inside_the_map():
    starts, k = crop_windows(torch.tensor([0, 1, 2, 5, 8, 9]), 2, 10)
    assert k == 5 and starts.tolist() == [0, 0, 0, 3, 5, 5]
    starts, k = crop_windows(torch.tensor([0, 2]), 2, 3)  # map smaller than the window: the whole map
    assert k == 3 and starts.tolist() == [0, 0]


# ---------------------------------------------------------------------------------------- gradients
def forward(adapter: UltralyticsAdapter, images):
    batch = adapter.preprocess(images)
    x = batch.tensor.clone().requires_grad_(True)
    output = adapter.model.eval()(x)
    return adapter.dense(output)


def border_anchors(adapter: UltralyticsAdapter, size) -> torch.Tensor:
    """Anchors on every level: the four corners, the middle of each edge and one inside."""
    anchors, start = [], 0
    for _, h, w in adapter.levels(size):
        cells = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (0, w // 2), (h // 2, 0), (h - 1, w // 2),
                 (h // 2, w - 1), (1, 1), (h // 2, w // 2)]
        anchors += [start + y * w + x for y, x in cells]
        start += h * w
    return torch.tensor(anchors)


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo11n.yaml"])
def test_crop_gradients_equal_the_batched_backward_on_every_level_and_border(models, name):
    adapter = UltralyticsAdapter(models[name], imgsz=256)
    with torch.enable_grad():
        dense = forward(adapter, [BUS, BUS])
        size = (dense.rf.feats[0].shape[-2] * 8, dense.rf.feats[0].shape[-1] * 8)
        anchors = border_anchors(adapter, size)
        images = torch.arange(len(anchors)) % 2  # targets of both images, interleaved
        labels = torch.arange(len(anchors)) * 7 % adapter.head.nc
        scores = dense.scores[images, anchors, labels]
        leaves = list(dense.rf.feats)
        ours = dense.rf.gradients(leaves, images, anchors, labels, scores.detach())
        picks = torch.eye(len(anchors))
        theirs = torch.autograd.grad(scores, leaves, picks, retain_graph=True, is_grads_batched=True)
    assert ours is not None
    for mine, ref in zip(ours, theirs):
        assert mine.shape == ref.shape
        torch.testing.assert_close(mine, ref, rtol=0, atol=GRAD_RTOL * float(ref.abs().max()))
    # every target has a gradient on its own level, and the other image's rows stay zero
    level, _ = dense.rf.level_of(anchors)
    assert sorted(set(level.tolist())) == [0, 1, 2]
    assert all(float(ours[int(level[t])][t, images[t]].abs().sum()) > 0 for t in range(len(anchors)))
    assert all(float(g[t, 1 - images[t]].abs().sum()) == 0 for t in range(len(anchors)) for g in ours)


def test_gradient_is_zero_outside_the_receptive_field(models):
    adapter = UltralyticsAdapter(models["yolov8n.yaml"], imgsz=256)
    with torch.enable_grad():
        dense = forward(adapter, BUS)
        feats = dense.rf.feats
        h, w = feats[0].shape[-2:]
        anchors = torch.tensor([0, w - 1, (h // 2) * w + w // 2, h * w - 1])  # P3 corners and centre
        labels = torch.zeros(len(anchors), dtype=torch.long)
        images = torch.zeros(len(anchors), dtype=torch.long)
        scores = dense.scores[0, anchors, labels]
        ours = dense.rf.gradients([feats[0]], images, anchors, labels, scores.detach())[0]
        theirs = torch.autograd.grad(scores, [feats[0]], torch.eye(len(anchors)), retain_graph=True,
                                     is_grads_batched=True)[0]
    (ry, rx) = dense.rf.radii[0]
    for t, anchor in enumerate(anchors.tolist()):
        y, x = divmod(anchor, w)
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[max(0, y - ry):y + ry + 1, max(0, x - rx):x + rx + 1] = True
        for grads in (ours[t, 0], theirs[t, 0]):
            assert float(grads.abs().sum((0,))[~inside].max()) == 0  # the full model's gradient, too
            assert float(grads.abs().sum((0,))[inside].max()) > 0


def test_wrong_expected_scores_fall_back(models):
    adapter = UltralyticsAdapter(models["yolov8n.yaml"], imgsz=256)
    with torch.enable_grad():
        dense = forward(adapter, BUS)
        anchors, labels = torch.tensor([3, 700]), torch.tensor([1, 2])
        scores = dense.scores[0, anchors, labels].detach()
        images = torch.zeros(2, dtype=torch.long)
        assert dense.rf.gradients(list(dense.rf.feats), images, anchors, labels, scores + 1e-3) is None
        assert dense.rf.gradients([dense.rf.feats[0].clone()], images, anchors, labels, scores) is None


# --------------------------------------------------------------------------------------------- maps
def explain(adapter: UltralyticsAdapter, images, layers=None, method="layercam", **target):
    batch = adapter.preprocess(images)
    cam = dsxai.get_method(method)(adapter.model, layers or adapter.default_layers)
    target = adapter.box_target(batch, **target)
    result = cam.explain(batch.tensor, target)
    return result, target


def edge_count(adapter: UltralyticsAdapter, target, size) -> int:
    """How many kept anchors sit on the edge of their level's map."""
    count, start = 0, 0
    anchors = torch.cat(target.anchors)
    for _, h, w in adapter.levels(size):
        local = anchors[(anchors >= start) & (anchors < start + h * w)] - start
        y, x = local // w, local % w
        count += int(((y == 0) | (x == 0) | (y == h - 1) | (x == w - 1)).sum())
        start += h * w
    return count


@pytest.mark.parametrize("name, method", [("yolov8n.yaml", "layercam"), ("yolo11n.yaml", "gradcam")])
def test_maps_equal_the_vmap_path_on_random_init_models_at_the_border(models, name, method):
    fast = UltralyticsAdapter(models[name], imgsz=160)
    slow = without_crops(UltralyticsAdapter(models[name], imgsz=160))
    before = snapshot(fast.model)
    target = dict(conf=0.0, max_dets=40, nms=False)  # many anchors: several levels, edges included
    (ours, ours_target), (theirs, _) = (explain(a, [BUS, BUS], method=method, **target) for a in (fast, slow))
    assert_unchanged(fast.model, before)
    size = fast.preprocess([BUS, BUS]).tensor.shape[-2:]
    assert edge_count(fast, ours_target, size) > 0
    levels = {int(i) for i in torch.bucketize(torch.cat(ours_target.anchors), torch.tensor(
        [h * w for _, h, w in fast.levels(size)]).cumsum(0)[:-1], right=True)}
    assert len(levels) >= 2  # (every level and edge cell: the gradient test above)
    for mine, ref in zip(ours.maps + ours.scores, theirs.maps + theirs.scores):
        assert mine.shape == ref.shape and mine.numel() > 0
        assert float((mine - ref).abs().max()) <= MAP_ATOL


def test_maps_equal_the_vmap_path_on_the_shapes_yolo():
    # each scene cut through its first object's centre, so that object touches the image's corner
    images = [scene.image[int(scene.boxes[0, 1] + scene.boxes[0, 3]) // 2:, int(scene.boxes[0, 0]
              + scene.boxes[0, 2]) // 2:].copy() for scene in shapes.make_scenes(2, zoo.TEST_SEED)]
    fast = UltralyticsAdapter(zoo.shapes_yolov8_path(), imgsz=256)
    slow = without_crops(UltralyticsAdapter(zoo.shapes_yolov8_path(), imgsz=256))
    before = snapshot(fast.model)
    options = dict(conf=0.0, max_dets=48, nms=False)  # the objects and the background, edges included
    ours, target = explain(fast, images, **options)
    theirs, _ = explain(slow, images, **options)
    assert_unchanged(fast.model, before)
    assert sum(len(m) for m in ours.maps) >= 6
    assert edge_count(fast, target, fast.preprocess(images).tensor.shape[-2:]) > 0
    for mine, ref in zip(ours.maps, theirs.maps):
        assert mine.shape == ref.shape and float((mine - ref).abs().max()) <= MAP_ATOL


# ------------------------------------------------------------------------------------ fuse="level"
@pytest.mark.parametrize("crops, chunk_size", [(True, 64), (False, 1)])
def test_level_fusion_walks_no_neck_for_dropped_levels_and_keeps_the_maps(models, crops, chunk_size, monkeypatch):
    # fuse="level" keeps one head level per detection, so the gradients it drops (through the neck to the
    # other levels) are not computed: not by the crop path, nor by the general one when a chunk is one level
    size = 64  # 8 x 8 + 4 x 4 + 2 x 2 = 84 anchors, every one a target: every level is explained
    adapter = UltralyticsAdapter(models["yolov8n.yaml"], imgsz=size)
    adapter = adapter if crops else without_crops(adapter)
    batch = adapter.preprocess(BUS)
    options = dict(conf=0.0, max_dets=84, nms=False)
    target = adapter.box_target(batch, **options)
    if crops:
        calls = spy_local(target)
    else:  # the engine's general backward, one call per chunk
        calls, general = [], GradientCAM._grads
        monkeypatch.setattr(GradientCAM, "_grads", lambda cam, *a, **k: calls.append(general(cam, *a, **k)) or calls[-1])
    cam = dsxai.LayerCAM(adapter.model, adapter.default_layers, fuse="level", chunk_size=chunk_size)
    mine = cam.explain(batch.tensor, target).maps[0]
    monkeypatch.undo()
    # the reference: one chunk holding every level, so every gradient is computed, then masked
    reference = without_crops(UltralyticsAdapter(models["yolov8n.yaml"], imgsz=size))
    theirs = dsxai.LayerCAM(reference.model, reference.default_layers, fuse="level", chunk_size=84).explain(
        batch.tensor, reference.box_target(batch, **options)).maps[0]
    levels = [adapter.default_layers.index(name) for name in target.source_layers()[0]]
    assert sorted(set(levels)) == [0, 1, 2] and len(levels) == 84
    assert mine.shape == theirs.shape and float((mine - theirs).abs().max()) <= MAP_ATOL
    p3 = torch.cat([grads[0][:, 0] for grads in calls])  # w.r.t. the first head input (P3), a row per target
    above = torch.tensor(levels) > 0
    assert float(p3[above].abs().max()) == 0.0 and float(p3[~above].abs().max()) > 0


# --------------------------------------------------------------------------------------- fall backs
def spy_local(target) -> list:
    """Record what the target's crop gradients return to the engine."""
    calls, local = [], target.local_gradients

    def spy(*args, **kwargs):
        calls.append(local(*args, **kwargs))
        return calls[-1]
    target.local_gradients = spy
    return calls


@pytest.mark.parametrize("layers, used", [(None, True), (["model.18"], True), (["model.12"], False),
                                          (["model.12", "model.15"], False)])
def test_crops_are_used_only_for_the_head_inputs(models, layers, used):
    adapter = UltralyticsAdapter(models["yolov8n.yaml"], imgsz=256)
    batch = adapter.preprocess(BUS)
    target = adapter.box_target(batch, conf=0.0, max_dets=8)
    calls = spy_local(target)
    cam = dsxai.LayerCAM(adapter.model, layers or adapter.default_layers)
    maps = cam.explain(batch.tensor, target).maps[0]
    slow = without_crops(UltralyticsAdapter(models["yolov8n.yaml"], imgsz=256))
    theirs = dsxai.LayerCAM(slow.model, layers or slow.default_layers).explain(
        batch.tensor, slow.box_target(batch, conf=0.0, max_dets=8)).maps[0]
    assert calls and all((c is not None) == used for c in calls)
    assert float((maps - theirs).abs().max()) <= MAP_ATOL


def test_mask_scores_and_class_targets_take_the_general_path():
    torch.manual_seed(0)
    adapter = UltralyticsAdapter(offline_yolo("yolov8n-seg.yaml", "segment"), imgsz=256)
    batch = adapter.preprocess(BUS)
    target = adapter.mask_target(batch, conf=0.0, max_dets=4)
    calls = spy_local(target)
    maps = dsxai.LayerCAM(adapter.model, adapter.default_layers).explain(batch.tensor, target).maps[0]
    assert maps.shape[0] == 4 and calls == [None]
    assert not hasattr(adapter.class_target(batch), "local_gradients")

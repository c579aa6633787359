"""torchvision detectors: same detections as torchvision, maps aligned with the network tensor, model untouched.

Random weights (no torchvision detection checkpoint is available offline), small
``min_size``/``max_size`` and few proposals to keep CPU time low. What needs no
trained weights is checked exactly: detections equal torchvision's own, boxes
and masks land in original pixels, and HiResCAM's gradient x activation is
non-zero only where the detection's score reads the features (the RoIAlign
window of its proposal, the head's receptive field around its anchor).
"""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.models import detection

from dsxai.adapters.generic import best_match
from dsxai.adapters.torchvision_detection import TorchvisionDetectionAdapter, TorchvisionDetector
from _model_state import assert_unchanged, snapshot  # noqa: E402
from dsxai.pipeline import explain_maps

ultralytics = pytest.importorskip("ultralytics")
ASSETS = Path(ultralytics.__file__).parent / "assets"
RCNN_OPTIONS = dict(box_score_thresh=0.0, rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=60)


def rgb(name):
    return cv2.cvtColor(cv2.imread(str(ASSETS / name)), cv2.COLOR_BGR2RGB)


def build(name, **options):
    torch.manual_seed(0)
    return getattr(detection, name)(weights=None, weights_backbone=None, min_size=128, max_size=192,
                                    **options).eval()


def reference(model, image):
    with torch.no_grad():
        return model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]


def assert_same_as_torchvision(adapter, model, image, **options):
    ours = adapter.predict(image, **options)[0]
    ref = reference(model, image)
    assert len(ours) == len(ref["boxes"]) > 0
    assert torch.equal(ours.labels, ref["labels"])
    assert torch.allclose(ours.scores, ref["scores"], atol=1e-6)
    assert torch.allclose(ours.boxes, ref["boxes"], atol=1e-3)
    return ours, ref


def mass_inside(maps, boxes, margin=0):
    """Share of each map's mass inside its box (original pixels, widened by margin)."""
    out = []
    for m, b in zip(maps, boxes):
        h, w = m.shape
        x1, y1 = max(0, int(b[0]) - margin), max(0, int(b[1]) - margin)
        x2, y2 = min(w, int(np.ceil(float(b[2]))) + margin), min(h, int(np.ceil(float(b[3]))) + margin)
        out.append((m[y1:y2, x1:x2].sum() / m.sum().clamp_min(1e-9)).item())
    return out


@pytest.fixture(scope="module")
def faster():
    return build("fasterrcnn_resnet50_fpn", **RCNN_OPTIONS)


@pytest.fixture(scope="module")
def faster_adapter(faster):
    return TorchvisionDetectionAdapter(faster)


def test_wrapper_shares_modules_and_names(faster, faster_adapter):
    net = faster_adapter.model
    assert isinstance(net, TorchvisionDetector) and net.kind == "rcnn"
    assert net.backbone is faster.backbone and net.roi_heads is faster.roi_heads
    names = dict(net.named_modules())
    assert "backbone.fpn" in names and "backbone.body.layer4" in names and "transform" not in names
    assert faster_adapter.default_layers == ["backbone"]
    assert faster_adapter.class_names[1] == "person" and faster_adapter.task == "detect"


def test_faster_rcnn_detections_equal_torchvision(faster, faster_adapter):
    # 384 x 256 -> 192 x 128: already a multiple of 32, so no padding and bit-equal inputs
    image = cv2.resize(rgb("bus.jpg"), (256, 384), interpolation=cv2.INTER_AREA)
    ours, _ = assert_same_as_torchvision(faster_adapter, faster, image)
    assert len(ours) == faster.roi_heads.detections_per_img
    # thresholds of box_target override the model's
    fewer = faster_adapter.predict(image, conf=float(ours.scores[5]), max_dets=3)[0]
    assert len(fewer) == 3 and fewer.scores.min() > ours.scores[5]


def test_faster_rcnn_maps_per_box_aligned(faster, faster_adapter):
    before = snapshot(faster)
    image = rgb("bus.jpg")  # 1080 x 810 -> 171 x 128 content, padded to 192 x 128
    batch = faster_adapter.preprocess(image)
    assert tuple(batch.tensor.shape) == (1, 3, 192, 128)
    geometry = batch.geometries[0]
    assert geometry.content_size == (170, 128) and geometry.network_size == (192, 128)
    dets, maps = explain_maps(faster_adapter, image, method="hirescam", max_dets=4)
    d, m = dets[0], maps[0]
    assert m.shape == (4, 1080, 810) and len(d) == 4
    assert (d.boxes[:, 2] <= 810).all() and (d.boxes[:, 3] <= 1080).all()
    # each map differs from the others
    for i in range(4):
        for j in range(i + 1, 4):
            assert (m[i] - m[j]).abs().max() > 0.1
    # HiResCAM on the FPN: the class probability reads the features only through RoIAlign inside
    # the proposal, so the map lives in the proposal's box (plus bilinear/upsampling spill)
    proposals = geometry.boxes_to_original(d.meta["proposals"])
    inside = mass_inside(m, proposals, margin=24)
    assert min(inside) > 0.95, inside
    assert d.meta["candidate_index"].shape == (4,)
    # Grad-CAM (the default) runs too and yields one normalised map per box
    _, grad_maps = explain_maps(faster_adapter, image, max_dets=2)
    assert grad_maps[0].shape == (2, 1080, 810) and grad_maps[0].amax((1, 2)).min() > 0.99
    assert_unchanged(faster, before)


def test_rcnn_scores_recomputed_for_kept_proposals_only(faster_adapter):
    # the per-box score is recomputed from the features for the kept proposals: same value and same
    # gradient as reading it from the full output's probabilities over all proposals
    import dsxai

    images = [rgb("bus.jpg"), rgb("zidane.jpg")]
    batch = faster_adapter.preprocess(images)
    target = faster_adapter.box_target(batch, max_dets=5)
    net = faster_adapter.model

    def full_graph(output):
        target(output)  # decodes once; later calls rescore by matching
        return [output["probs"][b][d.meta["candidate_index"], d.labels] for b, d in enumerate(target.detections)]

    cam = dsxai.HiResCAM(net, ["backbone.body.layer3"])
    pruned_maps = cam(batch.tensor, target)
    full_maps = cam(batch.tensor, full_graph)
    for d, pruned, full in zip(target.detections, pruned_maps, full_maps):
        assert len(d) == 5 and pruned.shape == full.shape
        assert (pruned - full).abs().max() < 1e-5
    with torch.no_grad():
        output = net(batch.tensor)
    _, scores = target.decode(output)
    for b, (d, s) in enumerate(zip(target.detections, scores)):
        assert torch.allclose(s, output["probs"][b][d.meta["candidate_index"], d.labels], atol=1e-6)


def test_rcnn_box_target_under_autocast(faster_adapter):
    # the recomputed scores run RoIAlign in float32 whatever the forward's precision (CPU roi_align has no
    # bfloat16 kernel, and the target may run outside the engine's autocast)
    import dsxai

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.ones(2, 2) @ torch.ones(2, 2)
    except RuntimeError:
        pytest.skip("CPU bfloat16 autocast unsupported by this torch build")
    image = cv2.resize(rgb("bus.jpg"), (128, 160), interpolation=cv2.INTER_AREA)
    batch = faster_adapter.preprocess(image)
    target = faster_adapter.box_target(batch, max_dets=3)
    maps = dsxai.GradCAM(faster_adapter.model, ["backbone.body.layer3"], autocast="bf16")(batch.tensor, target)
    assert maps[0].shape[0] == len(target.detections[0]) == 3
    assert maps[0].dtype == torch.float32 and torch.isfinite(maps[0]).all() and maps[0].amax() > 0


def test_faster_rcnn_batch_of_different_sizes_grayscale_rgba(faster, faster_adapter):
    gray = cv2.cvtColor(rgb("bus.jpg"), cv2.COLOR_RGB2GRAY)  # 1080 x 810, H x W
    rgba = np.dstack([rgb("zidane.jpg"), np.full((720, 1280), 255, np.uint8)])  # 720 x 1280 x 4
    dets, maps = explain_maps(faster_adapter, [gray, rgba], method="hirescam", max_dets=3)
    assert [m.shape for m in maps] == [(3, 1080, 810), (3, 720, 1280)]
    assert [d.image_size for d in dets] == [(1080, 810), (720, 1280)]
    # each image's maps are over that image: mass inside its own proposals
    for d, m, image in zip(dets, maps, [gray, rgba]):
        batch_alone = faster_adapter.preprocess(image)
        proposals = batch_alone.geometries[0].boxes_to_original(d.meta["proposals"])
        assert min(mass_inside(m, proposals, margin=30)) > 0.9
    # boxes are in each image's own pixels
    for d in dets:
        h, w = d.image_size
        assert (d.boxes[:, 2] <= w).all() and (d.boxes[:, 3] <= h).all() and (d.boxes[:, :2] >= 0).all()


def test_zero_detections_give_empty_maps(faster_adapter):
    dets, maps = explain_maps(faster_adapter, rgb("zidane.jpg"), conf=1.01)
    assert len(dets[0]) == 0 and dets[0].boxes.shape == (0, 4)
    assert maps[0].shape == (0, 720, 1280)


def test_rescore_on_copies_matches_boxes(faster_adapter):
    image = cv2.resize(rgb("zidane.jpg"), (192, 108))
    batch = faster_adapter.preprocess(image)
    target = faster_adapter.box_target(batch, max_dets=3)
    net = faster_adapter.model
    with torch.no_grad():
        scores = target(net(batch.tensor))[0]
        copies = torch.cat([batch.tensor, batch.tensor * 0.0])  # the image, and a blank copy
        rescored = target.on_copies(net(copies), 0)
    assert rescored.shape == (2, 3)
    # on the unperturbed copy the best match is the detection itself (IoU 1 x its probability) or better.
    # The copy runs in a batch of 2, the reference alone: CPU kernels may block a batch differently, and
    # float32 rounding through ~50 layers then moves a probability by a small multiple of itself, so the
    # margin is relative (0.1%), far below what a wrong match (IoU < 1 or another proposal) would cost.
    assert (rescored[0] >= scores * (1 - 1e-3)).all() and (rescored[0] <= 1).all()
    assert not torch.allclose(rescored[0], rescored[1])
    # mirrored view (hflip augmentation): the target matches the mirrored boxes
    width = batch.tensor.shape[-1]
    flipped = target.hflip(width)
    boxes = target.detections[0].meta["network_boxes"]
    assert torch.allclose(flipped._boxes(0)[:, [2, 0]], width - boxes[:, [0, 2]])
    with torch.no_grad():
        output = net(batch.tensor.flip(-1))
        mirrored = flipped(output)[0]
        unmirrored = target.on_copies(output, 0, slice(0, 1))[0]
    # the mirrored boxes on the mirrored output score as the boxes on the mirrored-back candidates
    labels = target.detections[0].labels
    candidates = output["boxes"][0][:, labels]
    back = torch.stack([width - candidates[..., 2], candidates[..., 1], width - candidates[..., 0],
                        candidates[..., 3]], -1)
    expected = best_match(boxes, back, output["probs"][0][:, labels], target.region(0))
    assert mirrored.shape == (3,) and (mirrored > 0).all()
    assert torch.allclose(mirrored, expected, atol=1e-5)
    assert not torch.allclose(mirrored, unmirrored)


def test_hflip_and_noise_views_run(faster_adapter):
    image = cv2.resize(rgb("zidane.jpg"), (192, 108))
    plain = explain_maps(faster_adapter, image, method="hirescam", max_dets=2)[1][0]
    both = explain_maps(faster_adapter, image, method="hirescam", max_dets=2, method_options={"hflip": True})[1][0]
    assert plain.shape == both.shape == (2, 108, 192)
    assert not torch.allclose(plain, both)


@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn"])
def test_dense_detectors_equal_torchvision_and_maps_near_anchor(name):
    # random init sets the class prior to 0.01, so a threshold just above it keeps some boxes
    model = build(name, score_thresh=0.011, topk_candidates=60, detections_per_img=50)
    before = snapshot(model)
    adapter = TorchvisionDetectionAdapter(model)
    image = cv2.resize(rgb("zidane.jpg"), (192, 128), interpolation=cv2.INTER_AREA)  # 128 x 192: no padding
    assert_same_as_torchvision(adapter, model, image)
    dets, maps = explain_maps(adapter, rgb("bus.jpg"), method="hirescam", max_dets=3)
    d, m = dets[0], maps[0]
    assert m.shape == (3, 1080, 810) and len(d) == 3
    # the score reads only the head's receptive field around the anchor: the map's peak is near it
    anchors = adapter.preprocess(rgb("bus.jpg")).geometries[0].boxes_to_original(d.meta["anchors"])
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    for k in range(3):
        y, x = np.unravel_index(int(m[k].argmax()), m[k].shape)
        size = (anchors[k, 2:] - anchors[k, :2]).max()
        assert abs(x - centers[k, 0]) <= 2 * size and abs(y - centers[k, 1]) <= 2 * size
    assert_unchanged(model, before)


def test_mask_rcnn_masks_equal_torchvision():
    model = build("maskrcnn_resnet50_fpn", **RCNN_OPTIONS)
    adapter = TorchvisionDetectionAdapter(model)
    assert adapter.task == "instance"
    image = cv2.resize(rgb("bus.jpg"), (128, 192), interpolation=cv2.INTER_AREA)
    ours, ref = assert_same_as_torchvision(adapter, model, image, max_dets=100)
    assert ours.masks.shape == (len(ours), 192, 128)
    assert torch.equal(ours.masks, ref["masks"][:, 0] > 0.5)
    dets, maps = explain_maps(adapter, image, max_dets=2)
    assert dets[0].masks.shape == (2, 192, 128) and maps[0].shape == (2, 192, 128)


def test_rejects_other_models():
    with pytest.raises(TypeError, match="DetectorAdapter"):
        TorchvisionDetectionAdapter(torch.nn.Conv2d(3, 3, 1))

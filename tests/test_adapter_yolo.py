"""The Ultralytics YOLO and classic YOLOv5 adapters.

Random-weight models are built from the yaml files shipped with ultralytics (no
download); the real checkpoints under ../shared/data are used when present and
skipped cleanly otherwise. With random weights every class score is about 2e-4,
so those tests use a tiny ``conf`` and ``max_dets`` to get some detections.
"""
from __future__ import annotations

import json
import socket
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

import dsxai

ultralytics = pytest.importorskip("ultralytics")
from ultralytics import YOLO  # noqa: E402

from dsxai.adapters import ultralytics_yolo  # noqa: E402
from dsxai.adapters.ultralytics_yolo import UltralyticsAdapter, mirror_anchors  # noqa: E402
from conftest import SHARED_DATA  # noqa: E402
from dsxai.pipeline import explain_maps

ASSETS = Path(ultralytics.__file__).parent / "assets"
BUS, ZIDANE = ASSETS / "bus.jpg", ASSETS / "zidane.jpg"
SHARED = SHARED_DATA
FALL_PT = SHARED / "weights" / "yolov8s_fall_ultralytics" / "best.pt"
YOLOV5_PT = SHARED / "weights" / "yolov5n_coco" / "yolov5n.pt"
COCO = SHARED / "coco_subset"
TINY = 1e-6  # conf for random weights


def rgb(path: Path) -> np.ndarray:
    import cv2
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def peak_inside(maps: torch.Tensor, boxes: torch.Tensor) -> list[bool]:
    """Whether each map's maximum lies inside its own box (original pixels)."""
    out = []
    for m, b in zip(maps, boxes):
        y, x = divmod(int(m.flatten().argmax()), m.shape[-1])
        out.append(bool(b[0] - 1 <= x <= b[2] + 1 and b[1] - 1 <= y <= b[3] + 1))
    return out


class NetworkGuard:
    """Records (and refuses) every outgoing connection while active."""

    def __init__(self):
        self.attempts = []

    def __enter__(self):
        self._connect, self._getaddrinfo = socket.socket.connect, socket.getaddrinfo

        def refuse(*args, **kwargs):
            self.attempts.append(args[1:] if len(args) > 1 else args)
            raise OSError("network disabled in this test")
        socket.socket.connect = refuse
        socket.getaddrinfo = refuse
        return self

    def __exit__(self, *exc):
        socket.socket.connect, socket.getaddrinfo = self._connect, self._getaddrinfo


@pytest.fixture(scope="module")
def built():
    """Random-weight models from yaml, built with the network refused."""
    torch.manual_seed(0)
    with NetworkGuard() as guard:
        models = {name: YOLO(name) for name in ("yolov8n.yaml", "yolo11n.yaml", "yolov8n-seg.yaml")}
        UltralyticsAdapter(models["yolov8n.yaml"], imgsz=256).predict(BUS, conf=TINY, max_dets=2)
    return models, guard.attempts


@pytest.fixture(scope="module")
def v8(built):
    return built[0]["yolov8n.yaml"]


def test_yaml_models_build_and_run_without_network(built):
    models, attempts = built
    assert attempts == []
    assert {type(m.model).__name__ for m in models.values()} == {"DetectionModel", "SegmentationModel"}


@pytest.mark.parametrize("name, layers", [("yolov8n.yaml", ["model.15", "model.18", "model.21"]),
                                          ("yolo11n.yaml", ["model.16", "model.19", "model.22"]),
                                          ("yolov8n-seg.yaml", ["model.15", "model.18", "model.21"])])
def test_default_layers_are_the_head_inputs(built, name, layers):
    adapter = UltralyticsAdapter(built[0][name], imgsz=256)
    assert adapter.default_layers == layers
    assert adapter.task == ("instance" if "seg" in name else "detect")
    assert len(adapter.class_names) == 80


def _state(model: torch.nn.Module):
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    modes = {k: m.training for k, m in model.named_modules()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                for m in model.modules())
    return params, flags, modes, hooks


def test_yolo_object_is_left_as_it_was(v8):
    net = v8.model
    for i, p in enumerate(net.parameters()):  # a mix of flags, to see that none is flipped either way
        p.requires_grad_(i % 2 == 0)
    before = _state(net)
    try:
        adapter = UltralyticsAdapter(v8, imgsz=256)
        dets, maps = explain_maps(adapter, BUS, method="layercam", conf=TINY, max_dets=2)
        assert len(dets[0]) == 2 and maps[0].shape == (2, 1080, 810)
        after = _state(net)
        assert after[0].keys() == before[0].keys()
        assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
        assert after[1:] == before[1:]
        assert all(p.grad is None for p in net.parameters())
    finally:
        for p in net.parameters():
            p.requires_grad_(True)
    results = v8.predict(str(BUS), imgsz=256, conf=TINY, max_det=3, verbose=False)
    assert len(results) == 1 and len(results[0].boxes) == 3


@pytest.fixture(scope="module")
def bus_boxes(v8):
    adapter = UltralyticsAdapter(v8, imgsz=320)
    batch = adapter.preprocess(BUS)
    target = adapter.box_target(batch, conf=TINY, max_dets=4)
    result = dsxai.LayerCAM(adapter.model, adapter.default_layers).explain(batch.tensor, target)
    return adapter, batch, target, result


def test_each_detection_gets_its_own_map_and_score(bus_boxes):
    adapter, batch, target, result = bus_boxes
    maps, dets = result.maps[0], target.detections[0]
    assert maps.shape == (4, 320, 256) and len(dets) == 4
    peaks = maps.flatten(1).amax(1)
    assert (peaks > 0).all()  # (below 1 with random weights: see normalize_maps' absolute epsilon)
    scaled = maps / peaks[:, None, None]
    for i in range(4):
        for j in range(i + 1, 4):
            assert (scaled[i] - scaled[j]).abs().max() > 0.05, f"maps of detections {i} and {j} are the same"
    # the score explained is the class probability at the kept anchor, as stored in the detections
    assert torch.allclose(result.scores[0].cpu(), dets.scores, atol=1e-6)
    with torch.no_grad():
        output = adapter.model.eval()(batch.tensor)
        dense = adapter.dense(output)
        expected = dense.scores[0, dets.meta["anchor"], dets.labels]
        assert torch.allclose(expected, dets.scores, atol=1e-5)
        # the same scores on "perturbed copies": rows of a batch of the same image. A batch of 3 may take
        # other CPU kernels than one image, so float32 rounding moves each score by a small multiple of itself
        copies = adapter.model(batch.tensor.expand(3, -1, -1, -1))
        assert torch.allclose(target.on_copies(copies, 0), expected.expand(3, -1), rtol=1e-3, atol=1e-6)


def test_boxes_follow_the_geometry(bus_boxes):
    _, batch, target, _ = bus_boxes
    dets, geometry = target.detections[0], batch.geometries[0]
    assert geometry.original_size == (1080, 810) and geometry.network_size == (320, 256)
    network = dets.meta["network_boxes"]
    assert torch.allclose(dets.boxes, geometry.boxes_to_original(network))
    top, left = geometry.offset
    ch, cw = geometry.content_size
    clipped = torch.stack([network[:, 0].clamp(left, left + cw), network[:, 1].clamp(top, top + ch),
                           network[:, 2].clamp(left, left + cw), network[:, 3].clamp(top, top + ch)], 1)
    assert torch.allclose(geometry.boxes_to_network(dets.boxes), clipped, atol=1e-3)
    assert (dets.boxes >= 0).all() and (dets.boxes[:, 2] <= 810).all() and (dets.boxes[:, 3] <= 1080).all()


def test_preprocess_letterbox_maps_back_onto_the_original(v8):
    """A non-square image through preprocess and Geometry comes back onto its own pixels."""
    image = np.zeros((300, 520, 3), np.uint8)
    image[40:120, 300:420] = 255  # a white block off-centre
    adapter = UltralyticsAdapter(v8, imgsz=256, rect=False)
    batch = adapter.preprocess(image)
    assert batch.tensor.shape == (1, 3, 256, 256) and batch.tensor.dtype == torch.float32
    geometry = batch.geometries[0]
    assert geometry.offset[0] > 0 and geometry.offset[1] == 0  # padded top and bottom
    assert abs(float(batch.tensor[0, 0, 0, 0]) - 114 / 255) < 1e-6  # Ultralytics' grey padding
    back = geometry.maps_to_original(batch.tensor[0].mean(0))
    assert back.shape == (300, 520)
    assert (back - torch.from_numpy(image[..., 0] / 255.0).float()).abs().mean() < 0.02
    rect = UltralyticsAdapter(v8, imgsz=256).preprocess(image)  # default rect: pad to a stride multiple only
    assert rect.tensor.shape == (1, 3, 160, 256)


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo11n.yaml"])
def test_batch_of_different_sizes_gets_one_map_set_per_image(built, name):
    adapter = UltralyticsAdapter(built[0][name], imgsz=256 if "v8" in name else 224, rect=False)
    third = rgb(BUS)[100:700, :500]  # 600 x 500
    images = [BUS, ZIDANE, third]
    dets, maps = explain_maps(adapter, images, method="layercam", conf=TINY, max_dets=3)
    assert [tuple(m.shape) for m in maps] == [(3, 1080, 810), (3, 720, 1280), (3, 600, 500)]
    assert [d.image_size for d in dets] == [(1080, 810), (720, 1280), (600, 500)]
    assert all(float(m.flatten(1).amax(1).min()) > 0 for m in maps)  # every map of every image is real
    # image k's maps in the batch equal its maps when explained alone (no mixing between images)
    for k in (1, 2):
        alone_dets, alone = explain_maps(adapter, images[k], method="layercam", conf=TINY, max_dets=3)
        assert torch.equal(alone_dets[0].meta["anchor"], dets[k].meta["anchor"])
        assert (alone[0] - maps[k]).abs().max() < 1e-3 * float(alone[0].max())


def test_grayscale_rgba_and_pil_inputs(v8):
    from PIL import Image

    adapter = UltralyticsAdapter(v8, imgsz=256)
    image = rgb(ZIDANE)
    gray = image.mean(2).astype(np.uint8)
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    dets, maps = explain_maps(adapter, [gray, rgba, Image.fromarray(image)], conf=TINY, max_dets=2)
    assert [tuple(m.shape) for m in maps] == [(2, 720, 1280)] * 3
    # an opaque RGBA image is the RGB image
    assert torch.allclose(maps[1], maps[2], atol=1e-4) and torch.equal(dets[1].boxes, dets[2].boxes)


def test_zero_detections_give_empty_results(v8, built):
    adapter = UltralyticsAdapter(v8, imgsz=256)
    dets, maps = explain_maps(adapter, [BUS, ZIDANE], conf=0.99)
    assert [tuple(m.shape) for m in maps] == [(0, 1080, 810), (0, 720, 1280)]
    assert [len(d) for d in dets] == [0, 0] and dets[0].boxes.shape == (0, 4)
    seg = UltralyticsAdapter(built[0]["yolov8n-seg.yaml"], imgsz=256)
    dets, maps = explain_maps(seg, BUS, targets="masks", conf=0.99)
    assert maps[0].shape == (0, 1080, 810) and dets[0].masks.shape == (0, 1080, 810)


def test_classes_filter_and_max_dets(v8):
    adapter = UltralyticsAdapter(v8, imgsz=256)
    dets = adapter.predict(BUS, conf=TINY, classes=[5, 7], max_dets=6)[0]
    assert len(dets) == 6 and set(dets.labels.tolist()) <= {5, 7}
    assert (dets.scores[:-1] >= dets.scores[1:]).all()


def test_class_targets(v8):
    adapter = UltralyticsAdapter(v8, imgsz=256)
    batch = adapter.preprocess(BUS)
    target = adapter.class_target(batch, classes=[0, 2, 5], reduce="max")
    maps = dsxai.LayerCAM(adapter.model, adapter.default_layers)(batch.tensor, target)
    assert maps[0].shape == (3, 256, 192)  # 1080 x 810 letterboxed to 256 on the long side
    assert target.detections[0].labels.tolist() == [0, 2, 5]
    with torch.no_grad():
        dense = adapter.dense(adapter.model.eval()(batch.tensor))
    assert torch.allclose(target.detections[0].scores, dense.scores[0, :, [0, 2, 5]].amax(0), atol=1e-6)
    # reduce="sum": the sum of the kept detections' scores of each class
    boxes = adapter.predict(BUS, conf=TINY, max_dets=8)[0]
    dets, maps = explain_maps(adapter, BUS, targets="classes", reduce="sum", conf=TINY, max_dets=8)
    for row, c in enumerate(dets[0].labels.tolist()):
        assert dets[0].scores[row] == pytest.approx(float(boxes.scores[boxes.labels == c].sum()), rel=1e-4)
    assert len(maps[0]) == len(set(boxes.labels.tolist()))


def test_instance_segmentation_masks_and_mask_targets(built):
    y = built[0]["yolov8n-seg.yaml"]
    head = y.model.model[-1]
    adapter = UltralyticsAdapter(y, imgsz=256)
    with torch.no_grad():  # random weights give all-or-nothing masks: make them prototype 0 - r * prototype 1
        for conv in head.cv4:
            conv[-1].weight.zero_()
            conv[-1].bias.zero_()
        proto = adapter.dense(adapter.model.eval()(adapter.preprocess(ZIDANE).tensor)).proto[0]
        ratio = float((proto[0] / proto[1]).median())  # the logit changes sign inside the image
        for conv in head.cv4:
            conv[-1].bias[:2] = torch.tensor([1.0, -ratio])
    dets, maps = explain_maps(adapter, ZIDANE, targets="masks", method="layercam", conf=TINY, max_dets=3)
    masks = dets[0].masks
    assert masks.shape == (3, 720, 1280) and masks.dtype == torch.bool and maps[0].shape == (3, 720, 1280)
    for mask, box in zip(masks, dets[0].boxes):  # a real mask, cropped to its box
        x1, y1, x2, y2 = box.round().long().tolist()
        assert 0.02 < mask[y1:y2, x1:x2].float().mean() < 0.98
        assert mask.sum() == mask[y1:y2, x1:x2].sum()
    # the same masks as Ultralytics' own pipeline (retina masks) for the same boxes
    ref = y.predict(str(ZIDANE), imgsz=256, conf=TINY, max_det=3, retina_masks=True, verbose=False)[0]
    matched = 0
    for box, mask in zip(dets[0].boxes, masks):
        match = torch.isclose(ref.boxes.xyxy.cpu(), box, atol=0.5).all(1).nonzero().flatten()
        if len(match):
            other = ref.masks.data[match[0]].bool().cpu()
            assert (mask & other).sum() >= 0.9 * (mask | other).sum()  # near-threshold logits: resampling differs
            matched += 1
    assert matched >= 2
    # score="class": the detection's class score, as for boxes
    batch = adapter.preprocess(ZIDANE)
    target = adapter.mask_target(batch, conf=TINY, max_dets=3, score="class")
    with torch.no_grad():
        scores = target(adapter.model.eval()(batch.tensor))
    assert torch.allclose(scores[0], dets[0].scores, atol=1e-6)
    with pytest.raises(ValueError, match="instance segmentation"):
        UltralyticsAdapter(built[0]["yolov8n.yaml"]).mask_target(batch)


def test_end_to_end_head_decodes_the_one_to_one_branch():
    y = YOLO("yolov10n.yaml")
    adapter = UltralyticsAdapter(y, imgsz=256)
    assert adapter.head.end2end is False
    adapter.head.end2end = True
    try:
        dets, maps = explain_maps(adapter, BUS, conf=TINY, max_dets=3)
        assert len(dets[0]) == 3 and maps[0].shape == (3, 1080, 810)
        batch = adapter.preprocess(BUS)
        with torch.no_grad():
            raw = adapter.model.eval()(batch.tensor)[1]["one2one"]
        expected = raw["scores"][0].sigmoid()[dets[0].labels, dets[0].meta["anchor"]]
        assert torch.allclose(expected, dets[0].scores, atol=1e-6)
    finally:
        adapter.head.end2end = False


def test_explains_after_a_forward_under_inference_mode(v8):
    """Ultralytics caches its anchor grid; one built under inference_mode cannot enter autograd."""
    training = v8.model.training
    v8.model.model[-1].shape = None  # rebuild the cache for exactly the size the adapter will use
    with torch.inference_mode():
        v8.model.eval()(torch.zeros(1, 3, 256, 192))
    v8.model.train(training)
    assert v8.model.model[-1].anchors.is_inference()
    dets, maps = explain_maps(UltralyticsAdapter(v8, imgsz=256), BUS, conf=TINY, max_dets=2)
    assert maps[0].shape == (2, 1080, 810) and maps[0].amax() > 0


def test_perturbation_methods_run_on_copies(v8):
    """ScoreCAM scores the decoded detections on batches of masked copies (the engine checks [K, T])."""
    adapter = UltralyticsAdapter(v8, imgsz=160)
    dets, maps = explain_maps(adapter, ZIDANE, method="scorecam", layers=["model.15"], conf=TINY, max_dets=2,
                                 method_options={"batch_size": 32})
    # (with random weights every score is ~2e-4, so ScoreCAM's channel softmax is flat and the
    # two maps nearly coincide; the trained-checkpoint tests cover what the maps show)
    assert maps[0].shape == (2, 720, 1280) and len(dets[0]) == 2
    assert torch.isfinite(maps[0]).all() and maps[0].amax() > 0


def test_mirrored_anchors():
    levels = [(1, 4, 6), (1, 2, 3)]
    anchors = torch.tensor([0, 5, 7, 23, 24, 26, 29])
    mirrored = mirror_anchors(anchors, levels)
    assert mirrored.tolist() == [5, 0, 10, 18, 26, 24, 27]
    assert torch.equal(mirror_anchors(mirrored, levels), anchors)
    v5 = [(3, 2, 2)]
    assert mirror_anchors(torch.tensor([0, 4, 11]), v5).tolist() == [1, 5, 10]


def test_unsupported_models_and_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="Pose"):
        UltralyticsAdapter(YOLO("yolov8n-pose.yaml"))
    with pytest.raises(FileNotFoundError, match="not found"):
        UltralyticsAdapter(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="expected an Ultralytics YOLO checkpoint"):
        UltralyticsAdapter(corrupt)
    text = tmp_path / "weights.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="suffix"):
        UltralyticsAdapter(text)
    with pytest.raises(TypeError, match="ultralytics.YOLO object"):
        UltralyticsAdapter(42)


def test_missing_ultralytics_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ultralytics", None)
    with pytest.raises(ImportError, match=r"pip install 'dsxai\[yolo\]'"):
        ultralytics_yolo._import_ultralytics()


# ------------------------------------------------------------------ real checkpoints (shared data)
def coco_people(count: int):
    """The first ``count`` val images (by id) with 1-4 persons, at least one over 96x96 px."""
    data = json.loads((COCO / "annotations" / "instances_val2017_subset.json").read_text())
    people = defaultdict(list)
    for a in data["annotations"]:
        if a["category_id"] == 1 and not a["iscrowd"]:
            x, y, w, h = a["bbox"]
            people[a["image_id"]].append([x, y, x + w, y + h])
    files = {i["id"]: COCO / "images" / i["file_name"] for i in data["images"]}
    chosen = [i for i in sorted(people) if 1 <= len(people[i]) <= 4
              and any((b[2] - b[0]) * (b[3] - b[1]) > 96 ** 2 for b in people[i])][:count]
    return [(files[i], torch.tensor(people[i])) for i in chosen]


needs_fall = pytest.mark.skipif(not FALL_PT.is_file(), reason=f"{FALL_PT} not present")


@pytest.fixture(scope="module")
def fall():
    return YOLO(str(FALL_PT))


@needs_fall
@pytest.mark.shared_data
def test_checkpoint_finds_the_four_people_on_the_bus_like_ultralytics(fall):
    before = _state(fall.model)
    adapter = UltralyticsAdapter(fall)
    flat = np.full((200, 300, 3), 127, np.uint8)
    dets, maps = explain_maps(adapter, [BUS, flat], method="layercam")
    assert dets[0].names == ["Normal"] * 4
    assert maps[0].shape == (4, 1080, 810) and maps[1].shape == (0, 200, 300) and len(dets[1]) == 0
    assert sum(peak_inside(maps[0], dets[0].boxes)) >= 3
    ref = fall.predict([str(BUS), flat], verbose=False)  # two shapes: both square 640, as ours
    assert torch.allclose(dets[0].boxes, ref[0].boxes.xyxy.cpu(), atol=1.0)
    assert torch.allclose(dets[0].scores, ref[0].boxes.conf.cpu(), atol=1e-3)
    assert len(ref[1].boxes) == 0
    alone = adapter.predict(BUS)[0]  # one image: rectangular 640 x 480, as yolo.predict
    ref = fall.predict(str(BUS), verbose=False)[0]
    assert len(alone) == 4 and torch.allclose(alone.boxes, ref.boxes.xyxy.cpu(), atol=1.0)
    after = _state(fall.model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and after[1:] == before[1:]
    assert not any(after[1].values())  # Ultralytics froze the parameters: still frozen


@needs_fall
@pytest.mark.shared_data
def test_checkpoint_hflip_mirrors_the_detections(fall):
    """With hflip=True the mirrored view rescores the mirrored anchors: maps barely change."""
    adapter = UltralyticsAdapter(fall)
    dets, plain = explain_maps(adapter, BUS, method="layercam")
    flipped_dets, flipped = explain_maps(adapter, BUS, method="layercam", method_options={"hflip": True})
    assert torch.equal(dets[0].boxes, flipped_dets[0].boxes)
    a, b = (m.flatten(1) - m.flatten(1).mean(1, keepdim=True) for m in (plain[0], flipped[0]))
    correlation = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert correlation.min() > 0.9, correlation  # about 0.72 when the anchors are not mirrored
    assert all(peak_inside(flipped[0], dets[0].boxes))


@needs_fall
@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.skipif(not COCO.is_dir(), reason="coco_subset not present")
def test_checkpoint_on_coco_people_maps_peak_inside_their_boxes():
    from torchvision.ops import box_iou

    adapter = UltralyticsAdapter(str(FALL_PT))
    found = large = inside = total = 0
    for path, people in coco_people(6):
        dets, maps = explain_maps(adapter, path, method="layercam")
        big = people[(people[:, 2:] - people[:, :2]).prod(1) > 96 ** 2]
        large += len(big)
        if len(dets[0]):
            found += int((box_iou(big, dets[0].boxes).amax(1) >= 0.5).sum())
        peaks = peak_inside(maps[0], dets[0].boxes)
        inside, total = inside + sum(peaks), total + len(peaks)
    assert large >= 6 and found >= 0.6 * large, f"found {found} of {large} large persons"
    assert total >= 6 and inside >= 0.8 * total, f"{inside} of {total} LayerCAM peaks inside their box"


# ------------------------------------------------------------------ classic YOLOv5
@pytest.fixture(scope="module")
def yolov5_adapter():
    if not YOLOV5_PT.is_file():
        pytest.skip(f"{YOLOV5_PT} not present")
    from dsxai.adapters.yolov5 import YOLOv5Adapter

    return YOLOv5Adapter(YOLOV5_PT)


@pytest.mark.shared_data
def test_yolov5_bus_and_zidane(yolov5_adapter):
    adapter = yolov5_adapter
    assert adapter.default_layers == ["model.17", "model.20", "model.23"]
    assert not any(k == "models" or k.startswith("models.") for k in sys.modules)  # no global aliasing
    before = _state(adapter.model)
    (bus,), (bus_maps,) = explain_maps(adapter, BUS, method="layercam")
    (zidane,), (zidane_maps,) = explain_maps(adapter, ZIDANE, method="layercam")
    assert sorted(bus.names) == ["bus"] + ["person"] * 4
    assert zidane.names.count("person") == 2
    assert bus_maps.shape == (5, 1080, 810) and zidane_maps.shape == (len(zidane), 720, 1280)
    persons = bus.labels == 0
    assert sum(peak_inside(bus_maps[persons], bus.boxes[persons])) >= 3
    assert all(peak_inside(zidane_maps[zidane.labels == 0], zidane.boxes[zidane.labels == 0]))
    # the score is obj * cls at the kept row
    batch = adapter.preprocess(BUS)
    with torch.no_grad():
        pred = adapter.model.eval()(batch.tensor)[0][0]
    rows = bus.meta["anchor"]
    assert torch.allclose(pred[rows, 4] * pred[rows, 5 + bus.labels], bus.scores, atol=1e-5)
    after = _state(adapter.model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and after[1:] == before[1:]


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.skipif(not COCO.is_dir(), reason="coco_subset not present")
def test_yolov5_coco_maps_peak_inside_their_boxes(yolov5_adapter):
    inside = total = 0
    for path, _ in coco_people(4):
        dets, maps = explain_maps(yolov5_adapter, path, method="layercam")
        peaks = peak_inside(maps[0], dets[0].boxes)
        inside, total = inside + sum(peaks), total + len(peaks)
    assert total >= 6 and inside >= 0.8 * total, f"{inside} of {total} LayerCAM peaks inside their box"


@pytest.mark.shared_data
def test_yolov5_rejects_other_checkpoints(yolov5_adapter, tmp_path):
    from dsxai.adapters.yolov5 import YOLOv5Adapter

    if FALL_PT.is_file():
        with pytest.raises(ValueError, match="UltralyticsAdapter"):
            YOLOv5Adapter(FALL_PT)
    with NetworkGuard() as guard, pytest.raises(ValueError, match="YOLOv5Adapter"):
        UltralyticsAdapter(YOLOV5_PT)  # (Ultralytics' own loader would try to download yolov5nu.pt)
    assert guard.attempts == []
    with pytest.raises(FileNotFoundError):
        YOLOv5Adapter(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="original YOLOv5 checkpoint"):
        YOLOv5Adapter(bad)


def test_yolov5_loads_without_the_yolov5_package(yolov5_adapter):
    """The pickle's models.* classes are dsxai's own modules; no yolov5 (or models) package is imported."""
    from dsxai.adapters import yolov5_modules

    assert "yolov5" not in sys.modules and not any(k.split(".")[0] == "models" for k in sys.modules)
    net = yolov5_adapter.model
    assert type(net) is yolov5_modules.Model and type(yolov5_adapter.head) is yolov5_modules.Detect
    kinds = {type(m).__module__ for m in net.modules()}
    assert kinds <= {"dsxai.adapters.yolov5_modules"} | {k for k in kinds if k.startswith("torch.nn.modules")}

"""Generic adapters: a decode function or a logits module is enough; real checkpoints when available."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _model_state import assert_unchanged, snapshot
from conftest import SHARED_DATA
from dsxai.adapters.generic import (
    DetectorAdapter, Preprocessing, SegmenterAdapter, best_match, make_batch, select_candidates,
)
from dsxai.engine import normalize_maps
from dsxai.layers import guess_layers
from dsxai.methods import get_method
from dsxai.pipeline import explain_maps

DATA = SHARED_DATA


def share_in_box(m, box, margin=0):
    h, w = m.shape
    x1, y1 = max(0, int(box[0]) - margin), max(0, int(box[1]) - margin)
    x2, y2 = min(w, int(np.ceil(float(box[2]))) + margin), min(h, int(np.ceil(float(box[3]))) + margin)
    return (m[y1:y2, x1:x2].sum() / m.sum().clamp_min(1e-9)).item()


def peak_in_box(m, box):
    y, x = np.unravel_index(int(m.argmax()), m.shape)
    return bool(box[0] <= x < box[2] and box[1] <= y < box[3])


# --------------------------------------------------------------------------------------------------
# toy models with hand-set weights: their right answers are known
# --------------------------------------------------------------------------------------------------
class ToyDetector(nn.Module):
    """Stride-8 grid; class 0 fires on white, class 1 on red. Output [B, 2, h/8, w/8] logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AvgPool2d(8)
        self.head = nn.Conv2d(16, 2, 1)
        with torch.no_grad():
            w = torch.zeros(16, 3, 3, 3)
            w[:8] = 1 / 27                                   # brightness
            w[8:, 0] = 1 / 9
            w[8:, 1:] = -1 / 18                              # red minus the rest
            self.features[0].weight.copy_(w)
            self.features[0].bias.copy_(torch.cat([torch.full((8,), -0.6), torch.full((8,), -0.3)]))
            self.head.weight.zero_()
            self.head.weight[0, :8] = 4.0
            self.head.weight[1, 8:] = 4.0
            self.head.bias.fill_(-4.0)

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


def toy_decode(output, batch):
    b, k, gh, gw = output.shape
    probs = torch.sigmoid(output).flatten(2).transpose(1, 2)  # [B, N, 2]
    scores, labels = probs.max(-1)
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    cx, cy = (xs.flatten() + 0.5) * 8, (ys.flatten() + 0.5) * 8
    boxes = torch.stack([cx - 6, cy - 6, cx + 6, cy + 6], 1).float()  # 12 x 12: neighbours overlap (IoU 0.2)
    return [{"boxes": boxes, "scores": scores[i], "labels": labels[i], "class_scores": probs[i]} for i in range(b)]


def scene(h=120, w=200):
    """Gray noise with a white square at (x 40-64, y 32-56) and a red one at (x 136-160, y 64-88)."""
    rng = np.random.default_rng(0)
    image = (rng.random((h, w, 3)) * 60 + 40).astype(np.uint8)
    image[32:56, 40:64] = 250
    image[64:88, 136:160] = (250, 20, 20)
    return image


WHITE, RED = (40, 32, 64, 56), (136, 64, 160, 88)


@pytest.fixture(scope="module")
def toy():
    return ToyDetector().eval()


@pytest.fixture(scope="module")
def detector(toy):
    return DetectorAdapter(toy, toy_decode, size=(128, 160), resize="letterbox", class_names=["white", "red"],
                           conf=0.5, iou=0.3, layers=["features.1"])


def inside(box, region, slack=9):
    return (box[0] >= region[0] - slack and box[1] >= region[1] - slack and box[2] <= region[2] + slack
            and box[3] <= region[3] + slack)


def test_preprocessing_geometry_and_normalisation():
    image = scene()
    tensor, g = Preprocessing(size=(64, 64), resize="letterbox", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))(image)
    assert tensor.shape == (3, 64, 64) and g.content_size == (38, 64) and g.offset == (13, 0)
    value = (image[0, 0, 0] / 255 - 0.5) / 0.25
    assert abs(tensor[0, 13, 0].item() - value) < 0.15  # resized, so only close
    bgr, _ = Preprocessing(bgr=True)(image)
    plain, _ = Preprocessing()(image)
    assert torch.equal(bgr, plain.flip(0)) and plain.max() <= 1
    longest, g = Preprocessing(size=50, resize="longest")(image)
    assert g.content_size == (30, 50) and longest.shape == (3, 30, 50)
    batch = make_batch([image, image[:50]], Preprocessing(), pad_multiple=32)
    assert tuple(batch.tensor.shape) == (2, 3, 128, 224)
    assert [g.network_size for g in batch.geometries] == [(128, 224)] * 2
    assert batch.geometries[1].content_size == (50, 200)
    # a bare tensor from a custom preprocess: a plain resize of the whole image
    batch = make_batch(image, lambda im: torch.zeros(3, 40, 60))
    assert batch.geometries[0].content_size == (40, 60) and batch.geometries[0].original_size == (120, 200)
    with pytest.raises(ValueError, match="resize"):
        Preprocessing(resize="crop")


def test_detector_adapter_known_answer(toy, detector):
    before = snapshot(toy)
    dets, maps = explain_maps(detector, scene(), method="hirescam")
    d, m = dets[0], maps[0]
    assert m.shape == (len(d), 120, 200)
    assert {"white", "red"} == set(d.names)
    for k in range(len(d)):
        region = WHITE if d.names[k] == "white" else RED
        assert inside(d.boxes[k].tolist(), region), (d.names[k], d.boxes[k])
        # the score reads one 8 x 8 cell of the features (3x3 conv): the map lives in the box
        assert share_in_box(m[k], d.boxes[k], margin=3) > 0.95
        assert peak_in_box(m[k], d.boxes[k].tolist())
    assert "network_boxes" in d.meta and d.meta["candidate_index"].shape == (len(d),)
    assert_unchanged(toy, before)


def test_detector_adapter_grayscale_rgba_batch_and_options(detector):
    image = scene()
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([image[:, :150], np.full((120, 150), 255, np.uint8)])
    dets, maps = explain_maps(detector, [gray, rgba], method="gradcam")
    assert [m.shape for m in maps] == [(len(dets[0]), 120, 200), (len(dets[1]), 120, 150)]
    assert set(dets[0].names) == {"white"}  # no red in grayscale
    assert {"white", "red"} == set(dets[1].names)
    only_red = detector.predict(image, classes=[1])[0]
    assert set(only_red.names) == {"red"} and len(only_red) > 0
    no_nms = detector.predict(image, iou=None, max_dets=1000)[0]
    assert len(no_nms) == len(detector.predict(image)[0])  # IoU 0.2 < 0.3
    assert len(no_nms) > len(detector.predict(image, iou=0.1)[0])
    assert len(detector.predict(image, max_dets=3)[0]) == 3
    empty, empty_maps = explain_maps(detector, image, conf=1.0)
    assert len(empty[0]) == 0 and empty_maps[0].shape == (0, 120, 200)


@pytest.mark.parametrize("method", ["ablationcam", "scorecam"])
def test_perturbation_methods_rescore_by_matching(detector, method):
    dets, maps = explain_maps(detector, scene(), method=method, layers=["features.1"],
                                  method_options={"batch_size": 16})
    d, m = dets[0], maps[0]
    assert m.shape == (len(d), 120, 200) and len(d) > 0
    # channel weights from perturbed copies are class-level: a white box's map covers the white square
    hits = [share_in_box(m[k], WHITE if d.names[k] == "white" else RED, margin=8) > 0.5 for k in range(len(d))]
    assert sum(hits) >= len(d) - 1, hits


def test_rescore_matches_itself_and_mirrored_views(toy, detector):
    batch = detector.preprocess(scene())
    target = detector.box_target(batch)
    with torch.no_grad():
        scores = target(toy(batch.tensor))[0]
        again = target.on_copies(toy(torch.cat([batch.tensor, batch.tensor.flip(-1)])), 0)
    assert torch.allclose(again[0], scores, atol=1e-6)  # IoU 1 with itself
    assert (again[1] < scores).all()  # the mirrored copy has nothing at the original boxes
    flipped = target.hflip(batch.tensor.shape[-1])
    with torch.no_grad():
        mirrored = flipped(toy(batch.tensor.flip(-1)))[0]
    assert torch.allclose(mirrored, scores, atol=0.05)


def test_hflip_averages_the_mirrored_view_read_at_the_mirrored_boxes(toy, detector):
    batch = detector.preprocess(scene())
    width = batch.tensor.shape[-1]
    cam = get_method("hirescam")(toy, ["features.1"])
    target = detector.box_target(batch)
    plain = cam(batch.tensor, target)[0]
    mirrored = cam(batch.tensor.flip(-1), target.hflip(width))[0]
    both = get_method("hirescam")(toy, ["features.1"], hflip=True)(batch.tensor, detector.box_target(batch))[0]
    # hflip = the normalised sum of the plain map and the mirrored view's map flipped back
    assert torch.allclose(both, normalize_maps(plain + mirrored.flip(-1)), atol=1e-6)
    # the toy's convolutions are mirror-symmetric and the letterbox is centred, so a mirrored target that
    # reads the mirrored boxes gives the plain map back; reading the unmirrored boxes gives other maps
    assert torch.allclose(mirrored.flip(-1), plain, atol=1e-4)
    unmirrored = cam(batch.tensor.flip(-1), target)[0]
    assert (unmirrored.flip(-1) - plain).abs().amax() > 0.5


def test_user_rescore_and_one_argument_decode(toy):
    calls = []

    def rescore(output, boxes, labels):
        calls.append(output.shape[0])
        return torch.sigmoid(output).amax((2, 3))[:, labels]

    adapter = DetectorAdapter(toy, lambda out: toy_decode(out, None), size=(128, 160), resize="letterbox",
                              rescore=rescore, layers=["features.1"], conf=0.5)
    dets, maps = explain_maps(adapter, scene(), method="ablationcam", method_options={"batch_size": 16})
    assert calls and calls[0] == 16 and maps[0].shape[0] == len(dets[0]) > 0


def test_guess_layers_picks_last_feature_map_read_by_a_conv(toy):
    # the head's 1x1 conv reads the pooled grid: the last feature map before the prediction
    assert guess_layers(toy, torch.zeros(1, 3, 64, 64)) == ["pool"]
    assert DetectorAdapter(toy, toy_decode, size=(64, 64)).default_layers == ["pool"]
    with pytest.raises(ValueError, match="layers="):
        guess_layers(nn.Sequential(nn.Conv2d(3, 2, 1)), torch.zeros(1, 3, 8, 8))


def test_best_match():
    boxes = torch.tensor([[0.0, 0, 10, 10]])
    cands = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]])
    scores = torch.tensor([[0.2], [0.9], [1.0]])
    assert torch.allclose(best_match(boxes, cands, scores), torch.tensor([0.45]))
    assert best_match(boxes, cands[:0], scores[:0]).tolist() == [0.0]


class ToySegmenter(nn.Module):
    """Half-resolution logits: class 1 where the image is bright."""

    def __init__(self, channels=2):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(16, channels, 1)
        with torch.no_grad():
            self.features[0].weight.fill_(1 / 27)
            self.features[0].bias.fill_(-0.6)
            self.classifier.weight.zero_()
            self.classifier.weight[-1].fill_(2.0)
            self.classifier.bias.zero_()
            self.classifier.bias[-1] = -0.1

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.mark.parametrize("channels", [2, 1])
def test_segmenter_adapter_known_answer(channels):
    model = ToySegmenter(channels).eval()
    before = snapshot(model)
    adapter = SegmenterAdapter(model, size=(96, 160), pad_multiple=32, layers=["features.1"])
    image = scene()
    dets, maps = explain_maps(adapter, image, method="hirescam", min_area=50)
    d, m = dets[0], maps[0]
    white = torch.zeros(120, 200, dtype=torch.bool)
    white[32:56, 40:64] = True
    assert len(d) >= 1 and d.labels.tolist()[0] == 1
    k = max(range(len(d)), key=lambda i: (d.masks[i] & white).sum().item())
    overlap = (d.masks[k] & white).sum() / (d.masks[k] | white).sum()
    assert overlap > 0.7 and m.shape == (len(d), 120, 200)
    assert share_in_box(m[k], d.boxes[k], margin=4) > 0.95
    assert_unchanged(model, before)


def test_segmenter_guessed_layer_and_custom_preprocess():
    model = ToySegmenter().eval()

    def prep(image):
        return torch.from_numpy(cv2.resize(image, (100, 60))).permute(2, 0, 1).float() / 255

    adapter = SegmenterAdapter(model, prep)
    assert adapter.default_layers == ["features.1"]
    dets, maps = explain_maps(adapter, scene(), min_area=20)
    assert maps[0].shape == (len(dets[0]), 120, 200) and len(dets[0]) >= 1
    with pytest.raises(ValueError, match="not both"):
        SegmenterAdapter(model, prep, size=(64, 64))


# --------------------------------------------------------------------------------------------------
# real checkpoints from ../shared/data (skipped when absent)
# --------------------------------------------------------------------------------------------------
FASTESTDET = DATA / "weights/fastestdet_coco/FastestDet.onnx"
SINET = DATA / "weights/sinet_portrait_seg/SINet.onnx"
COCO = DATA / "coco_subset"


def load_onnx(path):
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    onnx = pytest.importorskip("onnx")
    onnx2torch = pytest.importorskip("onnx2torch")
    return onnx2torch.convert(onnx.load(str(path))).eval()


def fastestdet_decode(output, batch):
    """FastestDet head 85 x 22 x 22: [obj, dx, dy, w, h, 80 class probs] (obj, classes already activated)."""
    b, _, gh, gw = output.shape
    height, width = batch.tensor.shape[-2:]
    obj = output[:, 0].clamp_min(1e-9)
    cls = output[:, 5:].clamp_min(1e-9)
    rows = torch.arange(gh, device=output.device).view(gh, 1).expand(gh, gw)
    cols = torch.arange(gw, device=output.device).view(1, gw).expand(gh, gw)
    cx = (cols + torch.tanh(output[:, 1])) / gw * width
    cy = (rows + torch.tanh(output[:, 2])) / gh * height
    w, h = torch.sigmoid(output[:, 3]) * width, torch.sigmoid(output[:, 4]) * height
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).reshape(b, -1, 4)
    class_scores = (obj[:, None] ** 0.6 * cls ** 0.4).flatten(2).transpose(1, 2)  # [B, 484, 80]
    scores, labels = class_scores.max(-1)
    return [{"boxes": boxes[i], "scores": scores[i], "labels": labels[i], "class_scores": class_scores[i]}
            for i in range(b)]


def coco80():
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    categories = FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    return [c for c in categories if c not in ("__background__", "N/A")]


def assets():
    ultralytics = pytest.importorskip("ultralytics")
    return Path(ultralytics.__file__).parent / "assets"


@pytest.mark.shared_data
def test_fastestdet_onnx_finds_persons_and_bus_with_maps_in_their_boxes():
    net = load_onnx(FASTESTDET)
    before = snapshot(net)
    adapter = DetectorAdapter(net, fastestdet_decode, size=(352, 352), bgr=True, interpolation=cv2.INTER_AREA,
                              class_names=coco80(), conf=0.65, iou=0.45, layers=["Relu_250"])
    image = assets() / "bus.jpg"
    # HiResCAM/LayerCAM keep where the evidence is: per-instance maps. Grad-CAM's channel weights
    # are averaged over the image, so same-class boxes share one map (checked on the bus only).
    dets, maps = explain_maps(adapter, image, method="hirescam")
    d, m = dets[0], maps[0]
    assert sorted(d.names) == ["bus", "person", "person", "person"]
    assert torch.allclose(d.scores.sort(descending=True).values, torch.tensor([0.89, 0.88, 0.76, 0.66]), atol=0.01)
    assert m.shape == (4, 1080, 810)
    peaks = [peak_in_box(m[k], d.boxes[k].tolist()) for k in range(len(d))]
    shares = [share_in_box(m[k], d.boxes[k]) for k in range(len(d))]
    assert sum(peaks) >= 3 and np.median(shares) > 0.8, (peaks, shares)
    _, grad_maps = explain_maps(adapter, image, method="gradcam", classes=[5])  # 5 = bus
    bus = d.boxes[d.labels == 5][0]
    assert peak_in_box(grad_maps[0][0], bus.tolist()) and share_in_box(grad_maps[0][0], bus) > 0.6
    assert_unchanged(net, before)


def big_person_image():
    ann_file = COCO / "annotations/instances_val2017_subset.json"
    if not ann_file.is_file():
        pytest.skip(f"{ann_file} is absent")
    data = json.loads(ann_file.read_text())
    image = next(i for i in data["images"] if i["id"] == 20992)  # one person covering 57% of the image
    mask = np.zeros((image["height"], image["width"]), np.uint8)
    for ann in data["annotations"]:
        if ann["image_id"] == 20992 and ann["category_id"] == 1 and not ann["iscrowd"]:
            for polygon in ann["segmentation"]:
                cv2.fillPoly(mask, [np.array(polygon).reshape(-1, 2).round().astype(np.int32)], 1)
    return COCO / "images" / image["file_name"], torch.from_numpy(mask.astype(bool))


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore:For linear and cubic interpolation:UserWarning")
def test_sinet_onnx_segments_the_person_with_map_on_the_mask():
    net = load_onnx(SINET)
    path, truth = big_person_image()
    # README: cv2 BGR, (img - mean) / std / 255, i.e. (img / 255 - mean / 255) / std
    mean = np.array([102.890434, 111.25247, 126.91212]) / 255
    std = (62.93292, 62.82138, 66.355705)
    adapter = SegmenterAdapter(net, size=(320, 320), bgr=True, mean=tuple(mean), std=std,
                               class_names=["background", "person"])
    assert adapter.default_layers == ["PRelu_264"]  # the decoder's input feature map (144 ch, stride 8)
    dets, maps = explain_maps(adapter, path, per="class")
    d, m = dets[0], maps[0]
    assert d.names == ["person"] and d.masks.shape[1:] == truth.shape
    iou = ((d.masks[0] & truth).sum() / (d.masks[0] | truth).sum()).item()
    assert iou > 0.3, iou
    near = F.max_pool2d(d.masks[0][None, None].float(), 31, 1, 15)[0, 0] > 0
    assert (m[0] * near).sum() / m[0].sum() > 0.8
    assert (m[0] * d.masks[0]).sum() / m[0].sum() > d.masks[0].float().mean() + 0.1  # better than chance


def test_one_candidate_pipeline_filters_suppresses_and_caps():
    from dsxai.adapters._candidates import best_class_candidates

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 0, 1])

    def kept(**options):
        settings = dict(conf=0.5, iou=0.5, classes=None, max_dets=10) | options
        return select_candidates(boxes, scores, labels, **settings).tolist()

    # class-aware NMS: box 1 overlaps box 0 (IoU 0.68) and goes; box 3, same place, other class, stays
    assert kept() == [0, 2, 3]
    assert kept(iou=None) == [0, 1, 2, 3] and kept(iou=0.7) == [0, 1, 2, 3]
    assert kept(classes=[1]) == [3] and kept(conf=0.65) == [0, 2] and kept(max_dets=2) == [0, 2]
    assert kept(iou=None, max_candidates=2) == [0, 1] and kept(max_dets=0) == [] and kept(conf=0.95) == []
    # YOLO heads: a row is a candidate of its best class only (its other class scores never count)
    rows, best = best_class_candidates(torch.tensor([[0.1, 0.9], [0.8, 0.3]]), boxes[:2], conf=0.5, iou=0.5,
                                       classes=None, max_dets=10)
    assert rows.tolist() == [0, 1] and best.tolist() == [1, 0]
    rows, best = best_class_candidates(torch.tensor([[0.1, 0.9], [0.8, 0.3]]), boxes[:2], conf=0.5, iou=0.5,
                                       classes=[0], max_dets=10)
    assert rows.tolist() == [1] and best.tolist() == [0]

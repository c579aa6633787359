"""Tiny models trained on the shapes world (:mod:`dsxai.shapes`), shipped as small checkpoints.

=============================  ==========================================  ===================================
model                          load with                                   input it expects
=============================  ==========================================  ===================================
YOLOv8 detector (Ultralytics)  ``ultralytics.YOLO(shapes_yolov8_path())``  images as Ultralytics takes them
                                                                           (numpy = **BGR** uint8), imgsz 256
YOLOv8-seg (Ultralytics)       ``ultralytics.YOLO(shapes_yolov8_seg_path())``  same
Faster R-CNN (torchvision)     :func:`load_shapes_fasterrcnn`              list of float RGB ``[3, H, W]`` in
                                                                           ``[0, 1]``; the model's own
                                                                           ``GeneralizedRCNNTransform``
                                                                           normalises and resizes (min/max size
                                                                           256)
U-Net (segmentation-models-    :func:`load_shapes_unet`                    float RGB ``[B, 3, H, W]`` in
pytorch)                                                                   ``[0, 1]`` normalised with
                                                                           :data:`UNET_MEAN` / :data:`UNET_STD`
                                                                           (:func:`unet_preprocess`); H, W
                                                                           multiples of 32
=============================  ==========================================  ===================================

Class ids: the torchvision / smp models use the shapes-world ids (0 = background, 1..4 = :data:`SHAPES_CLASSES`);
the Ultralytics models use 0..3 (= shapes id - 1), with ``model.names == {0: 'disc', ...}``.

Training scenes use ``make_scenes(n, TRAIN_SEED)``, validation during training ``VAL_SEED``; held-out
evaluation (tests) uses ``TEST_SEED`` -- disjoint seed streams. Retrain with (:mod:`dsxai.zoo.training`)::

    python -m dsxai.zoo.training.yolo --out dsxai/zoo/weights          # YOLOv8 + YOLOv8-seg
    python -m dsxai.zoo.training.fasterrcnn --out dsxai/zoo/weights
    python -m dsxai.zoo.training.unet --out dsxai/zoo/weights

Each command's defaults are its shipped checkpoint's recipe (seeded; the same thread count gives the same
weights, tensor for tensor); ``benchmarks/README.md`` gives the training times and held-out scores.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dsxai.shapes import CATEGORIES

__all__ = [
    "SHAPES_CLASSES",
    "WEIGHTS_DIR",
    "TRAIN_SEED",
    "VAL_SEED",
    "TEST_SEED",
    "IMAGE_SIZE",
    "UNET_MEAN",
    "UNET_STD",
    "weights_path",
    "shapes_yolov8_path",
    "shapes_yolov8_seg_path",
    "shapes_yolo_path",
    "shapes_yolo_seg_path",
    "build_shapes_fasterrcnn",
    "load_shapes_fasterrcnn",
    "build_shapes_unet",
    "load_shapes_unet",
    "unet_preprocess",
    "save_state_dict_fp16",
    "load_state_dict_fp32",
    "predict_yolo",
    "predict_torchvision",
    "coco_evaluate",
    "semantic_confusion",
    "miou_from_confusion",
    "ZOO_MODELS",
    "ZOO_ALIASES",
    "load_adapter",
]

SHAPES_CLASSES: tuple[str, ...] = CATEGORIES  # ids 1..4 (0 = background)
IMAGE_SIZE = 256
TRAIN_SEED, VAL_SEED, TEST_SEED = 0, 1, 2

WEIGHTS_DIR = Path(os.environ.get("DSXAI_ZOO_WEIGHTS", Path(__file__).resolve().parent / "weights"))

_RETRAIN = {
    "shapes_yolov8.pt": "python -m dsxai.zoo.training.yolo --task detect --out {dir}",
    "shapes_yolov8-seg.pt": "python -m dsxai.zoo.training.yolo --task segment --out {dir}",
    "shapes_fasterrcnn.pt": "python -m dsxai.zoo.training.fasterrcnn --out {dir}",
    "shapes_unet.pt": "python -m dsxai.zoo.training.unet --out {dir}",
    "shapes_maskrcnn_mask.pt": "python -m dsxai.zoo.training.maskrcnn --out {dir}",
}

# U-Net input normalisation (applied to RGB in [0, 1])
UNET_MEAN = (0.5, 0.5, 0.5)
UNET_STD = (0.25, 0.25, 0.25)


def weights_path(name: str) -> Path:
    """Path of a shipped checkpoint; FileNotFoundError (with the re-train command) when it is missing."""
    p = WEIGHTS_DIR / name
    if not p.is_file():
        cmd = _RETRAIN.get(name, "see dsxai/zoo/__init__.py").format(dir=WEIGHTS_DIR)
        raise FileNotFoundError(f"shapes-world checkpoint {p} is missing; re-train it with:\n    {cmd}")
    return p


def shapes_yolov8_path() -> Path:
    """Ultralytics YOLOv8 detector checkpoint (4 classes, imgsz 256): ``ultralytics.YOLO(shapes_yolov8_path())``."""
    return weights_path("shapes_yolov8.pt")


def shapes_yolov8_seg_path() -> Path:
    """Ultralytics YOLOv8-seg checkpoint (4 classes, imgsz 256)."""
    return weights_path("shapes_yolov8-seg.pt")


shapes_yolo_path = shapes_yolov8_path
shapes_yolo_seg_path = shapes_yolov8_seg_path


# ----------------------------------------------------------------------------------------------- checkpoints


def save_state_dict_fp16(model, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    """Save ``model.state_dict()`` with floating tensors stored as fp16 (plus a ``meta`` dict), atomically."""
    import torch

    from dsxai.runs import write_atomic

    sd = {k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().clone()
          for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": sd, "meta": dict(meta or {})}, buffer)
    write_atomic(path, buffer.getvalue())  # a shipped checkpoint is replaced whole or not at all


def load_state_dict_fp32(model, path: str | os.PathLike) -> dict[str, Any]:
    """Load a :func:`save_state_dict_fp16` file into ``model`` (as float32); return its ``meta``.

    Read with the allow-listed unpickler (tensors and containers only), so a replaced file cannot run code.
    """
    from dsxai.adapters.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, "state_dict")
    ref = model.state_dict()
    sd = {k: (v.to(ref[k].dtype) if k in ref and v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()}
    model.load_state_dict(sd, strict=True)
    return ckpt.get("meta", {})


# ----------------------------------------------------------------------------------------------- Faster R-CNN


def build_shapes_fasterrcnn(num_classes: int = len(SHAPES_CLASSES) + 1, image_size: int = IMAGE_SIZE):
    """The shapes-world Faster R-CNN architecture (random init).

    A small plain CNN backbone (8 conv-BN-ReLU layers, stride 8, the last two dilated, 96 channels) with a
    single feature map, 12 anchors per location (sizes 16-128, ratios 0.5/1/2), RoIAlign 7x7 and a 2-layer
    128-d box head. The
    ``GeneralizedRCNNTransform`` keeps scene-sized images (``min_size=max_size=image_size``) and normalises with
    mean 0.5 / std 0.25, so pass float RGB images in ``[0, 1]``.
    """
    from torch import nn

    from dsxai.adapters.torchvision_detection import fasterrcnn_from_backbone

    def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    backbone = nn.Sequential(
        *block(3, 16, 2), *block(16, 16),  # 1/2
        *block(16, 32, 2), *block(32, 32),  # 1/4
        *block(32, 64, 2), *block(64, 64),  # 1/8
        *block(64, 96, 1, 2), *block(96, 96, 1, 4),  # 1/8, dilated: receptive field ~140 px
    )
    backbone.out_channels = 96
    return fasterrcnn_from_backbone(
        backbone, num_classes, anchor_sizes=(16, 32, 64, 128), aspect_ratios=(0.5, 1.0, 2.0), head_channels=128,
        min_size=image_size, max_size=image_size, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25],
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128, box_batch_size_per_image=64,
        box_score_thresh=0.001, box_detections_per_img=100,
    )


def load_shapes_fasterrcnn(device: str = "cpu", path: str | os.PathLike | None = None, score_thresh: float = 0.25):
    """Trained shapes-world Faster R-CNN in eval mode (float32).

    ``score_thresh``: the detector's own score threshold (what the adapter uses by default); 0.25 keeps the
    detections a person would look at, COCO mAP evaluation uses 0.001.
    """
    p = Path(path) if path is not None else weights_path("shapes_fasterrcnn.pt")
    model = build_shapes_fasterrcnn()
    load_state_dict_fp32(model, p)
    model.roi_heads.score_thresh = float(score_thresh)
    return model.eval().to(device)


def load_shapes_maskrcnn(device: str = "cpu", score_thresh: float = 0.25, path: str | os.PathLike | None = None):
    """Trained shapes-world Mask R-CNN in eval mode (float32): the shipped Faster R-CNN plus its mask branch,
    trained on the frozen detector (``python -m dsxai.zoo.training.maskrcnn``)."""
    from dsxai.adapters.torchvision_masks import add_mask_branch

    model = load_shapes_fasterrcnn("cpu", score_thresh=score_thresh)
    add_mask_branch(model, channels=(64, 64), resolution=14)
    load_state_dict_fp32(mask_branch(model), Path(path) if path is not None else weights_path("shapes_maskrcnn_mask.pt"))
    return model.eval().to(device)


def mask_branch(model):
    """The trained part of :func:`build_shapes_maskrcnn` (its mask head and predictor) as one module that
    shares, not copies, them: what ``shapes_maskrcnn_mask.pt`` holds."""
    from torch import nn

    return nn.ModuleDict({n: getattr(model.roi_heads, n) for n in ("mask_head", "mask_predictor")})


# ----------------------------------------------------------------------------------------------- U-Net


def build_shapes_unet(num_classes: int = len(SHAPES_CLASSES) + 1, presence_head: bool = False):
    """The shapes-world U-Net (random init): smp ``Unet`` with a timm MobileNetV3-small encoder
    (``tu-mobilenetv3_small_100``, depth 5, output stride 32: a receptive field that covers whole objects) and
    decoder channels (64, 48, 16, 8, 8); 1.40M parameters. The thin full- and half-resolution decoder blocks
    (16 -> 8 channels instead of 32 -> 16) make a training step 25% cheaper at the same held-out quality.

    ``presence_head=True`` adds smp's auxiliary classification head (one logit per object class: "is a disc /
    square / triangle / ring in the image"), used only in training to speed up shape learning; the model then
    returns ``(masks, presence_logits)``. The shipped model has no such head.

    Input height and width must be multiples of 32."""
    from dsxai.adapters.smp_segmentation import build_unet

    aux = dict(classes=num_classes - 1, dropout=0.0) if presence_head else None
    return build_unet(encoder_name="tu-mobilenetv3_small_100", encoder_depth=5, encoder_weights=None,
                    decoder_channels=(64, 48, 16, 8, 8), classes=num_classes, aux_params=aux)


def load_shapes_unet(device: str = "cpu", path: str | os.PathLike | None = None):
    """Trained shapes-world U-Net in eval mode (float32). Input: :func:`unet_preprocess`; output ``[B, 5, H, W]``
    logits (0 = background, 1..4 = :data:`SHAPES_CLASSES`)."""
    p = Path(path) if path is not None else weights_path("shapes_unet.pt")
    model = build_shapes_unet()
    load_state_dict_fp32(model, p)
    return model.eval().to(device)


def unet_preprocess(images):
    """uint8 ``HxWx3`` RGB array(s) or float ``[B,3,H,W]`` tensor in [0, 1] -> normalised float32 ``[B,3,H,W]``."""
    import torch

    if isinstance(images, np.ndarray) or (isinstance(images, (list, tuple)) and isinstance(images[0], np.ndarray)):
        arr = np.stack(images) if isinstance(images, (list, tuple)) else images
        if arr.ndim == 3:
            arr = arr[None]
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))).float().div_(255)
    else:
        x = torch.as_tensor(images).float()
        if x.ndim == 3:
            x = x[None]
    mean = torch.tensor(UNET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(UNET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------------------------- evaluation


def predict_yolo(model, scenes: Sequence, *, conf: float = 0.001, imgsz: int = IMAGE_SIZE, batch: int = 16,
                 masks: bool = False) -> list[dict[str, np.ndarray]]:
    """Run an ``ultralytics.YOLO`` model on scenes; return per-scene dicts with shapes-world labels (1..4)."""
    out = []
    for i in range(0, len(scenes), batch):
        chunk = scenes[i:i + batch]
        results = model.predict([s.image[..., ::-1] for s in chunk], conf=conf, imgsz=imgsz, verbose=False,
                                device="cpu", max_det=100)
        for s, r in zip(chunk, results):
            d = {"boxes": r.boxes.xyxy.cpu().numpy().astype(np.float32),
                 "scores": r.boxes.conf.cpu().numpy().astype(np.float32),
                 "labels": r.boxes.cls.cpu().numpy().astype(np.int64) + 1}
            if masks:
                h, w = s.size
                if r.masks is not None and len(r.masks):
                    m = r.masks.data.cpu().numpy()  # letterboxed to the inference size
                    d["masks"] = _unletterbox_masks(m, (h, w))
                else:
                    d["masks"] = np.zeros((0, h, w), bool)
            out.append(d)
    return out


def _unletterbox_masks(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = size
    mh, mw = m.shape[1:]
    gain = min(mh / h, mw / w)
    ph, pw = (mh - h * gain) / 2, (mw - w * gain) / 2
    top, left = int(round(ph - 0.1)), int(round(pw - 0.1))
    bottom, right = int(round(mh - ph + 0.1)), int(round(mw - pw + 0.1))
    res = [cv2.resize(x[top:bottom, left:right].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
           for x in m]
    return np.stack(res) if res else np.zeros((0, h, w), bool)


def predict_torchvision(model, scenes: Sequence, *, batch: int = 8) -> list[dict[str, np.ndarray]]:
    """Run a torchvision detection model on scenes (float RGB in [0, 1])."""
    import torch

    from dsxai.shapes import to_tensors

    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(scenes), batch):
            imgs, _ = to_tensors(scenes[i:i + batch])
            for r in model(list(imgs)):
                d = {k: r[k].cpu().numpy() for k in ("boxes", "scores", "labels")}
                if "masks" in r:
                    d["masks"] = (r["masks"][:, 0] > 0.5).cpu().numpy()
                out.append(d)
    return out


def coco_evaluate(scenes: Sequence, predictions: Sequence[dict], iou_type: str = "bbox") -> dict[str, float]:
    """COCOeval (pycocotools) of per-scene predictions against the scenes' ground truth.

    ``predictions[i]``: ``boxes`` xyxy, ``scores``, ``labels`` (1..4) and, for ``iou_type="segm"``, bool ``masks``.
    Returns ``{"map": AP@[.5:.95], "map50": AP@.5, "map75": AP@.75}``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from pycocotools import mask as mask_utils

    from dsxai.shapes import coco_dict

    gt = COCO()
    gt.dataset = coco_dict(scenes)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    dets = []
    for k, p in enumerate(predictions):
        boxes = np.asarray(p["boxes"], np.float64).reshape(-1, 4)
        for j, (b, s, c) in enumerate(zip(boxes, p["scores"], p["labels"])):
            d = {"image_id": k + 1, "category_id": int(c), "score": float(s),
                 "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            if iou_type == "segm":
                rle = mask_utils.encode(np.asfortranarray(np.asarray(p["masks"][j], np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                d["segmentation"] = rle
            dets.append(d)
    if not dets:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": float(ev.stats[0]), "map50": float(ev.stats[1]), "map75": float(ev.stats[2])}


def semantic_confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int = len(SHAPES_CLASSES) + 1) -> np.ndarray:
    """Confusion matrix ``[num_classes, num_classes]`` (rows = ground truth) of label maps."""
    gt = np.asarray(gt, np.int64).ravel()
    pred = np.asarray(pred, np.int64).ravel()
    return np.bincount(gt * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def miou_from_confusion(conf: np.ndarray) -> dict[str, Any]:
    """Per-class IoU, mIoU over all classes (incl. background) and over the object classes (1..)."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    iou = tp / np.maximum(conf.sum(0) + conf.sum(1) - tp, 1)
    return {"iou": iou, "miou": float(iou.mean()), "miou_objects": float(iou[1:].mean())}


# ----------------------------------------------------------------------------------------------- adapters by name

#: names :func:`load_adapter` (and ``dsxai.adapters.resolve``, every MODEL argument of the CLI) accepts for
#: the shipped shapes-world models
ZOO_MODELS: tuple[str, ...] = ("shapes-yolo", "shapes-yolo-seg", "shapes-fasterrcnn", "shapes-maskrcnn",
                               "shapes-unet")
#: other spellings :func:`load_adapter` accepts, registered too
ZOO_ALIASES: tuple[str, ...] = ("shapes-yolov8", "shapes-yolov8-seg")


def load_adapter(name: str, device: str | None = None, trust: bool = False, **options: Any):
    """The dsxai adapter of a shipped shapes-world model, with the preprocessing it was trained with.

    ``name``: one of :data:`ZOO_MODELS`. ``options`` go to the adapter (e.g. ``imgsz`` for the YOLO models,
    default 256). The checkpoints are read with the allow-listed unpickler; ``trust=True`` (full pickle)
    matters only for a YOLO checkpoint replaced by a re-trained one holding classes outside the list.
    Raises ValueError for an unknown name (UnsafeCheckpointError for a refused checkpoint) and
    FileNotFoundError (with the re-train command) when the checkpoint is missing.
    """
    key = str(name).lower().replace("_", "-")
    class_names = {i + 1: n for i, n in enumerate(SHAPES_CLASSES)}
    if key in ("shapes-yolo", "shapes-yolov8", "shapes-yolo-seg", "shapes-yolov8-seg"):
        from dsxai.adapters.ultralytics_yolo import UltralyticsAdapter

        path = shapes_yolov8_seg_path() if key.endswith("-seg") else shapes_yolov8_path()
        options.setdefault("imgsz", IMAGE_SIZE)
        return UltralyticsAdapter(str(path), device=device, trust=trust, **options)
    if key == "shapes-fasterrcnn":
        from dsxai.adapters.torchvision_detection import TorchvisionDetectionAdapter

        options.setdefault("class_names", class_names)
        return TorchvisionDetectionAdapter(load_shapes_fasterrcnn(device or "cpu"), **options)
    if key == "shapes-maskrcnn":
        from dsxai.adapters.torchvision_detection import TorchvisionDetectionAdapter

        options.setdefault("class_names", class_names)
        return TorchvisionDetectionAdapter(load_shapes_maskrcnn(device or "cpu"), **options)
    if key == "shapes-unet":
        from dsxai.adapters.smp_segmentation import SMPAdapter

        options.setdefault("class_names", {0: "background", **class_names})
        return SMPAdapter(load_shapes_unet(device or "cpu"), mean=UNET_MEAN, std=UNET_STD, **options)
    raise ValueError(f"unknown zoo model {name!r}; choose one of: {', '.join(ZOO_MODELS)}")


def _register_names() -> None:
    """Register every zoo name with :func:`dsxai.adapters.register`, so ``resolve("shapes-unet")`` works.

    ``dsxai.adapters`` imports this module the first time it looks a name up: the adapters never import the
    zoo, the zoo registers itself. ``replace=True``: re-importing the zoo (a reload) re-registers quietly.
    """
    from functools import partial

    from dsxai.adapters import register

    for name in (*ZOO_MODELS, *ZOO_ALIASES):
        register(name, partial(load_adapter, name), replace=True)


_register_names()

"""Ultralytics YOLO detectors and instance segmenters (YOLOv8, YOLO11, YOLO26, YOLOv10, v5u, ...).

The adapter never calls ``YOLO.__call__``, ``predict`` or ``train``: Ultralytics
runs prediction under ``torch.inference_mode`` (no gradients) and its trainer
may start a training run. Instead it runs its own forward on the inner
``nn.Module`` (``yolo.model``, a ``DetectionModel`` or ``SegmentationModel``)
and decodes the raw head output itself: confidence filter, class-aware NMS
(``torchvision.ops.batched_nms``) that remembers the anchor each surviving box
came from, ``max_dets`` and a ``classes`` filter. The differentiable score of a
detection is its class probability at that anchor, ``y[b, 4 + cls, anchor]``;
later calls (augmentation views, perturbed copies for ScoreCAM/AblationCAM)
rescore the same anchors.

What a v8/11-style head returns in eval mode (``ultralytics/nn/modules/head.py``):

* ``Detect``: ``(y, raw)`` with ``y`` ``[B, 4 + nc, A]`` (``xywh`` boxes in network
  pixels, sigmoid class probabilities) and ``raw`` the per-level dict.
* ``Segment``: ``((y, proto), raw)`` with ``y`` ``[B, 4 + nc + nm, A]`` (mask
  coefficients after the classes) and ``proto`` ``[B, nm, h/4, w/4]``.
* End-to-end heads (YOLOv10, YOLO26 with ``model.end2end = True``, or fused so
  that only the one-to-one branch is left): ``y`` is already top-k filtered
  ``[B, max_det, 6 (+ nm)]`` and has lost the anchor index, so the adapter
  decodes the one-to-one branch of ``raw`` itself (``head._inference``, boxes
  ``xyxy``) and skips NMS by default, as Ultralytics does for these heads.

Pose, OBB, classification, RT-DETR and text-prompted (World/YOLOE) heads are
rejected with an explanation.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsxai.adapter import Adapter, Batch, DetectionTarget
from dsxai.detections import Detections
from dsxai.imaging import Geometry, ImageLike, letterbox, load_images
from dsxai.targets import Target

from .checkpoint import UnsafeCheckpointError, load_checkpoint

__all__ = ["UltralyticsAdapter", "YOLOBoxTarget", "YOLOMaskTarget", "YOLOClassTarget", "DenseOutput"]

log = logging.getLogger("dsxai")

_INSTALL_HINT = "pip install 'dsxai[yolo]'"


def _import_ultralytics():
    try:
        import ultralytics  # noqa: F401
        from ultralytics.nn.modules import head
    except ImportError as exc:
        raise ImportError(
            f"UltralyticsAdapter needs the ultralytics package, which is not installed: {_INSTALL_HINT}"
        ) from exc
    return head


# --------------------------------------------------------------------------------------------------
# Shared by the YOLO adapters (also used by dsxai.adapters.yolov5)
# --------------------------------------------------------------------------------------------------
@dataclass
class DenseOutput:
    """One candidate per anchor, read from a YOLO model's raw output.

    ``boxes`` ``[B, A, 4]`` xyxy in network pixels; ``scores`` ``[B, A, nc]``
    per-class confidences (differentiable); ``coef`` ``[B, A, nm]`` mask
    coefficients and ``proto`` ``[B, nm, h, w]`` prototypes for instance segmenters.
    """

    boxes: Tensor
    scores: Tensor
    coef: Tensor | None = None
    proto: Tensor | None = None


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    xy, wh = boxes[..., :2], boxes[..., 2:4] / 2
    return torch.cat([xy - wh, xy + wh], -1)


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def network_size(imgsz: int | Sequence[int], stride: int) -> tuple[int, int]:
    """``imgsz`` as (h, w), each rounded up to a multiple of ``stride`` (logged when changed)."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
    if h < 1 or w < 1:
        raise ValueError(f"imgsz must be positive, got {imgsz!r}")
    size = (round_up(h, stride), round_up(w, stride))
    if size != (h, w):
        log.info("imgsz %s is not a multiple of the model stride %d; using %s", imgsz, stride, size)
    return size


def letterbox_batch(images: ImageLike | Sequence[ImageLike], imgsz: int | Sequence[int], stride: int,
                    rect: bool, device: torch.device, dtype: torch.dtype, fill: int = 114) -> Batch:
    """Load images, letterbox them (Ultralytics style, grey 114 padding) and stack as RGB/255.

    ``rect=False`` pads every image to ``imgsz``. ``rect=True`` pads only up to a
    multiple of ``stride`` (as Ultralytics' rectangular inference); a batch then
    uses the largest such size over its images so that they stack.
    """
    originals = load_images(images)
    size = network_size(imgsz, stride)
    if rect:
        sizes = []
        for image in originals:
            h, w = image.shape[:2]
            ratio = min(size[0] / h, size[1] / w)
            sizes.append((round_up(max(1, round(h * ratio)), stride), round_up(max(1, round(w * ratio)), stride)))
        size = (max(s[0] for s in sizes), max(s[1] for s in sizes))
    boxed, geometries = zip(*(letterbox(image, size, fill=fill) for image in originals))
    array = np.stack(boxed).transpose(0, 3, 1, 2)  # B, 3, h, w RGB
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype) / 255
    return Batch(tensor=tensor, images=list(originals), geometries=list(geometries))


def select_detections(scores: Tensor, boxes: Tensor, conf: float, iou: float, classes: Sequence[int] | None,
                      max_dets: int, nms: bool = True, max_candidates: int = 30000) -> tuple[Tensor, Tensor]:
    """Anchor indices and labels of the detections of one image (no gradient).

    ``scores`` ``[A, nc]`` and ``boxes`` ``[A, 4]`` xyxy. As Ultralytics' default
    (``multi_label=False``): each anchor's best class, kept when above ``conf``;
    a ``classes`` filter then drops anchors whose best class is not listed;
    class-aware NMS; the ``max_dets`` highest scores.
    """
    from torchvision.ops import batched_nms

    scores, boxes = scores.detach(), boxes.detach()
    best, labels = scores.max(1)
    keep = best > conf
    if classes is not None:
        keep &= torch.isin(labels, torch.as_tensor(list(classes), device=labels.device, dtype=labels.dtype))
    candidates = keep.nonzero().flatten()
    if candidates.numel() > max_candidates:
        candidates = candidates[best[candidates].topk(max_candidates).indices]
    if candidates.numel() == 0 or max_dets <= 0:
        empty = torch.zeros(0, dtype=torch.long, device=scores.device)
        return empty, empty
    if nms:
        order = batched_nms(boxes[candidates].float(), best[candidates].float(), labels[candidates], iou)
    else:
        order = best[candidates].argsort(descending=True)
    anchors = candidates[order[:max_dets]]
    return anchors, labels[anchors]


def mirror_anchors(anchors: Tensor, levels: Sequence[tuple[int, int, int]]) -> Tensor:
    """Anchor indices of the horizontally mirrored positions.

    ``levels`` lists ``(anchors_per_cell, h, w)`` per output level in the order
    the head flattens them (level, then anchor, then row, then column).
    """
    out = anchors.clone()
    start = 0
    for na, h, w in levels:
        stop = start + na * h * w
        inside = (anchors >= start) & (anchors < stop)
        local = anchors[inside] - start
        column = local % w
        out[inside] = start + local - column + (w - 1 - column)
        start = stop
    return out


class YOLOBoxTarget(DetectionTarget):
    """One score per detection of a dense YOLO output: the confidence at the anchor that survived NMS.

    ``dense`` turns the model's raw output (of any batch of rows) into a
    :class:`DenseOutput`; decoding happens on the first call, later calls and
    :meth:`on_copies` index the same ``(anchor, class)`` pairs, so the score is
    the same function of the output for the original and for perturbed copies.
    ``detections[b].meta`` holds ``anchor`` (index into A) and ``network_boxes``.
    """

    def __init__(self, dense: Callable[[Any], DenseOutput], geometries: Sequence[Geometry],
                 class_names: dict[int, str], conf: float = 0.25, iou: float = 0.45,
                 classes: Sequence[int] | None = None, max_dets: int = 100, nms: bool = True,
                 levels: Sequence[tuple[int, int, int]] | None = None, with_masks: bool = False):
        super().__init__()
        if not 0 <= iou <= 1:
            raise ValueError(f"iou must be in [0, 1], got {iou}")
        self.dense = dense
        self.geometries = list(geometries)
        self.class_names = dict(class_names)
        self.conf, self.iou, self.max_dets, self.nms = float(conf), float(iou), int(max_dets), nms
        self.classes = None if classes is None else [int(c) for c in classes]
        self.levels = levels
        self.with_masks = with_masks
        self.anchors: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.network_boxes: list[Tensor] = []

    # --------------------------------------------------------------- decoding
    def decode(self, output: Any) -> tuple[list[Detections], list[Tensor]]:
        dense = self.dense(output)
        if dense.scores.shape[0] != len(self.geometries):
            raise ValueError(
                f"the model output holds {dense.scores.shape[0]} images but the target was made for "
                f"{len(self.geometries)}; build the target from the same batch"
            )
        detections, scores = [], []
        self.anchors, self.labels, self.network_boxes = [], [], []
        for b, geometry in enumerate(self.geometries):
            anchors, labels = select_detections(dense.scores[b], dense.boxes[b], self.conf, self.iou, self.classes,
                                                self.max_dets, self.nms)
            self.anchors.append(anchors)
            self.labels.append(labels)
            score = dense.scores[b, anchors, labels]
            net_boxes = dense.boxes[b, anchors].detach().float()
            self.network_boxes.append(net_boxes)
            masks = None
            if self.with_masks:
                masks = self._masks(dense, b, anchors, net_boxes, geometry)
            detections.append(Detections(
                boxes=geometry.boxes_to_original(net_boxes).cpu(), scores=score.detach().cpu(),
                labels=labels.cpu(), image_size=geometry.original_size, class_names=self.class_names,
                masks=None if masks is None else masks.cpu(),
                meta={"anchor": anchors.cpu(), "network_boxes": net_boxes.cpu()},
            ))
            scores.append(self._score(dense, b, slice(b, b + 1), anchors, labels)[0])
        return detections, scores

    def rescore(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        return self._score(self.dense(output), image_index, rows if rows is not None else slice(None),
                           self.anchors[image_index], self.labels[image_index])

    def _score(self, dense: DenseOutput, image_index: int, rows: slice, anchors: Tensor, labels: Tensor) -> Tensor:
        """Scores ``[K, T]`` on the rows ``rows`` of a dense output."""
        anchors, labels = anchors.to(dense.scores.device), labels.to(dense.scores.device)
        return dense.scores[rows][:, anchors, labels]

    def _masks(self, dense: DenseOutput, b: int, anchors: Tensor, net_boxes: Tensor, geometry: Geometry) -> Tensor:
        h, w = geometry.original_size
        if dense.proto is None or dense.coef is None:
            raise ValueError("this model predicts no masks (not an instance segmentation model)")
        masks = torch.zeros(len(anchors), h, w, dtype=torch.bool, device=dense.proto.device)
        boxes = geometry.boxes_to_original(net_boxes)
        logits = mask_logits(dense.coef[b, anchors].detach(), dense.proto[b].detach()).float()
        # chunks bound the float intermediates (N x network size, N x original size)
        step = max(1, int(64e6 // (4 * (h * w + geometry.network_size[0] * geometry.network_size[1]))))
        for start in range(0, len(anchors), step):
            part = slice(start, start + step)
            up = F.interpolate(logits[part][None], size=geometry.network_size, mode="bilinear",
                               align_corners=False)[0]
            masks[part] = (geometry.maps_to_original(up) > 0) & box_masks(boxes[part], (h, w)).to(masks.device)
        return masks

    # ------------------------------------------------------------- mirroring
    def hflip(self, width: int) -> "YOLOBoxTarget":
        """The same detections on the horizontally mirrored input (the engine's ``hflip=True``)."""
        if self.detections is None:
            raise RuntimeError("decode the original image before asking for its mirrored target")
        if self.levels is None:
            raise ValueError("this target does not know the head's anchor layout, so it cannot be mirrored")
        twin = _copy_target(self)
        twin.anchors = [mirror_anchors(a, self.levels) for a in self.anchors]
        return twin


def _copy_target(target):
    twin = object.__new__(type(target))
    twin.__dict__.update(target.__dict__)
    return twin


def mask_logits(coef: Tensor, proto: Tensor) -> Tensor:
    """``[N, nm]`` coefficients times ``[nm, h, w]`` prototypes -> ``[N, h, w]`` mask logits."""
    nm, h, w = proto.shape
    return (coef @ proto.reshape(nm, -1)).reshape(-1, h, w)


def box_masks(boxes: Tensor, size: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0)) -> Tensor:
    """``[N, h, w]`` bool, True at pixel centres inside each xyxy box (boxes scaled by ``scale`` = (sy, sx))."""
    h, w = size
    sy, sx = scale
    ys = (torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5)[None, :, None]
    xs = (torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5)[None, None, :]
    b = boxes.float()
    return ((xs >= b[:, 0, None, None] * sx) & (xs <= b[:, 2, None, None] * sx)
            & (ys >= b[:, 1, None, None] * sy) & (ys <= b[:, 3, None, None] * sy))


class YOLOMaskTarget(YOLOBoxTarget):
    """One score per predicted instance mask of a YOLO segmentation model.

    ``score="mask"`` (default): the mean mask logit (coefficients x prototypes,
    before the sigmoid) over the instance's own predicted mask at prototype
    resolution (the pixels with logit > 0 inside its box; the whole box when
    that is empty). Its map answers "why are these pixels this instance", and
    the gradient reaches the prototypes as well as the coefficients. The mean
    (not the sum) keeps large and small masks on one scale; the engine
    normalises each map anyway.
    ``score="class"``: the detection's class score, as for boxes.
    Detections carry their masks in either case.
    """

    def __init__(self, *args: Any, score: str = "mask", **kwargs: Any):
        if score not in ("mask", "class"):
            raise ValueError(f"score must be 'mask' or 'class', got {score!r}")
        kwargs["with_masks"] = True
        super().__init__(*args, **kwargs)
        self.score = score
        self.regions: dict[int, Tensor] = {}

    def decode(self, output: Any) -> tuple[list[Detections], list[Tensor]]:
        if self.dense(output).proto is None:
            raise ValueError("mask targets need an instance segmentation model (a Segment head)")
        self.regions = {}
        return super().decode(output)

    def _score(self, dense: DenseOutput, image_index: int, rows: slice, anchors: Tensor, labels: Tensor) -> Tensor:
        if self.score == "class":
            return super()._score(dense, image_index, rows, anchors, labels)
        anchors = anchors.to(dense.coef.device)
        coef = dense.coef[rows][:, anchors]  # K, T, nm
        proto = dense.proto[rows]  # K, nm, h, w
        if image_index not in self.regions:  # first call: the instance regions of this image
            first = mask_logits(coef[0].detach(), proto[0].detach())
            self.regions[image_index] = self._regions(first, image_index)
        region = self.regions[image_index].to(proto.device, proto.dtype)  # T, h, w
        # mean logit inside each region = coefficients . (prototypes averaged over the region)
        pooled = torch.einsum("kmhw,thw->ktm", proto, region) / region.flatten(1).sum(-1).clamp_min(1)[None, :, None]
        return (coef * pooled).sum(-1)

    def _regions(self, logits: Tensor, image_index: int) -> Tensor:
        """``[T, h, w]`` bool at prototype resolution: logit > 0 inside the box (the box when that is empty)."""
        h, w = logits.shape[-2:]
        net_h, net_w = self.geometries[image_index].network_size
        boxes = self.network_boxes[image_index].to(logits.device)
        inside = box_masks(boxes, (h, w), (h / net_h, w / net_w))
        region = (logits > 0) & inside
        empty = region.flatten(1).sum(-1) == 0
        region[empty] = inside[empty]
        return region

    def hflip(self, width: int):
        if self.score == "mask":
            twin = super().hflip(width)
            twin.regions = {b: r.flip(-1) for b, r in self.regions.items()}
            return twin
        return super().hflip(width)


class YOLOClassTarget(Target):
    """One score per (image, class): explains a class as a whole.

    ``reduce="max"``: the class's highest confidence over all anchors (defined
    even where nothing is detected). ``reduce="sum"``: the sum of the class
    scores of the kept detections of that class (after ``conf``/NMS).
    ``classes=None`` explains the classes detected in each image.
    After the first call :attr:`detections` has one row per explained class:
    its label, its score, and the union of its kept boxes (the whole image when
    none was kept), so that maps and rows line up as for box targets.
    """

    def __init__(self, boxes: YOLOBoxTarget, classes: Sequence[int] | None = None, reduce: str = "max"):
        if reduce not in ("max", "sum"):
            raise ValueError(f"reduce must be 'max' or 'sum', got {reduce!r}")
        self.boxes = boxes
        self.requested = None if classes is None else [int(c) for c in classes]
        self.reduce = reduce
        self.class_ids: list[Tensor] | None = None
        self.detections: list[Detections] | None = None

    def __call__(self, output: Any) -> list[Tensor]:
        dense = self.boxes.dense(output)
        if self.class_ids is None:
            kept, _ = self.boxes.decode(output)
            self.boxes.detections = kept
            self.class_ids = []
            for dets in kept:
                ids = self.requested if self.requested is not None else sorted(set(dets.labels.tolist()))
                self.class_ids.append(torch.tensor(ids, dtype=torch.long))
            scores = [self._score(dense, b, slice(b, b + 1))[0] for b in range(len(kept))]
            self.detections = [self._rows(kept[b], self.class_ids[b], scores[b].detach().cpu(), b)
                               for b in range(len(kept))]
            return scores
        return [self._score(dense, b, slice(b, b + 1))[0] for b in range(len(self.class_ids))]

    def on_copies(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        if self.class_ids is None:
            raise RuntimeError("the class target scores copies only after decoding the original output")
        return self._score(self.boxes.dense(output), image_index, rows if rows is not None else slice(None))

    def num_targets(self, image_index: int) -> int | None:
        return None if self.class_ids is None else len(self.class_ids[image_index])

    def _score(self, dense: DenseOutput, b: int, rows: slice) -> Tensor:
        ids = self.class_ids[b].to(dense.scores.device)
        scores = dense.scores[rows]  # K, A, nc
        if self.reduce == "max":
            return scores[:, :, ids].amax(1) if len(ids) else scores.new_zeros(scores.shape[0], 0)
        anchors = self.boxes.anchors[b].to(scores.device)
        labels = self.boxes.labels[b].to(scores.device)
        picked = scores[:, anchors, labels]  # K, N
        same = (labels[None, :] == ids[:, None]).to(picked.dtype)  # T, N
        return picked @ same.T

    def _rows(self, kept: Detections, ids: Tensor, scores: Tensor, b: int) -> Detections:
        h, w = self.boxes.geometries[b].original_size
        boxes, counts = [], []
        for c in ids.tolist():
            mine = kept.boxes[kept.labels == c]
            counts.append(len(mine))
            boxes.append(torch.cat([mine[:, :2].amin(0), mine[:, 2:].amax(0)]) if len(mine)
                         else torch.tensor([0.0, 0.0, w, h]))
        return Detections(boxes=torch.stack(boxes) if boxes else torch.zeros(0, 4), scores=scores, labels=ids,
                          image_size=(h, w), class_names=kept.class_names,
                          meta={"kind": "class", "reduce": self.reduce, "num_detections": torch.tensor(counts)})


# --------------------------------------------------------------------------------------------------
# The Ultralytics adapter
# --------------------------------------------------------------------------------------------------
class UltralyticsAdapter(Adapter):
    """Explain Ultralytics YOLO detectors and instance segmenters.

    Args:
        model: an ``ultralytics.YOLO`` object, the path of an Ultralytics ``.pt``
            checkpoint (or of a model ``.yaml``, built with random weights), or the
            inner ``DetectionModel`` / ``SegmentationModel`` module. A YOLO object or
            module is used as it is and given back unchanged (parameters,
            ``requires_grad`` flags, train/eval mode, no hooks left behind).
        imgsz: network input size, an int (square) or (h, w); rounded up to a
            multiple of the model stride. Default 640, as Ultralytics predicts.
        rect: letterbox to ``imgsz`` but pad only up to a multiple of the stride
            (default, as ``yolo.predict`` does for a single image or a batch of one
            shape: the detections then match it); a batch of different shapes uses
            the largest such size over its images. ``False`` pads to ``imgsz`` exactly.
        device: move a model loaded from a path there (a given module stays put).
        trust: load a ``.pt`` with full pickle (it may run code); default: the allow-listed
            unpickler of :mod:`dsxai.adapters.checkpoint`.

    Default layers: the inputs of the head, i.e. the modules whose outputs the
    ``Detect``/``Segment`` layer reads (``model.model[-1].f``, e.g. ``model.15``,
    ``model.18``, ``model.21`` in YOLOv8; P3, P4, P5 at strides 8, 16, 32). The
    head predicts small objects from P3 and large ones from P5, so any single
    level hides part of the picture (P5 alone has no gradient for a small object
    predicted on P3, and is 20x20 at 640). The engine normalises each level's map
    on its own and fuses them with the mean.

    Targets: ``box_target`` (class score at the anchor that survived NMS),
    ``mask_target`` (segmenters: mean mask logit inside the instance, see
    :class:`YOLOMaskTarget`), ``class_target`` (a class as a whole). With
    :meth:`explain` use ``targets="boxes" | "masks" | "classes"``.
    """

    def __init__(self, model: Any, imgsz: int | Sequence[int] = 640, rect: bool = True,
                 device: str | torch.device | None = None, trust: bool = False):
        head_module = _import_ultralytics()
        net = _resolve_model(model, device, trust)
        head = net.model[-1] if isinstance(getattr(net, "model", None), nn.Sequential) and len(net.model) else None
        _check_head(net, head, head_module)
        self.model = net
        self.head = head
        self.class_names = {int(k): str(v) for k, v in dict(_names(net)).items()}
        self.stride = max(int(torch.as_tensor(net.stride).max()), 32) if hasattr(net, "stride") else 32
        self.imgsz = imgsz
        self.network_size = network_size(imgsz, self.stride)
        self.rect = rect
        self.task = "instance" if isinstance(head, head_module.Segment) else "detect"
        self.default_layers = [f"model.{i}" for i in _as_list(head.f)]

    # ------------------------------------------------------------ interface
    @property
    def dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            return p.dtype
        return torch.float32

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> Batch:
        self._reset_inference_caches()
        return letterbox_batch(images, self.imgsz, self.stride, self.rect, self.device, self.dtype)

    def box_target(self, batch: Batch, conf: float = 0.25, iou: float = 0.7,
                   classes: Sequence[int] | None = None, max_dets: int = 300,
                   nms: bool | None = None) -> YOLOBoxTarget:
        """One target per detection: its class probability at the anchor kept by NMS.

        Defaults are Ultralytics' predict defaults (conf 0.25, NMS IoU 0.7, max_det 300),
        so the detections match ``yolo.predict``. ``nms=None`` runs class-aware NMS
        except for end-to-end (one-to-one) heads.
        """
        self._reset_inference_caches()
        return YOLOBoxTarget(self.dense, batch.geometries, self.class_names, conf, iou, classes, max_dets,
                             self._nms(nms), self.levels(batch.tensor.shape[-2:]), with_masks=self.task == "instance")

    def mask_target(self, batch: Batch, conf: float = 0.25, iou: float = 0.7,
                    classes: Sequence[int] | None = None, max_dets: int = 300, nms: bool | None = None,
                    score: str = "mask") -> YOLOMaskTarget:
        """One target per predicted instance mask (``score="mask"`` or ``"class"``, see YOLOMaskTarget)."""
        if self.task != "instance":
            raise ValueError(
                f"mask targets need an instance segmentation model (e.g. yolov8n-seg); this model is a "
                f"{type(self.head).__name__} detector: use box targets"
            )
        self._reset_inference_caches()
        return YOLOMaskTarget(self.dense, batch.geometries, self.class_names, conf, iou, classes, max_dets,
                              self._nms(nms), self.levels(batch.tensor.shape[-2:]), score=score)

    def class_target(self, batch: Batch, classes: Sequence[int] | None = None, reduce: str = "max",
                     conf: float = 0.25, iou: float = 0.7, max_dets: int = 300,
                     nms: bool | None = None) -> YOLOClassTarget:
        """One target per (image, class); see :class:`YOLOClassTarget`."""
        self._reset_inference_caches()
        boxes = YOLOBoxTarget(self.dense, batch.geometries, self.class_names, conf, iou, None, max_dets,
                              self._nms(nms), self.levels(batch.tensor.shape[-2:]))
        return YOLOClassTarget(boxes, classes, reduce)

    # -------------------------------------------------------------- output
    def dense(self, output: Any) -> DenseOutput:
        """The per-anchor view of the model's eval-mode output (any number of rows)."""
        head = self.head
        nc = head.nc
        proto = None
        first = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(first, (tuple, list)):  # Segment: ((y, proto), raw)
            first, proto = first[0], first[1]
        elif self.task == "instance" and isinstance(output, (tuple, list)) and len(output) > 1:
            proto = output[1]  # export mode: (y, proto)
        xyxy = bool(getattr(head, "xyxy", False))
        if getattr(head, "end2end", False):
            raw = output[-1] if isinstance(output, (tuple, list)) else None
            if not isinstance(raw, dict) or "one2one" not in raw:
                raise ValueError(
                    "this end-to-end head returned no raw one-to-one predictions; the adapter needs the eval-mode "
                    "output ((y, raw) with raw['one2one']); do not set the head's export flag"
                )
            first = head._inference(raw["one2one"])
            xyxy = True
        if not isinstance(first, Tensor) or first.ndim != 3 or first.shape[1] < 4 + nc:
            shape = tuple(first.shape) if isinstance(first, Tensor) else type(first).__name__
            raise ValueError(
                f"unexpected {type(head).__name__} output {shape}; expected [B, 4 + {nc} (+ masks), anchors] "
                "from a model in eval mode"
            )
        boxes = first[:, :4].transpose(1, 2)
        boxes = boxes if xyxy else xywh_to_xyxy(boxes)
        scores = first[:, 4:4 + nc].transpose(1, 2)
        coef = first[:, 4 + nc:].transpose(1, 2) if self.task == "instance" else None
        if isinstance(proto, (tuple, list)):
            proto = proto[0]
        return DenseOutput(boxes=boxes, scores=scores, coef=coef, proto=proto)

    def levels(self, size: Sequence[int]) -> list[tuple[int, int, int]]:
        """``(1, h, w)`` of each head level for a network input of ``size`` (h, w)."""
        h, w = int(size[0]), int(size[1])
        strides = [int(s) for s in torch.as_tensor(self.head.stride).tolist()]
        return [(1, math.ceil(h / s), math.ceil(w / s)) for s in strides]

    # ------------------------------------------------------------ internals
    def _nms(self, nms: bool | None) -> bool:
        return (not getattr(self.head, "end2end", False)) if nms is None else bool(nms)

    def _reset_inference_caches(self) -> None:
        """Drop anchor grids cached by a forward under ``torch.inference_mode`` (they cannot enter autograd)."""
        for name in ("anchors", "strides"):
            value = getattr(self.head, name, None)
            if isinstance(value, Tensor) and value.is_inference():
                self.head.shape = None  # the next forward rebuilds anchors and strides
                return


def _as_list(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _names(net: nn.Module) -> dict:
    names = getattr(net, "names", None)
    if isinstance(names, (list, tuple)):
        return dict(enumerate(names))
    if isinstance(names, dict):
        return names
    nc = getattr(net.model[-1], "nc", 0)
    return {i: str(i) for i in range(nc)}


def _check_head(net: nn.Module, head: nn.Module | None, head_module) -> None:
    if head is None or not hasattr(head, "f"):
        raise TypeError(
            f"{type(net).__name__} is not an Ultralytics YOLO model: expected a DetectionModel or "
            "SegmentationModel whose .model is the layer Sequential ending in a Detect/Segment head"
        )
    unsupported = tuple(getattr(head_module, n) for n in ("Pose", "OBB", "WorldDetect", "YOLOEDetect")
                        if hasattr(head_module, n))
    if isinstance(head, unsupported) or not isinstance(head, head_module.Detect):
        raise ValueError(
            f"UltralyticsAdapter explains detection (Detect) and instance segmentation (Segment) heads; this "
            f"model ends in {type(head).__name__} (task {getattr(net, 'task', '?')!r}), which it does not support"
        )


def _resolve_model(model: Any, device: str | torch.device | None, trust: bool = False) -> nn.Module:
    from ultralytics.engine.model import Model

    if isinstance(model, Model):
        net = model.model
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"this YOLO object wraps a {type(net).__name__} ({getattr(model, 'ckpt_path', None) or net!r}), "
                "not a PyTorch module; exported formats (ONNX, TensorRT, ...) have no gradients: load the .pt"
            )
        return net
    if isinstance(model, (str, Path)):
        net = _load_path(Path(model), trust)
        return net.to(device) if device is not None else net
    if isinstance(model, nn.Module):
        return model
    raise TypeError(
        f"UltralyticsAdapter takes an ultralytics.YOLO object, a .pt path or a DetectionModel/SegmentationModel "
        f"module; got {type(model).__name__}"
    )


def _load_path(path: Path, trust: bool = False) -> nn.Module:
    """Load an Ultralytics checkpoint without Ultralytics' loader.

    ``YOLO(path)`` / ``load_checkpoint`` may go to the network (a missing file or a
    name like ``yolov5n.pt`` is downloaded, a module the pickle names is
    pip-installed) and unpickles with no allow-list. This loader reads the local
    file only, through the allow-listed unpickler of
    :mod:`dsxai.adapters.checkpoint` (full pickle only with ``trust=True``), and
    sets the model up as ``load_checkpoint`` does (float32, eval mode,
    ``args``/``task``/``stride``).
    """
    expected = "an Ultralytics YOLO checkpoint (.pt saved by ultralytics, e.g. best.pt from training) or a model .yaml"
    if path.suffix.lower() in (".yaml", ".yml"):
        return _load_yaml(path, expected)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected {expected})")
    if path.suffix.lower() != ".pt":
        raise ValueError(f"{path} has suffix {path.suffix!r}; expected {expected}")
    try:
        ckpt = load_checkpoint(path, "ultralytics", trust=trust)
    except UnsafeCheckpointError:
        raise
    except ValueError as exc:
        raise ValueError(f"{exc}; expected {expected}") from None
    if isinstance(ckpt, nn.Module) and not isinstance(ckpt, torch.jit.ScriptModule):
        ckpt = {"model": getattr(ckpt, "model", ckpt)}
    candidate = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(candidate, nn.Module) or isinstance(candidate, torch.jit.ScriptModule):
        found = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} holds no Ultralytics model (found {found}); expected {expected}")
    return _setup_loaded(candidate, ckpt, path)


def _load_yaml(path: Path, expected: str) -> nn.Module:
    """A model with random weights from an Ultralytics model ``.yaml`` (a bare name: Ultralytics' own)."""
    from ultralytics import YOLO

    if path.is_file():
        import yaml

        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise ValueError(f"{path} is not valid YAML{at}; expected {expected}") from None
        if not (isinstance(config, dict) and isinstance(config.get("backbone"), list)
                and isinstance(config.get("head"), list)):
            raise ValueError(f"{path} is not an Ultralytics model config (a YAML mapping with 'backbone' and "
                             f"'head' layer lists, like yolov8n.yaml); expected {expected}")
    elif path.name != str(path):
        raise FileNotFoundError(f"model file not found: {path} (expected {expected})")
    try:
        return YOLO(str(path)).model
    except FileNotFoundError:
        raise FileNotFoundError(f"model file not found: {path} (expected {expected})") from None
    except Exception as exc:  # noqa: BLE001 - Ultralytics' parse errors are deep tracebacks
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"cannot build a model from {path} ({type(exc).__name__}: {first}); "
                         f"expected {expected}") from None


def _setup_loaded(model: nn.Module, ckpt: dict, path: Path) -> nn.Module:
    """What ``ultralytics.nn.tasks.load_checkpoint`` does to a freshly unpickled model."""
    from ultralytics.nn.tasks import guess_model_task
    from ultralytics.utils import DEFAULT_CFG_DICT

    model = model.float()
    model.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}
    model.pt_path = str(path)
    model.task = getattr(model, "task", None) or guess_model_task(model)
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    model.eval()
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = True
        elif isinstance(module, nn.Upsample) and not hasattr(module, "recompute_scale_factor"):
            module.recompute_scale_factor = None
    return model

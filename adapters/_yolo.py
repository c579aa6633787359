"""What the Ultralytics YOLO and classic YOLOv5 adapters share.

Both letterbox the images (grey 114, as Ultralytics), run the network in eval mode
and read its head output as one candidate per anchor (:class:`DenseOutput`). A
detection's target is its class score at the anchor the candidate pipeline kept
(:class:`YOLOBoxTarget`), a class's target its best or summed score
(:class:`YOLOClassTarget`); :class:`YOLOAdapterBase` holds the preprocessing, the
target construction and the anchor layout so the two families differ only in how
they load, check and read their heads.
"""
from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsxai.adapter import Adapter, Batch, DetectionTarget
from dsxai.boxes import box_masks
from dsxai.detections import Detections
from dsxai.imaging import Geometry, ImageLike, letterbox, load_images
from dsxai.targets import Target

from ._candidates import best_class_candidates
from ._preprocessing import class_name_map, round_up
from ._yolo_levels import detection_layers

__all__ = ["DenseOutput", "network_size", "letterbox_batch", "mirror_anchors", "mask_logits", "YOLOBoxTarget",
           "YOLOClassTarget", "YOLOAdapterBase", "yolo_class_names", "head_inputs", "PICK_ATOL"]

log = logging.getLogger("dsxai")

#: how far ``DenseOutput.pick`` may differ from the full output's scores (probabilities in [0, 1]; the two
#: differ only by convolution algorithms for one image or a batch, ~1e-8 measured)
PICK_ATOL = 1e-5


@dataclass
class DenseOutput:
    """One candidate per anchor, read from a YOLO model's raw output.

    ``boxes`` ``[B, A, 4]`` xyxy in network pixels; ``scores`` ``[B, A, nc]``
    per-class confidences (differentiable); ``coef`` ``[B, A, nm]`` mask
    coefficients and ``proto`` ``[B, nm, h, w]`` prototypes for instance segmenters.
    ``rf``, when given, computes exact per-target gradients from receptive-field crops
    (:meth:`YOLOBoxTarget.local_gradients`). ``pick(rows, anchors, labels)``, when the adapter can give it, returns
    ``scores[rows][:, anchors, labels]`` (``[K, T]``, same values) through a graph
    that holds only each anchor's own level of the class branch: the batched
    backward then skips the box branch, the other levels and the full score tensor.
    Targets use it only where its values match ``scores`` (within :data:`PICK_ATOL`).
    """

    boxes: Tensor
    scores: Tensor
    coef: Tensor | None = None
    proto: Tensor | None = None
    pick: Callable[[slice, Tensor, Tensor], Tensor] | None = None
    #: the head inputs and class branches for receptive-field crop gradients (``ClassBranchCrops``), or None
    rf: Any = None


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
        #: the head's input layer of each level (set by the adapter; ``fuse="level"`` reads it)
        self.level_layers: list[str] = []
        self.labels: list[Tensor] = []
        self.network_boxes: list[Tensor] = []

    def __call__(self, output: Any) -> list[Tensor]:
        self.rf_parts: list[tuple[Any, slice, Tensor, Tensor]] = []
        return super().__call__(output)

    def local_gradients(self, flat_scores: Tensor, leaves: list[Tensor], rows: Tensor,
                        needed: Tensor | None = None) -> list[Tensor] | None:
        """Gradients ``[len(rows), *leaf.shape]`` of the flat scores ``rows`` w.r.t. ``leaves`` from
        receptive-field crops (the engine's seam, see ``dsxai.gradient``); None where the last call's scores did
        not all come through the class branch of one forward or a leaf is not a head input. ``needed``
        (``[len(rows), L]`` bool, ``fuse="level"``): leaves no row needs come back as zeros, uncomputed.

        Why: the same gradients as a batched backward without vmap's one convolution backward per target.
        """
        parts = getattr(self, "rf_parts", None)
        if not parts or len(parts) != len(self.anchors) or parts[0][0] is None:
            return None
        if any(rf is None or rf.feats[0] is not parts[0][0].feats[0] or rows_b != slice(b, b + 1)
               for b, (rf, rows_b, _, _) in enumerate(parts)):
            return None
        device = flat_scores.device
        anchors = torch.cat([a for _, _, a, _ in parts]).to(device)[rows]
        labels = torch.cat([c for _, _, _, c in parts]).to(device)[rows]
        images = torch.cat([torch.full((len(a),), b, device=device) for b, (_, _, a, _) in enumerate(parts)])
        return parts[0][0].gradients(leaves, images[rows], anchors, labels, flat_scores.detach()[rows], needed)

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
            anchors, labels = best_class_candidates(dense.scores[b], dense.boxes[b], conf=self.conf,
                                                    iou=self.iou if self.nms else None, classes=self.classes,
                                                    max_dets=self.max_dets)
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
        full = dense.scores[rows][:, anchors, labels]
        if dense.pick is None or not torch.is_grad_enabled():
            return full
        picked = dense.pick(rows, anchors, labels)
        # the same values prove the output came from the adapter's own head; another model's output (a
        # randomised copy in a sanity check) is scored through its full output instead
        same = torch.allclose(picked.detach(), full.detach(), rtol=0, atol=PICK_ATOL)
        if hasattr(self, "rf_parts"):
            self.rf_parts.append((dense.rf if same else None, rows, anchors, labels))
        return picked if same else full

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
            masks[part] = (geometry.maps_to_original(up) > 0) & box_masks(boxes[part], (h, w), masks.device)
        return masks

    def source_layers(self) -> list[list[str]]:
        """Per image, the head-input layer each detection was predicted from (``fuse="level"``)."""
        return detection_layers(self)

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


def _copy_target(target: Target) -> Target:
    """A shallow twin of ``target`` (same class, same attributes) to re-point without touching the original."""
    twin = object.__new__(type(target))
    twin.__dict__.update(target.__dict__)
    return twin


def mask_logits(coef: Tensor, proto: Tensor) -> Tensor:
    """``[N, nm]`` coefficients times ``[nm, h, w]`` prototypes -> ``[N, h, w]`` mask logits."""
    nm, h, w = proto.shape
    return (coef @ proto.reshape(nm, -1)).reshape(-1, h, w)


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


def yolo_class_names(net: nn.Module, nc: int) -> dict[int, str]:
    """The model's ``names`` (a list or a dict) as ``{id: name}``; the ids as names when it has none."""
    names = getattr(net, "names", None)
    if not isinstance(names, (list, tuple, dict)) or not names:
        names = [str(i) for i in range(nc)]
    return class_name_map(names)


def head_inputs(head: nn.Module) -> list[str]:
    """Names of the layers a YOLO head reads (``head.f``: P3, P4, P5), the default layers to explain."""
    inputs = head.f if isinstance(head.f, (list, tuple)) else [head.f]
    return [f"model.{int(i)}" for i in inputs]


class YOLOAdapterBase(Adapter):
    """A YOLO-family adapter: letterboxed batches, a dense per-anchor output, targets at kept anchors.

    Subclasses set :attr:`model`, :attr:`head` (the last layer, with ``stride`` and ``f``),
    :attr:`stride`, :attr:`imgsz`, :attr:`rect` and :attr:`network_size`, and implement
    :meth:`dense` and :meth:`_reset_inference_caches`.
    """

    head: nn.Module
    stride: int = 32
    imgsz: int | Sequence[int] = 640
    rect: bool = True
    network_size: tuple[int, int]
    #: anchors per grid cell of each head level (anchor-free heads: 1)
    anchors_per_cell: int = 1

    def _set_network(self, net: nn.Module, head: nn.Module, stride: int, imgsz: int | Sequence[int],
                     rect: bool) -> None:
        """Attach the model and its head; names, input size and default layers follow from them."""
        self.model, self.head = net, head
        self.class_names = yolo_class_names(net, int(head.nc))
        self.stride = stride
        self.imgsz, self.rect = imgsz, rect
        self.network_size = network_size(imgsz, stride)
        self.default_layers = head_inputs(head)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's parameters (float32 for a model without any)."""
        for p in self.model.parameters():
            return p.dtype
        return torch.float32

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> Batch:
        self._reset_inference_caches()
        return letterbox_batch(images, self.imgsz, self.stride, self.rect, self.device, self.dtype)

    @abstractmethod
    def dense(self, output: Any) -> DenseOutput:
        """The per-anchor view of the model's eval-mode output (any number of rows)."""

    @abstractmethod
    def _reset_inference_caches(self) -> None:
        """Drop head caches built under ``torch.inference_mode`` (they cannot enter autograd)."""

    def levels(self, size: Sequence[int]) -> list[tuple[int, int, int]]:
        """``(anchors per cell, h, w)`` of each head level for a network input of ``size`` (h, w)."""
        h, w = int(size[0]), int(size[1])
        strides = [int(s) for s in torch.as_tensor(self.head.stride).tolist()]
        return [(self.anchors_per_cell, -(-h // s), -(-w // s)) for s in strides]

    def use_nms(self, nms: bool | None) -> bool:
        """Whether targets run class-aware NMS; ``None``: the head's default (yes, for these heads)."""
        return True if nms is None else bool(nms)

    def dense_target(self, batch: Batch, conf: float, iou: float, classes: Sequence[int] | None, max_dets: int,
                     nms: bool | None = None, kind: type[YOLOBoxTarget] = YOLOBoxTarget,
                     **options: Any) -> YOLOBoxTarget:
        """A ``kind`` target (:class:`YOLOBoxTarget` or a subclass) over ``batch``, fresh head caches first."""
        self._reset_inference_caches()
        target = kind(self.dense, batch.geometries, self.class_names, conf, iou, classes, max_dets,
                      self.use_nms(nms), self.levels(batch.tensor.shape[-2:]), **options)
        target.level_layers = head_inputs(self.head)
        return target

    def yolo_class_target(self, batch: Batch, classes: Sequence[int] | None, reduce: str, conf: float,
                          iou: float, max_dets: int, nms: bool | None = None) -> YOLOClassTarget:
        """A :class:`YOLOClassTarget` over the detections a box target with these settings keeps."""
        return YOLOClassTarget(self.dense_target(batch, conf, iou, None, max_dets, nms), classes, reduce)

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

from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dsxai.adapter import Batch
from dsxai.boxes import box_masks, cxcywh_to_xyxy
from dsxai.detections import Detections

from ._yolo import (
    DenseOutput, YOLOAdapterBase, YOLOBoxTarget, YOLOClassTarget, letterbox_batch, mask_logits, mirror_anchors,
    network_size,
)
from ._yolo_rf import ClassBranchCrops, anchor_levels, branch_radius
from .loading import load_ultralytics

__all__ = ["offline_yolo", "UltralyticsAdapter", "YOLOBoxTarget", "YOLOMaskTarget", "YOLOClassTarget", "DenseOutput",
           "mirror_anchors", "letterbox_batch", "network_size"]

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


def offline_yolo(cfg: str, task: str) -> Any:
    """An Ultralytics ``YOLO`` built from a model YAML, set up to train without the network (no settings
    sync, no font download): the one place outside ``predict`` where dsxai drives Ultralytics itself."""
    _import_ultralytics()
    import ultralytics.data.utils as data_utils
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False})
    data_utils.check_font = lambda *args, **kwargs: None  # plots are off; never fetch Arial.ttf
    return YOLO(str(cfg), task=task)


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
        inside = box_masks(boxes * boxes.new_tensor([w / net_w, h / net_h, w / net_w, h / net_h]), (h, w),
                           logits.device)
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


class UltralyticsAdapter(YOLOAdapterBase):
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
        stride = max(int(torch.as_tensor(net.stride).max()), 32) if hasattr(net, "stride") else 32
        self._set_network(net, head, stride, imgsz, rect)
        self.task = "instance" if isinstance(head, head_module.Segment) else "detect"

    # ------------------------------------------------------------ targets
    def box_target(self, batch: Batch, conf: float = 0.25, iou: float = 0.7,
                   classes: Sequence[int] | None = None, max_dets: int = 300,
                   nms: bool | None = None) -> YOLOBoxTarget:
        """One target per detection: its class probability at the anchor kept by NMS.

        Defaults are Ultralytics' predict defaults (conf 0.25, NMS IoU 0.7, max_det 300),
        so the detections match ``yolo.predict``. ``nms=None`` runs class-aware NMS
        except for end-to-end (one-to-one) heads.
        """
        return self.dense_target(batch, conf, iou, classes, max_dets, nms, with_masks=self.task == "instance")

    def mask_target(self, batch: Batch, conf: float = 0.25, iou: float = 0.7,
                    classes: Sequence[int] | None = None, max_dets: int = 300, nms: bool | None = None,
                    score: str = "mask") -> YOLOMaskTarget:
        """One target per predicted instance mask (``score="mask"`` or ``"class"``, see YOLOMaskTarget)."""
        if self.task != "instance":
            raise ValueError(
                f"mask targets need an instance segmentation model (e.g. yolov8n-seg); this model is a "
                f"{type(self.head).__name__} detector: use box targets"
            )
        return self.dense_target(batch, conf, iou, classes, max_dets, nms, kind=YOLOMaskTarget, score=score)

    def class_target(self, batch: Batch, classes: Sequence[int] | None = None, reduce: str = "max",
                     conf: float = 0.25, iou: float = 0.7, max_dets: int = 300,
                     nms: bool | None = None) -> YOLOClassTarget:
        """One target per (image, class); see :class:`YOLOClassTarget`."""
        return self.yolo_class_target(batch, classes, reduce, conf, iou, max_dets, nms)

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
        boxes = boxes if xyxy else cxcywh_to_xyxy(boxes)
        scores = first[:, 4:4 + nc].transpose(1, 2)
        coef = first[:, 4 + nc:].transpose(1, 2) if self.task == "instance" else None
        if isinstance(proto, (tuple, list)):
            proto = proto[0]
        branch = self._class_branch(output)
        return DenseOutput(boxes=boxes, scores=scores, coef=coef, proto=proto,
                           pick=None if branch is None else partial(_pick_class_scores, *branch, int(nc)),
                           rf=None if branch is None else self._crops(*branch))

    def _class_branch(self, output: Any) -> tuple[list[Tensor], Sequence[nn.Module]] | None:
        """The head's inputs and its per-level class branches, for ``DenseOutput.pick`` and ``.rf``.

        Why: the head's output concatenates boxes and all levels, so a backward from it runs the box branch and
        every level with zero gradients; ``pick`` reruns each level's class convolutions on the head's inputs (the
        same values, bit for bit on one image) for just the levels that hold targets.
        """
        raw = output[-1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        kind = "one2one" if getattr(self.head, "end2end", False) else "one2many"
        if isinstance(raw, dict) and kind in raw:  # heads with both branches nest one dict per branch
            raw = raw[kind]
        feats = raw.get("feats") if isinstance(raw, dict) else None
        branch = getattr(self.head, kind, None)
        cls_head = branch.get("cls_head") if isinstance(branch, dict) else None
        if not isinstance(feats, (list, tuple)) or cls_head is None or len(feats) != len(cls_head):
            return None
        return list(feats), cls_head

    def _crops(self, feats: list[Tensor], cls_head: Sequence[nn.Module]) -> ClassBranchCrops | None:
        """Receptive-field crop gradients when every level's class branch is a recognised sequential branch."""
        from ultralytics.nn.modules import conv

        containers = tuple(getattr(conv, n) for n in ("Conv", "DWConv") if hasattr(conv, n))
        radii = [branch_radius(branch, containers) for branch in cls_head]
        return None if any(r is None for r in radii) else ClassBranchCrops(feats, cls_head, radii)

    # ------------------------------------------------------------ internals
    def use_nms(self, nms: bool | None) -> bool:
        """``None``: NMS except for end-to-end (one-to-one) heads, as Ultralytics does."""
        return (not getattr(self.head, "end2end", False)) if nms is None else bool(nms)

    def _reset_inference_caches(self) -> None:
        """Drop anchor grids cached by a forward under ``torch.inference_mode`` (they cannot enter autograd)."""
        for name in ("anchors", "strides"):
            value = getattr(self.head, name, None)
            if isinstance(value, Tensor) and value.is_inference():
                self.head.shape = None  # the next forward rebuilds anchors and strides
                return


def _pick_class_scores(feats: list[Tensor], cls_head: Sequence[nn.Module], nc: int, rows: slice, anchors: Tensor,
                       labels: Tensor) -> Tensor:
    """``sigmoid(cls_head[level](feats[level]))`` at each ``(anchor, label)``, ``[K, T]`` for the rows ``rows``;
    anchors are flattened level by level, row-major, one per cell (as the head flattens them)."""
    level, cell = anchor_levels(feats, anchors)
    parts, order = [], []
    for i in level.unique().tolist():
        mine = (level == i).nonzero().flatten()
        logits = cls_head[i](feats[i][rows]).flatten(2)  # K, nc, h * w
        if logits.shape[1] != nc:
            raise ValueError(f"the head's class branch gives {logits.shape[1]} classes, expected {nc}")
        parts.append(logits[:, labels[mine], cell[mine]].sigmoid())
        order.append(mine)
    if not parts:
        return feats[0].new_zeros(feats[0][rows].shape[0], 0)
    return torch.cat(parts, 1)[:, torch.argsort(torch.cat(order))]


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
    """The Ultralytics module of a YOLO object, a checkpoint or model .yaml path, or a module."""
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
        net = load_ultralytics(Path(model), trust)
        return net.to(device) if device is not None else net
    if isinstance(model, nn.Module):
        return model
    raise TypeError(
        f"UltralyticsAdapter takes an ultralytics.YOLO object, a .pt path or a DetectionModel/SegmentationModel "
        f"module; got {type(model).__name__}"
    )

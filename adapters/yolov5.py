"""Classic anchor-based YOLOv5 (github.com/ultralytics/yolov5 checkpoints, v5.0 to v7.0).

An original YOLOv5 ``.pt`` file is a pickle of the YOLOv5 repository's model
classes under the module names ``models.yolo``, ``models.common`` and
``models.experimental``; the ``ultralytics`` 8.x package cannot load it. The
safe unpickler of :mod:`dsxai.adapters.checkpoint` maps those names onto
dsxai's own re-implementation (:mod:`dsxai.adapters.yolov5_modules`), so no
``yolov5`` package is needed and nothing from the file is run.

The eval-mode output of the YOLOv5 ``Detect`` head is ``(pred, raw)``: ``pred``
``[B, N, 5 + nc]`` holds ``xywh`` boxes in network pixels, the objectness and the
class probabilities (both already sigmoided), one row per (level, anchor, cell);
``raw`` is the list of per-level maps. As in YOLOv5's own NMS the confidence of
class ``c`` at row ``n`` is ``obj[n] * cls[n, c]``; that product at the row kept
by NMS is each detection's differentiable score.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dsxai.adapter import Batch
from dsxai.boxes import cxcywh_to_xyxy

from ._yolo import DenseOutput, YOLOAdapterBase, YOLOBoxTarget, YOLOClassTarget
from .loading import load_yolov5

__all__ = ["YOLOv5Adapter", "load_yolov5"]


def _unwrap(model: nn.Module) -> nn.Module:
    """``AutoShape`` / ``DetectMultiBackend`` wrappers -> the inner ``DetectionModel``."""
    seen = 0
    while not isinstance(getattr(model, "model", None), nn.Sequential) and isinstance(
            getattr(model, "model", None), nn.Module) and seen < 4:
        model, seen = model.model, seen + 1
    return model


class YOLOv5Adapter(YOLOAdapterBase):
    """Explain classic anchor-based YOLOv5 detectors.

    Args:
        model: the path of an original YOLOv5 ``.pt`` checkpoint, or a YOLOv5
            ``DetectionModel`` (``AutoShape`` / ``DetectMultiBackend`` wrappers are
            unwrapped). A given module is used as it is and given back unchanged.
        imgsz: network input size, an int or (h, w), rounded up to a multiple of
            the stride (32). Default 640 as YOLOv5's detect.py.
        rect: letterbox to ``imgsz`` and pad only up to a multiple of the stride
            (default, as YOLOv5's detect.py); ``False`` pads to ``imgsz`` exactly.
        device: where to put a model loaded from a path.
        trust: load the checkpoint with full pickle (it may run code); default: the allow-list.

    Default layers: the three inputs of the ``Detect`` layer (P3, P4, P5; e.g.
    ``model.17``, ``model.20``, ``model.23``): small objects are predicted from P3
    and large ones from P5, so one level alone hides part of them; the engine
    normalises each level's map and fuses them with the mean.
    """

    def __init__(self, model: Any, imgsz: int | Sequence[int] = 640, rect: bool = True,
                 device: str | torch.device | None = None, trust: bool = False):
        if isinstance(model, (str, Path)):
            net = load_yolov5(model, device, trust=trust)
        elif isinstance(model, nn.Module):
            net = _unwrap(model)
        else:
            raise TypeError(f"YOLOv5Adapter takes a checkpoint path or a YOLOv5 DetectionModel; got "
                            f"{type(model).__name__}")
        layers = getattr(net, "model", None)
        head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
        if head is None or not all(hasattr(head, a) for a in ("na", "anchors", "no", "nc", "f", "stride")):
            kind = type(head).__name__ if head is not None else type(net).__name__
            hint = (" It looks like an Ultralytics YOLOv8/11 model: use UltralyticsAdapter."
                    if type(net).__module__.startswith("ultralytics") else "")
            raise ValueError(f"{type(net).__name__} ending in {kind} is not a YOLOv5 anchor-based detector "
                             f"(expected a Detect head with anchors).{hint}")
        if type(head).__name__ != "Detect":
            raise ValueError(f"YOLOv5Adapter supports the Detect head; this model ends in {type(head).__name__} "
                             "(YOLOv5 segmentation and classification models are not supported)")
        self._set_network(net, head, max(int(torch.as_tensor(head.stride).max()), 32), imgsz, rect)
        self.task = "detect"

    @property
    def anchors_per_cell(self) -> int:
        """Anchor boxes per grid cell of each Detect level (3 in the released models)."""
        return int(self.head.na)

    def box_target(self, batch: Batch, conf: float = 0.25, iou: float = 0.45,
                   classes: Sequence[int] | None = None, max_dets: int = 1000) -> YOLOBoxTarget:
        """One target per detection: ``obj * cls`` at the row kept by NMS (YOLOv5's detect.py defaults)."""
        return self.dense_target(batch, conf, iou, classes, max_dets)

    def class_target(self, batch: Batch, classes: Sequence[int] | None = None, reduce: str = "max",
                     conf: float = 0.25, iou: float = 0.45, max_dets: int = 1000) -> YOLOClassTarget:
        """One target per (image, class); see :class:`~dsxai.adapters.ultralytics_yolo.YOLOClassTarget`."""
        return self.yolo_class_target(batch, classes, reduce, conf, iou, max_dets)

    def dense(self, output: Any) -> DenseOutput:
        """The per-row view of the eval-mode output ``(pred [B, N, 5 + nc], raw)``."""
        pred = output[0] if isinstance(output, (tuple, list)) else output
        nc = self.head.nc
        if not isinstance(pred, Tensor) or pred.ndim != 3 or pred.shape[-1] != 5 + nc:
            shape = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
            raise ValueError(f"unexpected YOLOv5 output {shape}; expected [B, N, {5 + nc}] from the model in eval mode")
        return DenseOutput(boxes=cxcywh_to_xyxy(pred[..., :4]), scores=pred[..., 5:] * pred[..., 4:5])

    def _reset_inference_caches(self) -> None:
        """Drop grids cached by a forward under ``torch.inference_mode`` (they cannot enter autograd)."""
        for name in ("grid", "anchor_grid"):
            cache = getattr(self.head, name, None)
            if isinstance(cache, list):
                for i, value in enumerate(cache):
                    if isinstance(value, Tensor) and value.is_inference():
                        cache[i] = torch.empty(0)

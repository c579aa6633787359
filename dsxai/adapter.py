"""The contract every model adapter fulfils (the adapters themselves live in dsxai.adapters).

An adapter knows one model family: how to turn images into the network tensor,
how to decode the raw output into :class:`~dsxai.Detections`, and which
differentiable scalar stands for each detection or mask. Its targets decode on
the engine's single forward pass, so detections and their maps come from ONE
forward and ONE batched backward.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .detections import Detections
from .imaging import Geometry, ImageLike
from .layers import preserved_state
from .targets import Target

__all__ = ["Batch", "Adapter", "DetectionTarget"]

_KINDS = {"boxes": "box_target", "masks": "mask_target", "classes": "class_target"}


@dataclass
class Batch:
    """Preprocessed images: the network tensor and the way back to each original."""

    tensor: Tensor                 # [B, 3, h, w] on the model's device
    images: list[np.ndarray]       # originals, H x W x 3 uint8 RGB
    geometries: list[Geometry]     # network <-> original pixels, per image

    def __len__(self) -> int:
        return len(self.images)


class DetectionTarget(Target):
    """Per-detection scores decoded from the raw output.

    The first call decodes the output (NMS and all) into :attr:`detections` and
    remembers what each detection is (an anchor index, a proposal, a box); every
    later call (other augmentation views, perturbed copies) scores those same
    detections. Subclasses implement :meth:`decode` and :meth:`rescore`.
    """

    def __init__(self) -> None:
        self.detections: list[Detections] | None = None

    @abstractmethod
    def decode(self, output: Any) -> tuple[list[Detections], list[Tensor]]:
        """Detections per image (original pixels) and their differentiable scores ``[T_i]``."""

    @abstractmethod
    def rescore(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        """Scores ``[K, T_b]`` of image ``image_index``'s decoded detections on rows of ``output``."""

    def __call__(self, output: Any) -> list[Tensor]:
        if self.detections is None:
            self.detections, scores = self.decode(output)
            return scores
        return [self.rescore(output, b, slice(b, b + 1))[0] for b in range(len(self.detections))]

    def on_copies(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        if self.detections is None:
            raise RuntimeError("the detection target scores copies only after decoding the original output")
        return self.rescore(output, image_index, rows)

    def num_targets(self, image_index: int) -> int | None:
        return None if self.detections is None else len(self.detections[image_index])


class Adapter(ABC):
    """Base class of model adapters.

    Attributes:
        model: the module the CAM engine runs and hooks; its forward takes
            ``Batch.tensor`` and returns the raw output the targets read.
        class_names: class id -> name.
        default_layers: layer names explained when none are given.
        task: "detect", "segment" (semantic) or "instance" (boxes + masks).
        max_batch: the most images one forward takes (None: any); workflows split larger batches
            (fixed-batch exports fail inside the network otherwise).
    """

    model: nn.Module
    class_names: dict[int, str]
    default_layers: list[str]
    task: str = "detect"
    max_batch: int | None = None

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    @abstractmethod
    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> Batch:
        """Images (paths, arrays, PIL images or tensors) -> :class:`Batch`."""

    def box_target(self, batch: Batch, conf: float = 0.25, iou: float = 0.45,
                   classes: Sequence[int] | None = None, max_dets: int = 100) -> DetectionTarget:
        """One target per detection that survives ``conf`` / NMS ``iou`` / ``classes`` / ``max_dets``."""
        raise NotImplementedError(f"{type(self).__name__} has no per-box targets")

    def mask_target(self, batch: Batch, **options: Any) -> Target:
        """One target per predicted mask (segmenters)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-mask targets")

    def class_target(self, batch: Batch, **options: Any) -> Target:
        """One target per class (the class as a whole)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-class targets")

    def target(self, batch: Batch, kind: str | None = None, **options: Any) -> Target:
        """The target of ``kind``: "boxes" (one per detection), "masks" (one per predicted mask), "classes"
        (one per class), or None for the family's default (:attr:`default_targets`)."""
        kind = kind or self.default_targets
        if kind not in _KINDS:
            raise ValueError(f"unknown targets {kind!r}; use 'boxes', 'masks' or 'classes'")
        if not self.supports(kind):
            raise ValueError(f"{type(self).__name__} makes no {kind!r} targets; it makes "
                             f"{', '.join(k for k in _KINDS if self.supports(k)) or 'none'}")
        return getattr(self, _KINDS[kind])(batch, **options)

    def supports(self, kind: str) -> bool:
        """Whether this adapter makes ``kind`` targets ("boxes", "masks" or "classes")."""
        method = _KINDS.get(kind)
        return method is not None and getattr(type(self), method) is not getattr(Adapter, method)

    def predict(self, images: ImageLike | Sequence[ImageLike], **options: Any) -> list[Detections]:
        """Detections only, without explanations (one no-grad forward)."""
        batch = self.preprocess(images)
        if self.max_batch is not None and len(batch) > self.max_batch:  # a fixed-batch model: a few at a time
            step = self.max_batch
            return [d for i in range(0, len(batch), step) for d in self.predict(batch.images[i:i + step], **options)]
        target = self.target(batch, None, **options)
        with preserved_state(self.model), torch.no_grad():
            target(self.model(batch.tensor))
        return target.detections

    @property
    def default_targets(self) -> str:
        """"masks" for semantic segmenters, "boxes" for detectors and instance segmenters."""
        return "masks" if self.task == "segment" else "boxes"

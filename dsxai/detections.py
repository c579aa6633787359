"""One plain dataclass for what a detector or segmenter found in one image."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["Detections"]


@dataclass
class Detections:
    """Detections of one image, in that image's original pixels.

    Attributes:
        boxes: ``[N, 4]`` float32, xyxy in original image pixels.
        scores: ``[N]`` float32 confidences.
        labels: ``[N]`` int64 class ids of the model.
        image_size: ``(height, width)`` of the original image.
        class_names: class id -> name for the model's classes.
        masks: optional ``[N, H, W]`` bool instance masks at the original size.
        meta: free-form extras (e.g. the anchor index each box came from).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    image_size: tuple[int, int]
    class_names: dict[int, str] = field(default_factory=dict)
    masks: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = torch.as_tensor(self.boxes, dtype=torch.float32).reshape(-1, 4)
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).reshape(-1)
        self.labels = torch.as_tensor(self.labels, dtype=torch.long).reshape(-1)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if isinstance(self.class_names, (list, tuple)):
            self.class_names = dict(enumerate(self.class_names))
        n = len(self.boxes)
        if len(self.scores) != n or len(self.labels) != n:
            raise ValueError(
                f"boxes, scores and labels must have the same length; got {n}, {len(self.scores)}, {len(self.labels)}"
            )
        if self.masks is not None:
            self.masks = torch.as_tensor(self.masks).bool()
            if self.masks.ndim != 3 or self.masks.shape[0] != n or tuple(self.masks.shape[1:]) != self.image_size:
                raise ValueError(
                    f"masks must be [N, H, W] = [{n}, {self.image_size[0]}, {self.image_size[1]}]; "
                    f"got {tuple(self.masks.shape)}"
                )

    @classmethod
    def empty(cls, image_size: tuple[int, int], class_names: dict[int, str] | None = None,
              with_masks: bool = False) -> "Detections":
        h, w = image_size
        return cls(
            boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.long),
            image_size=(h, w), class_names=dict(class_names or {}),
            masks=torch.zeros(0, h, w, dtype=torch.bool) if with_masks else None,
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> "Detections":
        if isinstance(index, int):
            index = [index]
        index = torch.as_tensor(np.arange(len(self))[index] if isinstance(index, slice) else index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.long().cpu()
        return replace(
            self,
            boxes=self.boxes[index], scores=self.scores[index], labels=self.labels[index],
            masks=None if self.masks is None else self.masks[index],
            meta={k: (v[index] if isinstance(v, Tensor) and v.shape[:1] == (len(self),) else v)
                  for k, v in self.meta.items()},
        )

    @property
    def names(self) -> list[str]:
        """Class name of each detection (the id as text when unnamed)."""
        return [self.class_names.get(int(c), str(int(c))) for c in self.labels]

    def to(self, device: torch.device | str) -> "Detections":
        return replace(
            self, boxes=self.boxes.to(device), scores=self.scores.to(device), labels=self.labels.to(device),
            masks=None if self.masks is None else self.masks.to(device),
        )

    def cpu(self) -> "Detections":
        return self.to("cpu")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (masks are not included; save them as images)."""
        return {
            "image_size": list(self.image_size),
            "boxes": self.boxes.cpu().tolist(),
            "scores": self.scores.cpu().tolist(),
            "labels": self.labels.cpu().tolist(),
            "names": self.names,
            "class_names": {str(k): v for k, v in self.class_names.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], masks: Tensor | None = None) -> "Detections":
        return cls(
            boxes=torch.tensor(data["boxes"], dtype=torch.float32).reshape(-1, 4),
            scores=torch.tensor(data["scores"], dtype=torch.float32),
            labels=torch.tensor(data["labels"], dtype=torch.long),
            image_size=tuple(data["image_size"]),
            class_names={int(k): v for k, v in data.get("class_names", {}).items()},
            masks=masks,
        )

    def to_supervision(self):
        """Convert to ``supervision.Detections`` (needs the supervision package)."""
        try:
            import supervision as sv
        except ImportError as exc:  # pragma: no cover - exercised only without supervision
            raise ImportError("to_supervision() needs the supervision package: pip install supervision") from exc
        return sv.Detections(
            xyxy=self.boxes.cpu().numpy().astype(np.float32),
            confidence=self.scores.cpu().numpy().astype(np.float32),
            class_id=self.labels.cpu().numpy().astype(int),
            mask=None if self.masks is None else self.masks.cpu().numpy(),
            data={"class_name": np.array(self.names)},
        )

    @classmethod
    def from_supervision(cls, detections, image_size: tuple[int, int],
                         class_names: dict[int, str] | None = None) -> "Detections":
        n = len(detections)
        confidence = detections.confidence if detections.confidence is not None else np.ones(n)
        class_id = detections.class_id if detections.class_id is not None else np.zeros(n, dtype=int)
        return cls(
            boxes=torch.as_tensor(np.asarray(detections.xyxy, dtype=np.float32)),
            scores=torch.as_tensor(np.asarray(confidence, dtype=np.float32)),
            labels=torch.as_tensor(np.asarray(class_id, dtype=np.int64)),
            image_size=image_size,
            class_names=dict(class_names or {}),
            masks=None if detections.mask is None else torch.as_tensor(detections.mask),
        )

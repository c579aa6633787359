"""Detection targets matched on copies: D-RISE similarity between a detection and a copy's candidates.

On perturbed copies (ScoreCAM, AblationCAM) or mirrored views the candidates of a
detector move and NMS survivors change, so a detection is scored there by its best
matching candidate (IoU x probability of its class) rather than by an index.
Shared by the generic and torchvision detector adapters.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor

from dsxai.adapter import Batch, DetectionTarget
from dsxai.boxes import box_iou, paired_iou
from dsxai.detections import Detections
from dsxai.targets import Target

__all__ = ["best_match", "BoxMatchingTarget"]


def best_match(boxes: Tensor, candidate_boxes: Tensor, candidate_scores: Tensor,
               region: Tensor | None = None) -> Tensor:
    """D-RISE similarity: for each of T boxes ``[T, 4]``, ``max_n IoU(box_t, cand_n) * score[n, t]``.

    ``candidate_boxes`` is ``[N, 4]`` (one box per candidate) or ``[N, T, 4]`` (a
    box per candidate and target, e.g. class-specific R-CNN boxes);
    ``candidate_scores`` ``[N, T]`` is each candidate's probability of target
    t's class; candidates are first clipped to ``region`` (xyxy: the image
    content inside the network tensor, where the detections were clipped). The
    IoU is a weight without gradient: the gradient is that of the matched
    candidate's class probability. No candidate gives 0.
    """
    boxes = boxes.to(candidate_scores.device, candidate_scores.dtype)
    if candidate_scores.shape[0] == 0:
        return candidate_scores.new_zeros(boxes.shape[0]) + 0 * candidate_scores.sum()
    with torch.no_grad():
        candidate_boxes = candidate_boxes.detach().to(boxes.dtype)
        if region is not None:
            region = region.to(boxes)
            candidate_boxes = torch.maximum(torch.minimum(candidate_boxes, region[[2, 3, 2, 3]]), region[[0, 1, 0, 1]])
        if candidate_boxes.ndim == 2:
            iou = box_iou(candidate_boxes, boxes)  # [N, T]
        else:
            iou = paired_iou(candidate_boxes, boxes[None])
    return (iou.to(candidate_scores.dtype) * candidate_scores).amax(0)


class BoxMatchingTarget(DetectionTarget):
    """A detection target whose scores on other outputs come from matching boxes.

    The first call decodes (subclasses: :meth:`decode`, which stores each
    detection's box in network pixels in ``meta["network_boxes"]``). On perturbed
    copies (ScoreCAM, AblationCAM) the candidates move and NMS survivors change,
    so :meth:`rescore` does not rely on which candidate survived: it asks
    :meth:`match` for the best candidate of the copy, by the D-RISE similarity
    IoU x probability of the same class (:func:`best_match`). On the unperturbed
    output this is the detection's own score (or slightly more when a
    non-suppressed overlapping candidate scores higher). Mirrored views
    (``hflip``) match the mirrored boxes the same way.
    """

    batch: Batch

    @abstractmethod
    def match(self, output: Any, image_index: int, rows: slice | None, boxes: Tensor, labels: Tensor,
              region: Tensor) -> Tensor:
        """Scores ``[K, T]`` of boxes ``[T, 4]`` (network pixels) of classes ``labels`` on rows of
        ``output``; ``region`` (xyxy) is the image content in the network tensor, for clipping."""

    def region(self, image_index: int, mirror_width: int | None = None) -> Tensor:
        """The image content inside the network tensor, xyxy (mirrored for a flipped view)."""
        geometry = self.batch.geometries[image_index]
        top, left = geometry.offset
        ch, cw = geometry.content_size
        if mirror_width is not None:
            left = mirror_width - left - cw
        return torch.tensor([left, top, left + cw, top + ch], dtype=torch.float32)

    def rescore(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        d = self.detections[image_index]
        return self.match(output, image_index, rows, d.meta["network_boxes"], d.labels, self.region(image_index))

    def hflip(self, width: int) -> Target:
        return _Mirrored(self, width)


class _Mirrored(Target):
    """A decoded box target read on the horizontally mirrored input."""

    def __init__(self, parent: BoxMatchingTarget, width: int):
        self.parent, self.width = parent, width

    @property
    def detections(self) -> list[Detections] | None:
        return self.parent.detections

    def _boxes(self, image_index: int) -> Tensor:
        boxes = self.parent.detections[image_index].meta["network_boxes"]
        return torch.stack([self.width - boxes[:, 2], boxes[:, 1], self.width - boxes[:, 0], boxes[:, 3]], 1)

    def __call__(self, output: Any) -> list[Tensor]:
        return [self.on_copies(output, b, slice(b, b + 1))[0] for b in range(len(self.parent.detections))]

    def on_copies(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        labels = self.parent.detections[image_index].labels
        return self.parent.match(output, image_index, rows, self._boxes(image_index), labels,
                                 self.parent.region(image_index, self.width))

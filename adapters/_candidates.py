"""Candidate selection: the one conf / classes / NMS / max_dets pipeline of the built-in detectors.

Every detector adapter (generic decode function, torchvision, Ultralytics YOLO,
classic YOLOv5) turns its candidates into detections through
:func:`select_candidates`, which returns candidate indices (the stable ids the
targets score again on later calls), so that the filters, the NMS and their
order are the same for all of them.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

__all__ = ["select_candidates", "best_class_candidates", "candidate_rows"]


def select_candidates(boxes: Tensor, scores: Tensor, labels: Tensor, *, conf: float, iou: float | None,
                      classes: Sequence[int] | None, max_dets: int, min_size: float = 0.0,
                      max_candidates: int | None = None) -> Tensor:
    """Indices of the candidates kept, best first (no gradient).

    Kept: ``scores > conf``, labels in ``classes`` (None: all), boxes (xyxy) at least
    ``min_size`` wide and high; then the ``max_candidates`` best of those (None: all), class-aware
    NMS at ``iou`` (None: no NMS, only sorted) and the first ``max_dets``.
    """
    scores = scores.detach()
    keep = scores > conf
    if classes is not None:
        keep &= torch.isin(labels, torch.as_tensor(list(classes), device=labels.device, dtype=labels.dtype))
    if min_size > 0:
        wh = boxes[:, 2:] - boxes[:, :2]
        keep &= (wh >= min_size).all(1)
    index = torch.where(keep)[0]
    if max_candidates is not None and index.numel() > max_candidates:
        index = index[scores[index].topk(max_candidates).indices]
    if index.numel() == 0 or max_dets <= 0:
        return index[:0]
    if iou is None:
        order = scores[index].argsort(descending=True)
    else:
        order = batched_nms(boxes[index].detach().float(), scores[index].float(), labels[index], iou)
    return index[order[:max_dets]]


def best_class_candidates(scores: Tensor, boxes: Tensor, *, conf: float, iou: float | None,
                          classes: Sequence[int] | None, max_dets: int,
                          max_candidates: int | None = 30000) -> tuple[Tensor, Tensor]:
    """Rows kept and their labels when each row (anchor) votes for its best class only.

    ``scores`` ``[A, nc]``, ``boxes`` ``[A, 4]`` xyxy. Ultralytics' and YOLOv5's default
    (``multi_label=False``): a row's candidate is its best class; then :func:`select_candidates`.
    """
    best, labels = scores.detach().max(1)
    rows = select_candidates(boxes.detach(), best, labels, conf=conf, iou=iou, classes=classes,
                             max_dets=max_dets, max_candidates=max_candidates)
    return rows, labels[rows]


def candidate_rows(count: int, rows: slice | None) -> list[int]:
    """The row indices ``rows`` selects out of ``count`` (None: all)."""
    return list(range(count))[rows if rows is not None else slice(None)]

"""Matching detections to objects and scoring maps against them: pure torch, no model.

Why apart: the figures of ``benchmarks/README.md`` come from these functions alone, so they can be tested
without a detector.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import metrics as M
from ..boxes import box_iou
from ..metrics import BASELINES, baseline_maps
from .config import METRICS

__all__ = ["match_detections", "score_pairs", "score_maps", "score_baselines", "bootstrap_ci"]

#: maps ``[T, H, W]`` -> their deletion / insertion results (:class:`dsxai.metrics.Faithfulness`)
FaithfulnessFn = Callable[[Tensor], Any]


def match_detections(det_boxes: Tensor, det_scores: Tensor, det_cats: Sequence[int], gt_boxes: Tensor,
                     gt_cats: Sequence[int], iou: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy matching by descending score: each detection takes the free object of its category with the
    highest IoU (``>= iou``). Returns ``(detection index, object index, IoU)`` triples."""
    pairs: list[tuple[int, int, float]] = []
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return pairs
    ious = box_iou(det_boxes.float().cpu(), torch.as_tensor(gt_boxes).float().cpu())
    same = torch.tensor(det_cats)[:, None] == torch.tensor(gt_cats)[None, :]
    ious = torch.where(same, ious, torch.full_like(ious, -1.0))
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
    for d in torch.argsort(det_scores.cpu(), descending=True, stable=True).tolist():
        row = ious[d].masked_fill(taken, -1.0)
        g = int(row.argmax())
        if float(row[g]) >= iou:
            taken[g] = True
            pairs.append((d, g, float(row[g])))
    return pairs


def score_pairs(maps: Tensor, gt_boxes: Tensor, gt_masks: Tensor | None, tolerance: float = 15.0,
                threshold: float = 0.5) -> dict[str, list[float | None]]:
    """All localization metrics of maps ``[N, H, W]`` against their objects; lists of N values per metric
    (``None`` for mask metrics without masks)."""
    device = maps.device
    boxes = torch.as_tensor(gt_boxes, dtype=torch.float32, device=device).reshape(-1, 4)
    out: dict[str, list[float | None]] = {
        "pointing_game_box": M.pointing_game(maps, boxes, tolerance).tolist(),
        "energy_box": M.energy_pointing_game(maps, boxes).tolist(),
        "iou_box": M.iou_at_threshold(maps, boxes, threshold).tolist(),
        "iou_box_mean_thr": M.mean_iou(maps, boxes).tolist(),
        "loc_acc_box": M.box_localization_accuracy(maps, boxes).tolist(),
    }
    n = len(boxes)
    if gt_masks is not None:
        masks = torch.as_tensor(gt_masks, device=device).bool()
        out.update({
            "pointing_game_mask": M.pointing_game(maps, masks, tolerance).tolist(),
            "energy_mask": M.energy_pointing_game(maps, masks).tolist(),
            "iou_mask": M.iou_at_threshold(maps, masks, threshold).tolist(),
            "iou_mask_mean_thr": M.mean_iou(maps, masks).tolist(),
        })
    else:
        for k in ("pointing_game_mask", "energy_mask", "iou_mask", "iou_mask_mean_thr"):
            out[k] = [None] * n
    return out


def score_maps(maps: Tensor, gt_boxes: Tensor, gt_masks: Tensor | None, tolerance: float, threshold: float,
               faithfulness: FaithfulnessFn | None = None) -> list[dict[str, float | None]]:
    """One dict of every :data:`METRICS` value per map; deletion / insertion from ``faithfulness(maps)``
    (``None`` values without it)."""
    scores = score_pairs(maps, gt_boxes, gt_masks, tolerance, threshold)
    n = len(maps)
    if faithfulness is not None:
        faith = faithfulness(maps)
        scores["deletion_auc"] = faith.deletion_auc.tolist()
        scores["insertion_auc"] = faith.insertion_auc.tolist()
    else:
        scores["deletion_auc"] = [None] * n
        scores["insertion_auc"] = [None] * n
    return [{k: scores[k][i] for k in METRICS} for i in range(n)]


def score_baselines(det_boxes: Tensor, size: tuple[int, int],
                    score: Callable[[Tensor], list[dict[str, float | None]]]) -> dict[str, list[dict[str, Any]]]:
    """``score`` (e.g. :func:`score_maps` bound to the matched objects) of each of
    :data:`dsxai.metrics.BASELINES`, built for the detected boxes ``[T, 4]`` on an image of ``size``."""
    return {name: score(baseline_maps(name, det_boxes, size)) for name in BASELINES}


def bootstrap_ci(values: Sequence[float], seed: int = 0, resamples: int = 1000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded)."""
    x = np.asarray(values, np.float64)
    if len(x) == 0:
        return (math.nan, math.nan)
    if len(x) == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))

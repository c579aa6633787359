"""The audit's figures of one mask, its flags and its ranking score; pure torch, no model, no files.

Why apart from the run: the figures are the audit's definition, tested on hand-made maps and masks.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..groundtruth import Truth
from ..metrics import dilate

__all__ = ["RING_PX", "RING_FRAC", "MAX_OUTSIDE", "MIN_CONFIDENCE", "MIN_IOU", "WEIGHTS", "ring_width",
           "mask_figures", "truth_figures", "flag_mask"]

RING_PX = 8.0
RING_FRAC = 0.25
MAX_OUTSIDE = 0.5
MIN_CONFIDENCE = 0.6
MIN_IOU = 0.5
#: weights of the soft term of the ranking score
WEIGHTS = {"outside": 0.4, "confidence": 0.2, "iou": 0.3, "pointing": 0.1}


def ring_width(area: float, ring_px: float, ring_frac: float, cell_px: float = 0.0) -> float:
    """The ring width in pixels around a mask of ``area`` pixels: the widest of the three."""
    return max(float(ring_px), float(ring_frac) * math.sqrt(max(area, 0.0)), float(cell_px))


def _share(maps: Tensor, region: Tensor, safe: Tensor, has: Tensor) -> Tensor:
    """Per map, the share of its mass inside ``region`` (0 for an all-zero map)."""
    return torch.where(has, (maps * region).flatten(1).sum(1) / safe, torch.zeros_like(safe))


def mask_figures(maps: Tensor, masks: Tensor, *, ring_px: float = RING_PX, ring_frac: float = RING_FRAC,
                 cell_px: float = 0.0, gt_regions: Tensor | None = None) -> list[dict[str, Any]]:
    """Per map and its mask: evidence shares inside / in the ring / outside, peak, pointing hit.

    Args:
        maps: ``[T, H, W]`` non-negative maps (any scale).
        masks: ``[T, H, W]`` bool masks, one per map.
        ring_px, ring_frac: the ring width, ``max(ring_px, ring_frac * sqrt(area), cell_px)`` pixels
            (Euclidean).
        cell_px: the size of one cell of the explained layer in image pixels (see
            :func:`dsxai.layers.layer_stride`): a map that coarse cannot place evidence more finely, so the
            ring is at least that wide.
        gt_regions: optional ``[T, H, W]`` bool ground-truth regions: adds ``evidence_in_gt``.

    Returns one dict per map with ``area``, ``ring_px``, ``evidence_inside``, ``evidence_ring``,
    ``evidence_outside``, ``has_evidence``, ``peak_x``, ``peak_y``, ``pointing_hit``, ``peak_in_ring`` (and
    ``evidence_in_gt``). An all-zero map has no evidence anywhere: shares 0, no hit, ``has_evidence`` False.
    """
    if maps.shape != masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ in shape")
    maps = torch.nan_to_num(maps.float()).clamp_min(0)
    masks = masks.to(maps.device).bool()
    if len(maps) == 0:
        return []
    w = maps.shape[-1]
    area = masks.flatten(1).sum(1).float()
    widths = [ring_width(float(a), ring_px, ring_frac, cell_px) for a in area.tolist()]
    grown = torch.stack([dilate(masks[k:k + 1], widths[k])[0] for k in range(len(masks))])
    total = maps.flatten(1).sum(1)
    safe, has = total.clamp_min(1e-12), total > 0
    inside = _share(maps, masks, safe, has)
    in_ring = _share(maps, grown & ~masks, safe, has)
    outside = torch.where(has, (1 - inside - in_ring).clamp_min(0), torch.zeros_like(total))
    peak = maps.flatten(1).argmax(1)
    py, px = peak // w, peak % w
    rows = torch.arange(len(maps), device=maps.device)
    hit, near = masks[rows, py, px] & has, grown[rows, py, px] & has
    in_gt = None if gt_regions is None else _share(maps, gt_regions.to(maps.device).bool(), safe, has)
    out = []
    for k in range(len(maps)):
        fig = {"area": int(area[k]), "ring_px": round(widths[k], 2),
               "evidence_inside": round(float(inside[k]), 4), "evidence_ring": round(float(in_ring[k]), 4),
               "evidence_outside": round(float(outside[k]), 4), "has_evidence": bool(has[k]),
               "peak_x": int(px[k]), "peak_y": int(py[k]),
               "pointing_hit": bool(hit[k]), "peak_in_ring": bool(near[k])}
        if in_gt is not None:
            fig["evidence_in_gt"] = round(float(in_gt[k]), 4)
        out.append(fig)
    return out


def _gt_class_under(mask: Tensor, gt_labels: Tensor, names: dict[int, str]) -> str:
    """The ground-truth class under most of ``mask`` and its share, e.g. ``"square (80%)"``; "" for an
    empty mask."""
    if not bool(mask.any()):
        return ""
    under = torch.bincount(gt_labels[mask].flatten() + 1, minlength=1)
    top = int(under.argmax())
    gt_class = "background" if top == 0 else names.get(top - 1, str(top - 1))
    return f"{gt_class} ({float(under[top]) / float(under.sum()):.0%})"


def truth_figures(masks: Tensor, labels: Tensor, truth: Truth,
                  names: dict[int, str]) -> tuple[list[dict[str, Any]], Tensor]:
    """Per mask: ``iou_gt`` (IoU with the ground-truth objects of its class that it overlaps, 0 when none)
    and ``gt_class`` (the ground-truth class under most of it); and the ``[T, H, W]`` regions its map's
    evidence is measured in (those objects, else every ground-truth object it overlaps)."""
    device = masks.device
    inst, gt_cls, gt_labels = (t.to(device) for t in (truth.instances, truth.classes, truth.labels))
    figures, regions = [], []
    for m, c in zip(masks, labels.tolist()):
        overlap = (inst & m).flatten(1).any(1) if len(inst) else torch.zeros(0, dtype=torch.bool, device=device)
        same = overlap & (gt_cls == c)
        region = inst[same].any(0) if bool(same.any()) else torch.zeros_like(m)
        union = (region | m).sum().item()
        iou = (region & m).sum().item() / union if union else 0.0
        evidence_region = region if bool(same.any()) else (inst[overlap].any(0) if bool(overlap.any()) else region)
        figures.append({"iou_gt": round(iou, 4), "gt_class": _gt_class_under(m, gt_labels, names)})
        regions.append(evidence_region)
    return figures, (torch.stack(regions) if regions else torch.zeros_like(masks))


def _outside_reason(row: dict[str, Any]) -> str:
    where = "inside the mask" if row["pointing_hit"] else ("in the ring" if row["peak_in_ring"] else
                                                           "outside the mask and its ring")
    return (f"evidence mostly outside the mask: {row['evidence_outside']:.0%} of the map lies beyond the "
            f"{row['ring_px']:.0f} px ring around it (only {row['evidence_inside']:.0%} inside), peak at "
            f"({row['peak_x']}, {row['peak_y']}) {where}: possible shortcut or context bias")


def _score(row: dict[str, Any], flags: list[str]) -> float:
    """The number of flags plus the weighted mean of the soft terms, in [0, 1]."""
    terms = {"outside": row["evidence_outside"], "confidence": 1 - row["confidence"],
             "pointing": 0.0 if row["pointing_hit"] else 1.0}
    if row.get("iou_gt") is not None:
        terms["iou"] = 1 - row["iou_gt"]
    soft = sum(WEIGHTS[k] * v for k, v in terms.items()) / sum(WEIGHTS[k] for k in terms)
    return round(len(flags) + min(max(soft, 0.0), 1.0), 4)


def flag_mask(row: dict[str, Any], thresholds: dict[str, float]) -> tuple[list[str], list[str], float]:
    """The flag codes, the reasons in words and the score of one mask row (figures, ``confidence``,
    ``iou_gt``, ``class``, ``gt_class``) under ``thresholds`` (``max_outside``, ``min_confidence``,
    ``min_iou``). Why a score: any flagged mask ranks above every unflagged one."""
    flags, reasons = [], []
    if not row.get("has_evidence", True):
        flags.append("no_evidence")
        reasons.append("empty map: no positive evidence at the explained layer, so nothing can be said about this "
                       "mask; explain another layer (layers=..., dsxai layers MODEL lists them) or method")
    if row["evidence_outside"] >= thresholds["max_outside"]:
        flags.append("outside")
        reasons.append(_outside_reason(row))
    if row["confidence"] < thresholds["min_confidence"]:
        flags.append("low_confidence")
        reasons.append(f"low confidence: {row['confidence']:.2f} < {thresholds['min_confidence']:.2f}")
    if row.get("iou_gt") is not None and row["iou_gt"] < thresholds["min_iou"]:
        flags.append("gt_disagreement")
        under = f"; the ground truth under the mask is {row['gt_class']}" if row.get("gt_class") else ""
        reasons.append(f"disagrees with ground truth: IoU {row['iou_gt']:.2f} with the ground-truth "
                       f"{row['class']} object(s){under}")
    return flags, reasons, _score(row, flags)

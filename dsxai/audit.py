"""Audit a segmenter mask by mask: where does the evidence of each predicted mask come from?

>>> result = dsxai.audit("shapes-unet", "scenes/", masks="gt/", out="audit/")   # doctest: +SKIP
>>> result.flagged()[0]["reasons"]                                               # doctest: +SKIP

For every image, every predicted mask (semantic segmenters: one per class and connected component;
instance segmenters: one per instance) gets its own CAM map, all masks of an image in one batched call
(:meth:`dsxai.adapter.Adapter.explain`). From each map (``[H, W]`` over the original image, in torch on
the model's device) the audit computes:

* ``evidence_inside`` / ``evidence_ring`` / ``evidence_outside``: shares of the map's mass inside the mask,
  in a ring just around it, and farther away (they sum to 1). The ring is the widest of ``ring_px``
  pixels, ``ring_frac * sqrt(area)`` (defaults :data:`RING_PX` = 8 px and :data:`RING_FRAC` = 0.25) and one
  cell of the explained layer in image pixels (:func:`layer_stride`; 32 px for the default layer of the
  shipped shapes U-Net on its 256 px scenes). An upsampled map of a coarse layer spreads evidence on the
  mask's edge about a cell beyond it: with an 8 px ring that resolution blur alone flagged 32 of 68 masks of
  the clean shapes U-Net on held-out scenes as "outside"; with the cell, 5 (``benchmarks/audit_resolution.py``).
* ``pointing_hit`` (the map's peak lies inside the mask) and ``peak_in_ring`` (inside mask + ring).
* ``confidence``: semantic segmenters: the mean softmax probability of the mask's class inside it;
  instance segmenters: the detection score.
* with ground truth (a label PNG per image, pixel value = class id, or COCO annotations): ``iou_gt``, the
  IoU of the mask with the ground-truth objects of its class that it overlaps (0 when it overlaps none),
  ``evidence_in_gt`` (share of the map inside those objects, or inside any ground-truth object the mask
  overlaps when none is of its class) and ``gt_class`` (the ground-truth class under most of the mask).

Flags (reasons in words, thresholds are options with these defaults):

* ``outside``: "evidence mostly outside the mask" -- ``evidence_outside >= max_outside``
  (:data:`MAX_OUTSIDE` = 0.5): most of what drives the mask lies beyond the ring, a possible shortcut or
  context bias.
* ``low_confidence``: ``confidence < min_confidence`` (:data:`MIN_CONFIDENCE` = 0.6).
* ``gt_disagreement``: "disagrees with ground truth" -- ``iou_gt < min_iou`` (:data:`MIN_IOU` = 0.5).
* ``no_evidence``: the mask's map is all zero (nothing positive at the explained layer), so its shares say
  nothing; a silent "all inside" would be wrong.

``score`` ranks masks by how much they need a look: the number of flags plus a soft term in [0, 1], the
weighted mean of ``evidence_outside`` (0.4), ``1 - confidence`` (0.2), ``1 - iou_gt`` (0.3, with ground
truth) and a missed pointing game (0.1). Any flagged mask ranks above every unflagged one.

Layers: smp models are explained at the deepest stage of their encoder (:func:`audit_layers`: e.g.
``encoder.layer4`` of a ResNet encoder, ``encoder.model.blocks.5`` (stride 32) of the shipped shapes U-Net,
``encoder.layer2`` of the depth-3 cue-world U-Net), not at the adapter's default ``decoder``: a per-mask map
at the decoder output lies inside the mask by construction (the segmentation head is a 3x3 convolution), so
it cannot show context. Other models use their adapter's default layers; ``layers=`` overrides both.

With ``out``, the audit writes there ``audit.jsonl`` (a journal: one JSON line per image, appended as soon
as the image is done; ``resume=True`` skips the images it already holds), ``audit.json``, ``audit.csv``
(one row per mask), ``report.html`` (self-contained, sortable table), ``thumbs/*.png`` (the flagged
masks: image with the mask outline, and the map with the mask outline and its ring) and ``manifest.json``
(exactly this run's files: a rerun into the same folder removes the earlier run's thumbnails). ``out`` must
not hold or contain an input, nor overlap the images or masks folder. Journal records are keyed by the
image file's resolved path; image names are unique over the whole input set (``d1/a.png``, ``d2/a.png`` ->
``d1__a``, ``d2__a``).
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .runs import (append_json_line, check_output_folder, journal_path, read_json_lines, rewrite_json_lines,
                   unique_stems, write_manifest)
from .groundtruth import annotation_mask, coco_index, ignored_categories, map_classes, read_coco
from .imaging import find_image_files
from .layers import audit_layers, layer_stride
from .validation import check_conf, check_imgsz, check_max_pixels, check_non_negative
from .pipeline import explain_maps

__all__ = [
    "audit", "AuditResult", "mask_figures", "RING_PX", "RING_FRAC", "MAX_OUTSIDE",
    "MIN_CONFIDENCE", "MIN_IOU", "CSV_COLUMNS",
]

RING_PX = 8.0
RING_FRAC = 0.25
MAX_OUTSIDE = 0.5
MIN_CONFIDENCE = 0.6
MIN_IOU = 0.5
_WEIGHTS = {"outside": 0.4, "confidence": 0.2, "iou": 0.3, "pointing": 0.1}
_FORMAT = "dsxai.audit/2"  # 2: rings at least one cell of the explained layer wide
JOURNAL, JSON_FILE, CSV_FILE, HTML_FILE, THUMBS = "audit.jsonl", "audit.json", "audit.csv", "report.html", "thumbs"
MANIFEST = "manifest.json"

#: columns of audit.csv (one row per mask)
CSV_COLUMNS = (
    "image", "mask", "class_id", "class", "area", "confidence", "x1", "y1", "x2", "y2", "ring_px",
    "evidence_inside", "evidence_ring", "evidence_outside", "has_evidence", "peak_x", "peak_y", "pointing_hit",
    "peak_in_ring", "iou_gt", "evidence_in_gt", "gt_class", "score", "flags", "reasons", "thumbnail",
)


# ----------------------------------------------------------------------------------------------- result


@dataclass
class AuditResult:
    """What :func:`audit` found.

    Attributes:
        rows: one dict per mask (keys: :data:`CSV_COLUMNS`; ``flags`` and ``reasons`` are lists), in image
            order.
        images: one record per image: ``image`` (name), ``path``, ``status`` ("ok" or "error"), ``error``,
            ``gt`` ("mask", "coco", "missing" or "none"), ``warning``, ``masks`` (count).
        summary: counts (images, failed, without ground truth, masks, flagged, per flag).
        classes: per-class figures (masks, flagged, mean shares, pointing rate, mean confidence / IoU).
        settings: the settings of the run.
        out: the output folder (None when nothing was written).
    """

    rows: list[dict[str, Any]]
    images: list[dict[str, Any]]
    summary: dict[str, Any]
    classes: list[dict[str, Any]]
    settings: dict[str, Any]
    out: Path | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def flagged(self) -> list[dict[str, Any]]:
        """The flagged masks, the ones most in need of a look first."""
        return sorted((r for r in self.rows if r["flags"]), key=lambda r: -r["score"])

    def ranked(self) -> list[dict[str, Any]]:
        """All masks by decreasing ``score``."""
        return sorted(self.rows, key=lambda r: -r["score"])

    @property
    def report(self) -> Path | None:
        """Path of ``report.html`` (None when nothing was written)."""
        return None if self.out is None else self.out / HTML_FILE


# ----------------------------------------------------------------------------------------------- figures


def _ring_width(area: float, ring_px: float, ring_frac: float, cell_px: float = 0.0) -> float:
    return max(float(ring_px), float(ring_frac) * math.sqrt(max(area, 0.0)), float(cell_px))


def mask_figures(maps: Tensor, masks: Tensor, *, ring_px: float = RING_PX, ring_frac: float = RING_FRAC,
                 cell_px: float = 0.0, gt_regions: Tensor | None = None) -> list[dict[str, Any]]:
    """Per map and its mask: evidence shares inside / in the ring / outside, peak, pointing hit.

    Args:
        maps: ``[T, H, W]`` non-negative maps (any scale).
        masks: ``[T, H, W]`` bool masks, one per map.
        ring_px, ring_frac: the ring width, ``max(ring_px, ring_frac * sqrt(area), cell_px)`` pixels
            (Euclidean).
        cell_px: the size of one cell of the explained layer in image pixels (see :func:`layer_stride`): a
            map that coarse cannot place evidence more finely, so the ring is at least that wide.
        gt_regions: optional ``[T, H, W]`` bool ground-truth regions: adds ``evidence_in_gt``.

    Returns one dict per map with ``area``, ``ring_px``, ``evidence_inside``, ``evidence_ring``,
    ``evidence_outside``, ``has_evidence``, ``peak_x``, ``peak_y``, ``pointing_hit``, ``peak_in_ring`` (and
    ``evidence_in_gt``). An all-zero map has no evidence anywhere: shares 0, no hit, ``has_evidence`` False.
    """
    from .metrics import dilate

    if maps.shape != masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ in shape")
    maps = torch.nan_to_num(maps.float()).clamp_min(0)
    masks = masks.to(maps.device).bool()
    if len(maps) == 0:
        return []
    h, w = maps.shape[-2:]
    area = masks.flatten(1).sum(1).float()
    widths = [_ring_width(float(a), ring_px, ring_frac, cell_px) for a in area.tolist()]
    grown = torch.stack([dilate(masks[k:k + 1], widths[k])[0] for k in range(len(masks))])
    ring = grown & ~masks
    total = maps.flatten(1).sum(1)
    safe = total.clamp_min(1e-12)
    has = total > 0
    inside = torch.where(has, (maps * masks).flatten(1).sum(1) / safe, torch.zeros_like(total))
    in_ring = torch.where(has, (maps * ring).flatten(1).sum(1) / safe, torch.zeros_like(total))
    outside = torch.where(has, (1 - inside - in_ring).clamp_min(0), torch.zeros_like(total))
    peak = maps.flatten(1).argmax(1)
    py, px = peak // w, peak % w
    rows = torch.arange(len(maps), device=maps.device)
    hit = masks[rows, py, px] & has
    near = grown[rows, py, px] & has
    in_gt = None
    if gt_regions is not None:
        gt_regions = gt_regions.to(maps.device).bool()
        in_gt = torch.where(has, (maps * gt_regions).flatten(1).sum(1) / safe, torch.zeros_like(total))
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


def _flags(row: dict[str, Any], thresholds: dict[str, float]) -> tuple[list[str], list[str], float]:
    """Flag codes, reasons in words and the score of one mask row."""
    flags, reasons = [], []
    if not row.get("has_evidence", True):
        flags.append("no_evidence")
        reasons.append("empty map: no positive evidence at the explained layer, so nothing can be said about this "
                       "mask; explain another layer (layers=..., dsxai layers MODEL lists them) or method")
    if row["evidence_outside"] >= thresholds["max_outside"]:
        where = "inside the mask" if row["pointing_hit"] else ("in the ring" if row["peak_in_ring"] else
                                                               "outside the mask and its ring")
        flags.append("outside")
        reasons.append(f"evidence mostly outside the mask: {row['evidence_outside']:.0%} of the map lies beyond "
                       f"the {row['ring_px']:.0f} px ring around it (only {row['evidence_inside']:.0%} inside), "
                       f"peak at ({row['peak_x']}, {row['peak_y']}) {where}: possible shortcut or context bias")
    if row["confidence"] < thresholds["min_confidence"]:
        flags.append("low_confidence")
        reasons.append(f"low confidence: {row['confidence']:.2f} < {thresholds['min_confidence']:.2f}")
    if row.get("iou_gt") is not None and row["iou_gt"] < thresholds["min_iou"]:
        flags.append("gt_disagreement")
        under = f"; the ground truth under the mask is {row['gt_class']}" if row.get("gt_class") else ""
        reasons.append(f"disagrees with ground truth: IoU {row['iou_gt']:.2f} with the ground-truth "
                       f"{row['class']} object(s){under}")
    terms = {"outside": row["evidence_outside"], "confidence": 1 - row["confidence"],
             "pointing": 0.0 if row["pointing_hit"] else 1.0}
    if row.get("iou_gt") is not None:
        terms["iou"] = 1 - row["iou_gt"]
    soft = sum(_WEIGHTS[k] * v for k, v in terms.items()) / sum(_WEIGHTS[k] for k in terms)
    return flags, reasons, round(len(flags) + min(max(soft, 0.0), 1.0), 4)


# ----------------------------------------------------------------------------------------------- ground truth


@dataclass
class _Truth:
    """Ground truth of one image: instance masks ``[G, H, W]`` and their classes, and a label map."""

    instances: Tensor
    classes: Tensor
    labels: Tensor  # [H, W] long class ids, -1 where no object


def _truth_from_labels(label_map: np.ndarray, background: int | None) -> _Truth:
    """A label PNG -> instances (one per class and 8-connected component), skipping ``background``."""
    import cv2

    found, classes = [], []
    for c in np.unique(label_map).tolist():
        if background is not None and c == background:
            continue
        count, comp = cv2.connectedComponents((label_map == c).astype(np.uint8), connectivity=8)
        for k in range(1, count):
            found.append(comp == k)
            classes.append(int(c))
    h, w = label_map.shape
    instances = torch.from_numpy(np.stack(found)) if found else torch.zeros((0, h, w), dtype=torch.bool)
    labels = label_map.astype(np.int64)
    if background is not None:
        labels[labels == background] = -1
    return _Truth(instances, torch.tensor(classes, dtype=torch.long), torch.from_numpy(labels))


def _read_label_png(path: Path) -> np.ndarray:
    import cv2

    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ValueError(f"cannot read the ground-truth mask {path} (unsupported or corrupt file)")
    if data.ndim == 3:
        if data.shape[2] == 4:
            data = data[..., :3]
        if not (np.array_equal(data[..., 0], data[..., 1]) and np.array_equal(data[..., 0], data[..., 2])):
            raise ValueError(f"ground-truth mask {path} is a colour image; give a single-channel PNG whose pixel "
                             "values are class ids")
        data = data[..., 0]
    return np.asarray(data)


class _Coco:
    """COCO annotations: per image file, instance masks with the model's class ids."""

    def __init__(self, source: Any, class_names: dict[int, str], class_map: dict[str, str] | None = None):
        data, what = read_coco(source)
        self.coco = coco_index(data)
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        try:
            to_category = map_classes(class_names, categories, class_map)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
        self.category_map = {cat: model_id for model_id, cat in to_category.items()}
        ignored = ignored_categories(data, set(self.category_map))
        if ignored:
            warnings.warn(f"COCO categories {', '.join(ignored)} are not classes of the model "
                          f"({', '.join(class_names.values())}); their annotations are ignored", stacklevel=3)
        self.by_file: dict[str, dict] = {}
        for entry in data["images"]:
            name = str(entry.get("file_name", ""))
            self.by_file.setdefault(name, entry)
            self.by_file.setdefault(Path(name).name, entry)
            self.by_file.setdefault(Path(name).stem, entry)

    def find(self, name: str, path: str | None) -> dict | None:
        for key in ([path, Path(path).name] if path else []) + [name]:
            if key and key in self.by_file:
                return self.by_file[key]
        return None

    def truth(self, entry: dict, size: tuple[int, int]) -> _Truth:
        h, w = size
        eh, ew = int(entry.get("height", h)), int(entry.get("width", w))
        if (eh, ew) != (h, w):
            raise ValueError(f"COCO image entry {entry.get('file_name')!r} is {ew}x{eh} but the image is {w}x{h}; "
                             "the annotations belong to another version of the image")
        found, classes = [], []
        labels = np.full((h, w), -1, np.int64)
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=[entry["id"]], iscrowd=None)):
            cid = self.category_map.get(int(ann["category_id"]))
            if cid is None or not ann.get("segmentation"):
                continue
            m = annotation_mask(self.coco, ann)
            found.append(m)
            classes.append(cid)
            labels[m] = cid
        instances = torch.from_numpy(np.stack(found)) if found else torch.zeros((0, h, w), dtype=torch.bool)
        return _Truth(instances, torch.tensor(classes, dtype=torch.long), torch.from_numpy(labels))


def _gt_figures(masks: Tensor, labels: Tensor, truth: _Truth, names: dict[int, str]) -> tuple[list[dict], Tensor]:
    """IoU with the same-class ground-truth objects each mask overlaps, the ground-truth class under it, and
    the ground-truth region each map's evidence is measured in."""
    device = masks.device
    inst = truth.instances.to(device)
    gt_cls = truth.classes.to(device)
    gt_labels = truth.labels.to(device)
    figures, regions = [], []
    for m, c in zip(masks, labels.tolist()):
        overlap = (inst & m).flatten(1).any(1) if len(inst) else torch.zeros(0, dtype=torch.bool, device=device)
        same = overlap & (gt_cls == c)
        region = inst[same].any(0) if bool(same.any()) else torch.zeros_like(m)
        inter = (region & m).sum().item()
        union = (region | m).sum().item()
        iou = inter / union if union else 0.0
        evidence_region = region if bool(same.any()) else (inst[overlap].any(0) if bool(overlap.any()) else region)
        under = torch.bincount(gt_labels[m].flatten() + 1, minlength=1) if bool(m.any()) else None
        if under is not None and len(under):
            top = int(under.argmax())
            gt_class = "background" if top == 0 else names.get(top - 1, str(top - 1))
            share = float(under[top]) / float(under.sum())
            gt_text = f"{gt_class} ({share:.0%})"
        else:
            gt_text = ""
        figures.append({"iou_gt": round(iou, 4), "gt_class": gt_text})
        regions.append(evidence_region)
    return figures, (torch.stack(regions) if regions else torch.zeros_like(masks))


# ----------------------------------------------------------------------------------------------- inputs


def _find_images(images: Any) -> list[tuple[str, Any, str | None]]:
    """``(name, image, path)`` per image: a folder, a file, a glob, or a list of paths / arrays."""
    if isinstance(images, (str, Path)):
        items = find_image_files(images)
    elif isinstance(images, np.ndarray) and images.ndim == 3:
        items = [images]
    else:
        items = list(images)
        if not items:
            raise ValueError("no images to audit")
    # names unique over the whole set (d1/a.png, d2/a.png -> d1__a, d2__a): they name thumbnails and rows
    paths = [str(item) if isinstance(item, (str, Path)) else None for item in items]
    names = unique_stems([p if p is not None else f"image_{k:04d}" for k, p in enumerate(paths)])
    return list(zip(names, items, paths))


# ----------------------------------------------------------------------------------------------- one image


def _image_rows(adapter: Any, image: np.ndarray, truth: _Truth | None, *, method: str, layers: list[str],
                targets: str, target_options: dict[str, Any], min_area: float, ring_px: float, ring_frac: float,
                cell_px: float, thresholds: dict[str, float]) -> tuple[list[dict[str, Any]], Any, Tensor]:
    dets, maps = explain_maps(adapter, [image], method=method, layers=layers, targets=targets, **target_options)
    if dets is None:
        raise ValueError(f"{type(adapter).__name__} gave no masks to audit")
    d, m = dets[0], maps[0].detach().float()
    if d.masks is None:
        raise ValueError(f"{type(adapter).__name__} predicts boxes without masks; the audit needs a segmenter")
    if len(d) and getattr(adapter, "task", "") != "segment":  # instance masks: apply min_area here
        keep = [k for k, a in enumerate(d.masks.flatten(1).sum(1).tolist()) if a >= min_area]
        if len(keep) < len(d):
            d, m = d[keep], m[keep]
    m = m.reshape(len(d), *d.image_size)
    masks = d.masks.to(m.device)
    names = dict(d.class_names)
    gt_figs, gt_regions = (None, None)
    if truth is not None:
        gt_figs, gt_regions = _gt_figures(masks, d.labels, truth, names)
    figs = mask_figures(m, masks, ring_px=ring_px, ring_frac=ring_frac, cell_px=cell_px, gt_regions=gt_regions)
    rows = []
    for k, fig in enumerate(figs):
        label = int(d.labels[k])
        x1, y1, x2, y2 = (round(float(v), 1) for v in d.boxes[k].tolist())
        row = {"mask": k, "class_id": label, "class": names.get(label, str(label)),
               "confidence": round(float(d.scores[k]), 4), "x1": x1, "y1": y1, "x2": x2, "y2": y2, **fig}
        if gt_figs is not None:
            row.update(gt_figs[k])
        else:
            row.update({"iou_gt": None, "evidence_in_gt": None, "gt_class": ""})
        row["flags"], row["reasons"], row["score"] = _flags(row, thresholds)
        row["thumbnail"] = ""
        rows.append(row)
    return rows, d, m


def _thumbnail(image: np.ndarray, detections: Any, maps: Tensor, k: int, ring_px: float) -> np.ndarray:
    """Two panels around mask ``k``: the image with the mask outlined, and the map with mask and ring."""
    import cv2

    from .metrics import dilate
    from .render import draw_mask_contours, overlay

    h, w = image.shape[:2]
    one = detections[[k]]
    heat = maps[k].detach().float().cpu()
    peak = float(heat.max())
    heat = heat / peak if peak > 0 else heat
    left = draw_mask_contours(image, one)
    right = draw_mask_contours(overlay(image, heat, 0.55), one)
    ring = dilate(one.masks, ring_px)[0].numpy().astype(np.uint8)
    contours, _ = cv2.findContours(ring, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(right, contours, -1, (255, 255, 255), 1)
    x1, y1, x2, y2 = (float(v) for v in one.boxes[0])
    side = max(64.0, 3.0 * max(x2 - x1, y2 - y1))
    if side >= 0.7 * max(h, w):
        top, bottom, lft, rgt = 0, h, 0, w
    else:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        lft = int(np.clip(round(cx - side / 2), 0, max(w - side, 0)))
        top = int(np.clip(round(cy - side / 2), 0, max(h - side, 0)))
        rgt, bottom = min(w, lft + int(side)), min(h, top + int(side))
    panels = [p[top:bottom, lft:rgt] for p in (left, right)]
    scale = 192 / max(bottom - top, rgt - lft)
    size = (max(1, int(round((rgt - lft) * scale))), max(1, int(round((bottom - top) * scale))))
    interp = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
    panels = [cv2.resize(p, size, interpolation=interp) for p in panels]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], 1)


# ----------------------------------------------------------------------------------------------- journal


def _read_journal(path: Path) -> tuple[dict | None, list[dict]]:
    """The settings line and the image records of a journal (a torn last line is ignored)."""
    items = read_json_lines(path)
    settings = ([None] + [item for item in items if item.get("kind") == "settings"])[-1]
    return settings, [item for item in items if item.get("kind") == "image"]


def _key(name: str, path: str | None) -> str:
    """What a journal record is keyed by: the image file's resolved path (an array: its name).

    Why not the name: names depend on the whole input set, so a resume with other inputs could give
    another image's record the same name and attribute its masks to the wrong image.
    """
    return str(Path(path).resolve()) if path is not None else f"array:{name}"


def _check_out(out_dir: Path, images: Any, items: list, mask_dir: Path | None, coco: Any) -> None:
    """ValueError when ``out`` overlaps the inputs: the images (and a folder given as images), the masks
    folder, the COCO file (see :func:`dsxai.runs.check_output_folder`)."""
    files = [path for _, _, path in items if path is not None]
    if isinstance(coco, (str, Path)):
        files.append(str(coco))
    scanned = [p for p in (images, mask_dir) if isinstance(p, (str, Path)) and Path(p).is_dir()]
    check_output_folder(out_dir, files, scanned=scanned)


_SAME_SETTINGS = ("format", "model", "method", "layers", "targets", "ring_px", "ring_frac", "min_area",
                  "classes", "thresholds", "ground_truth")


# ----------------------------------------------------------------------------------------------- audit()


def audit(model: Any, images: Any, *, masks: Any = None, coco: Any = None, out: str | os.PathLike | None = None,
          method: str | None = None, layers: Sequence[str] | str | None = None,
          classes: Sequence[int | str] | int | str | None = None, min_area: float = 100, device: str | None = None,
          resume: bool = False, arch: str | None = None, ring_px: float = RING_PX, ring_frac: float = RING_FRAC,
          max_outside: float = MAX_OUTSIDE, min_confidence: float = MIN_CONFIDENCE, min_iou: float = MIN_IOU,
          conf: float | None = None, thumbnails: str = "flagged", progress: bool = True,
          adapter_options: dict[str, Any] | None = None, class_map: dict[str, str] | None = None,
          max_pixels: int | None = None, trust: bool = False) -> AuditResult:
    """Audit every predicted mask of ``images``: evidence inside / around / outside, pointing, confidence,
    agreement with ground truth, flags with reasons and a score (see the module doc).

    Args:
        model: an :class:`~dsxai.adapter.Adapter`, a registered name (``shapes-unet``, ``shapes-yolo-seg``),
            a model or a checkpoint path: whatever ``dsxai.adapters.resolve`` takes.
        images: a folder (its image files, sorted), an image file, a glob, or a list of paths / arrays.
        masks: ground truth as label images, pixel value = class id of the model: a folder holding
            ``<image stem>.png`` per image, or a list with one path / ``[H, W]`` array (or None) per image.
            The adapter's background class (0 when it has none, e.g. YOLO) means "no object": for a model
            whose class 0 is a real class, give COCO annotations instead.
        coco: ground truth as COCO annotations (a JSON path or dict), matched by ``file_name``; categories
            map to the model's classes by name (by id only for models whose class names are ids), else by
            ``class_map``; a category no class maps to is ignored with a warning naming it.
        out: folder for the journal, ``audit.json``, ``audit.csv``, ``report.html`` and thumbnails; None
            writes nothing.
        method: CAM method (default ``layercam``); layers: layer names (default :func:`audit_layers`).
        classes: audit masks of these classes only (names or ids); an unknown name fails up front.
        min_area: masks smaller than this (pixels of the original image) are not audited.
        device: torch device of the model.
        resume: continue the journal in ``out``: images it already holds without error are skipped (the
            settings must match). Without it an existing journal is started over.
        arch: architecture of a state-dict checkpoint (``dsxai.adapters.resolve``).
        ring_px, ring_frac: ring width ``max(ring_px, ring_frac * sqrt(mask area))`` pixels.
        max_outside, min_confidence, min_iou: flag thresholds (see the module doc).
        conf: score threshold of instance segmenters (None: the adapter's default).
        thumbnails: "flagged" (default), "all" or "none": which masks get a thumbnail PNG.
        progress: show a tqdm progress bar on stderr.
        adapter_options: passed to the adapter when the audit builds it (e.g. ``{"imgsz": 640}``).
        trust: load a checkpoint path with full pickle, which can run code from the file (warns).
        class_map: ``{model_class_name_or_id: coco_category_name}`` (as ``dsxai bench --class-map``) when
            the category names are not the model's; without it, no category matching by name is an error.
        max_pixels: refuse images above this many pixels (default ``dsxai.imaging.MAX_PIXELS``).

    Raises:
        FileNotFoundError / ValueError: bad inputs found before any work (no images, a missing masks folder
        or COCO file, an unknown class or layer, both ``masks`` and ``coco``). A bad image (unreadable, a
        ground-truth mask of another size) is recorded with its error and skipped; an image without a
        ground-truth mask is audited without ground truth and recorded (``gt="missing"``) with a warning.
    """
    from .adapters import resolve
    from .explanation import DEFAULT_METHOD, resolve_classes
    from .imaging import load_image
    from .layers import resolve_layers
    from .methods import get_method

    # ---- everything that can be checked up front
    if masks is not None and coco is not None:
        raise ValueError("give ground truth either as masks= (label PNGs) or as coco= (annotations), not both")
    if thumbnails not in ("flagged", "all", "none"):
        raise ValueError(f"thumbnails must be 'flagged', 'all' or 'none', got {thumbnails!r}")
    for name, value in (("max_outside", max_outside), ("min_confidence", min_confidence), ("min_iou", min_iou)):
        check_conf(value, name)
    ring_px, ring_frac = check_non_negative("ring_px", ring_px), check_non_negative("ring_frac", ring_frac)
    min_area = check_non_negative("min_area", min_area)
    if conf is not None:
        conf = check_conf(conf)
    if max_pixels is not None:
        check_max_pixels(max_pixels)
    if adapter_options and adapter_options.get("imgsz") is not None:
        check_imgsz(adapter_options["imgsz"])
    items = _find_images(images)
    mask_dir: Path | None = None
    mask_list: list | None = None
    if isinstance(masks, (str, Path)):
        mask_dir = Path(masks)
        if not mask_dir.is_dir():
            raise FileNotFoundError(f"ground-truth mask folder not found: {mask_dir}")
    elif masks is not None:
        mask_list = list(masks)
        if len(mask_list) != len(items):
            raise ValueError(f"masks has {len(mask_list)} entries for {len(items)} images; give one per image "
                             "(None for an image without ground truth)")
    adapter = resolve(model, arch=arch, device=device, trust=trust, **(adapter_options or {}))
    task = getattr(adapter, "task", "detect")
    if task == "detect":
        raise ValueError(f"{type(adapter).__name__} wraps a detector without masks; the audit needs a semantic "
                         "(e.g. smp U-Net) or instance segmenter (YOLO-seg, Mask R-CNN)")
    method = method or DEFAULT_METHOD.get(task, "layercam")
    get_method(method)
    if isinstance(layers, str):
        layers = [layers]
    used_layers = list(layers) if layers else audit_layers(adapter)
    resolve_layers(adapter.model, used_layers)
    stride = layer_stride(adapter, used_layers)
    cells: dict[tuple[int, int], float] = {}

    def cell_size(size: tuple[int, int]) -> float:
        """One cell of the explained layer in original pixels of an image of ``size`` (letterbox, resize)."""
        if size not in cells:
            blank = np.zeros((*size, 3), np.uint8)
            cells[size] = stride / min(adapter.preprocess(blank).geometries[0].scale) if stride else 0.0
        return cells[size]
    class_ids = resolve_classes(classes, adapter.class_names)
    truth_source = _Coco(coco, adapter.class_names, class_map) if coco is not None else None
    if task == "segment":
        targets = "masks"
        target_options: dict[str, Any] = {"min_area": min_area}
        if conf is not None:
            warnings.warn("conf is ignored for semantic segmenters", stacklevel=2)
    else:
        from .adapter import Adapter

        targets = "masks" if type(adapter).mask_target is not Adapter.mask_target else "boxes"
        target_options = {} if conf is None else {"conf": conf}
    if class_ids is not None:
        target_options["classes"] = class_ids
    thresholds = {"max_outside": max_outside, "min_confidence": min_confidence, "min_iou": min_iou}
    settings = {
        "kind": "settings", "format": _FORMAT,
        "model": model if isinstance(model, str) else type(getattr(adapter, "model", adapter)).__name__,
        "adapter": type(adapter).__name__, "task": task, "method": method, "layers": used_layers,
        "layer_stride": round(stride, 3), "targets": targets, "ring_px": ring_px, "ring_frac": ring_frac,
        "min_area": min_area,
        "classes": class_ids, "thresholds": thresholds,
        "ground_truth": "masks" if masks is not None else ("coco" if coco is not None else "none"),
        "class_names": {str(k): v for k, v in adapter.class_names.items()},
    }

    # ---- journal
    out_dir = Path(out) if out is not None else None
    done: dict[str, dict] = {}
    journal = None
    if out_dir is not None:
        _check_out(out_dir, images, items, mask_dir, coco)
        out_dir.mkdir(parents=True, exist_ok=True)
        journal = journal_path(out_dir, JOURNAL)
        if resume:
            old, records = _read_journal(journal)
            if old is not None:
                changed = [k for k in _SAME_SETTINGS if old.get(k) != json.loads(json.dumps(settings[k]))]
                if changed:
                    raise ValueError(f"--resume: the journal {journal} was written with other settings "
                                     f"({', '.join(changed)}); use the same options, or drop --resume to start over")
                keys = {_key(name, path) for name, _, path in items}
                done = {rec["key"]: rec for rec in records
                        if rec.get("status") == "ok" and rec.get("key") in keys}
        # keep only what is reused (drops torn and failed lines); atomic: a kill keeps the old journal
        rewrite_json_lines(journal, [settings, *done.values()])

    # ---- images
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(items), unit="image", file=sys.stderr, desc="audit")
        except ImportError:  # pragma: no cover
            bar = None

    def say(text: str) -> None:
        if bar is not None:
            bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def warn(text: str) -> None:
        if bar is not None:
            bar.clear()
        warnings.warn(text, stacklevel=3)
        if bar is not None:
            bar.refresh()

    records: list[dict] = []
    background = getattr(adapter, "background", None)
    if background is None:  # label PNGs need a value for "no object": 0, as for semantic segmenters
        background = 0
    try:
        for k, (name, item, path) in enumerate(items):
            key = _key(name, path)
            if key in done:
                rec = done[key]  # the same image; its name may differ when the input set changed
                records.append({**rec, "image": name, "rows": [{**r, "image": name} for r in rec["rows"]]})
                if bar is not None:
                    bar.update(1)
                continue
            record: dict[str, Any] = {"kind": "image", "image": name, "path": path, "key": key, "status": "ok",
                                      "error": None, "gt": "none", "warning": None, "rows": []}
            try:
                image = load_image(item, max_pixels)
                h, w = image.shape[:2]
                truth = None
                if mask_dir is not None or mask_list is not None:
                    gt = mask_list[k] if mask_list is not None else None
                    gt_path = None
                    if mask_dir is not None:
                        gt_path = mask_dir / f"{Path(path).stem if path else name}.png"
                        gt = gt_path if gt_path.is_file() else None
                    if gt is None:
                        record["gt"] = "missing"
                        record["warning"] = (f"no ground-truth mask for {name}"
                                             + (f" ({gt_path} not found)" if gt_path else "")
                                             + "; audited without ground truth")
                        warn(record["warning"])
                    else:
                        label_map = _read_label_png(Path(gt)) if isinstance(gt, (str, Path)) else \
                            np.asarray(gt.cpu().numpy() if isinstance(gt, Tensor) else gt)
                        if label_map.shape[:2] != (h, w):
                            where = f"{gt}" if isinstance(gt, (str, Path)) else "the ground-truth mask"
                            raise ValueError(f"{where} is {label_map.shape[1]}x{label_map.shape[0]} but image "
                                             f"{name} is {w}x{h}; give a mask of the image's size")
                        truth = _truth_from_labels(label_map, background)
                        record["gt"] = "mask"
                elif truth_source is not None:
                    entry = truth_source.find(name, path)
                    if entry is None:
                        record["gt"] = "missing"
                        record["warning"] = f"image {name} is not in the COCO annotations; audited without ground truth"
                        warn(record["warning"])
                    else:
                        truth = truth_source.truth(entry, (h, w))
                        record["gt"] = "coco"
                rows, dets, maps = _image_rows(
                    adapter, image, truth, method=method, layers=used_layers, targets=targets,
                    target_options=target_options, min_area=min_area, ring_px=ring_px, ring_frac=ring_frac,
                    cell_px=cell_size(image.shape[:2]), thresholds=thresholds)
                for row in rows:
                    row["image"] = name
                    if out_dir is not None and (thumbnails == "all" or (thumbnails == "flagged" and row["flags"])):
                        from .render import write_png

                        rel = f"{THUMBS}/{name}_m{row['mask']}.png"
                        write_png(out_dir / rel, _thumbnail(image, dets, maps, row["mask"], row["ring_px"]))
                        row["thumbnail"] = rel
                record["rows"] = rows
            except (ValueError, FileNotFoundError, TypeError, RuntimeError, OSError) as exc:
                record["status"] = "error"
                record["error"] = f"{type(exc).__name__}: {exc}"
                record["rows"] = []
                say(f"error: {name}: {exc} (skipped)")
            records.append(record)
            if journal is not None:
                append_json_line(journal, record)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    result = _assemble(records, settings, out_dir)
    if out_dir is not None:
        _write_outputs(result)
    return result


# ----------------------------------------------------------------------------------------------- outputs


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def _assemble(records: list[dict], settings: dict, out_dir: Path | None) -> AuditResult:
    rows = [row for rec in records for row in rec["rows"]]
    images = [{"image": r["image"], "path": r["path"], "status": r["status"], "error": r["error"], "gt": r["gt"],
               "warning": r["warning"], "masks": len(r["rows"])} for r in records]
    by_flag: dict[str, int] = {}
    for row in rows:
        for f in row["flags"]:
            by_flag[f] = by_flag.get(f, 0) + 1
    summary = {
        "images": len(records), "images_failed": sum(r["status"] == "error" for r in records),
        "images_without_gt": sum(r["gt"] == "missing" for r in records), "masks": len(rows),
        "flagged": sum(bool(r["flags"]) for r in rows), "by_flag": by_flag,
    }
    classes = []
    for cid in sorted({r["class_id"] for r in rows}):
        sel = [r for r in rows if r["class_id"] == cid]
        classes.append({
            "class_id": cid, "class": sel[0]["class"], "masks": len(sel), "flagged": sum(bool(r["flags"]) for r in sel),
            "evidence_inside": _mean([r["evidence_inside"] for r in sel]),
            "evidence_ring": _mean([r["evidence_ring"] for r in sel]),
            "evidence_outside": _mean([r["evidence_outside"] for r in sel]),
            "pointing_rate": _mean([float(r["pointing_hit"]) for r in sel]),
            "confidence": _mean([r["confidence"] for r in sel]),
            "iou_gt": _mean([r["iou_gt"] for r in sel]),
        })
    return AuditResult(rows=rows, images=images, summary=summary, classes=classes, settings=settings, out=out_dir)


def _write_outputs(result: AuditResult) -> None:
    from .runs import write_atomic

    out = result.out
    assert out is not None
    doc = {"format": _FORMAT, "settings": {k: v for k, v in result.settings.items() if k != "kind"},
           "summary": result.summary, "classes": result.classes, "images": result.images, "masks": result.rows}
    write_atomic(out / JSON_FILE, (json.dumps(doc, indent=1) + "\n").encode())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: (";".join(row[k]) if k == "flags" else " | ".join(row[k]) if k == "reasons" else
                             "" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    write_atomic(out / CSV_FILE, buffer.getvalue().encode())
    write_atomic(out / HTML_FILE, _html(result).encode())
    thumbs = [row["thumbnail"] for row in result.rows if row.get("thumbnail")]
    # lists exactly this run's files; thumbnails of an earlier run into the same folder are removed
    write_manifest(out, MANIFEST, {"format": _FORMAT}, [JOURNAL, JSON_FILE, CSV_FILE, HTML_FILE, *thumbs])


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0%}" if percent else f"{value:.2f}"
    return html.escape(str(value))


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.4em}
th,td{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:right;vertical-align:top}
th{background:#eee;cursor:pointer;user-select:none}
td.t{text-align:left;max-width:32em}
tr.flag{background:#fff3f0}
img.thumb{height:96px;image-rendering:pixelated}
.note{color:#666;font-size:13px}
"""

_JS = """
function sortBy(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),b=t.tBodies[0];
const desc=th.dataset.dir!=='desc';th.dataset.dir=desc?'desc':'asc';
const key=r=>{const c=r.children[i],v=c.dataset.v!==undefined?c.dataset.v:c.textContent;const n=parseFloat(v);
return isNaN(n)?v:n};
[...b.rows].sort((x,y)=>{const a=key(x),c=key(y);return (a>c?1:a<c?-1:0)*(desc?-1:1)}).forEach(r=>b.appendChild(r));}
"""


def _html(result: AuditResult) -> str:
    s, st = result.summary, result.settings
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>dsxai audit</title><style>{_CSS}</style>"
             f"<script>{_JS}</script></head><body>",
             "<h1>dsxai mask audit</h1>",
             f"<p class='note'>model {_fmt(st['model'])} ({_fmt(st['adapter'])}), method {_fmt(st['method'])}, "
             f"layers {_fmt(', '.join(st['layers']))}, ring max({st['ring_px']} px, {st['ring_frac']}&middot;"
             f"&radic;area), flags: evidence outside &ge; {st['thresholds']['max_outside']}, confidence &lt; "
             f"{st['thresholds']['min_confidence']}, IoU with ground truth &lt; {st['thresholds']['min_iou']}</p>",
             "<h2>Summary</h2><table id='summary'><tbody>"]
    for label, value in (("images", s["images"]), ("images that failed", s["images_failed"]),
                         ("images without ground truth", s["images_without_gt"]), ("masks", s["masks"]),
                         ("flagged masks", s["flagged"])) + tuple((f"flag: {k}", v) for k, v in s["by_flag"].items()):
        parts.append(f"<tr><td class='t'>{html.escape(label)}</td><td>{value}</td></tr>")
    parts.append("</tbody></table><h2>Per class</h2><table id='classes'><thead><tr>")
    cols = ("class", "masks", "flagged", "evidence_inside", "evidence_ring", "evidence_outside", "pointing_rate",
            "confidence", "iou_gt")
    parts += [f"<th onclick='sortBy(this)'>{c.replace('_', ' ')}</th>" for c in cols]
    parts.append("</tr></thead><tbody>")
    for c in result.classes:
        cells = "".join(f"<td{' class=t' if k == 'class' else ''}>"
                        f"{_fmt(c[k], k.startswith('evidence') or k == 'pointing_rate')}</td>" for k in cols)
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</tbody></table><h2>Masks</h2><p class='note'>click a column header to sort; sorted by score "
                 "(how much a mask needs a look) first</p><table id='masks'><thead><tr>")
    mcols = ("score", "image", "mask", "class", "area", "confidence", "evidence_inside", "evidence_ring",
             "evidence_outside", "pointing_hit", "iou_gt", "evidence_in_gt", "reasons", "thumbnail")
    parts += [f"<th onclick='sortBy(this)'>{c.replace('_', ' ')}</th>" for c in mcols]
    parts.append("</tr></thead><tbody>")
    for row in result.ranked():
        cells = []
        for k in mcols:
            v = row.get(k)
            if k == "thumbnail":
                cell = (f"<img class='thumb' src='{html.escape(v, quote=True)}' alt='mask {row['mask']} of "
                        f"{html.escape(row['image'], quote=True)}'>") if v else ""
                cells.append(f"<td>{cell}</td>")
            elif k == "reasons":
                cells.append(f"<td class='t'>{'<br>'.join(html.escape(x) for x in v)}</td>")
            elif k in ("image", "class"):
                cells.append(f"<td class='t'>{_fmt(v)}</td>")
            else:
                pct = k.startswith("evidence")
                cells.append(f"<td data-v='{'' if v is None else float(v)}'>{_fmt(v, pct)}</td>")
        parts.append(f"<tr class='{'flag' if row['flags'] else ''}'>{''.join(cells)}</tr>")
    parts.append("</tbody></table>")
    problems = [i for i in result.images if i["status"] == "error" or i["warning"]]
    if problems:
        parts.append("<h2>Images with problems</h2><table id='problems'><thead><tr><th>image</th><th>status</th>"
                     "<th>message</th></tr></thead><tbody>")
        for i in problems:
            parts.append(f"<tr><td class='t'>{_fmt(i['image'])}</td><td class='t'>{_fmt(i['status'])}</td>"
                         f"<td class='t'>{_fmt(i['error'] or i['warning'])}</td></tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

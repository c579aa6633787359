"""What an audit returns and writes: :class:`AuditResult`, per-class figures, ``audit.json``, ``audit.csv``,
``report.html`` and the thumbnails of flagged masks; every file written atomically.

Why one module: the files are views of the same rows, so their columns and wording change together.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ..runs import write_atomic, write_manifest

__all__ = ["AuditResult", "CSV_COLUMNS", "FORMAT", "JOURNAL", "JSON_FILE", "CSV_FILE", "HTML_FILE", "THUMBS",
           "MANIFEST", "assemble", "write_outputs", "thumbnail", "write_thumbnails"]

FORMAT = "dsxai.audit/2"  # 2: rings at least one cell of the explained layer wide
JOURNAL, JSON_FILE, CSV_FILE, HTML_FILE, THUMBS = "audit.jsonl", "audit.json", "audit.csv", "report.html", "thumbs"
MANIFEST = "manifest.json"

#: columns of audit.csv (one row per mask)
CSV_COLUMNS = (
    "image", "mask", "class_id", "class", "area", "confidence", "x1", "y1", "x2", "y2", "ring_px",
    "evidence_inside", "evidence_ring", "evidence_outside", "has_evidence", "peak_x", "peak_y", "pointing_hit",
    "peak_in_ring", "iou_gt", "evidence_in_gt", "gt_class", "score", "flags", "reasons", "thumbnail",
)


@dataclass
class AuditResult:
    """What :func:`dsxai.auditing.audit` found.

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


# ----------------------------------------------------------------------------------------------- assembling


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 4) if present else None


def _class_figures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per class (by id): mask count, flagged count, mean shares, pointing rate, mean confidence and IoU."""
    classes = []
    for cid in sorted({r["class_id"] for r in rows}):
        sel = [r for r in rows if r["class_id"] == cid]
        means = {k: _mean([r[k] for r in sel]) for k in ("evidence_inside", "evidence_ring", "evidence_outside")}
        classes.append({
            "class_id": cid, "class": sel[0]["class"], "masks": len(sel), "flagged": sum(bool(r["flags"]) for r in sel),
            **means, "pointing_rate": _mean([float(r["pointing_hit"]) for r in sel]),
            "confidence": _mean([r["confidence"] for r in sel]), "iou_gt": _mean([r["iou_gt"] for r in sel]),
        })
    return classes


def assemble(records: list[dict[str, Any]], settings: dict[str, Any], out: Path | None) -> AuditResult:
    """The result of a run from its per-image records (``image``, ``path``, ``status``, ``error``, ``gt``,
    ``warning``, ``rows``), in image order."""
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
    return AuditResult(rows=rows, images=images, summary=summary, classes=_class_figures(rows), settings=settings,
                       out=out)


# ----------------------------------------------------------------------------------------------- files


def _csv(rows: list[dict[str, Any]]) -> str:
    """``audit.csv``: flags joined by ``;``, reasons by `` | ``, None as an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (";".join(row[k]) if k == "flags" else " | ".join(row[k]) if k == "reasons" else
                             "" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    return buffer.getvalue()


def write_outputs(result: AuditResult) -> None:
    """``audit.json``, ``audit.csv``, ``report.html`` and ``manifest.json`` into ``result.out``."""
    from .page import report_html

    out = result.out
    if out is None:
        raise ValueError("the audit result has no output folder to write to")
    doc = {"format": FORMAT, "settings": {k: v for k, v in result.settings.items() if k != "kind"},
           "summary": result.summary, "classes": result.classes, "images": result.images, "masks": result.rows}
    write_atomic(out / JSON_FILE, (json.dumps(doc, indent=1) + "\n").encode())
    write_atomic(out / CSV_FILE, _csv(result.rows).encode())
    write_atomic(out / HTML_FILE, report_html(result).encode())
    thumbs = [row["thumbnail"] for row in result.rows if row.get("thumbnail")]
    # lists exactly this run's files; thumbnails of an earlier run into the same folder are removed
    write_manifest(out, MANIFEST, {"format": FORMAT}, [JOURNAL, JSON_FILE, CSV_FILE, HTML_FILE, *thumbs])


# ----------------------------------------------------------------------------------------------- thumbnails


def _crop_box(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a square about three times the box (at least 64 px), inside the
    image; the whole image when that square would cover most of it."""
    h, w = size
    x1, y1, x2, y2 = box
    side = max(64.0, 3.0 * max(x2 - x1, y2 - y1))
    if side >= 0.7 * max(h, w):
        return 0, h, 0, w
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = int(np.clip(round(cx - side / 2), 0, max(w - side, 0)))
    top = int(np.clip(round(cy - side / 2), 0, max(h - side, 0)))
    return top, min(h, top + int(side)), left, min(w, left + int(side))


def thumbnail(image: np.ndarray, detections: Any, maps: Tensor, k: int, ring_px: float,
              title: str = "") -> np.ndarray:
    """Two panels around mask ``k``: the image with the mask outlined, and the map (scaled to its own peak)
    with mask and ring; under them the colour bar from 0 to that peak, titled ``title`` (method @ layers)."""
    import cv2

    from ..colorbar import with_colorbar
    from ..metrics import dilate
    from ..render import draw_mask_contours, overlay

    one = detections[[k]]
    heat = maps[k].detach().float().cpu()
    peak = float(heat.max())
    heat = heat / peak if peak > 0 else heat
    left = draw_mask_contours(image, one)
    right = draw_mask_contours(overlay(image, heat, 0.55), one)
    ring = dilate(one.masks, ring_px)[0].numpy().astype(np.uint8)
    contours, _ = cv2.findContours(ring, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(right, contours, -1, (255, 255, 255), 1)
    top, bottom, lft, rgt = _crop_box(tuple(float(v) for v in one.boxes[0]), image.shape[:2])
    panels = [p[top:bottom, lft:rgt] for p in (left, right)]
    scale = 192 / max(bottom - top, rgt - lft)
    size = (max(1, int(round((rgt - lft) * scale))), max(1, int(round((bottom - top) * scale))))
    interp = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
    panels = [cv2.resize(p, size, interpolation=interp) for p in panels]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    return with_colorbar(np.concatenate([panels[0], gap, panels[1]], 1), "jet", title, size=panels[0].shape[:2])


def write_thumbnails(out: Path, name: str, image: np.ndarray, detections: Any, maps: Tensor,
                     rows: list[dict[str, Any]], which: str, title: str = "") -> None:
    """A thumbnail PNG per row of image ``name`` (``which``: "flagged", "all" or "none"), its relative path
    set in the row's ``thumbnail``; ``title`` goes under the colour bar."""
    from ..render import write_png

    for row in rows:
        if which == "all" or (which == "flagged" and row["flags"]):
            rel = f"{THUMBS}/{name}_m{row['mask']}.png"
            write_png(out / rel, thumbnail(image, detections, maps, row["mask"], row["ring_px"], title))
            row["thumbnail"] = rel

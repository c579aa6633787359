"""Every option of :func:`dsxai.auditing.audit`, checked once, before any model is loaded or file written."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..validation import check_conf, check_imgsz, check_max_pixels, check_non_negative
from .figures import MAX_OUTSIDE, MIN_CONFIDENCE, MIN_IOU, RING_FRAC, RING_PX

__all__ = ["AuditConfig", "THUMBNAILS"]

#: which masks get a thumbnail PNG
THUMBNAILS = ("flagged", "all", "none")


@dataclass
class AuditConfig:
    """The options of an audit, in their canonical types; construction raises ValueError (FileNotFoundError for
    a missing masks folder) naming the bad option, the same words for Python callers and the CLI.

    Attributes:
        masks: ground truth as label images, pixel value = class id of the model: a folder holding
            ``<image stem>.png`` per image, or a list with one path / ``[H, W]`` array (or None) per image.
            The adapter's background class (0 when it has none, e.g. YOLO) means "no object": for a model
            whose class 0 is a real class, give COCO annotations instead.
        coco: ground truth as COCO annotations (a JSON path or dict), matched by ``file_name``; categories
            map to the model's classes by name (by id only for models whose class names are ids), else by
            ``class_map``; a category no class maps to is ignored with a warning naming it.
        out: folder for the journal, ``audit.json``, ``audit.csv``, ``report.html`` and thumbnails; None
            writes nothing.
        method: CAM method (default ``layercam``); layers: layer names (default
            :func:`dsxai.layers.audit_layers`).
        classes: audit masks of these classes only (names or ids); an unknown name fails up front.
        min_area: masks smaller than this (pixels of the original image) are not audited.
        device: torch device of the model; arch: architecture of a state-dict checkpoint
            (``dsxai.adapters.resolve``); trust: load a checkpoint path with full pickle, which can run code
            from the file (warns); adapter_options: passed to the adapter when the audit builds it (e.g.
            ``{"imgsz": 640}``).
        resume: continue the journal in ``out``: images it already holds without error are skipped (the
            settings must match). Without it an existing journal is started over.
        ring_px, ring_frac: ring width ``max(ring_px, ring_frac * sqrt(mask area), one layer cell)`` pixels.
        max_outside, min_confidence, min_iou: flag thresholds (README, "Audit").
        conf: score threshold of instance segmenters (None: the adapter's default).
        thumbnails: "flagged" (default), "all" or "none": which masks get a thumbnail PNG.
        progress: show a progress bar on stderr.
        class_map: ``{model_class_name_or_id: coco_category_name}`` when the category names are not the
            model's; without it, no category matching by name is an error.
        max_pixels: refuse images above this many pixels (default ``dsxai.imaging.MAX_PIXELS``).
    """

    masks: Any = None
    coco: Any = None
    out: str | os.PathLike | None = None
    method: str | None = None
    layers: Sequence[str] | str | None = None
    classes: Sequence[int | str] | int | str | None = None
    min_area: float = 100
    device: str | None = None
    resume: bool = False
    arch: str | None = None
    ring_px: float = RING_PX
    ring_frac: float = RING_FRAC
    max_outside: float = MAX_OUTSIDE
    min_confidence: float = MIN_CONFIDENCE
    min_iou: float = MIN_IOU
    conf: float | None = None
    thumbnails: str = "flagged"
    progress: bool = True
    adapter_options: dict[str, Any] | None = field(default=None)
    class_map: dict[str, str] | None = None
    max_pixels: int | None = None
    trust: bool = False

    def __post_init__(self) -> None:
        if self.masks is not None and self.coco is not None:
            raise ValueError("give ground truth either as masks= (label PNGs) or as coco= (annotations), not both")
        if self.thumbnails not in THUMBNAILS:
            raise ValueError(f"thumbnails must be 'flagged', 'all' or 'none', got {self.thumbnails!r}")
        self.max_outside = check_conf(self.max_outside, "max_outside")
        self.min_confidence = check_conf(self.min_confidence, "min_confidence")
        self.min_iou = check_conf(self.min_iou, "min_iou")
        self.ring_px = check_non_negative("ring_px", self.ring_px)
        self.ring_frac = check_non_negative("ring_frac", self.ring_frac)
        self.min_area = check_non_negative("min_area", self.min_area)
        if self.conf is not None:
            self.conf = check_conf(self.conf)
        if self.max_pixels is not None:
            check_max_pixels(self.max_pixels)
        self.adapter_options = dict(self.adapter_options or {})
        if self.adapter_options.get("imgsz") is not None:
            check_imgsz(self.adapter_options["imgsz"])
        if isinstance(self.layers, str):
            self.layers = [self.layers]
        self.layers = list(self.layers) if self.layers else None
        self.out = Path(self.out) if self.out is not None else None
        if isinstance(self.masks, (str, Path)) and not Path(self.masks).is_dir():
            raise FileNotFoundError(f"ground-truth mask folder not found: {Path(self.masks)}")

    @property
    def thresholds(self) -> dict[str, float]:
        """The flag thresholds, as :func:`dsxai.auditing.figures.flag_mask` takes them."""
        return {"max_outside": self.max_outside, "min_confidence": self.min_confidence, "min_iou": self.min_iou}

    @property
    def mask_dir(self) -> Path | None:
        """The folder of label PNGs, when ``masks`` names one."""
        return Path(self.masks) if isinstance(self.masks, (str, Path)) else None

    @property
    def ground_truth(self) -> str:
        """Where the ground truth comes from: "masks", "coco" or "none"."""
        return "masks" if self.masks is not None else ("coco" if self.coco is not None else "none")

"""The benchmark's options, checked once, and the names of the files a run writes.

Why one place: the CLI and Python callers get the same refusals, before any output is written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..metrics import SPANS
from ..runs import check_output_folder
from ..validation import check_conf, check_imgsz, check_max_pixels, check_non_negative, check_positive_int, \
    check_steps

__all__ = ["METRICS", "DEFAULT_METHODS", "JOURNAL", "CONFIG", "RESULTS", "PAIRS",
           "SUMMARY", "MANIFEST", "SYNTHETIC_DIR", "BenchError", "BenchConfig", "check_bench_options", "read_class_map",
           "resume_key"]

#: metric keys of results.json, in table order
METRICS: tuple[str, ...] = (
    "pointing_game_box", "pointing_game_mask", "energy_box", "energy_mask", "iou_box", "iou_mask",
    "iou_box_mean_thr", "iou_mask_mean_thr", "loc_acc_box", "deletion_auc", "insertion_auc",
)
DEFAULT_METHODS: tuple[str, ...] = ("eigencam", "gradcam", "hirescam", "layercam")
#: the files of a run in ``out`` (``manifest.json`` lists exactly those of the last run)
JOURNAL, CONFIG, RESULTS, PAIRS, SUMMARY, MANIFEST = ("journal.jsonl", "config.json", "results.json", "pairs.csv",
                                                      "summary.md", "manifest.json")
#: ``dsxai bench --synthetic`` writes its COCO set here, inside ``out``: the run's own data, not a user's input
SYNTHETIC_DIR = "synthetic"


class BenchError(ValueError):
    """A user-facing benchmark problem (bad annotations, nothing to compare, ...)."""


def check_bench_options(*, limit: Any = None, steps: Any = 20, conf: Any = 0.25, match_iou: Any = 0.5,
                        threshold: Any = 0.5, tolerance: Any = 15.0, gallery: Any = 2, imgsz: Any = None,
                        max_pixels: Any = None, batch_size: Any = None, workers: Any = 1) -> None:
    """The numeric options of :func:`dsxai.bench.run_benchmark`, refused (BenchError) before any output."""
    try:
        if limit is not None:
            check_positive_int("limit", limit)
        check_steps(steps)
        if batch_size is not None:
            check_positive_int("batch_size", batch_size)
        check_conf(conf)
        check_conf(match_iou, "match_iou")
        check_conf(threshold, "threshold")
        check_non_negative("tolerance", tolerance)
        check_non_negative("gallery", gallery)
        if imgsz is not None:
            check_imgsz(imgsz)
        if max_pixels is not None:
            check_max_pixels(max_pixels)
        check_positive_int("workers", workers)
    except ValueError as exc:
        raise BenchError(str(exc)) from None


def read_class_map(class_map: dict[str, str] | str | Path | None) -> dict[str, str] | None:
    """A class map given as a dict or as a JSON file of one (``{model_class_name_or_id: coco_category_name}``)."""
    if not isinstance(class_map, (str, Path)):
        return class_map
    path = Path(class_map)
    if not path.is_file():
        raise FileNotFoundError(f"class map {path} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchError(f"class map {path} is not valid JSON ({exc}); expected "
                         "{\"model_class_name_or_id\": \"coco_category_name\"}") from None
    if not isinstance(data, dict):
        raise BenchError(f"class map {path} must be a JSON object {{model_class: coco_category_name}}")
    return data


@dataclass
class BenchConfig:
    """Every option of :func:`dsxai.bench.run_benchmark`, checked and normalised on construction.

    model: an Adapter, a registered name (``"shapes-yolo"``) or a checkpoint path (:func:`dsxai.adapters.resolve`);
    annotations, images: the COCO instances json and the folder its ``file_name`` entries live in; out: the
    output folder. methods: CAM method names (lower-cased). limit: the first ``limit`` images (by id) holding an
    object of a benchmarked category. categories: COCO category names to keep (default: every mapped one).
    class_map: ``{model_class_name_or_id: coco_category_name}`` or a JSON file of it (read here). seed: torch
    and the bootstrap. resume: skip images finished in ``out/journal.jsonl`` (same settings required).
    faithfulness: deletion / insertion AUCs, off unless asked (``2 + 2 M T (K - 1)`` forwards per image; see
    :mod:`dsxai.bench.faithfulness`). steps: K of those curves; span: their fraction axis, ``"image"`` (the D-RISE
    protocol) or ``"box"`` (each detection's box area, :func:`dsxai.metrics.deletion_insertion`). batch_size:
    perturbed images per forward (None: measured on the first image,
    :func:`dsxai.bench.faithfulness.measure_batch_size`).
    tolerance: pointing-game tolerance in pixels; threshold: binarisation threshold of the IoU metrics;
    match_iou: detection-to-object IoU of a pair; conf: detection threshold.
    explain_model: maps from this module (e.g. :func:`randomized_copy`), detections from the adapter's model.
    gallery: best and worst pairs drawn per method (0 = none). trust: full-pickle checkpoint loading.
    max_pixels: refuse larger images (default ``dsxai.imaging.MAX_PIXELS``).
    workers: images run on this many Ray workers when > 1; ray_address: join that Ray cluster
    (:mod:`dsxai.bench.distributed`; the ``scale`` extra).
    """

    model: Any
    annotations: str | Path
    images: str | Path
    out: Path
    methods: Sequence[str] = DEFAULT_METHODS
    limit: int | None = None
    categories: Sequence[str] | None = None
    class_map: dict[str, str] | str | Path | None = None
    seed: int = 0
    device: str | None = None
    resume: bool = False
    imgsz: int | None = None
    arch: str | None = None
    faithfulness: bool = False
    steps: int = 20
    span: str = "image"
    batch_size: int | None = None
    tolerance: float = 15.0
    threshold: float = 0.5
    match_iou: float = 0.5
    conf: float = 0.25
    explain_model: nn.Module | None = field(default=None, repr=False)
    gallery: int = 2
    progress: bool = True
    max_pixels: int | None = None
    trust: bool = False
    workers: int = 1
    ray_address: str | None = None

    def __post_init__(self) -> None:
        from ..drise import is_drise
        from ..integrated import is_ig
        from ..methods import get_method
        from ..window import split_window

        check_bench_options(limit=self.limit, steps=self.steps, conf=self.conf, match_iou=self.match_iou,
                            threshold=self.threshold, tolerance=self.tolerance, gallery=self.gallery,
                            imgsz=self.imgsz, max_pixels=self.max_pixels, batch_size=self.batch_size,
                            workers=self.workers)
        self.workers = int(self.workers)
        self.out = Path(self.out)
        check_output_folder(self.out, [a for a in (self.annotations,) if isinstance(a, (str, Path))],
                            scanned=[i for i in (self.images,) if isinstance(i, (str, Path))],
                            own=[self.out / SYNTHETIC_DIR])
        self.methods = [str(m).strip().lower() for m in self.methods if str(m).strip()]
        if not self.methods:
            raise BenchError("no methods given; pass e.g. methods=['gradcam', 'layercam']")
        for method in self.methods:
            try:
                base, window = split_window(method)
            except ValueError as exc:
                raise BenchError(str(exc)) from None
            if self.explain_model is not None and (is_drise(base) or is_ig(base) or window is not None):
                raise BenchError(f"{method} is not a plain CAM of a module's layers, so explain_model (maps from "
                                 f"another module) does not apply to it; drop {method} from methods or "
                                 "explain_model")
            if not (is_drise(base) or is_ig(base)):
                get_method(base)  # unknown names fail here, before any work
        self.class_map = read_class_map(self.class_map)
        self.faithfulness = bool(self.faithfulness)
        if self.span not in SPANS:
            raise BenchError(f"unknown span {self.span!r}; use 'image' (fractions of the image, the D-RISE "
                             "protocol) or 'box' (fractions of each detection's box)")

    def settings(self, categories: list[str], class_map: dict[str, str], device: str) -> dict[str, Any]:
        """The ``config`` section of results.json, given what the run resolved (mapped categories and classes)."""
        model = str(self.model) if not hasattr(self.model, "model") else type(self.model).__name__
        return {"model": model, "annotations": str(Path(self.annotations).resolve()),
                "images": str(Path(self.images).resolve()), "methods": list(self.methods),
                "categories": categories, "limit": self.limit, "seed": self.seed,
                "faithfulness": bool(self.faithfulness), "steps": int(self.steps),
                # only a box span is recorded, so runs on the image span resume as they were written
                **({} if self.span == "image" else {"span": self.span}),
                "tolerance": float(self.tolerance), "threshold": float(self.threshold),
                "match_iou": float(self.match_iou), "conf": float(self.conf), "class_map": class_map,
                "extra": {"explain_model": self.explain_model is not None, "device": device, "imgsz": self.imgsz,
                          "arch": self.arch, "max_pixels": self.max_pixels, "batch_size": self.batch_size}}


def resume_key(settings: dict[str, Any]) -> dict[str, Any]:
    """What must not change between a run and its resume: the settings less ``limit`` and ``extra``."""
    return {k: v for k, v in settings.items() if k not in ("limit", "extra")}

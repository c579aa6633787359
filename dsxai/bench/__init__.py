"""Localization benchmark: how well per-detection maps point at the objects they explain.

:func:`run_benchmark` walks a COCO-annotated image set with one detector:

1. Per image, every method explains all detections of the mapped classes in one batched call; the first
   call's detections are matched greedily by score to ground-truth objects of the same category
   (IoU >= 0.5, crowd annotations ignored). Unmatched detections and missed objects are counted.
2. Each matched (detection, object) pair is scored, for every method and for three baselines, with the
   metrics of :mod:`dsxai.metrics` against the object's box and (when the json has segmentations) its mask;
   optionally (``faithfulness=True``) with deletion / insertion AUCs of every map kind in one batched run
   per image (:mod:`dsxai.bench.faithfulness`; the run prints its forward count and an estimate first).
3. Results are appended per image to ``journal.jsonl`` (:class:`dsxai.runs.Journal`; ``resume=True`` skips
   finished images; a failing image is recorded with its error and the run goes on), then aggregated: mean
   and a seeded 95 % bootstrap CI per metric and method, a per-category breakdown, ``results.json``,
   ``pairs.csv``, ``summary.md``, a bar chart, a gallery of the best and worst pairs of each method and
   ``report.html`` (all of it on one page).

Baselines (maps that know where the object is only as much as stated): ``uniform`` (a constant map),
``center`` (a Gaussian at the image centre, sigma = (H/4, W/4)) and ``box_gaussian`` (a Gaussian at the
*detected* box centre, sigma = box size / 4: a strong baseline for box metrics).

Class mapping: :func:`dsxai.groundtruth.map_classes` (by name, else torchvision-style equal ids, else a
user's ``{model_class_name_or_id: coco_category_name}`` map).

Modules: ``config`` (options, checked once), ``score`` (matching and metrics, no model), ``per_image``
(the model's part), ``faithfulness`` (deletion / insertion of all map kinds batched, the forward plan),
``report`` (aggregation and files), ``page`` (report.html), ``run`` (the recipe), ``synthetic`` (shapes
scenes), ``distributed`` (``workers=N`` / ``ray_address=``: the images on Ray workers, results journalled
by the driver).
"""
from __future__ import annotations

from ..groundtruth import CocoGroundTruth, load_coco, map_classes
from ..metrics import BASELINES, baseline_maps
from .config import (CONFIG, DEFAULT_METHODS, JOURNAL, MANIFEST, METRICS, PAIRS, RESULTS,
                     SUMMARY, SYNTHETIC_DIR, BenchConfig, BenchError, check_bench_options)
from .page import REPORT, report_html
from ..sanity import randomized_copy
from .per_image import load_bench_adapter
from .run import run_benchmark
from .score import bootstrap_ci, match_detections, score_pairs
from .synthetic import write_synthetic_coco

__all__ = [
    "METRICS", "BASELINES", "DEFAULT_METHODS", "SYNTHETIC_DIR",
    "JOURNAL", "CONFIG", "RESULTS", "PAIRS", "SUMMARY", "MANIFEST", "REPORT", "report_html",
    "BenchError", "BenchConfig", "check_bench_options",
    "CocoGroundTruth", "load_coco", "map_classes",
    "match_detections", "baseline_maps", "score_pairs", "bootstrap_ci",
    "load_bench_adapter", "randomized_copy", "run_benchmark", "write_synthetic_coco",
]

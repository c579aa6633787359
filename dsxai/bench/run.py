"""The benchmark's recipe: options -> model -> ground truth -> journal -> images -> report."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..groundtruth import ignored_categories, keep_categories, load_coco, map_classes
from ..runs import Journal, Progress, SettingsChanged, journal_path, write_atomic, write_manifest
from .config import CONFIG, DEFAULT_METHODS, JOURNAL, MANIFEST, RESULTS, BenchConfig, BenchError, resume_key
from .distributed import check_scale, image_record, run_on_ray, uses_ray
from .faithfulness import ForwardCounter, plan_forwards
from .per_image import BenchSetup, load_bench_adapter
from .report import aggregate, write_gallery, write_outputs

__all__ = ["run_benchmark"]

log = logging.getLogger("dsxai")


def run_benchmark(model: Any, annotations: str | Path, images: str | Path, out: str | Path, *,
                  methods: Sequence[str] = DEFAULT_METHODS, limit: int | None = None,
                  categories: Sequence[str] | None = None, class_map: dict[str, str] | str | Path | None = None,
                  seed: int = 0, device: str | None = None, resume: bool = False, imgsz: int | None = None,
                  arch: str | None = None, faithfulness: bool = False, steps: int = 20, span: str = "image",
                  batch_size: int | None = None,
                  tolerance: float = 15.0, threshold: float = 0.5, match_iou: float = 0.5, conf: float = 0.25,
                  explain_model: nn.Module | None = None, gallery: int = 2, progress: bool = True,
                  max_pixels: int | None = None, trust: bool = False, workers: int = 1,
                  ray_address: str | None = None) -> dict[str, Any]:
    """Run the localization benchmark and write its outputs to ``out``; returns the ``results.json`` dict.

    The options are those of :class:`dsxai.bench.BenchConfig`, checked before any work.

    Raises:
        ValueError (BenchError): a bad option or bad annotations, before any work; every image failed (after
        the outputs are written), with the first image's error.
    """
    cfg = BenchConfig(model, annotations, images, out, methods=methods, limit=limit, categories=categories,
                      class_map=class_map, seed=seed, device=device, resume=resume, imgsz=imgsz, arch=arch,
                      faithfulness=faithfulness, steps=steps, span=span, batch_size=batch_size, tolerance=tolerance,
                      threshold=threshold, match_iou=match_iou, conf=conf, explain_model=explain_model,
                      gallery=gallery, progress=progress, max_pixels=max_pixels, trust=trust, workers=workers,
                      ray_address=ray_address)
    check_scale(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    setup = _setup(cfg)
    settings = cfg.settings([setup.gt.categories[c] for c in setup.category_ids],
                            {str(k): setup.gt.categories[v] for k, v in setup.class_to_cat.items()},
                            str(setup.adapter.device))
    records = _run_images(setup, settings)
    results = aggregate(records, settings, cfg.seed)
    if setup.forwards is not None:
        results["faithfulness_cost"] = setup.forwards.summary()
    _report(setup, results, records)
    failed = [r for r in records if r.get("status") == "error"]
    if records and len(failed) == len(records):
        raise BenchError(f"every image failed ({len(records)}; see {cfg.out / RESULTS}); first error: "
                         f"{failed[0]['error']}")
    return results


def _setup(cfg: BenchConfig) -> BenchSetup:
    """Ground truth, model and the class -> category map of the benchmarked categories; BenchError when the
    annotations are bad or no class maps to them."""
    try:
        gt = load_coco(cfg.annotations, cfg.images)
    except FileNotFoundError:
        raise
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    adapter = load_bench_adapter(cfg.model, arch=cfg.arch, device=cfg.device, imgsz=cfg.imgsz, trust=cfg.trust)
    try:
        class_to_cat = map_classes(adapter.class_names, gt.categories, cfg.class_map)
        if cfg.categories:
            class_to_cat = keep_categories(class_to_cat, gt.categories, cfg.categories)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    if not cfg.categories:
        ignored = ignored_categories(gt.coco.dataset, set(class_to_cat.values()))
        if ignored:
            warnings.warn(f"COCO categories {', '.join(ignored)} are not classes of the model; their objects are "
                          "not benchmarked (give a class map to map them)", stacklevel=3)
    return BenchSetup(cfg, adapter, gt, class_to_cat)


def _run_images(setup: BenchSetup, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every selected image's record, in id order: resumed from the journal or processed now (a failing
    image is recorded with its error and the run goes on)."""
    cfg, out = setup.cfg, setup.cfg.out
    key = resume_key(settings)
    path = journal_path(out, JOURNAL)
    try:
        journal = Journal(path, key, resume=cfg.resume, compare=list(key))
    except SettingsChanged as exc:
        raise BenchError(str(exc)) from None
    write_atomic(out / CONFIG, json.dumps({"key": key, "config": settings}, indent=2))
    torch.manual_seed(cfg.seed)
    image_ids = setup.gt.image_ids(setup.category_ids, cfg.limit)
    done = {int(r["image_id"]): _plain(r) for r in journal.done.values()}
    todo = [i for i in image_ids if i not in done]
    log.info("benchmark: %d images (%d already done), methods %s", len(image_ids), len(image_ids) - len(todo),
             cfg.methods)
    ray = uses_ray(cfg.workers, cfg.ray_address)
    with _progress(setup, todo, ray) as bar:
        def finish(image_id: int, rec: dict[str, Any]) -> None:
            journal.append(str(image_id), rec, ok=rec["status"] == "ok")
            done[image_id] = rec
            if setup.forwards is None:
                bar.update(1)

        if ray:  # records stream back as images finish, in any order
            run_on_ray(setup, todo, finish)
        else:
            for image_id in todo:
                finish(image_id, image_record(setup, image_id))
    return [done[i] for i in image_ids if i in done]  # id order: the same aggregate for any worker count


def _progress(setup: BenchSetup, todo: list[int], ray: bool = False) -> Progress:
    """The run's one bar: over images, or over forwards when the run measures faithfulness in this process
    (nearly all of its cost); then the forward count and its estimate are printed first and counted as they
    run. Ray workers report whole images, so a Ray run counts images."""
    cfg = setup.cfg
    if not cfg.faithfulness or ray:
        return Progress(len(todo), unit="img", desc="bench", enabled=cfg.progress)
    plan = plan_forwards(setup, todo)
    bar = Progress(plan.total, unit="fwd", desc="bench forwards", enabled=cfg.progress)
    bar.say(plan.describe())
    setup.forwards = ForwardCounter(planned=plan.total, bar=bar)
    return bar


def _plain(stored: dict[str, Any]) -> dict[str, Any]:
    """A journal item as the image record it was made from (less the journal's own fields)."""
    return {k: v for k, v in stored.items() if k not in ("kind", "key", "ok")}


def _report(setup: BenchSetup, results: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """results.json first (a failing picture must not lose the numbers), the gallery, the other files and
    the manifest listing exactly this run's files (an earlier run's pictures in the folder are removed)."""
    out, k = setup.cfg.out, setup.cfg.gallery
    write_atomic(out / RESULTS, json.dumps(results, indent=2))
    galleries: list[Path] = []
    if k > 0:
        try:
            galleries = write_gallery(out, setup, records, int(k))
        except Exception as exc:  # noqa: BLE001 - a picture must not lose the numbers
            log.warning("gallery failed: %s", exc)
    written = write_outputs(out, results, records, galleries)
    write_manifest(out, MANIFEST, {"format": "dsxai.bench/1"},
                   [CONFIG, JOURNAL, *(p.relative_to(out).as_posix() for p in written + galleries)])

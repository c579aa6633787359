"""Localization benchmark: how well per-detection maps point at the objects they explain.

:func:`run_benchmark` walks a COCO-annotated image set with one detector:

1. Per image, every method explains all detections of the mapped classes in one batched call
   (``adapter.explain``); the first call's detections are matched greedily by score to ground-truth objects of
   the same category (IoU >= 0.5, crowd annotations ignored). Unmatched detections and missed objects are
   counted.
2. Each matched (detection, object) pair is scored, for every method and for three baselines, with the
   metrics of :mod:`dsxai.metrics` against the object's box and (when the json has segmentations) its mask;
   optionally with deletion / insertion AUCs (:func:`dsxai.metrics.deletion_insertion`, costly).
3. Results are appended per image to ``journal.jsonl`` (``resume=True`` skips finished images; a failing
   image is recorded with its error and the run goes on), then aggregated: mean and a seeded 95 % bootstrap
   CI per metric and method, a per-category breakdown, ``results.json``, ``pairs.csv``, ``summary.md``, a bar
   chart and a gallery of the best and worst pairs of each method.

Baselines (maps that know where the object is only as much as stated):

* ``uniform``: a constant map (pointing game = the grown region's share of the image, see the tie rule).
* ``center``: a Gaussian at the image centre with sigma = (H/4, W/4).
* ``box_gaussian``: a Gaussian at the *detected* box centre with sigma = (box height / 4, box width / 4),
  i.e. a map that only uses the detection itself: a strong baseline for box metrics.

Class mapping: model class names are matched to COCO category names (case- and ``_``/space-insensitive: the
80 YOLO names and torchvision's 91 COCO names match as they are); when no name matches, model class ids equal
to COCO category ids are used (torchvision's 91-index labels); a user file ``{model_class_name_or_id:
coco_category_name}`` overrides both.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import groundtruth
from . import metrics as M
from .detections import Detections
from .runs import append_json_line, check_output_folder, journal_path, read_json, read_json_lines, write_atomic, \
    write_manifest
from .groundtruth import annotation_mask, coco_index, norm_name, read_coco
from .metrics import BASELINES, baseline_maps
from .validation import check_conf, check_imgsz, check_max_pixels, check_non_negative, check_positive_int, \
    check_steps
from .pipeline import explain_maps

__all__ = [
    "METRICS",
    "BASELINES",
    "DEFAULT_METHODS",
    "CocoGroundTruth",
    "load_coco",
    "map_classes",
    "match_detections",
    "baseline_maps",
    "score_pairs",
    "bootstrap_ci",
    "load_bench_adapter",
    "run_benchmark",
    "write_synthetic_coco",
]

log = logging.getLogger("dsxai")

#: metric keys of results.json, in table order
METRICS: tuple[str, ...] = (
    "pointing_game_box", "pointing_game_mask", "energy_box", "energy_mask", "iou_box", "iou_mask",
    "iou_box_mean_thr", "iou_mask_mean_thr", "loc_acc_box", "deletion_auc", "insertion_auc",
)
DEFAULT_METHODS: tuple[str, ...] = ("eigencam", "gradcam", "hirescam", "layercam")
#: faithfulness is on by default only for runs of at most this many images (``faithfulness=None``)
FAITHFULNESS_AUTO_LIMIT = 50
#: the files of a run in ``out`` (``manifest.json`` lists exactly those of the last run)
JOURNAL, CONFIG, RESULTS, PAIRS, SUMMARY, MANIFEST = ("journal.jsonl", "config.json", "results.json", "pairs.csv",
                                                      "summary.md", "manifest.json")
#: ``dsxai bench --synthetic`` writes its COCO set here, inside ``out``: the run's own data, not a user's input
SYNTHETIC_DIR = "synthetic"


class BenchError(ValueError):
    """A user-facing benchmark problem (bad annotations, nothing to compare, ...)."""


# ----------------------------------------------------------------------------------------------- ground truth


@dataclass
class CocoGroundTruth:
    """A loaded COCO instances file and the image folder it describes."""

    coco: Any  # pycocotools.coco.COCO
    images_dir: Path
    path: Path

    @property
    def categories(self) -> dict[int, str]:
        return {int(c["id"]): str(c["name"]) for c in self.coco.dataset.get("categories", [])}

    def has_segmentations(self) -> bool:
        return any(a.get("segmentation") for a in self.coco.dataset.get("annotations", [])[:1000])

    def image_path(self, image_id: int) -> Path:
        return self.images_dir / self.coco.imgs[image_id]["file_name"]

    def objects(self, image_id: int, category_ids: Iterable[int]) -> dict[str, Any]:
        """Non-crowd objects of ``category_ids`` in an image: ``ann_ids``, ``boxes`` xyxy, ``categories``,
        ``masks`` (bool ``[N, H, W]`` or None when an annotation has no segmentation)."""
        info = self.coco.imgs[image_id]
        h, w = int(info["height"]), int(info["width"])
        cats = set(int(c) for c in category_ids)
        anns = [a for a in self.coco.imgToAnns.get(image_id, [])
                if int(a["category_id"]) in cats and not a.get("iscrowd", 0)]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], np.float32).reshape(-1, 4)
        masks = None
        if anns and all(a.get("segmentation") for a in anns):
            masks = np.stack([annotation_mask(self.coco, a) for a in anns])
            if masks.shape[1:] != (h, w):
                raise BenchError(f"annotation masks of image {image_id} are {masks.shape[1:]} but the image "
                                 f"entry says {(h, w)}; fix height/width in the json")
        return {"ann_ids": [int(a["id"]) for a in anns], "boxes": boxes,
                "categories": [int(a["category_id"]) for a in anns], "masks": masks, "size": (h, w)}


def load_coco(annotations: str | Path, images_dir: str | Path) -> CocoGroundTruth:
    """Load a COCO instances json (:func:`dsxai.groundtruth.read_coco`); clear errors for a missing, corrupt
    or non-COCO file."""
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotations {path} not found; pass --coco PATH/instances.json")
    images = Path(images_dir)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} not found; pass --images DIR (file_name entries of the "
                                "json are relative to it)")
    try:
        data, _ = read_coco(path)
    except FileNotFoundError:
        raise
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    return CocoGroundTruth(coco_index(data), images, path)


def _norm(name: str) -> str:
    return norm_name(name)


def map_classes(class_names: dict[int, str], categories: dict[int, str],
                mapping: dict[str, str] | None = None) -> dict[int, int]:
    """Model class id -> COCO category id (see :func:`dsxai.groundtruth.map_classes`); BenchError when
    nothing maps."""
    try:
        return groundtruth.map_classes(class_names, categories, mapping)
    except ValueError as exc:
        raise BenchError(str(exc)) from None


def _preview(d: dict[int, str], n: int = 8) -> str:
    items = [f"{k}: {v}" for k, v in list(d.items())[:n]]
    return "{" + ", ".join(items) + (", ..." if len(d) > n else "") + "}"


# ----------------------------------------------------------------------------------------------- matching


def match_detections(det_boxes: Tensor, det_scores: Tensor, det_cats: Sequence[int], gt_boxes: Tensor,
                     gt_cats: Sequence[int], iou: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy matching by descending score: each detection takes the free object of its category with the
    highest IoU (``>= iou``). Returns ``(detection index, object index, IoU)`` triples."""
    pairs: list[tuple[int, int, float]] = []
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return pairs
    from torchvision.ops import box_iou

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


# ----------------------------------------------------------------------------------------------- baselines


# ----------------------------------------------------------------------------------------------- scoring


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


# ----------------------------------------------------------------------------------------------- models


def load_bench_adapter(model: Any, arch: str | None = None, device: str | None = None, imgsz: int | None = None,
                       trust: bool = False):
    """The adapter for ``model`` from :func:`dsxai.adapters.resolve` (an Adapter, a registered name such as
    ``"shapes-yolo"``, a checkpoint path or a model object), checked to be a detector.
    ``trust``: full-pickle checkpoint loading (see :func:`dsxai.adapters.resolve`).
    Raises :class:`BenchError` for a model without per-box targets (semantic segmenters)."""
    from .adapters import resolve

    adapter = resolve(model, arch=arch, device=device, trust=trust, **({"imgsz": imgsz} if imgsz else {}))
    if getattr(adapter, "task", "detect") == "segment":
        raise BenchError(f"{type(adapter).__name__} is a semantic segmenter: the localization benchmark needs a "
                         "detector (per-box targets), e.g. a YOLO or torchvision detection checkpoint")
    return adapter


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every parameterised layer re-initialised (``reset_parameters``) under a
    fixed seed: the model-randomisation sanity check (Adebayo et al. 2018)."""
    twin = copy.deepcopy(model)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in twin.modules():
            if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                module.reset_parameters()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
    finally:
        torch.random.set_rng_state(gen_state)
    return twin


def _explain(adapter: Any, image: np.ndarray, method: str, options: dict[str, Any],
             explain_model: nn.Module | None) -> tuple[Detections, Tensor]:
    """One image, all its detections in one batched call."""
    if explain_model is None:
        dets, maps = explain_maps(adapter, image, method=method, **options)
        return dets[0], maps[0]
    # model randomisation: decode detections with the adapter's model, take the maps of ``explain_model``
    from .methods import get_method

    batch = adapter.preprocess(image)
    target = adapter.target(batch, "boxes", **options)
    was_training = adapter.model.training
    adapter.model.eval()
    try:
        with torch.no_grad():
            target(adapter.model(batch.tensor))
    finally:
        adapter.model.train(was_training)
    explain_model.eval()
    result = get_method(method)(explain_model, adapter.default_layers).explain(batch.tensor, target)
    maps = result.maps[0] if not isinstance(result.maps, list) else result.maps[0]
    return target.detections[0], batch.geometries[0].maps_to_original(maps)


def _align(reference: Detections, other: Detections) -> list[int]:
    """Index in ``other`` of each reference detection (the same boxes unless the model is nondeterministic)."""
    if len(other) == len(reference) and torch.allclose(other.boxes, reference.boxes, atol=1e-3):
        return list(range(len(reference)))
    if len(other) == 0:
        raise RuntimeError("a method's explain call found no detections where the first one did")
    from torchvision.ops import box_iou

    return box_iou(reference.boxes, other.boxes).argmax(1).tolist()


# ----------------------------------------------------------------------------------------------- runner


@dataclass
class _Config:
    model: str
    annotations: str
    images: str
    methods: list[str]
    categories: list[str] | None
    limit: int | None
    seed: int
    faithfulness: bool
    steps: int
    tolerance: float
    threshold: float
    match_iou: float
    conf: float
    class_map: dict[str, str] | None
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> dict[str, Any]:
        """What must not change between a run and its resume."""
        d = dict(self.__dict__)
        d.pop("limit")
        d.pop("extra")
        return d


def _journal_records(path: Path) -> dict[int, dict[str, Any]]:
    """Image id -> its latest record; a line cut by a kill is skipped, so that image runs again."""
    return {int(rec["image_id"]): rec for rec in read_json_lines(path) if "image_id" in rec}


def _process_image(adapter: Any, gt: CocoGroundTruth, image_id: int, class_to_cat: dict[int, int],
                   category_ids: list[int], cfg: _Config, explain_model: nn.Module | None) -> dict[str, Any]:
    from .imaging import load_image

    info = gt.coco.imgs[image_id]
    image = load_image(gt.image_path(image_id), cfg.extra.get("max_pixels"))
    h, w = image.shape[:2]
    if (h, w) != (int(info["height"]), int(info["width"])):
        raise BenchError(f"{gt.image_path(image_id)} is {w}x{h} but the json says {info['width']}x{info['height']}")
    objs = gt.objects(image_id, category_ids)
    options = {"conf": cfg.conf, "classes": sorted(class_to_cat)}
    reference: Detections | None = None
    pairs: list[tuple[int, int, float]] = []
    per_method: dict[str, list[dict[str, Any]]] = {}
    timing: dict[str, float] = {}
    for mi, method in enumerate(cfg.methods):
        t0 = time.perf_counter()
        dets, maps = _explain(adapter, image, method, options, explain_model)
        timing[method] = time.perf_counter() - t0
        if reference is None:
            reference = dets
            cats = [class_to_cat.get(int(c), -1) for c in dets.labels]
            pairs = match_detections(dets.boxes, dets.scores, cats, torch.from_numpy(objs["boxes"]),
                                     objs["categories"], cfg.match_iou)
            if not pairs:
                break
        index = _align(reference, dets)
        sel = [index[d] for d, _, _ in pairs]
        per_method[method] = _score_selection(maps[sel], objs, pairs, cfg, adapter, image, reference, "method")
    counts = {"gt": len(objs["ann_ids"]),
              "detections": 0 if reference is None else len(reference),
              "matched": len(pairs)}
    counts["unmatched_detections"] = counts["detections"] - counts["matched"]
    counts["missed_gt"] = counts["gt"] - counts["matched"]
    per_baseline: dict[str, list[dict[str, Any]]] = {}
    if pairs:
        device = adapter.device
        boxes = reference.boxes[[d for d, _, _ in pairs]].to(device)
        for name in BASELINES:
            per_baseline[name] = _score_selection(baseline_maps(name, boxes, (h, w)), objs, pairs, cfg, adapter,
                                                  image, reference, "baseline")
    pair_info = [{"det": d, "ann_id": objs["ann_ids"][g], "category_id": objs["categories"][g],
                  "category": gt.categories.get(objs["categories"][g], str(objs["categories"][g])),
                  "det_score": float(reference.scores[d]), "det_box": reference.boxes[d].tolist(),
                  "gt_box": objs["boxes"][g].tolist(), "match_iou": iou} for d, g, iou in pairs]
    return {"image_id": image_id, "file_name": info["file_name"], "status": "ok", "counts": counts,
            "pairs": pair_info, "methods": per_method, "baselines": per_baseline, "seconds": timing}


def _score_selection(maps: Tensor, objs: dict[str, Any], pairs: list[tuple[int, int, float]], cfg: _Config,
                     adapter: Any, image: np.ndarray, reference: Detections, kind: str) -> list[dict[str, Any]]:
    g_idx = [g for _, g, _ in pairs]
    gt_boxes = torch.from_numpy(objs["boxes"][g_idx])
    gt_masks = None if objs["masks"] is None else torch.from_numpy(objs["masks"][g_idx])
    scores = score_pairs(maps, gt_boxes, gt_masks, cfg.tolerance, cfg.threshold)
    n = len(pairs)
    if cfg.faithfulness:
        faith = M.deletion_insertion(adapter, image, reference[[d for d, _, _ in pairs]], maps, steps=cfg.steps)
        scores["deletion_auc"] = faith.deletion_auc.tolist()
        scores["insertion_auc"] = faith.insertion_auc.tolist()
    else:
        scores["deletion_auc"] = [None] * n
        scores["insertion_auc"] = [None] * n
    return [{k: scores[k][i] for k in METRICS} for i in range(n)]


def _select_images(gt: CocoGroundTruth, category_ids: list[int], limit: int | None) -> list[int]:
    wanted = set(category_ids)
    ids = [i for i in sorted(gt.coco.imgs)
           if any(int(a["category_id"]) in wanted and not a.get("iscrowd", 0) for a in gt.coco.imgToAnns.get(i, []))]
    return ids[:limit] if limit is not None else ids


def run_benchmark(model: Any, annotations: str | Path, images: str | Path, out: str | Path, *,
                  methods: Sequence[str] = DEFAULT_METHODS, limit: int | None = None,
                  categories: Sequence[str] | None = None, class_map: dict[str, str] | str | Path | None = None,
                  seed: int = 0, device: str | None = None, resume: bool = False, imgsz: int | None = None,
                  arch: str | None = None, faithfulness: bool | None = None, steps: int = 20,
                  tolerance: float = 15.0, threshold: float = 0.5, match_iou: float = 0.5, conf: float = 0.25,
                  explain_model: nn.Module | None = None, gallery: int = 2, progress: bool = True,
                  max_pixels: int | None = None, trust: bool = False) -> dict[str, Any]:
    """Run the localization benchmark and write its outputs to ``out``; returns the ``results.json`` dict.

    Args:
        model: an Adapter, a registered name (``"shapes-yolo"``) or a checkpoint path (see
            :func:`dsxai.adapters.resolve`).
        annotations, images: the COCO instances json and the folder its ``file_name`` entries live in.
        out: output folder (created).
        methods: CAM method names (:data:`dsxai.METHODS`).
        limit: the first ``limit`` images (by id) holding an object of a benchmarked category.
        categories: COCO category names to keep (default: every category some model class maps to).
        class_map: ``{model_class_name_or_id: coco_category_name}`` or a JSON file of it.
        seed: seeds torch (perturbation methods) and the bootstrap.
        resume: skip images already finished in ``out/journal.jsonl`` (same configuration required).
        faithfulness: deletion / insertion AUCs; ``None`` = on only when ``limit <= 50`` (it costs
            ``2 + 2 T (steps - 1)`` extra forwards per image, method and baseline, for T matched detections).
        steps: K of the deletion / insertion curves.
        tolerance: pointing-game tolerance in pixels; threshold: binarisation threshold of the IoU metrics.
        match_iou: detection-to-object IoU for a pair; conf: detection confidence threshold.
        explain_model: compute the maps with this module (same architecture as the adapter's model, e.g.
            :func:`randomized_copy`) while detections come from the adapter's model.
        gallery: best and worst pairs per method shown in the gallery (0 = no gallery).
        trust: load a checkpoint path with full pickle, which can run code from the file (warns).
        max_pixels: refuse images above this many pixels (default ``dsxai.imaging.MAX_PIXELS``).

    Raises:
        ValueError (BenchError): a bad option, before any work; every image failed (after the outputs
        are written), with the first image's error.
    """
    from .methods import get_method

    check_bench_options(limit=limit, steps=steps, conf=conf, match_iou=match_iou, threshold=threshold,
                         tolerance=tolerance, gallery=gallery, imgsz=imgsz, max_pixels=max_pixels)
    out = Path(out)
    check_output_folder(out, [a for a in (annotations,) if isinstance(a, (str, Path))],
                        scanned=[i for i in (images,) if isinstance(i, (str, Path))], own=[out / SYNTHETIC_DIR])
    out.mkdir(parents=True, exist_ok=True)
    methods = [str(m).strip().lower() for m in methods if str(m).strip()]
    if not methods:
        raise BenchError("no methods given; pass e.g. --methods gradcam,layercam")
    for m in methods:
        get_method(m)  # unknown names fail here, before any work
    if isinstance(class_map, (str, Path)):
        cm_path = Path(class_map)
        if not cm_path.is_file():
            raise FileNotFoundError(f"class map {cm_path} not found")
        try:
            class_map = json.loads(cm_path.read_text())
        except json.JSONDecodeError as exc:
            raise BenchError(f"class map {cm_path} is not valid JSON ({exc}); expected "
                             "{\"model_class_name_or_id\": \"coco_category_name\"}") from None
        if not isinstance(class_map, dict):
            raise BenchError(f"class map {cm_path} must be a JSON object {{model_class: coco_category_name}}")
    gt = load_coco(annotations, images)
    adapter = load_bench_adapter(model, arch=arch, device=device, imgsz=imgsz, trust=trust)
    class_to_cat = map_classes(adapter.class_names, gt.categories, class_map)
    if categories:
        wanted = {_norm(c) for c in categories}
        unknown = wanted - {_norm(n) for n in gt.categories.values()}
        if unknown:
            raise BenchError(f"categories {sorted(unknown)} are not in the annotations "
                             f"(categories: {_preview(gt.categories)})")
        class_to_cat = {k: v for k, v in class_to_cat.items() if _norm(gt.categories[v]) in wanted}
    else:
        ignored = groundtruth.ignored_categories(gt.coco.dataset, set(class_to_cat.values()))
        if ignored:
            warnings.warn(f"COCO categories {', '.join(ignored)} are not classes of the model; their objects are "
                          "not benchmarked (pass --class-map to map them)", stacklevel=2)
        if not class_to_cat:
            raise BenchError(f"no model class maps to the categories {sorted(wanted)}; pass --class-map FILE")
    category_ids = sorted(set(class_to_cat.values()))
    if faithfulness is None:
        faithfulness = limit is not None and limit <= FAITHFULNESS_AUTO_LIMIT
    cfg = _Config(model=str(model) if not hasattr(model, "model") else type(model).__name__,
                  annotations=str(Path(annotations).resolve()), images=str(Path(images).resolve()),
                  methods=methods, categories=[gt.categories[c] for c in category_ids], limit=limit, seed=seed,
                  faithfulness=bool(faithfulness), steps=int(steps), tolerance=float(tolerance),
                  threshold=float(threshold), match_iou=float(match_iou), conf=float(conf),
                  class_map={str(k): gt.categories[v] for k, v in class_to_cat.items()},
                  extra={"explain_model": explain_model is not None, "device": str(adapter.device),
                         "imgsz": imgsz, "arch": arch, "max_pixels": max_pixels})
    journal = journal_path(out, JOURNAL)
    config_path = out / CONFIG
    if resume and config_path.is_file():
        old = read_json(config_path)
        if old.get("key") != json.loads(json.dumps(cfg.key())):
            changed = sorted(k for k in cfg.key() if old.get("key", {}).get(k) != json.loads(json.dumps(cfg.key()))[k])
            raise BenchError(f"--resume: the run in {out} used other settings ({', '.join(changed)}); rerun "
                             "without --resume or use another --out")
    done = _journal_records(journal) if resume else {}
    if not resume and journal.exists():
        journal.unlink()
    write_atomic(config_path, json.dumps({"key": cfg.key(), "config": cfg.__dict__}, indent=2))

    torch.manual_seed(seed)
    image_ids = _select_images(gt, category_ids, limit)
    todo = [i for i in image_ids if done.get(i, {}).get("status") != "ok"]
    log.info("benchmark: %d images (%d already done), methods %s", len(image_ids), len(image_ids) - len(todo),
             methods)
    bar = _progress(len(todo), progress)
    for image_id in todo:
        try:
            rec = _process_image(adapter, gt, image_id, class_to_cat, category_ids, cfg, explain_model)
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            rec = {"image_id": image_id, "file_name": gt.coco.imgs[image_id].get("file_name"),
                   "status": "error", "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc(limit=4)}
            log.warning("image %s failed: %s", image_id, rec["error"])
        append_json_line(journal, rec)
        done[image_id] = rec
        bar.update(1)
    bar.close()
    records = [done[i] for i in image_ids if i in done]
    results = _aggregate(records, cfg, seed)
    write_atomic(out / RESULTS, json.dumps(results, indent=2))
    galleries: list[Path] = []
    if gallery > 0:
        try:
            galleries = _write_gallery(out, adapter, gt, records, cfg, class_to_cat, explain_model, gallery)
        except Exception as exc:  # noqa: BLE001 - a picture must not lose the numbers
            log.warning("gallery failed: %s", exc)
    written = _write_outputs(out, results, records, cfg, galleries)
    # lists exactly this run's files: an earlier run's gallery pictures in the same folder are removed
    write_manifest(out, MANIFEST, {"format": "dsxai.bench/1"},
                   [CONFIG, JOURNAL, *(p.relative_to(out).as_posix() for p in written + galleries)])
    failed = [r for r in records if r.get("status") == "error"]
    if records and len(failed) == len(records):
        raise BenchError(f"every image failed ({len(records)}; see {out / RESULTS}); first error: "
                         f"{failed[0]['error']}")
    return results


def check_bench_options(*, limit: Any = None, steps: Any = 20, conf: Any = 0.25, match_iou: Any = 0.5,
                        threshold: Any = 0.5, tolerance: Any = 15.0, gallery: Any = 2, imgsz: Any = None,
                        max_pixels: Any = None) -> None:
    """The numeric options of :func:`run_benchmark`, refused before any output is written."""
    try:
        if limit is not None:
            check_positive_int("limit", limit)
        check_steps(steps)
        check_conf(conf)
        check_conf(match_iou, "match_iou")
        check_conf(threshold, "threshold")
        check_non_negative("tolerance", tolerance)
        check_non_negative("gallery", gallery)
        if imgsz is not None:
            check_imgsz(imgsz)
        if max_pixels is not None:
            check_max_pixels(max_pixels)
    except ValueError as exc:
        raise BenchError(str(exc)) from None


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(total=total, unit="img", desc="bench", dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------- aggregation


def _summary(values: list[float | None], seed: int) -> dict[str, Any]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "ci95": [None, None], "n": 0}
    lo, hi = bootstrap_ci(vals, seed=seed)
    return {"mean": float(np.mean(vals)), "ci95": [lo, hi], "n": len(vals)}


def _aggregate(records: list[dict[str, Any]], cfg: _Config, seed: int) -> dict[str, Any]:
    ok = [r for r in records if r.get("status") == "ok"]
    counts = {"images": len(records), "images_ok": len(ok), "images_failed": len(records) - len(ok)}
    for k in ("gt", "detections", "matched", "unmatched_detections", "missed_gt"):
        counts[k] = int(sum(r["counts"][k] for r in ok))
    counts["pairs"] = counts["matched"]
    out: dict[str, Any] = {"config": cfg.__dict__, "counts": counts, "metrics": list(METRICS)}
    for kind in ("methods", "baselines"):
        names = cfg.methods if kind == "methods" else list(BASELINES)
        section: dict[str, Any] = {}
        for name in names:
            rows = [(p, m) for r in ok for p, m in zip(r["pairs"], r[kind].get(name, []))]
            entry: dict[str, Any] = {"n_pairs": len(rows)}
            for metric in METRICS:
                entry[metric] = _summary([m[metric] for _, m in rows], seed)
            by_cat: dict[str, dict[str, Any]] = {}
            for cat in sorted({p["category"] for p, _ in rows}):
                sub = [m for p, m in rows if p["category"] == cat]
                by_cat[cat] = {"n_pairs": len(sub)}
                for metric in METRICS:
                    vals = [m[metric] for m in sub if m[metric] is not None]
                    by_cat[cat][metric] = float(np.mean(vals)) if vals else None
            entry["per_category"] = by_cat
            section[name] = entry
        out[kind] = section
    out["errors"] = [{"image_id": r["image_id"], "file_name": r.get("file_name"), "error": r["error"]}
                     for r in records if r.get("status") == "error"]
    return out


def _fmt(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "–"
    return f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"


def _pairs_csv(records: list[dict[str, Any]]) -> str:
    """pairs.csv: one row per (pair, method or baseline)."""
    fh = io.StringIO(newline="")
    writer = csv.writer(fh)
    writer.writerow(["image_id", "file_name", "det", "ann_id", "category", "det_score", "match_iou", "kind",
                     "name", *METRICS])
    for r in records:
        if r.get("status") != "ok":
            continue
        for kind in ("methods", "baselines"):
            for name, rows in r[kind].items():
                for p, m in zip(r["pairs"], rows):
                    writer.writerow([r["image_id"], r["file_name"], p["det"], p["ann_id"], p["category"],
                                     f"{p['det_score']:.4f}", f"{p['match_iou']:.4f}", kind[:-1], name,
                                     *["" if m[k] is None else f"{m[k]:.6f}" for k in METRICS]])
    return fh.getvalue()


def _write_outputs(out: Path, results: dict[str, Any], records: list[dict[str, Any]], cfg: _Config,
                   galleries: Sequence[Path] = ()) -> list[Path]:
    """Write results.json, pairs.csv, metrics.png and summary.md (each atomically); returns the paths."""
    written = [write_atomic(out / RESULTS, json.dumps(results, indent=2)),
               write_atomic(out / PAIRS, _pairs_csv(records))]
    shown = [k for k in METRICS if any(results[s][n][k]["mean"] is not None
                                       for s in ("methods", "baselines") for n in results[s])]
    shown = shown or [k for k in METRICS if k not in ("deletion_auc", "insertion_auc")]
    plot = _bar_chart(out, results, shown)
    c = results["counts"]
    lines = [
        "# Localization benchmark", "",
        f"Model `{cfg.model}`, annotations `{Path(cfg.annotations).name}`, categories: "
        f"{', '.join(cfg.categories or [])}.", "",
        f"Images: {c['images_ok']} ok, {c['images_failed']} failed. Objects: {c['gt']}; detections: "
        f"{c['detections']}; matched pairs (IoU >= {cfg.match_iou}): {c['matched']}; unmatched detections: "
        f"{c['unmatched_detections']}; missed objects: {c['missed_gt']}.", "",
        f"Mean over pairs with the 95 % bootstrap CI (seed {cfg.seed}). Pointing game tolerance "
        f"{cfg.tolerance:g} px; IoU at {cfg.threshold:g} of the max; faithfulness "
        f"{f'on (K={cfg.steps})' if cfg.faithfulness else 'off'}.", "",
        "| | n | " + " | ".join(shown) + " |",
        "|---|---|" + "---|" * len(shown),
    ]
    for kind in ("methods", "baselines"):
        for name, entry in results[kind].items():
            label = name if kind == "methods" else f"*{name}* (baseline)"
            lines.append(f"| {label} | {entry['n_pairs']} | " + " | ".join(_fmt(entry[k]) for k in shown) + " |")
    if c["matched"] == 0:
        lines += ["", f"**No detection matched a ground-truth object** (detections: {c['detections']}); check "
                  "the confidence threshold (--conf), the class map (--class-map) and the image folder."]
    if plot:
        lines += ["", f"![metrics]({plot.name})"]
    if plot:
        written.append(plot)
    if galleries:  # this run's pictures only, not an earlier run's left in the folder
        lines += ["", "## Gallery", "", "Best (top row) and worst (bottom row) pairs of each method by "
                  "`energy_box` (E); the detection with its label, the ground-truth box in green.", ""]
        lines += [f"### {g.stem}\n\n![{g.stem}](gallery/{g.name})\n" for g in sorted(galleries)]
    if results["errors"]:
        lines += ["", "## Failed images", ""] + [f"- {e['file_name']}: {e['error']}" for e in results["errors"]]
    written.append(write_atomic(out / SUMMARY, "\n".join(lines) + "\n"))
    return written


def _bar_chart(out: Path, results: dict[str, Any], shown: list[str]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    names = [(k, n) for k in ("methods", "baselines") for n in results[k]]
    if not names or not shown:
        return None
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.25 * len(shown) * len(names))), 4), dpi=100)
    width = 0.8 / len(names)
    for i, (kind, name) in enumerate(names):
        entry = results[kind][name]
        means = [entry[k]["mean"] if entry[k]["mean"] is not None else np.nan for k in shown]
        lo = [m - entry[k]["ci95"][0] if entry[k]["mean"] is not None else 0 for m, k in zip(means, shown)]
        hi = [entry[k]["ci95"][1] - m if entry[k]["mean"] is not None else 0 for m, k in zip(means, shown)]
        xs = np.arange(len(shown)) + (i - (len(names) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=2, label=name + (" (baseline)" if kind == "baselines" else ""),
               hatch="//" if kind == "baselines" else None, alpha=0.9)
    ax.set_xticks(np.arange(len(shown)))
    ax.set_xticklabels(shown, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean (95% CI)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return write_atomic(out / "metrics.png", buffer.getvalue())


def _write_gallery(out: Path, adapter: Any, gt: CocoGroundTruth, records: list[dict[str, Any]], cfg: _Config,
                   class_to_cat: dict[int, int], explain_model: nn.Module | None, k: int) -> list[Path]:
    """Best and worst ``k`` pairs of each method by ``energy_box``, re-explained and drawn; the files written."""
    import cv2

    from .imaging import load_image
    from .render import draw_detections, grid, overlay, write_png

    folder = out / "gallery"
    folder.mkdir(exist_ok=True)
    written = []
    for method in cfg.methods:
        rows = [(m["energy_box"], r, j) for r in records if r.get("status") == "ok"
                for j, m in enumerate(r["methods"].get(method, []))]
        if not rows:
            continue
        rows.sort(key=lambda t: t[0])
        chosen = rows[::-1][:k] + [t for t in rows[:k] if t not in rows[::-1][:k]]
        pictures = []
        for value, r, j in chosen:
            image = load_image(gt.image_path(r["image_id"]), cfg.extra.get("max_pixels"))
            dets, maps = _explain(adapter, image, method, {"conf": cfg.conf, "classes": sorted(class_to_cat)},
                                  explain_model)
            pair = r["pairs"][j]
            ref = Detections(boxes=torch.tensor([pair["det_box"]]), scores=torch.tensor([pair["det_score"]]),
                             labels=torch.zeros(1, dtype=torch.long), image_size=image.shape[:2],
                             class_names={0: pair["category"]})
            from torchvision.ops import box_iou

            if len(dets) == 0:
                continue
            idx = int(box_iou(ref.boxes, dets.boxes).argmax())
            pic = draw_detections(overlay(image, maps[idx].cpu()), ref)
            x1, y1, x2, y2 = (int(round(v)) for v in pair["gt_box"])
            cv2.rectangle(pic, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), (0, 255, 0), 1)
            cv2.putText(pic, f"E={value:.2f}", (2, pic.shape[0] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (255, 255, 255), 1, cv2.LINE_AA)
            side = 256
            scale = side / max(pic.shape[:2])
            pic = cv2.resize(pic, (max(1, int(pic.shape[1] * scale)), max(1, int(pic.shape[0] * scale))))
            canvas = np.full((side, side, 3), 255, np.uint8)
            canvas[:pic.shape[0], :pic.shape[1]] = pic
            pictures.append(canvas)
        if pictures:
            picture = grid(pictures, columns=max(1, k))
            written.append(write_png(folder / f"{method}.png", picture))
    return written


# ----------------------------------------------------------------------------------------------- synthetic


def write_synthetic_coco(out_dir: str | Path, scenes: int = 24) -> tuple[Path, Path]:
    """Shapes-world test scenes (``TEST_SEED``) as a COCO set; returns ``(annotations json, images dir)``."""
    from .shapes import make_scenes, write_coco
    from .zoo import TEST_SEED

    try:
        scenes = check_positive_int("scenes", scenes)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    out_dir = Path(out_dir)
    path = write_coco(make_scenes(scenes, TEST_SEED), out_dir)
    return path, out_dir / "images"

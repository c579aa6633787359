"""One image of the benchmark: explain every detection with each method, match, score.

Why apart from the runner: this is the only part that runs the model, so the runner and the report
stay free of model code.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..boxes import box_iou
from ..detections import Detections
from ..drise import is_drise
from ..integrated import is_ig
from ..groundtruth import CocoGroundTruth
from ..imaging import load_image
from ..pipeline import explain_maps
from ..window import split_window
from .config import BenchConfig, BenchError
from .faithfulness import ForwardCounter, add_faithfulness, image_faithfulness
from .score import match_detections, score_baselines, score_maps

__all__ = ["BenchSetup", "load_bench_adapter", "explain_image", "process_image"]


@dataclass
class BenchSetup:
    """What every image of a run needs: the checked options, the model, the ground truth, the class map."""

    cfg: BenchConfig
    adapter: Any
    gt: CocoGroundTruth
    class_to_cat: dict[int, int]
    #: counts the faithfulness forwards (and advances the run's bar) when the run measures faithfulness
    forwards: ForwardCounter | None = None
    #: the faithfulness batch size this process measured (``cfg.batch_size`` None: see
    #: :func:`dsxai.bench.faithfulness.measure_batch_size`)
    batch_size: int | None = None

    @property
    def category_ids(self) -> list[int]:
        return sorted(set(self.class_to_cat.values()))

    def load(self, image_id: int) -> np.ndarray:
        """The RGB image of ``image_id`` (refused above ``max_pixels``)."""
        return load_image(self.gt.image_path(image_id), self.cfg.max_pixels)


def load_bench_adapter(model: Any, arch: str | None = None, device: str | None = None, imgsz: int | None = None,
                       trust: bool = False):
    """The adapter for ``model`` from :func:`dsxai.adapters.resolve` (an Adapter, a registered name such as
    ``"shapes-yolo"``, a checkpoint path or a model object), checked to be a detector.
    ``trust``: full-pickle checkpoint loading (see :func:`dsxai.adapters.resolve`).
    Raises :class:`BenchError` for a model without per-box targets (semantic segmenters)."""
    from ..adapters import resolve

    adapter = resolve(model, arch=arch, device=device, trust=trust, **({"imgsz": imgsz} if imgsz else {}))
    if getattr(adapter, "task", "detect") == "segment":
        raise BenchError(f"{type(adapter).__name__} is a semantic segmenter: the localization benchmark needs a "
                         "detector (per-box targets), e.g. a YOLO or torchvision detection checkpoint")
    return adapter


def explain_image(setup: BenchSetup, image: np.ndarray, method: str) -> tuple[Detections, Tensor]:
    """All detections of the mapped classes in one image and their maps ``[N, H, W]``, in one batched call.

    With ``explain_model`` the detections come from the adapter's model and the maps from that module.
    """
    adapter, options = setup.adapter, {"conf": setup.cfg.conf, "classes": sorted(setup.class_to_cat)}
    explain_model = setup.cfg.explain_model
    if explain_model is None:
        base = split_window(method)[0]
        quiet = {"progress": False} if is_drise(base) or is_ig(base) else None  # the run's bar counts images
        dets, maps = explain_maps(adapter, image, method=method, method_options=quiet, **options)
        return dets[0], maps[0]
    from ..methods import get_method

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
    return target.detections[0], batch.geometries[0].maps_to_original(result.maps[0])


def align(reference: Detections, other: Detections) -> list[int]:
    """Index in ``other`` of each reference detection (the same boxes unless the model is nondeterministic)."""
    if len(other) == len(reference) and torch.allclose(other.boxes, reference.boxes, atol=1e-3):
        return list(range(len(reference)))
    if len(other) == 0:
        raise RuntimeError("a method's explain call found no detections where the first one did")
    return box_iou(reference.boxes, other.boxes).argmax(1).tolist()


def process_image(setup: BenchSetup, image_id: int) -> dict[str, Any]:
    """The journal record of one image: counts, matched pairs, per-pair scores of each method and baseline."""
    cfg, gt = setup.cfg, setup.gt
    info = gt.coco.imgs[image_id]
    image = setup.load(image_id)
    h, w = image.shape[:2]
    if (h, w) != (int(info["height"]), int(info["width"])):
        raise BenchError(f"{gt.image_path(image_id)} is {w}x{h} but the json says {info['width']}x{info['height']}")
    objs = gt.objects(image_id, setup.category_ids)
    reference: Detections | None = None
    pairs: list[tuple[int, int, float]] = []
    per_method: dict[str, list[dict[str, Any]]] = {}
    maps_of: dict[str, Tensor] = {}
    timing: dict[str, float] = {}
    for method in cfg.methods:
        t0 = time.perf_counter()
        dets, maps = explain_image(setup, image, method)
        timing[method] = time.perf_counter() - t0
        if reference is None:
            reference = dets
            cats = [setup.class_to_cat.get(int(c), -1) for c in dets.labels]
            pairs = match_detections(dets.boxes, dets.scores, cats, torch.from_numpy(objs["boxes"]),
                                     objs["categories"], cfg.match_iou)
            if not pairs:
                break
            score = _scorer(setup, objs, pairs)
        index = align(reference, dets)
        maps_of[method] = maps[[index[d] for d, _, _ in pairs]]
        per_method[method] = score(maps_of[method])
    per_baseline: dict[str, list[dict[str, Any]]] = {}
    if pairs:
        boxes = reference.boxes[[d for d, _, _ in pairs]].to(setup.adapter.device)
        per_baseline = score_baselines(boxes, (h, w), score)
        if cfg.faithfulness:
            t0 = time.perf_counter()
            faith = image_faithfulness(setup, image, reference[[d for d, _, _ in pairs]], maps_of, setup.forwards)
            add_faithfulness({**per_method, **per_baseline}, faith)
            timing["faithfulness"] = time.perf_counter() - t0
    return {"image_id": image_id, "file_name": info["file_name"], "status": "ok",
            "counts": _counts(len(objs["ann_ids"]), 0 if reference is None else len(reference), len(pairs)),
            "pairs": _pair_info(gt, objs, reference, pairs), "methods": per_method, "baselines": per_baseline,
            "seconds": timing}


def _scorer(setup: BenchSetup, objs: dict[str, Any],
            pairs: list[tuple[int, int, float]]) -> Callable[[Tensor], list[dict[str, Any]]]:
    """Maps ``[T, H, W]`` of the matched detections -> their scores against the matched objects (deletion /
    insertion are added by :func:`dsxai.bench.faithfulness.image_faithfulness`, all map kinds at once)."""
    cfg = setup.cfg
    g_idx = [g for _, g, _ in pairs]
    gt_boxes = torch.from_numpy(objs["boxes"][g_idx])
    gt_masks = None if objs["masks"] is None else torch.from_numpy(objs["masks"][g_idx])
    return partial(score_maps, gt_boxes=gt_boxes, gt_masks=gt_masks, tolerance=cfg.tolerance,
                   threshold=cfg.threshold)


def _counts(gt: int, detections: int, matched: int) -> dict[str, int]:
    return {"gt": gt, "detections": detections, "matched": matched,
            "unmatched_detections": detections - matched, "missed_gt": gt - matched}


def _pair_info(gt: CocoGroundTruth, objs: dict[str, Any], reference: Detections | None,
               pairs: list[tuple[int, int, float]]) -> list[dict[str, Any]]:
    """What the report needs of each matched pair: ids, category, scores and both boxes."""
    categories = gt.categories
    return [{"det": d, "ann_id": objs["ann_ids"][g], "category_id": objs["categories"][g],
             "category": categories.get(objs["categories"][g], str(objs["categories"][g])),
             "det_score": float(reference.scores[d]), "det_box": reference.boxes[d].tolist(),
             "gt_box": objs["boxes"][g].tolist(), "match_iou": iou} for d, g, iou in pairs]

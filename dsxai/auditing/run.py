""":func:`audit`: options -> model -> images -> ground truth -> journal -> one row per mask -> report.

Why a recipe of small steps: each step is tested on its own, and the run reads as what it does.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
from torch import Tensor

from ..colorbar import caption
from ..groundtruth import Truth
from ..imaging import find_image_files
from ..runs import Journal, Progress, check_output_folder, journal_path, unique_stems
from .config import AuditConfig
from .figures import MAX_OUTSIDE, MIN_CONFIDENCE, MIN_IOU, RING_FRAC, RING_PX, flag_mask, mask_figures, truth_figures
from .report import FORMAT, JOURNAL, AuditResult, assemble, write_outputs, write_thumbnails
from .truth import TruthSource

__all__ = ["audit", "AuditPlan", "ImageItem", "find_images", "plan_audit"]

#: settings a resumed run must share with its journal
SAME_SETTINGS = ("format", "model", "method", "layers", "targets", "ring_px", "ring_frac", "min_area",
                 "classes", "thresholds", "ground_truth")


class ImageItem(NamedTuple):
    """One input image: its unique ``name`` (names rows and thumbnails), the image, its file path (None for
    an array)."""

    name: str
    source: Any
    path: str | None

    @property
    def key(self) -> str:
        """What its journal record is keyed by: the resolved file path (an array: its name). Why not the name:
        names depend on the whole input set, so another image could take it in a resume with other inputs."""
        return str(Path(self.path).resolve()) if self.path is not None else f"array:{self.name}"


def find_images(images: Any) -> list[ImageItem]:
    """The images to audit: a folder, a file, a glob, or a list of paths / arrays; names unique over the
    whole set (``d1/a.png``, ``d2/a.png`` -> ``d1__a``, ``d2__a``)."""
    if isinstance(images, (str, Path)):
        items = list(find_image_files(images))
    elif isinstance(images, np.ndarray) and images.ndim == 3:
        items = [images]
    else:
        items = list(images)
        if not items:
            raise ValueError("no images to audit")
    paths = [str(item) if isinstance(item, (str, Path)) else None for item in items]
    names = unique_stems([p if p is not None else f"image_{k:04d}" for k, p in enumerate(paths)])
    return [ImageItem(*entry) for entry in zip(names, items, paths)]


@dataclass
class AuditPlan:
    """What the audit explains, resolved against the adapter: method, layers and their stride, targets."""

    adapter: Any
    method: str
    layers: list[str]
    stride: float
    targets: str
    target_options: dict[str, Any]
    class_ids: list[int] | None
    _cells: dict[tuple[int, int], float] = field(default_factory=dict, repr=False)

    def cell_px(self, size: tuple[int, int]) -> float:
        """One cell of the explained layer in original pixels of an image of ``size`` (letterbox, resize)."""
        if size not in self._cells:
            blank = np.zeros((*size, 3), np.uint8)
            scale = min(self.adapter.preprocess(blank).geometries[0].scale)
            self._cells[size] = self.stride / scale if self.stride else 0.0
        return self._cells[size]


def plan_audit(adapter: Any, config: AuditConfig) -> AuditPlan:
    """The method, layers, classes and targets of ``config`` checked against ``adapter``; ValueError for a
    detector without masks, an unknown method, layer or class."""
    from ..explanation import DEFAULT_METHOD, resolve_classes
    from ..layers import audit_layers, layer_stride, resolve_layers
    from ..methods import get_method

    task = getattr(adapter, "task", "detect")
    if task == "detect":
        raise ValueError(f"{type(adapter).__name__} wraps a detector without masks; the audit needs a semantic "
                         "(e.g. smp U-Net) or instance segmenter (YOLO-seg, Mask R-CNN)")
    method = config.method or DEFAULT_METHOD.get(task, "layercam")
    get_method(method)
    layers = list(config.layers) if config.layers else audit_layers(adapter)
    resolve_layers(adapter.model, layers)
    stride = layer_stride(adapter, layers)
    class_ids = resolve_classes(config.classes, adapter.class_names)
    if task == "segment":
        targets, options = "masks", {"min_area": config.min_area}
        if config.conf is not None:
            warnings.warn("conf is ignored for semantic segmenters", stacklevel=3)
    else:
        targets = "masks" if adapter.supports("masks") else "boxes"
        options = {} if config.conf is None else {"conf": config.conf}
    if class_ids is not None:
        options["classes"] = class_ids
    return AuditPlan(adapter, method, layers, stride, targets, options, class_ids)


def _settings(model: Any, plan: AuditPlan, config: AuditConfig) -> dict[str, Any]:
    """The run's settings, as the journal, ``audit.json`` and the report record them."""
    adapter = plan.adapter
    return {
        "kind": "settings", "format": FORMAT,
        "model": model if isinstance(model, str) else type(getattr(adapter, "model", adapter)).__name__,
        "adapter": type(adapter).__name__, "task": getattr(adapter, "task", "detect"), "method": plan.method,
        "layers": plan.layers, "layer_stride": round(plan.stride, 3), "targets": plan.targets,
        "ring_px": config.ring_px, "ring_frac": config.ring_frac, "min_area": config.min_area,
        "classes": plan.class_ids, "thresholds": config.thresholds, "ground_truth": config.ground_truth,
        "class_names": {str(k): v for k, v in adapter.class_names.items()},
    }


def _open_journal(config: AuditConfig, images: Any, items: list[ImageItem],
                  settings: dict[str, Any]) -> Journal | None:
    """The journal in ``config.out`` (None without ``out``), after refusing an output folder that overlaps
    the inputs: the images (and a folder given as images), the masks folder, the COCO file."""
    if config.out is None:
        return None
    files = [item.path for item in items if item.path is not None]
    if isinstance(config.coco, (str, Path)):
        files.append(str(config.coco))
    scanned = [p for p in (images, config.mask_dir) if isinstance(p, (str, Path)) and Path(p).is_dir()]
    check_output_folder(config.out, files, scanned=scanned)
    config.out.mkdir(parents=True, exist_ok=True)
    return Journal(journal_path(config.out, JOURNAL), settings, resume=config.resume, compare=SAME_SETTINGS,
                   keys=[item.key for item in items])


def _image_rows(plan: AuditPlan, config: AuditConfig, image: np.ndarray,
                truth: Truth | None) -> tuple[list[dict[str, Any]], Any, Tensor]:
    """One row per predicted mask of ``image`` (figures, flags, score), with its detections and maps."""
    from ..pipeline import explain_maps

    adapter = plan.adapter
    dets, maps = explain_maps(adapter, [image], method=plan.method, layers=plan.layers, targets=plan.targets,
                              **plan.target_options)
    d, m = dets[0], maps[0].detach().float()
    if d.masks is None:
        raise ValueError(f"{type(adapter).__name__} predicts boxes without masks; the audit needs a segmenter")
    if len(d) and getattr(adapter, "task", "") != "segment":  # instance masks: min_area applies here
        keep = [k for k, a in enumerate(d.masks.flatten(1).sum(1).tolist()) if a >= config.min_area]
        if len(keep) < len(d):
            d, m = d[keep], m[keep]
    m = m.reshape(len(d), *d.image_size)
    masks, names = d.masks.to(m.device), dict(d.class_names)
    gt_figs, gt_regions = truth_figures(masks, d.labels, truth, names) if truth is not None else (None, None)
    figs = mask_figures(m, masks, ring_px=config.ring_px, ring_frac=config.ring_frac,
                        cell_px=plan.cell_px(image.shape[:2]), gt_regions=gt_regions)
    rows = []
    for k, fig in enumerate(figs):
        label = int(d.labels[k])
        x1, y1, x2, y2 = (round(float(v), 1) for v in d.boxes[k].tolist())
        row = {"mask": k, "class_id": label, "class": names.get(label, str(label)),
               "confidence": round(float(d.scores[k]), 4), "x1": x1, "y1": y1, "x2": x2, "y2": y2, **fig,
               **(gt_figs[k] if gt_figs is not None else {"iou_gt": None, "evidence_in_gt": None, "gt_class": ""})}
        row["flags"], row["reasons"], row["score"] = flag_mask(row, config.thresholds)
        row["thumbnail"] = ""
        rows.append(row)
    return rows, d, m


def _audit_image(plan: AuditPlan, config: AuditConfig, truths: TruthSource, index: int, item: ImageItem,
                 bar: Progress) -> dict[str, Any]:
    """The record of one image: its rows, or its error (a bad image is recorded and skipped, not fatal)."""
    from ..imaging import load_image

    record: dict[str, Any] = {"image": item.name, "path": item.path, "status": "ok", "error": None, "gt": "none",
                              "warning": None, "rows": []}
    try:
        image = load_image(item.source, config.max_pixels)
        found = truths.find(index, item.name, item.path, image.shape[:2])
        record["gt"], record["warning"] = found.gt, found.warning
        if found.warning:
            bar.warn(found.warning)
        rows, dets, maps = _image_rows(plan, config, image, found.truth)
        for row in rows:
            row["image"] = item.name
        if config.out is not None:
            write_thumbnails(config.out, item.name, image, dets, maps, rows, config.thumbnails,
                             caption(plan.method, plan.layers))
        record["rows"] = rows
    except (ValueError, FileNotFoundError, TypeError, RuntimeError, OSError) as exc:
        record.update(status="error", error=f"{type(exc).__name__}: {exc}", rows=[])
        bar.say(f"error: {item.name}: {exc} (skipped)")
    return record


def _records(plan: AuditPlan, config: AuditConfig, truths: TruthSource, items: list[ImageItem],
             journal: Journal | None) -> list[dict[str, Any]]:
    """Every image's record, in order: from the journal when it holds the image, else audited and journaled."""
    records = []
    with Progress(len(items), unit="image", desc="audit", enabled=config.progress) as bar:
        for index, item in enumerate(items):
            done = journal.done.get(item.key) if journal is not None else None
            if done is not None:  # the same image; its name may differ when the input set changed
                records.append({**done, "image": item.name, "rows": [{**r, "image": item.name} for r in done["rows"]]})
            else:
                records.append(_audit_image(plan, config, truths, index, item, bar))
                if journal is not None:
                    journal.append(item.key, records[-1], ok=records[-1]["status"] == "ok")
            bar.update()
    return records


def audit(model: Any, images: Any, *, masks: Any = None, coco: Any = None, out: str | os.PathLike | None = None,
          method: str | None = None, layers: Sequence[str] | str | None = None,
          classes: Sequence[int | str] | int | str | None = None, min_area: float = 100, device: str | None = None,
          resume: bool = False, arch: str | None = None, ring_px: float = RING_PX, ring_frac: float = RING_FRAC,
          max_outside: float = MAX_OUTSIDE, min_confidence: float = MIN_CONFIDENCE, min_iou: float = MIN_IOU,
          conf: float | None = None, thumbnails: str = "flagged", progress: bool = True,
          adapter_options: dict[str, Any] | None = None, class_map: dict[str, str] | None = None,
          max_pixels: int | None = None, trust: bool = False) -> AuditResult:
    """Audit every predicted mask of ``images``: evidence inside / around / outside, pointing, confidence,
    agreement with ground truth, flags with reasons and a score (README, "Audit").

    ``model`` is whatever :func:`dsxai.adapters.resolve` takes (an adapter, a registered name such as
    ``shapes-unet``, a model, a checkpoint path); ``images`` a folder (its image files, sorted), an image
    file, a glob, or a list of paths / arrays. Every other option is documented on :class:`AuditConfig`.

    Raises FileNotFoundError / ValueError for bad inputs, before any file is written: no images, a missing
    masks folder or COCO file, an unknown class or layer, both ``masks`` and ``coco``, a resume with other
    settings. A bad image is recorded with its error and skipped; an image without ground truth is audited
    without it (``gt="missing"``, with a warning).
    """
    from ..adapters import resolve

    config = AuditConfig(masks=masks, coco=coco, out=out, method=method, layers=layers, classes=classes,
                         min_area=min_area, device=device, resume=resume, arch=arch, ring_px=ring_px,
                         ring_frac=ring_frac, max_outside=max_outside, min_confidence=min_confidence,
                         min_iou=min_iou, conf=conf, thumbnails=thumbnails, progress=progress,
                         adapter_options=adapter_options, class_map=class_map, max_pixels=max_pixels, trust=trust)
    items = find_images(images)
    adapter = resolve(model, arch=config.arch, device=config.device, trust=config.trust, **config.adapter_options)
    plan = plan_audit(adapter, config)
    truths = TruthSource(config, adapter, len(items))
    settings = _settings(model, plan, config)
    journal = _open_journal(config, images, items, settings)
    result = assemble(_records(plan, config, truths, items, journal), settings, config.out)
    if config.out is not None:
        write_outputs(result)
    return result

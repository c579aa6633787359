"""``dsxai demo``: explain held-out shapes scenes with the shipped models; no download, no GPU.

The shapes world (:mod:`dsxai.shapes`) knows every object's box and mask, so the
demo can say how well each map points at its own object, not only draw it. For
each shipped model (Ultralytics YOLOv8, torchvision Faster R-CNN, smp U-Net) and
each method, every detection or mask of a scene is explained by one batched call.
The gallery compares methods side by side; ``summary.md`` embeds it with a table
of the share of each map's energy inside its own object's mask, beside what a
Gaussian at the box centre scores (the box prior: what a map gets for free from
the box), and how often the map peaks inside its own box.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .detections import Detections
from .metrics import baseline_maps, energy_pointing_game, pointing_game
from .render import PANEL_PX, compare_methods, enlarge, grid, render_masks, titled, write_png
from .shapes import Scene, make_scenes
from .pipeline import explain_maps

METHODS = ("eigencam", "gradcam", "hirescam", "layercam")
MODELS = ("shapes-yolo", "shapes-fasterrcnn", "shapes-unet")
TITLES = {"shapes-yolo": "YOLOv8 (Ultralytics)", "shapes-fasterrcnn": "Faster R-CNN (torchvision)",
          "shapes-unet": "U-Net (segmentation-models-pytorch)"}
N_SCENES = 4


@dataclass
class _Scores:
    inside_mask: list[float] = field(default_factory=list)
    prior: list[float] = field(default_factory=list)
    peak_in_box: list[float] = field(default_factory=list)

    def row(self) -> tuple[float, float, float, int]:
        mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
        return mean(self.inside_mask), mean(self.prior), mean(self.peak_in_box), len(self.inside_mask)


def _own_masks(detections: Detections, scene: Scene) -> tuple[Tensor, Tensor]:
    """The ground-truth mask of each detection (box IoU >= 0.5, else mask IoU for segmenters)."""
    from torchvision.ops import box_iou

    truth = torch.as_tensor(scene.masks)
    if len(detections) == 0 or len(truth) == 0:
        return torch.zeros(0, *scene.size), torch.zeros(0, dtype=torch.bool)
    iou = box_iou(detections.boxes.float(), torch.as_tensor(scene.boxes, dtype=torch.float32))
    best = iou.argmax(1)
    return truth[best].float(), iou.max(1).values >= 0.5


def _score(scores: _Scores, detections: Detections, maps: Tensor, scene: Scene, prior: bool) -> None:
    maps = maps.float().cpu()
    masks, matched = _own_masks(detections, scene)
    if matched.any():
        scores.inside_mask += energy_pointing_game(maps[matched], masks[matched].bool()).tolist()
        if prior:
            box_prior = baseline_maps("box_gaussian", detections.boxes[matched], scene.size)
            scores.prior += energy_pointing_game(box_prior, masks[matched].bool()).tolist()
    scores.peak_in_box += pointing_game(maps, detections.boxes.float(), tolerance=0).tolist()


def run_demo(out: str | os.PathLike = "out/demo", methods: tuple[str, ...] = METHODS,
             models: tuple[str, ...] = MODELS, n_scenes: int = N_SCENES,
             log: Callable[[str], None] = print) -> Path:
    """Explain ``n_scenes`` held-out scenes with each shipped model and method; return ``summary.md``'s path."""
    from . import zoo

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scenes = make_scenes(n_scenes, zoo.TEST_SEED)
    table: dict[str, dict[str, _Scores]] = {}
    pictures: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for name in models:
        try:
            adapter = zoo.load_adapter(name)
        except FileNotFoundError as exc:  # a checkpoint not shipped in this build: say so, go on
            skipped[name] = str(exc).splitlines()[0]
            log(f"  {TITLES[name]}: skipped ({skipped[name]})")
            continue
        table[name] = {m: _Scores() for m in methods}
        pictures[name] = []
        for k, scene in enumerate(scenes):
            maps_by_method, detections = {}, None
            for method in methods:
                (detections,), (maps,) = explain_maps(adapter, scene.image, method=method)
                maps_by_method[method] = maps
                _score(table[name][method], detections, maps, scene, prior=True)
            image, detections, maps_by_method = _enlarged(scene.image, detections, maps_by_method)
            if adapter.task == "segment":
                panels = [titled(render_masks(image, detections, maps), method)
                          for method, maps in maps_by_method.items()]
                picture = grid(panels, columns=len(panels))
            else:
                picture = compare_methods(image, detections, maps_by_method, columns=len(maps_by_method))
            path = write_png(out / f"{name}_scene{k}.png", picture)
            pictures[name].append(path.name)
        log(f"  {TITLES[name]}: {n_scenes} scenes x {len(methods)} methods done")
    summary = _summary(out, table, pictures, methods, n_scenes, time.perf_counter() - started, skipped)
    log(f"dsxai demo: wrote {sum(map(len, pictures.values()))} pictures and {summary} "
        f"in {time.perf_counter() - started:.0f} s")
    return summary


def _enlarged(image: np.ndarray, detections: Detections, maps_by_method: dict[str, Tensor]
              ) -> tuple[np.ndarray, Detections, dict[str, Tensor]]:
    """The scene and every method's maps drawn at >= :data:`PANEL_PX` px a side (scored at the model's size)."""
    big, big_dets, maps = image, detections, {}
    for method, m in maps_by_method.items():
        big, big_dets, maps[method] = enlarge(image, detections, m, PANEL_PX)
    return big, big_dets, maps


def _summary(out: Path, table: dict[str, dict[str, _Scores]], pictures: dict[str, list[str]],
             methods: tuple[str, ...], n_scenes: int, seconds: float, skipped: dict[str, str]) -> Path:
    lines = [
        "# dsxai demo: shapes scenes explained by the shipped models", "",
        f"{n_scenes} held-out scenes (`dsxai.shapes.make_scenes({n_scenes}, TEST_SEED)`), every detection or "
        "predicted mask explained by each method in one batched call per scene. Pictures: each box shows its "
        "own map rescaled inside it (U-Net: each mask shows its own map).", "",
        "Figures per map, over detections matched to a ground-truth object (box IoU >= 0.5):", "",
        "- **energy in mask**: share of the map's total energy inside its own object's mask;",
        "- **box prior**: the same share for a Gaussian at the detected box's centre (sigma = box side / 4), "
        "what a map gets for free from the box; a map that says more than its box scores above it;",
        "- **peak in box**: how often the map's maximum lies inside its own box.", "",
    ]
    for name, rows in table.items():
        lines += [f"## {TITLES[name]}", "", "| method | energy in mask | box prior | peak in box | maps |",
                  "|---|---|---|---|---|"]
        for method in methods:
            inside, prior, peak, n = rows[method].row()
            lines.append(f"| {method} | {inside:.3f} | {prior:.3f} | {peak:.3f} | {n} |")
        lines += [""] + [f"![{name} scene {k}]({file})" for k, file in enumerate(pictures[name])] + [""]
    for name, why in skipped.items():
        lines += [f"## {TITLES[name]}", "", f"Skipped: {why}", ""]
    lines.append(f"Made in {seconds:.0f} s on {torch.get_num_threads()} CPU threads.")
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path

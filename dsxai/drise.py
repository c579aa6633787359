"""D-RISE (Petsiuk et al., CVPR 2021): black-box per-box maps for any detector.

Random grid masks hide parts of the network tensor; each masked copy goes through the adapter's own
decode, and each detection's map is the sum of the masks weighted by how well the masked copy still finds
that detection. No layer, hook or gradient is involved, so every adapter that makes box targets works
(ONNX-converted models and models without gradients included).

Why on the network tensor: the letterboxed, normalised tensor keeps every copy's geometry identical to the
original's, so the copies' boxes compare directly with the explained ones and the maps go back to the
original image the same way as every other method's (:meth:`dsxai.imaging.Geometry.maps_to_original`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from .adapter import Adapter, Batch
from .boxes import box_iou
from .detections import Detections
from .engine import normalize_maps
from .layers import preserved_state
from .runs import Progress
from .validation import check_conf, check_positive_int

__all__ = ["DRISE", "DRISE_NAME", "DEFAULT_MASKS", "DEFAULT_GRID", "DRISE_OPTIONS", "is_drise", "build_drise", "check_no_layers", "draw_grids", "grid_masks", "drise_weights",
           "drise_maps", "split_drise_options"]

#: the method name ``dsxai.explain``, ``explain_maps``, the CLI and the benchmark accept
DRISE_NAME = "drise"
#: masks per image when none are given (the paper uses ~5000; 1000 localise the shapes models' boxes)
DEFAULT_MASKS = 1000
#: cells per mask side when none are given (16, the paper's)
DEFAULT_GRID = 16
#: the options :class:`DRISE` takes (``dsxai.explain`` routes them by name, the rest go to the target)
DRISE_OPTIONS = ("masks", "grid", "p", "mask_batch", "seed", "fill", "masked_conf", "center", "progress")


def is_drise(method: Any) -> bool:
    """Whether ``method`` names D-RISE: the name (case, '-' and '_' ignored), the class or an instance."""
    if isinstance(method, DRISE) or method is DRISE:
        return True
    return isinstance(method, str) and method.lower().replace("-", "").replace("_", "") == DRISE_NAME


def _check_p(p: Any) -> float:
    """p is the share of grid cells kept; 0 or 1 would make every mask the same and every map flat."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(float(p)) or not 0 < p < 1:
        raise ValueError(f"p must be a number strictly between 0 and 1 (the share of grid cells kept), got {p!r}")
    return float(p)


def _check_fill(fill: Any) -> float:
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(float(fill)):
        raise ValueError(f"fill must be a finite number (the network-tensor value of masked pixels), got {fill!r}")
    return float(fill)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    return seed


@dataclass
class DRISE:
    """The D-RISE options, checked when built (ValueError names the option and its range).

    masks: N random masks per image (None: :data:`DEFAULT_MASKS`).
    grid: s, cells per side of each mask (None: :data:`DEFAULT_GRID`). p: share of cells kept. mask_batch: masked
    copies per forward. seed: the masks' generator seed (same seed, same maps). fill: the network-tensor
    value masked pixels take; 0 (the paper's image x mask, black for YOLO's 0..1 input) because it is a
    value the model can see as "nothing", where the image mean would keep colour evidence in hidden cells.
    masked_conf: the score threshold of the masked copies' decode, low because the paper keeps every
    proposal (a weak match still says the object was partly seen). center: subtract each detection's mean
    similarity before summing (False: the paper's plain sum). Every pixel is kept by a share p of the masks
    whatever the object, so the plain sum is mostly that shared floor (0.12 of the map's mass in the
    detection's box on 3 shapes scenes, 0.44 centred); centred, the map is the covariance of a pixel's
    visibility with the detection's similarity, clamped at 0. progress: a bar counting masks when the masks
    take more than one forward.
    """

    masks: int | None = None
    grid: int | None = None
    p: float = 0.5
    mask_batch: int = 32
    seed: int = 0
    fill: float = 0.0
    masked_conf: float = 0.01
    center: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        self.masks = check_positive_int("masks", DEFAULT_MASKS if self.masks is None else self.masks)
        self.grid = check_positive_int("grid", DEFAULT_GRID if self.grid is None else self.grid)
        self.p = _check_p(self.p)
        self.mask_batch = check_positive_int("mask_batch", self.mask_batch)
        self.seed = _check_seed(self.seed)
        self.fill = _check_fill(self.fill)
        self.masked_conf = check_conf(self.masked_conf, "masked_conf")
        if not isinstance(self.center, bool):
            raise ValueError(f"center must be True or False, got {self.center!r}")

    def explain(self, adapter: Adapter, batch: Batch, target_options: dict[str, Any]
                ) -> tuple[list[Detections], list[Tensor]]:
        """Detections of each image of ``batch`` and their maps ``[T_i, H, W]`` over the original image.

        The detections come from one decode with the user's ``target_options`` (conf, max_dets, classes...);
        the masked copies are decoded with the same options but ``masked_conf`` and the adapter's own
        ``max_dets``. Every image gets the same seeded masks, so its maps do not depend on its batch.
        """
        with preserved_state(adapter.model), torch.no_grad():
            target = adapter.target(batch, "boxes", **target_options)
            target(adapter.model(batch.tensor))
            detections = target.detections
            masked_options = {k: v for k, v in target_options.items() if k != "max_dets"}
            masked_options["conf"] = self.masked_conf
            maps = [self.image_maps(adapter, batch, b, detections[b], masked_options) for b in range(len(batch))]
        return detections, maps

    def image_maps(self, adapter: Adapter, batch: Batch, index: int, detections: Detections,
                   masked_options: dict[str, Any]) -> Tensor:
        """``[T, H, W]`` maps of one image's detections: sum of masks weighted by similarity over N (the
        paper's), min-max scaled to [0, 1] per map."""
        geometry = batch.geometries[index]
        x = batch.tensor[index:index + 1]
        h, w = x.shape[-2:]
        if len(detections) == 0:
            return x.new_zeros(0, *geometry.original_size, dtype=torch.float32)
        grids, shifts = draw_grids(self.masks, self.grid, self.p, self.seed)
        sums = x.new_zeros(len(detections), h, w, dtype=torch.float32)
        coverage = x.new_zeros(h, w, dtype=torch.float32)
        weight_sums = x.new_zeros(len(detections), dtype=torch.float32)
        step = min(self.mask_batch, adapter.max_batch or self.mask_batch)  # a fixed-batch model takes fewer
        chunks = range(0, self.masks, step)
        with Progress(self.masks, unit="mask", desc="D-RISE", enabled=self.progress and len(chunks) > 1) as bar:
            for start in chunks:
                stop = min(start + step, self.masks)
                masks = grid_masks(grids[start:stop], shifts[start:stop], (h, w)).to(x.device)
                copies = x * masks[:, None] + self.fill * (1 - masks[:, None])
                masked = Batch(copies, [batch.images[index]] * len(copies), [geometry] * len(copies))
                target = adapter.target(masked, "boxes", **masked_options)
                target(adapter.model(copies))
                weights = drise_weights(detections, target.detections)
                sums += torch.einsum("tk,khw->thw", weights.to(sums), masks.to(sums))
                coverage += masks.to(sums).sum(0)
                weight_sums += weights.to(sums).sum(1)
                bar.update(stop - start)
        if self.center:  # sum (w_k - mean w) M_k: the masks' covariance with the similarity, >= 0
            sums = (sums - (weight_sums / self.masks)[:, None, None] * coverage).clamp_min(0)
        # min-max to [0, 1] like every method's maps, so the scale compares across methods in the benchmark
        return geometry.maps_to_original(normalize_maps(sums / self.masks))


def draw_grids(n: int, cells: int, p: float, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` binary ``cells x cells`` grids (1 = kept, probability ``p``) and their shifts in [0, 1), drawn on
    the CPU from ``seed``, all at once, so the masks depend on the seed only (not on the chunking or device)."""
    generator = torch.Generator().manual_seed(seed)
    grids = (torch.rand(n, cells, cells, generator=generator) < p).float()
    shifts = torch.rand(n, 2, generator=generator)
    return grids, shifts


def grid_masks(grids: Tensor, shifts: Tensor, size: tuple[int, int]) -> Tensor:
    """Soft masks ``[K, H, W]`` in [0, 1]: each ``s x s`` grid upsampled bilinearly to ``(s+1)`` cells of
    ``ceil(H/s) x ceil(W/s)`` pixels and cropped to ``size`` at its shift (a fraction of one cell), as in RISE."""
    k, s = grids.shape[0], grids.shape[-1]
    h, w = size
    cell_h, cell_w = math.ceil(h / s), math.ceil(w / s)
    up = F.interpolate(grids[:, None], size=((s + 1) * cell_h, (s + 1) * cell_w), mode="bilinear",
                       align_corners=False)[:, 0]
    dy = (shifts[:, 0] * cell_h).long().clamp(max=cell_h - 1)
    dx = (shifts[:, 1] * cell_w).long().clamp(max=cell_w - 1)
    rows = dy[:, None] + torch.arange(h)[None]                     # [K, H]
    cols = dx[:, None] + torch.arange(w)[None]                     # [K, W]
    picked = up[torch.arange(k)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return picked.reshape(k, h, w).clamp_(0, 1)  # bilinear weights may overshoot 1 by a rounding error


def drise_weights(targets: Detections, copies: Sequence[Detections]) -> Tensor:
    """``[T, K]``: each target's best D-RISE similarity with the detections of each of K masked copies.

    Similarity = IoU x class cosine x objectness. Our detections carry one label and one score, so the class
    vector is the one-hot label scaled by the score: its cosine with the target's is 1 for the same label and
    0 otherwise, and the score stands for the objectness. A copy with no matching detection weighs 0.
    """
    device = targets.boxes.device
    weights = torch.zeros(len(targets), len(copies), device=device)
    found = [(i, d) for i, d in enumerate(copies) if len(d)]
    if not found or not len(targets):
        return weights
    boxes = torch.cat([d.boxes.to(device) for _, d in found])
    labels = torch.cat([d.labels.to(device) for _, d in found])
    scores = torch.cat([d.scores.to(device) for _, d in found])
    owner = torch.cat([torch.full((len(d),), i, device=device, dtype=torch.long) for i, d in found])
    same = (targets.labels.to(device)[:, None] == labels[None]).float()
    similarity = box_iou(targets.boxes, boxes) * same * scores[None]
    return weights.scatter_reduce(1, owner[None].expand(len(targets), -1), similarity, "amax")


def split_drise_options(options: dict[str, Any]) -> tuple[DRISE, dict[str, Any]]:
    """A :class:`DRISE` built from the options it takes (:data:`DRISE_OPTIONS`) and the options left for the
    adapter's target (``conf``, ``iou``, ``classes``, ...)."""
    mine = {k: v for k, v in options.items() if k in DRISE_OPTIONS}
    return build_drise(mine), {k: v for k, v in options.items() if k not in DRISE_OPTIONS}


def drise_maps(adapter: Adapter, batch: Batch, method: Any, layers: Any, targets: str | None,
               method_options: dict[str, Any] | None, target_options: dict[str, Any]
               ) -> tuple[list[Detections], list[Tensor]]:
    """D-RISE's side of :func:`dsxai.pipeline.explain_maps`: the options checked, then the maps.

    Raises ValueError for layers (a black-box method has none), for targets other than boxes, and for
    options given twice (a built :class:`DRISE` carries its own).
    """
    check_no_layers(layers)
    kind = targets or adapter.default_targets
    if kind != "boxes" or not adapter.supports("boxes"):
        raise ValueError(f"D-RISE explains detections' boxes; {type(adapter).__name__} with targets {kind!r} has "
                         "none: use targets='boxes' with a detector or instance segmenter")
    if isinstance(method, DRISE):
        if method_options:
            raise ValueError("a built DRISE carries its own options; pass method_options with method='drise'")
        return method.explain(adapter, batch, target_options)
    return build_drise(method_options or {}).explain(adapter, batch, target_options)


def check_no_layers(layers: Any) -> None:
    """D-RISE reads no layer: layers given with it are a ValueError (they would be silently ignored)."""
    if layers is not None and layers != []:
        raise ValueError("D-RISE is a black-box method (it masks the input and reads the detections), so it "
                         "takes no layers; leave layers=None")


def build_drise(options: dict[str, Any]) -> DRISE:
    """A :class:`DRISE` from option names; an unknown name is a ValueError that lists the known ones."""
    unknown = sorted(set(options) - set(DRISE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown D-RISE option(s) {', '.join(unknown)}; D-RISE takes {', '.join(DRISE_OPTIONS)}")
    return DRISE(**options)

"""Localization and faithfulness metrics for per-detection saliency maps.

Every localization metric is a pure, batched function on torch tensors: it takes saliency maps ``[N, H, W]``
(any non-negative scale; NaNs count as 0, negative values as 0) and one ground-truth region per map, and
returns one value per (map, region) pair, ``[N]`` float32 on the maps' device.

Regions are either boxes ``[N, 4]`` (xyxy in pixel-edge coordinates, as :class:`~dsxai.Detections` and COCO
use them) or binary masks ``[N, H, W]``; :func:`region_masks` converts them. Pixel ``(row y, col x)`` covers
``[x, x+1) x [y, y+1)`` and lies inside a box when its centre ``(x + 0.5, y + 0.5)`` does (``x1 <= x + 0.5 <
x2``), so the box ``(10, 20, 30, 40)`` holds columns 10..29 and rows 20..39.

Conventions (all tested in ``tests/test_metrics.py``):

* **Pointing game** (Zhang et al., ECCV 2016): a hit when the map's maximum lies inside the region grown by
  ``tolerance`` pixels (Euclidean: every pixel whose centre is within ``tolerance`` of a region pixel's
  centre; the growth is clipped by the image border). *Ties*: when several pixels share the maximum
  (within a relative ``1e-6``) the value is the share of those pixels inside the grown region, i.e. the
  expected hit under uniformly random tie-breaking; a unique maximum gives exactly 0 or 1 and a uniform map
  scores the grown region's share of the image (chance level), instead of an automatic hit. An all-zero
  map is a miss (0).
* **Energy pointing game** (Wang et al., Score-CAM, CVPR-W 2020): the share of the map's mass inside the
  region (not grown); 0 for an all-zero map.
* **IoU** of the map binarised at ``threshold * max`` (pixels ``>= threshold * max``) with the region; an
  all-zero map binarises to nothing (IoU 0). :func:`mean_iou` averages it over thresholds 0.1, 0.2, ..., 0.9.
* **Box localization accuracy** (Selvaraju et al., Grad-CAM, ICCV 2017): binarise at 15 % of the max, take
  the largest 8-connected component (OpenCV at the edge), its bounding box (pixel edges), hit when its IoU
  with the ground-truth box is ``>= 0.5``.
* **Deletion / insertion** (Petsiuk et al., RISE 2018; D-RISE, CVPR 2021 for detectors): see
  :func:`deletion_insertion`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .boxes import box_gaussians, gaussian_maps, paired_iou
from .detections import Detections
from .drise import drise_weights
from .regions import dilate, region_masks

__all__ = [
    "BASELINES",
    "baseline_maps",
    "region_masks",
    "dilate",
    "pointing_game",
    "energy_pointing_game",
    "binarize",
    "iou_at_threshold",
    "mean_iou",
    "largest_component_boxes",
    "box_localization_accuracy",
    "auc",
    "Faithfulness",
    "blurred",
    "deletion_insertion",
    "deletion_insertion_batch",
    "faithfulness_forwards",
    "SPANS",
    "box_areas",
    "IOU_THRESHOLDS",
]

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 10))
_TIE_RTOL = 1e-6


# ----------------------------------------------------------------------------------------------- regions


def _check_maps(maps: Tensor) -> Tensor:
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps must be a torch tensor [N, H, W]; got {type(maps).__name__}")
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"maps must be [N, H, W]; got shape {tuple(maps.shape)}")
    return torch.nan_to_num(maps.float(), nan=0.0).clamp_min(0)


def _regions_like(maps: Tensor, regions: Tensor) -> Tensor:
    masks = region_masks(regions, tuple(maps.shape[-2:]), maps.device)
    if masks.shape[0] != maps.shape[0]:
        raise ValueError(f"got {maps.shape[0]} maps but {masks.shape[0]} regions; pass one region per map")
    return masks


# ----------------------------------------------------------------------------------------------- metrics


def _maximal(maps: Tensor) -> tuple[Tensor, Tensor]:
    peak = maps.flatten(1).amax(1)
    is_max = maps >= (peak * (1 - _TIE_RTOL))[:, None, None]
    return is_max & (peak > 0)[:, None, None], peak


def _disk_offsets(radius: float, device: torch.device) -> Tensor:
    r = int(math.floor(radius))
    d = torch.arange(-r, r + 1, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    keep = (dy * dy + dx * dx) <= radius * radius
    return torch.stack([dy[keep], dx[keep]], 1)


def pointing_game(maps: Tensor, regions: Tensor, tolerance: float = 15.0) -> Tensor:
    """Pointing-game hit per pair, ``[N]`` in [0, 1] (fractional only for tied maxima; see the module doc).

    Args:
        maps: ``[N, H, W]`` saliency maps.
        regions: boxes ``[N, 4]`` xyxy or bool masks ``[N, H, W]``.
        tolerance: grow each region by this many pixels (Euclidean) before the test; 15 as in Zhang et al.
    """
    if tolerance < 0:
        raise ValueError(f"the tolerance must be >= 0 pixels; got {tolerance}")
    maps = _check_maps(maps)
    masks = _regions_like(maps, regions)
    is_max, _ = _maximal(maps)
    n_max = is_max.flatten(1).sum(1)
    inside = torch.zeros(len(maps), dtype=torch.float32, device=maps.device)
    few = (n_max > 0) & (n_max <= 256)
    if bool(few.any()):
        # a few maximal pixels: look for region pixels in the disk around each (no full-image dilation)
        points = is_max.nonzero()  # [P, 3] (map, y, x)
        points = points[few[points[:, 0]]]
        offsets = _disk_offsets(tolerance, maps.device)  # [D, 2]
        h, w = maps.shape[-2:]
        yy = points[:, 1:2] + offsets[None, :, 0]
        xx = points[:, 2:3] + offsets[None, :, 1]
        valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        found = masks[points[:, 0:1].expand_as(yy), yy.clamp(0, h - 1), xx.clamp(0, w - 1)] & valid
        inside.index_add_(0, points[:, 0], found.any(1).float())
    many = n_max > 256
    if bool(many.any()):
        grown = dilate(masks[many], tolerance)
        inside[many] = (is_max[many] & grown).flatten(1).sum(1).float()
    return torch.where(n_max > 0, inside / n_max.clamp_min(1).float(), torch.zeros_like(inside))


def energy_pointing_game(maps: Tensor, regions: Tensor) -> Tensor:
    """Share of each map's mass inside its region, ``[N]`` in [0, 1]; 0 for an all-zero map."""
    maps = _check_maps(maps)
    masks = _regions_like(maps, regions)
    total = maps.flatten(1).sum(1)
    inside = (maps * masks).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))


def binarize(maps: Tensor, threshold: float = 0.5) -> Tensor:
    """Pixels ``>= threshold * max`` of each map (bool ``[N, H, W]``); an all-zero map gives no pixel."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold is a fraction of the map's max in (0, 1]; got {threshold}")
    maps = _check_maps(maps)
    peak = maps.flatten(1).amax(1)
    return (maps >= (threshold * peak)[:, None, None]) & (peak > 0)[:, None, None]


def _mask_iou(a: Tensor, b: Tensor) -> Tensor:
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))


def iou_at_threshold(maps: Tensor, regions: Tensor, threshold: float = 0.5) -> Tensor:
    """IoU of each map binarised at ``threshold * max`` with its region, ``[N]``."""
    maps = _check_maps(maps)
    return _mask_iou(binarize(maps, threshold), _regions_like(maps, regions))


def mean_iou(maps: Tensor, regions: Tensor, thresholds: Sequence[float] = IOU_THRESHOLDS) -> Tensor:
    """:func:`iou_at_threshold` averaged over ``thresholds`` (default 0.1, 0.2, ..., 0.9), ``[N]``."""
    maps = _check_maps(maps)
    masks = _regions_like(maps, regions)
    return torch.stack([_mask_iou(binarize(maps, t), masks) for t in thresholds]).mean(0)


def largest_component_boxes(maps: Tensor, threshold: float = 0.15) -> Tensor:
    """Box (xyxy, pixel edges) around the largest 8-connected component of each map binarised at
    ``threshold * max``; ``[N, 4]`` float32 on the maps' device, all zeros for an all-zero map.

    Ties between components of equal size go to the one OpenCV labels first (raster order of its first pixel).
    """
    import cv2

    binary = binarize(maps, threshold).cpu().numpy().astype(np.uint8)
    out = np.zeros((len(binary), 4), np.float32)
    for i, b in enumerate(binary):
        n, _, stats, _ = cv2.connectedComponentsWithStats(b, connectivity=8)
        if n <= 1:
            continue
        k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y, w, h = (int(stats[k, j]) for j in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                   cv2.CC_STAT_HEIGHT))
        out[i] = (x, y, x + w, y + h)
    return torch.from_numpy(out).to(maps.device)


def box_localization_accuracy(maps: Tensor, boxes: Tensor, threshold: float = 0.15,
                              iou: float = 0.5) -> Tensor:
    """Grad-CAM localization: 1 when the box of the largest component (at ``threshold * max``) has IoU
    ``>= iou`` with the ground-truth box, else 0; ``[N]`` float32."""
    maps = _check_maps(maps)
    boxes = torch.as_tensor(boxes, dtype=torch.float32, device=maps.device).reshape(-1, 4)
    if boxes.shape[0] != maps.shape[0]:
        raise ValueError(f"got {maps.shape[0]} maps but {boxes.shape[0]} boxes; pass one box per map")
    return (paired_iou(largest_component_boxes(maps, threshold), boxes) >= iou).float()


# ----------------------------------------------------------------------------------------------- faithfulness


def auc(curve: Tensor) -> Tensor:
    """Area under curves ``[..., K+1]`` sampled at fractions 0, 1/K, ..., 1 (trapezoid rule)."""
    k = curve.shape[-1] - 1
    if k < 1:
        raise ValueError("a curve needs at least two points")
    return (curve[..., 1:] + curve[..., :-1]).sum(-1) / (2 * k)


@dataclass
class Faithfulness:
    """Deletion and insertion results of one image's detections.

    ``deletion`` / ``insertion``: curves ``[T, K+1]``, the detection's score after removing / revealing
    fractions 0, 1/K, ..., 1 of the pixels (most salient first); ``deletion_auc`` / ``insertion_auc``
    ``[T]``. Lower deletion AUC and higher insertion AUC mean a more faithful map.
    """

    deletion: Tensor
    insertion: Tensor
    deletion_auc: Tensor
    insertion_auc: Tensor


def blurred(image: Tensor, sigma: float | None = None) -> Tensor:
    """Gaussian-blurred copy of a float ``[3, H, W]`` image (sigma defaults to 5 % of the longer side)."""
    from torchvision.transforms.functional import gaussian_blur

    h, w = image.shape[-2:]
    sigma = float(sigma if sigma is not None else max(1.0, 0.05 * max(h, w)))
    k = int(2 * math.ceil(3 * sigma) + 1)
    k = min(k, 2 * ((min(h, w) - 1) // 2) + 1) if min(h, w) > 2 else 1
    if k < 3:
        return image.clone()
    return gaussian_blur(image[None], [k, k], [sigma, sigma])[0]


#: what the fraction axis of the deletion / insertion curves counts (see :func:`deletion_insertion`)
SPANS: tuple[str, ...] = ("image", "box")


def faithfulness_forwards(targets: int, kinds: int, steps: int, span: str = "image") -> int:
    """Perturbed forwards of one image for ``targets`` detections and ``kinds`` maps of each:
    ``2 + 2 * kinds * targets * (steps - 1)`` (the original and the fully-deleted image are shared by every
    curve; with ``span="box"`` each curve's last step is its own: ``steps`` instead of ``steps - 1``), 0 when
    there is nothing to test. Why here: the one formula the run's plan and its counter share."""
    if targets <= 0 or kinds <= 0:
        return 0
    return 2 + 2 * kinds * targets * (steps - (span != "box"))


def _match_score(found: Detections, box: Tensor, label: int) -> float:
    """D-RISE similarity of one perturbed image's detections to one original detection: max over detections
    of ``IoU(box) * score`` among those of the same class (0 when none)."""
    original = Detections(box.cpu().float().reshape(1, 4), [1.0], [label], found.image_size)
    return float(drise_weights(original, [found.cpu()])[0, 0])  # the one D-RISE similarity


def deletion_insertion(adapter: Any, image: Any, detections: Detections, maps: Tensor, steps: int = 20,
                       baseline: str = "blur", batch_size: int = 8, conf: float = 0.01, span: str = "image",
                       **predict_options: Any) -> Faithfulness:
    """Deletion and insertion curves (D-RISE protocol) of each detection of one image.

    For detection ``t`` with map ``maps[t]`` the pixels are ranked by saliency (ties in raster order). At step
    ``k = 0..K`` (``K = steps``) the top ``round(k / K * H * W)`` pixels are *removed* (deletion: replaced by
    the baseline image) or *revealed* (insertion: the baseline image with those pixels taken from the
    original). Every perturbed image is run through ``adapter.predict`` (batched, ``batch_size`` images a
    forward, confidence threshold ``conf`` so that weakened detections are still seen) and scored as in
    D-RISE: the best ``IoU(found box, original box) * found score`` over found detections of the original's
    class. AUCs use the trapezoid rule over the fraction axis [0, 1] and are raw scores (not divided by the
    original score), so they lie in [0, 1]. :func:`deletion_insertion_batch` does several map kinds at once.

    Args: ``adapter``: its ``predict`` is used; ``image``: the original (anything ``load_image`` takes);
    ``detections``: the ``T`` to test, as the adapter found them; ``maps``: ``[T, H, W]`` over the original
    image; ``steps``: K; ``baseline``: ``"blur"`` (Gaussian, sigma 5 % of the longer side; the default) or
    ``"mean"`` (the image's per-channel mean colour); ``batch_size``: images per ``predict`` call; ``conf``
    (low, so that weakened detections are still seen) and ``predict_options`` (e.g. ``iou``) go to ``predict``.
    ``span``: ``"image"`` (the D-RISE protocol above) or ``"box"``: step ``k`` moves the top
    ``round(k / K * A)`` pixels, ``A`` the detection's box area (at most ``H * W``), so the curve ends at one
    box's worth of pixels instead of the whole image. Why: on a small object the image span moves the whole
    object in the first step, and only the order of the background is left to compare.
    """
    predict = partial(adapter.predict, conf=conf, **predict_options)
    return deletion_insertion_batch(predict, image, detections, [maps], steps, baseline, batch_size, span=span)[0]


def deletion_insertion_batch(predict: Callable[[list[np.ndarray]], Sequence[Detections]], image: Any,
                             detections: Detections, maps: Sequence[Tensor], steps: int = 20,
                             baseline: str = "blur", batch_size: int = 8,
                             on_forward: Callable[[int], None] | None = None,
                             span: str = "image") -> list[Faithfulness]:
    """:func:`deletion_insertion` of ``M`` map kinds (``maps``: M tensors ``[T, H, W]``) of the same detections,
    one :class:`Faithfulness` per kind, in :func:`faithfulness_forwards` images.

    Why batched: the perturbed images of a step (every kind x every detection) follow each other, so
    ``predict`` (images -> their detections, e.g. an adapter's at a low ``conf``) sees chunks of
    ``batch_size`` and decodes once per chunk; the original and the fully-deleted image are run once.
    ``on_forward(n)`` is told after each chunk of ``n`` images. The numbers equal one kind at a time.
    """
    from .imaging import load_image

    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    if baseline not in ("blur", "mean"):
        raise ValueError(f"unknown baseline {baseline!r}; use 'blur' or 'mean'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if span not in SPANS:
        raise ValueError(f"unknown span {span!r}; use 'image' (fractions of the image) or 'box' (of each box)")
    rgb = load_image(image)
    kinds = [_check_faith_maps(m, detections, rgb.shape[:2]) for m in maps]
    t_count = len(detections)
    if not kinds or t_count == 0:
        return [Faithfulness(m.new_zeros(0, steps + 1), m.new_zeros(0, steps + 1), m.new_zeros(0), m.new_zeros(0))
                for m in kinds]
    areas = None if span == "image" else box_areas(detections.boxes, rgb.shape[:2])
    plan = _Perturbations(rgb, kinds, steps, baseline, areas)
    scores = torch.zeros(plan.count, t_count)  # per image: its score against each detection it tests
    for start in range(0, plan.count, batch_size):
        index = range(start, min(start + batch_size, plan.count))
        found = predict([plan.image(i) for i in index])
        if len(found) != len(index):
            raise RuntimeError(f"predict returned {len(found)} results for {len(index)} images")
        if on_forward is not None:
            on_forward(len(index))
        for i, dets in zip(index, found):
            for t in plan.targets(i):
                scores[i, t] = _match_score(dets, detections.boxes[t].reshape(1, 4), int(detections.labels[t]))
    return [_kind_curves(plan, scores, m, kinds[m].device) for m in range(len(kinds))]


def _check_faith_maps(maps: Tensor, detections: Detections, size: tuple[int, int]) -> Tensor:
    """``maps`` checked to be one map per detection over the original image."""
    maps = _check_maps(maps)
    if maps.shape[0] != len(detections):
        raise ValueError(f"got {maps.shape[0]} maps for {len(detections)} detections")
    if tuple(maps.shape[-2:]) != tuple(size):
        raise ValueError(f"maps are {tuple(maps.shape[-2:])} but the image is {tuple(size)}; pass maps over the "
                         "original image (as dsxai.pipeline.explain_maps returns them)")
    return maps


def box_areas(boxes: Tensor, size: tuple[int, int]) -> list[int]:
    """Pixels of each box clipped to an image of ``size`` (at least 1): the ``span="box"`` curves' length."""
    h, w = size
    b = boxes.detach().float().cpu().reshape(-1, 4)
    wide = (b[:, 2].clamp(0, w) - b[:, 0].clamp(0, w)).clamp_min(0)
    tall = (b[:, 3].clamp(0, h) - b[:, 1].clamp(0, h)).clamp_min(0)
    return [max(1, int(round(a))) for a in (wide * tall).tolist()]


class _Perturbations:
    """The perturbed images of one image, built on demand in step-major order: 0 the original, 1 the fully
    deleted (baseline) image, then for each inner step ``k = 1..K-1`` (``1..K`` when ``areas`` gives each
    detection's span), deletion then insertion, every curve ``j = kind * T + detection``. Why lazy: only a
    chunk of images is ever held."""

    def __init__(self, rgb: np.ndarray, kinds: list[Tensor], steps: int, baseline: str,
                 areas: list[int] | None = None) -> None:
        device = kinds[0].device
        self.rgb, self.steps, self.t_count, self.size = rgb, steps, kinds[0].shape[0], rgb.shape[:2]
        self.curves = len(kinds) * self.t_count
        h, w = self.size
        self.original = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1).float()
        self.base = (blurred(self.original) if baseline == "blur"
                     else self.original.mean((1, 2), keepdim=True).expand_as(self.original).clone())
        ranks = []
        for maps in kinds:  # rank of each pixel in the saliency order (0 = most salient), ties in raster order
            order = torch.argsort(-maps.to(device).flatten(1), dim=1, stable=True)
            rank = torch.arange(h * w, dtype=torch.int32, device=device).expand_as(order)
            ranks.append(torch.empty(order.shape, dtype=torch.int32, device=device).scatter_(1, order, rank))
        self.rank = torch.cat(ranks)  # [curves, H * W]
        spans = [h * w] * self.t_count if areas is None else [min(a, h * w) for a in areas]
        self.inner = steps - 1 if areas is None else steps
        #: per curve and inner step, how many of the top pixels move
        self.counts = [[int(round(k / steps * spans[j % self.t_count])) for k in range(1, self.inner + 1)]
                       for j in range(self.curves)]
        self.count = faithfulness_forwards(self.t_count, len(kinds), steps, "image" if areas is None else "box")

    def locate(self, i: int) -> tuple[int, int, int]:
        """``(inner step 0..K-2, mode 0 deletion / 1 insertion, curve)`` of image ``i >= 2``."""
        step, rest = divmod(i - 2, 2 * self.curves)
        return (step, *divmod(rest, self.curves))

    def targets(self, i: int) -> range:
        """The detections image ``i`` is scored against: all for the two shared images, else its curve's."""
        t = self.locate(i)[2] % self.t_count if i >= 2 else None
        return range(self.t_count) if t is None else range(t, t + 1)

    def image(self, i: int) -> np.ndarray:
        """Perturbed image ``i`` as ``H x W x 3`` uint8."""
        if i < 2:
            return self.rgb if i == 0 else self._bytes(self.base)
        step, mode, curve = self.locate(i)
        top = (self.rank[curve] < self.counts[curve][step]).view(1, *self.size)
        removed, kept = (self.base, self.original) if mode == 0 else (self.original, self.base)
        return self._bytes(torch.where(top, removed, kept))

    @staticmethod
    def _bytes(img: Tensor) -> np.ndarray:
        return img.round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()


def _kind_curves(plan: _Perturbations, scores: Tensor, kind: int, device: torch.device) -> Faithfulness:
    """Deletion and insertion curves ``[T, K+1]`` of one map kind from the scores of every perturbed image."""
    t_count, steps, inner = plan.t_count, plan.steps, plan.inner
    full, none = scores[0], scores[1]
    deletion, insertion = torch.zeros(t_count, steps + 1), torch.zeros(t_count, steps + 1)
    deletion[:, 0], deletion[:, steps], insertion[:, 0], insertion[:, steps] = full, none, none, full
    for t in range(t_count):
        first = 2 + torch.arange(inner) * 2 * plan.curves + kind * t_count + t  # deletion images of the curve
        deletion[t, 1:inner + 1], insertion[t, 1:inner + 1] = scores[first, t], scores[first + plan.curves, t]
    deletion, insertion = deletion.to(device), insertion.to(device)
    return Faithfulness(deletion, insertion, auc(deletion), auc(insertion))


# ----------------------------------------------------------------------------------------------- baselines

#: maps that need no model: what chance (``uniform``), a centre bias (``center``) and the detected box
#: itself (``box_gaussian``) score; a method must beat the box prior to say more than its box does
BASELINES: tuple[str, ...] = ("uniform", "center", "box_gaussian")


def baseline_maps(name: str, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Baseline maps ``[N, H, W]`` for detected boxes ``[N, 4]``.

    ``uniform``: all ones; ``center``: a Gaussian at the image centre, sigma = (H/4, W/4);
    ``box_gaussian``: a Gaussian at each box centre, sigma = (box height/4, box width/4).
    """
    n = len(boxes)
    h, w = size
    boxes = boxes.float()
    if name == "uniform":
        return torch.ones(n, h, w, device=boxes.device)
    if name == "center":
        c = boxes.new_tensor([w / 2, h / 2]).expand(n, 2)
        s = boxes.new_tensor([w / 4, h / 4]).expand(n, 2)
        return gaussian_maps(size, c, s)
    if name == "box_gaussian":
        return box_gaussians(boxes, size, 0.25)
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")

"""Semantic segmentation: logits -> masks -> per-mask targets, shared by the generic and smp adapters.

:func:`decode_masks` turns one image's per-class logits into masks (one per class
and connected component, or per class), :class:`SegmentationTarget` scores them
(the class logit pooled inside each mask) and :class:`SegmentationAdapter` is the
base of every segmenter adapter. One module so that predicted and user masks are
decoded and scored alike whatever the segmenter.
"""
from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dsxai.adapter import Batch
from dsxai.boxes import mask_boxes
from dsxai.detections import Detections
from dsxai.imaging import Geometry
from dsxai.targets import MaskTarget, Target

from ._preprocessing import AdapterBase

__all__ = ["class_logits", "decode_masks", "SegmentationTarget", "SegmentationAdapter"]


def class_logits(output: Any) -> Tensor:
    """Per-class logits ``[B, C, h, w]`` from a segmenter's raw output.

    Accepts a tensor, a tuple/list (first item: smp models with an auxiliary
    classifier) or a dict with ``"out"`` (torchvision segmentation models). A
    single-channel (binary, sigmoid) output ``l`` becomes the two-class logits
    ``[0, l]``, whose softmax is ``[1 - sigmoid(l), sigmoid(l)]``: class 1 is the
    foreground.
    """
    if isinstance(output, dict):
        output = output["out"] if "out" in output else next(iter(output.values()))
    if isinstance(output, (list, tuple)):
        output = output[0]
    if not isinstance(output, Tensor) or output.ndim != 4:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"a segmenter must output per-class logits [B, C, h, w]; got {shape}")
    if output.shape[1] == 1:
        output = torch.cat([torch.zeros_like(output), output], 1)
    return output


def _content_in(geometry: Geometry, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the image content on a grid of ``size`` over the network tensor."""
    nh, nw = geometry.network_size
    sy, sx = size[0] / nh, size[1] / nw
    top, left = geometry.offset
    ch, cw = geometry.content_size
    t, l_ = int(round(top * sy)), int(round(left * sx))
    return t, l_, max(1, min(size[0] - t, int(round(ch * sy)))), max(1, min(size[1] - l_, int(round(cw * sx))))


def _to_original(mask: np.ndarray, geometry: Geometry, content: tuple[int, int, int, int]) -> np.ndarray:
    """A mask on the logits grid -> bool mask over the original image (bilinear, threshold 0.5)."""
    top, left, ch, cw = content
    crop = mask[top:top + ch, left:left + cw].astype(np.float32)
    h, w = geometry.original_size
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5


def _to_grid(mask: np.ndarray, size: tuple[int, int], content: tuple[int, int, int, int]) -> np.ndarray:
    """A mask over the original image -> float weights on the logits grid (area-weighted)."""
    top, left, ch, cw = content
    data = mask.astype(np.float32)
    shrink = data.shape[0] > ch or data.shape[1] > cw
    resized = cv2.resize(data, (cw, ch), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    out = np.zeros(size, dtype=np.float32)
    out[top:top + ch, left:left + cw] = resized
    return out


def decode_masks(logits: Tensor, geometry: Geometry, *, per: str = "component", background: int | None = 0,
                 classes: Sequence[int] | None = None, min_area: float = 100, max_masks: int = 100,
                 class_names: dict[int, str] | None = None) -> tuple[Detections, Tensor, Tensor]:
    """Predicted masks of one image from its logits ``[C, h, w]`` (network grid).

    Each pixel takes its argmax class; ``per="component"`` gives one mask per
    class and 8-connected component, ``per="class"`` one mask per class present.
    Classes outside ``classes`` are skipped, and so is ``background`` unless
    ``classes`` lists it; masks
    smaller than ``min_area`` pixels of the original image (a value below 1 is a
    fraction of the image area) are dropped; the ``max_masks`` largest are kept,
    largest first. Score: the mean softmax probability of the class inside.

    Returns the :class:`Detections` (original pixels, bool masks at the original
    size), the masks on the logits grid ``[T, h, w]`` (float 0/1, what the
    targets pool over) and their classes ``[T]``.
    """
    if per not in ("component", "class"):
        raise ValueError(f"per must be 'component' or 'class', got {per!r}")
    logits = logits.detach().float()
    size = tuple(logits.shape[-2:])
    top, left, ch, cw = content = _content_in(geometry, size)
    probs = torch.softmax(logits, 0)
    labels = probs.argmax(0).cpu().numpy()
    inside = np.zeros(size, dtype=bool)
    inside[top:top + ch, left:left + cw] = True
    oh, ow = geometry.original_size
    pixel_area = (oh * ow) / float(ch * cw)  # original pixels per grid cell
    min_pixels = min_area * oh * ow if 0 < min_area < 1 else min_area
    wanted = set(range(logits.shape[0])) if classes is None else {int(c) for c in classes}
    if background is not None and classes is None:
        wanted.discard(int(background))
    found: list[tuple[int, np.ndarray, int]] = []
    for c in sorted(wanted):
        region = (labels == c) & inside
        if not region.any():
            continue
        if per == "class":
            parts = [region]
        else:
            count, comp, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
            keep = [k for k in range(1, count) if stats[k, cv2.CC_STAT_AREA] * pixel_area >= min_pixels]
            parts = [comp == k for k in keep]
        for part in parts:
            area = int(part.sum())
            if area * pixel_area >= min_pixels:
                found.append((area, part, c))
    found.sort(key=lambda item: -item[0])
    found = found[:max_masks]
    names = dict(class_names or {})
    if not found:
        return (Detections.empty(geometry.original_size, names, with_masks=True),
                logits.new_zeros((0,) + size), torch.zeros(0, dtype=torch.long))
    grid = torch.from_numpy(np.stack([part for _, part, _ in found])).to(logits.device)
    labels_t = torch.tensor([c for _, _, c in found], dtype=torch.long)
    picked = probs[labels_t.to(probs.device)]  # [T, h, w]
    scores = (picked * grid).flatten(1).sum(1) / grid.flatten(1).sum(1).clamp_min(1)
    masks = torch.from_numpy(np.stack([_to_original(part, geometry, content) for _, part, _ in found]))
    detections = Detections(boxes=mask_boxes(masks), scores=scores.cpu(), labels=labels_t,
                            image_size=geometry.original_size, class_names=names, masks=masks,
                            meta={"area": torch.tensor([a for a, _, _ in found]) * pixel_area})
    return detections, grid.float(), labels_t


def _per_image(value: Any, count: int, name: str) -> list:
    """One entry per image: a list of ``count`` entries, or (one image) that image's entry itself."""
    if value is None:
        return [None] * count
    if isinstance(value, (int, np.integer)):
        return [int(value)] * count
    if isinstance(value, (Tensor, np.ndarray)):
        if count == 1:
            return [value]
        if len(value) == count:
            return list(value)
    else:
        value = list(value)
        if count == 1:
            return [value[0]] if len(value) == 1 else [value]
        if len(value) == count:
            return value
    raise ValueError(f"{name} must be a list with one entry per image ({count} images)")


def _as_array(masks: Any) -> np.ndarray:
    if isinstance(masks, Tensor):
        return masks.detach().cpu().numpy()
    if isinstance(masks, (list, tuple)):
        return np.stack([_as_array(m) for m in masks]) if masks else np.zeros((0, 1, 1), np.float32)
    return np.asarray(masks)


class SegmentationTarget(Target):
    """One score per mask: the class logit pooled inside the mask (``reduce`` "mean" or "sum").

    On the first call it decodes the masks (:func:`decode_masks`, or the
    user's ``masks``) into :attr:`detections`; every later call (augmentation
    views, perturbed copies) pools the same masks, through
    :class:`dsxai.targets.MaskTarget`. User masks are given per image over the
    original image (``[T, H, W]`` or ``[H, W]``, bool or float weights); their
    classes default to the predicted class covering most of each mask.
    """

    def __init__(self, batch: Batch, *, per: str = "component", classes: Sequence[int] | None = None,
                 masks: Sequence[Any] | None = None, min_area: float = 100, max_masks: int = 100,
                 reduce: str = "mean", background: int | None = 0, class_names: dict[int, str] | None = None):
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        self.batch = batch
        self.per, self.min_area, self.max_masks = per, min_area, max_masks
        self.reduce, self.background, self.class_names = reduce, background, dict(class_names or {})
        self.user_masks = None if masks is None else _per_image(masks, len(batch), "masks")
        if self.user_masks is not None:
            self.user_classes = _per_image(classes, len(batch), "classes")
            self.classes = None
        else:
            self.user_classes = None
            self.classes = classes
        self.detections: list[Detections] | None = None
        self._inner: MaskTarget | None = None
        self._grid: list[Tensor] = []
        self._labels: list[Tensor] = []

    def batch_size(self, output: Any) -> int:
        return len(self.batch)

    def __call__(self, output: Any) -> Tensor | list[Tensor]:
        if self._inner is None:
            self._decode(class_logits(output))
        return self._inner(output)

    def on_copies(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        if self._inner is None:
            raise RuntimeError("the mask target scores copies only after decoding the original output")
        return self._inner.on_copies(output, image_index, rows)

    def num_targets(self, image_index: int) -> int | None:
        return None if self.detections is None else len(self.detections[image_index])

    def hflip(self, width: int) -> Target:
        if self._inner is None:
            raise RuntimeError("decode the unflipped view first")
        flipped = SegmentationTarget.__new__(SegmentationTarget)
        flipped.__dict__.update(self.__dict__)
        flipped._inner = MaskTarget([m.flip(-1) for m in self._grid], self._labels, self.reduce, select=class_logits)
        return flipped

    def _decode(self, logits: Tensor) -> None:
        detections = []
        for b, geometry in enumerate(self.batch.geometries):
            if self.user_masks is not None:
                d, grid, labels = self._user(logits[b], geometry, self.user_masks[b], self.user_classes[b])
            else:
                d, grid, labels = decode_masks(logits[b], geometry, per=self.per, background=self.background,
                                               classes=self.classes, min_area=self.min_area,
                                               max_masks=self.max_masks, class_names=self.class_names)
            detections.append(d)
            self._grid.append(grid)
            self._labels.append(labels)
        self.detections = detections
        self._inner = MaskTarget(self._grid, self._labels, self.reduce, select=class_logits)

    def _user(self, logits: Tensor, geometry: Geometry, masks: Any, classes: Any):
        logits = logits.detach().float()
        size = tuple(logits.shape[-2:])
        content = _content_in(geometry, size)
        data = _as_array(masks)
        if data.size == 0:
            data = np.zeros((0,) + tuple(geometry.original_size), np.float32)
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3 or tuple(data.shape[1:]) != tuple(geometry.original_size):
            raise ValueError(f"user masks must be [T, H, W] over the original image {geometry.original_size}; "
                             f"got {data.shape}")
        data = data.astype(np.float32)
        grid = torch.from_numpy(np.stack([_to_grid(m, size, content) for m in data])) if len(data) else \
            torch.zeros((0,) + size)
        grid = grid.to(logits.device)
        probs = torch.softmax(logits, 0)
        if classes is None:  # the predicted class that covers most of each mask
            onehot = F.one_hot(probs.argmax(0), probs.shape[0]).permute(2, 0, 1).float()
            labels = torch.einsum("thw,chw->tc", grid, onehot).argmax(1).cpu()
        else:
            labels = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
            if len(labels) == 1 and len(grid) > 1:
                labels = labels.expand(len(grid)).clone()
            if len(labels) != len(grid):
                raise ValueError(f"got {len(grid)} masks but {len(labels)} classes for one image")
        if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[0]):
            raise ValueError(f"mask classes must be in 0..{probs.shape[0] - 1}; got {labels.tolist()}")
        weight = grid.flatten(1).sum(1).clamp_min(1e-6)
        scores = (probs[labels.to(probs.device)] * grid).flatten(1).sum(1) / weight if len(labels) else \
            torch.zeros(0)
        bool_masks = torch.from_numpy(data > 0.5) if len(data) else torch.zeros((0,) + geometry.original_size,
                                                                               dtype=torch.bool)
        d = Detections(boxes=mask_boxes(bool_masks), scores=scores.cpu(), labels=labels,
                       image_size=geometry.original_size, class_names=self.class_names, masks=bool_masks)
        return d, grid.float(), labels


class SegmentationAdapter(AdapterBase):
    """Base of the semantic-segmentation adapters: the model outputs per-class logits
    ``[B, C, h, w]`` over the network tensor (any ``h, w``; they need not equal the tensor's)."""

    task = "segment"
    background: int | None = 0

    def mask_target(self, batch: Batch, per: str = "component", classes: Sequence[int] | None = None,
                    masks: Sequence[Any] | None = None, min_area: float = 100, max_masks: int = 100,
                    reduce: str = "mean", background: int | None | str = "default") -> SegmentationTarget:
        """One target per mask.

        Args:
            per: "component" (one mask per class and connected component) or
                "class" (one mask per predicted class: semantic targets).
            classes: only these classes (predicted masks), or the class of each
                user mask (one int per mask, or one for all of an image's masks).
            masks: user masks per image, over the original image: ``[T, H, W]`` or
                ``[H, W]`` (bool, or float weights); replaces the predicted masks.
            min_area: in original pixels (below 1: a fraction of the image area).
            max_masks: keep the largest ones.
            reduce: "mean" (logit averaged inside the mask, independent of its
                area) or "sum" (pytorch-grad-cam's SemanticSegmentationTarget).
            background: class skipped by predicted masks (None: none); defaults to
                the adapter's ``background``.
        """
        return SegmentationTarget(batch, per=per, classes=classes, masks=masks, min_area=min_area,
                                  max_masks=max_masks, reduce=reduce,
                                  background=self.background if background == "default" else background,
                                  class_names=self.class_names)

    def box_target(self, batch: Batch, **options: Any) -> Target:
        """A segmenter has no boxes of its own: ``targets="boxes"`` means its masks."""
        options = {k: v for k, v in options.items() if k not in ("conf", "iou", "max_dets")}
        return self.mask_target(batch, **options)

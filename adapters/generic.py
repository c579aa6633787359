"""Bring your own model: generic detector and segmenter adapters, and the parts they share.

* :class:`SegmenterAdapter` takes any module mapping images to per-class logits
  ``[B, C, h, w]`` and a preprocessing; predicted masks (one per class and
  connected component) and their per-mask targets come from the same code as
  :class:`~dsxai.adapters.smp_segmentation.SMPAdapter`.
* :class:`DetectorAdapter` takes any module and one ``decode`` function from the
  raw output to candidate boxes, labels and differentiable scores; confidence
  filter, class-aware NMS, geometry and targets are handled here.

Shared building blocks (also used by the torchvision and smp adapters):
:class:`Preprocessing` (resize, channel order, normalisation, padding, with the
:class:`~dsxai.imaging.Geometry` that undoes it), :func:`make_batch`,
:func:`decode_masks` / :class:`SegmentationTarget` (masks from logits and their
scores) and :class:`BoxMatchingTarget` (a detection target whose scores on
perturbed or mirrored copies come from matching boxes, D-RISE style).
"""
from __future__ import annotations

import inspect
import logging
from abc import abstractmethod
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from dsxai.adapter import Adapter, Batch, DetectionTarget
from dsxai.detections import Detections
from dsxai.imaging import Geometry, ImageLike, letterbox, load_images
from dsxai.layers import guess_layers
from dsxai.targets import MaskTarget, Target

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing", "make_batch",
    "class_logits", "decode_masks", "SegmentationTarget", "SegmentationAdapter", "SegmenterAdapter",
    "BoxMatchingTarget", "best_match", "DecodedDetectionTarget", "DetectorAdapter",
]

log = logging.getLogger("dsxai")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------
# Images -> network tensor
# --------------------------------------------------------------------------------------------------
@dataclass
class Preprocessing:
    """How an ``H x W x 3`` uint8 RGB image becomes one network input ``[3, h, w]``.

    The pixel values become ``(pixels * scale - mean) / std`` per channel, with
    ``mean``/``std`` in the network tensor's channel order (BGR when ``bgr``), so
    ``scale=1/255`` with ImageNet ``mean``/``std`` in [0, 1] units is the
    torchvision convention, and ``scale=1/255, mean=0, std=1`` is "divide by 255".

    Args:
        size: None keeps the image size; ``(h, w)`` or an int (square, or the
            longer side with ``resize="longest"``) is the size to resize to.
        resize: "stretch" (plain resize to ``size``, aspect not kept),
            "letterbox" (aspect kept, centred on a ``fill`` canvas of ``size``, as
            Ultralytics does) or "longest" (aspect kept, the longer side becomes
            ``size``; the padding, if any, goes bottom/right).
        interpolation: OpenCV flag of the resize (e.g. ``cv2.INTER_AREA``).
        pad_multiple: pad bottom/right so that both sides are multiples of this
            (an encoder's output stride); padded pixels hold ``pad_value`` in the
            network tensor (0 = the mean colour after normalisation).
        fill: pixel value of the letterbox canvas.
    """

    size: int | tuple[int, int] | None = None
    resize: str = "stretch"
    mean: Sequence[float] = (0.0, 0.0, 0.0)
    std: Sequence[float] = (1.0, 1.0, 1.0)
    scale: float = 1 / 255
    bgr: bool = False
    interpolation: int = cv2.INTER_LINEAR
    pad_multiple: int = 1
    pad_value: float = 0.0
    fill: int = 114

    def __post_init__(self) -> None:
        if self.resize not in ("stretch", "letterbox", "longest"):
            raise ValueError(f"resize must be 'stretch', 'letterbox' or 'longest', got {self.resize!r}")
        if self.resize == "longest" and self.size is not None and not isinstance(self.size, int):
            raise ValueError("resize='longest' needs size to be one int (the longer side)")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per channel (3)")
        if any(s == 0 for s in self.std):
            raise ValueError("std values must not be 0")
        if self.pad_multiple < 1:
            raise ValueError("pad_multiple must be at least 1")

    def __call__(self, image: np.ndarray) -> tuple[Tensor, Geometry]:
        h, w = image.shape[:2]
        if self.size is None:
            data, geometry = image, Geometry((h, w), (h, w), (0, 0), (h, w))
        elif self.resize == "letterbox":
            data, geometry = letterbox(image, self.size, fill=self.fill)
            if self.interpolation != cv2.INTER_LINEAR:  # letterbox() resizes bilinearly; redo the content
                top, left = geometry.offset
                ch, cw = geometry.content_size
                data[top:top + ch, left:left + cw] = cv2.resize(image, (cw, ch), interpolation=self.interpolation)
        else:
            if self.resize == "longest":
                ratio = self.size / max(h, w)
                th, tw = max(1, int(round(h * ratio))), max(1, int(round(w * ratio)))
            else:
                th, tw = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
            data = image if (th, tw) == (h, w) else cv2.resize(image, (tw, th), interpolation=self.interpolation)
            geometry = Geometry((h, w), (th, tw), (0, 0), (th, tw))
        if self.bgr:
            data = data[..., ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(data)).permute(2, 0, 1).float() * self.scale
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (tensor - mean) / std, geometry


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def make_batch(images: ImageLike | Sequence[ImageLike], fn: Callable[[np.ndarray], Any],
               pad_multiple: int = 1, pad_value: float = 0.0, device: torch.device | str = "cpu") -> Batch:
    """Load images, run ``fn`` on each (``-> tensor [3, h, w]`` or ``(tensor, Geometry)``)
    and pad them bottom/right to one ``[B, 3, H, W]`` tensor (sides multiples of ``pad_multiple``).

    A bare tensor from ``fn`` means a plain resize of the whole image to the tensor's size.
    """
    originals = load_images(images)
    tensors, geometries = [], []
    for image in originals:
        result = fn(image)
        if isinstance(result, (tuple, list)):
            tensor, geometry = result
        else:
            tensor = result
            if not isinstance(tensor, Tensor) or tensor.ndim != 3:
                raise ValueError("preprocess must return a tensor [3, h, w] or a (tensor, Geometry) pair")
            geometry = Geometry(image.shape[:2], tuple(tensor.shape[-2:]), (0, 0), tuple(tensor.shape[-2:]))
        tensor = torch.as_tensor(tensor)
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim != 3:
            raise ValueError(f"preprocess returned shape {tuple(tensor.shape)}; expected [C, h, w]")
        if tuple(tensor.shape[-2:]) != tuple(geometry.network_size):
            raise ValueError(f"preprocess returned a tensor of size {tuple(tensor.shape[-2:])} but a Geometry "
                             f"with network_size {geometry.network_size}")
        tensors.append(tensor.float())
        geometries.append(geometry)
    height = _round_up(max(t.shape[-2] for t in tensors), pad_multiple)
    width = _round_up(max(t.shape[-1] for t in tensors), pad_multiple)
    out = tensors[0].new_full((len(tensors), tensors[0].shape[0], height, width), pad_value)
    for i, tensor in enumerate(tensors):
        out[i, :, :tensor.shape[-2], :tensor.shape[-1]] = tensor
    geometries = [replace(g, network_size=(height, width)) for g in geometries]
    return Batch(tensor=out.to(device), images=originals, geometries=geometries)


def _tensors(output: Any) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for v in output.values() for t in _tensors(v)]
    if isinstance(output, (list, tuple)):
        return [t for v in output for t in _tensors(v)]
    return []


def _preprocessing(preprocess: Any, options: dict[str, Any]) -> tuple[Callable, int, float]:
    """Turn ``preprocess`` (None, a Preprocessing or a callable) + keyword options into ``(fn, pad, fill)``."""
    if preprocess is None:
        preprocess = Preprocessing(**options)
    elif options:
        raise ValueError(f"give either preprocess= or the options {sorted(options)}, not both")
    if isinstance(preprocess, Preprocessing):
        return preprocess, preprocess.pad_multiple, preprocess.pad_value
    if not callable(preprocess):
        raise TypeError("preprocess must be a callable image -> tensor [3, h, w] (or (tensor, Geometry)) "
                        "or a dsxai.adapters.generic.Preprocessing")
    return preprocess, 1, 0.0


class AdapterBase(Adapter):
    """Preprocessing through :func:`make_batch` and lazily guessed layers."""

    _preprocess_fn: Callable
    _pad_multiple: int = 1
    _pad_value: float = 0.0
    _layers: list[str] | None = None
    _example_size: tuple[int, int] = (256, 256)

    @property
    def default_layers(self) -> list[str]:
        if self._layers is None:
            size = tuple(_round_up(s, self._pad_multiple) for s in self._example_size)
            self._layers = guess_layers(self.model, torch.zeros(1, 3, *size))
        return self._layers

    @default_layers.setter
    def default_layers(self, layers: Sequence[str] | None) -> None:
        self._layers = None if layers is None else ([layers] if isinstance(layers, (str, nn.Module)) else list(layers))

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> Batch:
        return make_batch(images, self._preprocess_fn, self._pad_multiple, self._pad_value, self.device)


# --------------------------------------------------------------------------------------------------
# Segmentation: logits -> masks -> per-mask targets
# --------------------------------------------------------------------------------------------------
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


def _mask_boxes(masks: Tensor) -> Tensor:
    """xyxy boxes (pixel edges) of ``[N, H, W]`` bool masks; an empty mask gives zeros."""
    if masks.shape[0] == 0:
        return torch.zeros(0, 4)
    rows, cols = masks.any(2), masks.any(1)
    h, w = masks.shape[-2:]
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    y1 = torch.where(rows, ar_h, h).amin(1)
    y2 = torch.where(rows, ar_h + 1, 0).amax(1)
    x1 = torch.where(cols, ar_w, w).amin(1)
    x2 = torch.where(cols, ar_w + 1, 0).amax(1)
    boxes = torch.stack([x1, y1, x2, y2], 1).float()
    return torch.where(masks.flatten(1).any(1, keepdim=True), boxes, torch.zeros_like(boxes))


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
    detections = Detections(boxes=_mask_boxes(masks), scores=scores.cpu(), labels=labels_t,
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
        d = Detections(boxes=_mask_boxes(bool_masks), scores=scores.cpu(), labels=labels,
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


def class_name_map(class_names: Any) -> dict[int, str]:
    if class_names is None:
        return {}
    if isinstance(class_names, dict):
        return {int(k): str(v) for k, v in class_names.items()}
    return {i: str(n) for i, n in enumerate(class_names)}


class SegmenterAdapter(SegmentationAdapter):
    """Any module mapping images to per-class logits ``[B, C, h, w]``.

    Args:
        module: the segmenter (its raw output: a tensor, a tuple whose first item
            is the logits, or a dict with "out"); a single channel is a binary
            (sigmoid) output, read as classes {0: background, 1: foreground}.
        preprocess: a callable ``RGB uint8 HxWx3 -> tensor [3, h, w]`` or
            ``(tensor, Geometry)``, or a :class:`Preprocessing`; or leave it None
            and give the :class:`Preprocessing` options as keywords (``size``,
            ``mean``, ``std``, ``scale``, ``bgr``, ``resize``, ``interpolation``,
            ``pad_multiple``, ...).
        class_names: id -> name (dict or list).
        background: class skipped by predicted masks (None: keep every class).
        layers: layers to explain; by default the last feature map (see
            :func:`guess_layers`), found with one forward at first use.
    """

    def __init__(self, module: nn.Module, preprocess: Any = None, *, class_names: Any = None,
                 background: int | None = 0, layers: Sequence[str | nn.Module] | None = None,
                 **preprocessing: Any):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.model = module
        self._preprocess_fn, self._pad_multiple, self._pad_value = _preprocessing(preprocess, preprocessing)
        size = getattr(self._preprocess_fn, "size", None)
        if size is not None:
            self._example_size = (size, size) if isinstance(size, int) else tuple(size)
        self.class_names = class_name_map(class_names)
        self.background = background
        self.default_layers = layers


# --------------------------------------------------------------------------------------------------
# Detection: box targets matched on copies, and the decode-function adapter
# --------------------------------------------------------------------------------------------------
def _paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes paired element-wise, ``[..., 4]`` each -> ``[...]``."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp_min(0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp_min(0).prod(-1)
    return inter / (area_a + area_b - inter).clamp_min(1e-9)


def best_match(boxes: Tensor, candidate_boxes: Tensor, candidate_scores: Tensor,
               region: Tensor | None = None) -> Tensor:
    """D-RISE similarity: for each of T boxes ``[T, 4]``, ``max_n IoU(box_t, cand_n) * score[n, t]``.

    ``candidate_boxes`` is ``[N, 4]`` (one box per candidate) or ``[N, T, 4]`` (a
    box per candidate and target, e.g. class-specific R-CNN boxes);
    ``candidate_scores`` ``[N, T]`` is each candidate's probability of target
    t's class; candidates are first clipped to ``region`` (xyxy: the image
    content inside the network tensor, where the detections were clipped). The
    IoU is a weight without gradient: the gradient is that of the matched
    candidate's class probability. No candidate gives 0.
    """
    boxes = boxes.to(candidate_scores.device, candidate_scores.dtype)
    if candidate_scores.shape[0] == 0:
        return candidate_scores.new_zeros(boxes.shape[0]) + 0 * candidate_scores.sum()
    with torch.no_grad():
        candidate_boxes = candidate_boxes.detach().to(boxes.dtype)
        if region is not None:
            region = region.to(boxes)
            candidate_boxes = torch.maximum(torch.minimum(candidate_boxes, region[[2, 3, 2, 3]]), region[[0, 1, 0, 1]])
        if candidate_boxes.ndim == 2:
            iou = box_iou(candidate_boxes.to(boxes.dtype), boxes)  # [N, T]
        else:
            iou = _paired_iou(candidate_boxes.to(boxes.dtype), boxes[None])
    return (iou * candidate_scores).amax(0)


class BoxMatchingTarget(DetectionTarget):
    """A detection target whose scores on other outputs come from matching boxes.

    The first call decodes (subclasses: :meth:`decode`, which stores each
    detection's box in network pixels in ``meta["network_boxes"]``). On perturbed
    copies (ScoreCAM, AblationCAM) the candidates move and NMS survivors change,
    so :meth:`rescore` does not rely on which candidate survived: it asks
    :meth:`match` for the best candidate of the copy, by the D-RISE similarity
    IoU x probability of the same class (:func:`best_match`). On the unperturbed
    output this is the detection's own score (or slightly more when a
    non-suppressed overlapping candidate scores higher). Mirrored views
    (``hflip``) match the mirrored boxes the same way.
    """

    batch: Batch

    @abstractmethod
    def match(self, output: Any, image_index: int, rows: slice | None, boxes: Tensor, labels: Tensor,
              region: Tensor) -> Tensor:
        """Scores ``[K, T]`` of boxes ``[T, 4]`` (network pixels) of classes ``labels`` on rows of
        ``output``; ``region`` (xyxy) is the image content in the network tensor, for clipping."""

    def region(self, image_index: int, mirror_width: int | None = None) -> Tensor:
        """The image content inside the network tensor, xyxy (mirrored for a flipped view)."""
        geometry = self.batch.geometries[image_index]
        top, left = geometry.offset
        ch, cw = geometry.content_size
        if mirror_width is not None:
            left = mirror_width - left - cw
        return torch.tensor([left, top, left + cw, top + ch], dtype=torch.float32)

    def rescore(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        d = self.detections[image_index]
        return self.match(output, image_index, rows, d.meta["network_boxes"], d.labels, self.region(image_index))

    def hflip(self, width: int) -> Target:
        return _Mirrored(self, width)


class _Mirrored(Target):
    """A decoded box target read on the horizontally mirrored input."""

    def __init__(self, parent: BoxMatchingTarget, width: int):
        self.parent, self.width = parent, width

    @property
    def detections(self) -> list[Detections] | None:
        return self.parent.detections

    def _boxes(self, image_index: int) -> Tensor:
        boxes = self.parent.detections[image_index].meta["network_boxes"]
        return torch.stack([self.width - boxes[:, 2], boxes[:, 1], self.width - boxes[:, 0], boxes[:, 3]], 1)

    def __call__(self, output: Any) -> list[Tensor]:
        return [self.on_copies(output, b, slice(b, b + 1))[0] for b in range(len(self.parent.detections))]

    def on_copies(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        labels = self.parent.detections[image_index].labels
        return self.parent.match(output, image_index, rows, self._boxes(image_index), labels,
                                 self.parent.region(image_index, self.width))


def select_candidates(boxes: Tensor, scores: Tensor, labels: Tensor, *, conf: float, iou: float | None,
                      classes: Sequence[int] | None, max_dets: int, min_size: float = 0.0) -> Tensor:
    """Indices of the candidates kept by ``scores > conf``, the ``classes`` filter, boxes at least
    ``min_size`` wide and high, class-aware NMS at ``iou`` (None: no NMS) and ``max_dets``,
    best first."""
    scores = scores.detach()
    keep = scores > conf
    if classes is not None:
        keep &= torch.isin(labels, torch.as_tensor(list(classes), device=labels.device))
    if min_size > 0:
        wh = boxes[:, 2:] - boxes[:, :2]
        keep &= (wh >= min_size).all(1)
    index = torch.where(keep)[0]
    if iou is None:
        order = scores[index].argsort(descending=True)
        index = index[order]
    else:
        index = index[batched_nms(boxes[index].detach().float(), scores[index].float(), labels[index], iou)]
    return index[:max_dets]


def candidate_rows(count: int, rows: slice | None) -> list[int]:
    return list(range(count))[rows if rows is not None else slice(None)]


class DecodedDetectionTarget(BoxMatchingTarget):
    """The target of :class:`DetectorAdapter`: candidates from the user's ``decode``."""

    def __init__(self, adapter: "DetectorAdapter", batch: Batch, conf: float, iou: float | None,
                 classes: Sequence[int] | None, max_dets: int):
        super().__init__()
        self.adapter, self.batch = adapter, batch
        self.conf, self.iou, self.classes, self.max_dets = conf, iou, classes, max_dets
        self._cache: tuple[Any, list] | None = None

    def _candidates(self, output: Any, batch: Batch) -> list[dict[str, Tensor]]:
        if self._cache is not None and self._cache[0] is output:
            return self._cache[1]
        result = self.adapter._decode(output, batch)
        self._cache = (output, result)
        return result

    def decode(self, output: Any) -> tuple[list[Detections], list[Tensor]]:
        candidates = self._candidates(output, self.batch)
        if len(candidates) != len(self.batch):
            raise ValueError(f"decode returned {len(candidates)} entries for a batch of {len(self.batch)} images")
        detections, scores = [], []
        for cand, geometry in zip(candidates, self.batch.geometries):
            keep = select_candidates(cand["boxes"], cand["scores"], cand["labels"], conf=self.conf, iou=self.iou,
                                     classes=self.classes, max_dets=self.max_dets)
            net = cand["boxes"][keep].detach().float()
            detections.append(Detections(
                boxes=geometry.boxes_to_original(net).cpu(), scores=cand["scores"][keep].detach().cpu(),
                labels=cand["labels"][keep].cpu(), image_size=geometry.original_size,
                class_names=self.adapter.class_names,
                meta={"network_boxes": net.cpu(), "candidate_index": keep.cpu()}))
            scores.append(cand["scores"][keep])
        return detections, scores

    def match(self, output: Any, image_index: int, rows: slice | None, boxes: Tensor, labels: Tensor,
              region: Tensor) -> Tensor:
        if self.adapter.rescore_fn is not None:
            scores = self.adapter.rescore_fn(output, boxes, labels)
            return scores[rows if rows is not None else slice(None)]
        count = _leading(output)
        view = Batch(tensor=self.batch.tensor[image_index:image_index + 1].expand(count, -1, -1, -1),
                     images=[self.batch.images[image_index]] * count,
                     geometries=[self.batch.geometries[image_index]] * count)
        candidates = self._candidates(output, view)
        out = []
        for r in candidate_rows(len(candidates), rows):
            cand = candidates[r]
            if "class_scores" in cand:
                per_target = cand["class_scores"][:, labels.to(cand["class_scores"].device)]
            else:  # only candidates of the same class count
                same = cand["labels"][:, None] == labels.to(cand["labels"].device)[None]
                per_target = torch.where(same, cand["scores"][:, None], torch.zeros_like(cand["scores"][:, None]))
            out.append(best_match(boxes, cand["boxes"], per_target, region))
        return torch.stack(out) if out else torch.zeros(0, len(labels))


def _leading(output: Any) -> int:
    tensors = _tensors(output)
    if not tensors:
        raise TypeError(f"cannot find the batch size of an output of type {type(output).__name__}")
    return tensors[0].shape[0]


def _as_candidates(item: Any) -> dict[str, Tensor]:
    if isinstance(item, dict):
        cand = dict(item)
    elif isinstance(item, (tuple, list)) and len(item) == 3:
        cand = dict(zip(("boxes", "scores", "labels"), item))
    else:
        raise ValueError("decode must return, per image, a dict with boxes/scores/labels (and optionally "
                         "class_scores) or a (boxes, scores, labels) tuple")
    boxes, scores = cand["boxes"], cand["scores"]
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.ndim != 1 or len(scores) != len(boxes):
        raise ValueError(f"decode gave boxes {tuple(boxes.shape)} and scores {tuple(scores.shape)}; expected "
                         "[N, 4] xyxy network pixels and [N]")
    cand["labels"] = torch.as_tensor(cand["labels"], device=scores.device).long().reshape(-1)
    if len(cand["labels"]) != len(scores):
        raise ValueError("decode gave labels and scores of different lengths")
    return cand


class DetectorAdapter(AdapterBase):
    """Any detector, given one function that decodes its raw output.

    Args:
        module: the network; its forward takes the preprocessed batch ``[B, 3, h, w]``.
        decode: ``decode(output)`` or ``decode(output, batch)`` -> one entry per
            row of ``output``: a dict with ``boxes`` ``[N, 4]`` (xyxy, network
            pixels), ``scores`` ``[N]`` (differentiable: computed from ``output``
            without detaching) and ``labels`` ``[N]``, optionally
            ``class_scores`` ``[N, num_classes]`` (used to match detections on
            perturbed copies); or a ``(boxes, scores, labels)`` tuple. Return all
            candidates: the adapter applies ``conf``, ``classes``, class-aware
            NMS and ``max_dets``. On perturbed copies of image b, ``batch``
            describes K copies of that image.
        preprocess: a callable (see :func:`make_batch`) or a :class:`Preprocessing`,
            or None and the :class:`Preprocessing` options as keywords.
        class_names: id -> name (dict or list).
        layers: layers to explain (default: guessed, see :func:`guess_layers`).
        rescore: optional ``rescore(output, boxes [T, 4], labels [T]) -> [K, T]``,
            the scores of given boxes on every row of ``output``; used for
            perturbed copies and mirrored views instead of the default matching
            (best candidate by IoU x probability of the class, see
            :class:`BoxMatchingTarget`).
        conf, iou, max_dets: defaults of :meth:`box_target`.
    """

    def __init__(self, module: nn.Module, decode: Callable[..., Sequence[Any]], preprocess: Any = None, *,
                 class_names: Any = None, layers: Sequence[str | nn.Module] | None = None,
                 rescore: Callable[[Any, Tensor, Tensor], Tensor] | None = None, conf: float = 0.25,
                 iou: float | None = 0.45, max_dets: int = 100, **preprocessing: Any):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if not callable(decode):
            raise TypeError("decode must be a callable (output[, batch]) -> per-image candidates")
        self.model = module
        self.decode_fn, self.rescore_fn = decode, rescore
        self._decode_takes_batch = _takes_two(decode)
        self._preprocess_fn, self._pad_multiple, self._pad_value = _preprocessing(preprocess, preprocessing)
        size = getattr(self._preprocess_fn, "size", None)
        if size is not None:
            self._example_size = (size, size) if isinstance(size, int) else tuple(size)
        self.class_names = class_name_map(class_names)
        self.default_layers = layers
        self.conf, self.iou, self.max_dets = conf, iou, max_dets

    def _decode(self, output: Any, batch: Batch) -> list[dict[str, Tensor]]:
        result = self.decode_fn(output, batch) if self._decode_takes_batch else self.decode_fn(output)
        return [_as_candidates(item) for item in result]

    def box_target(self, batch: Batch, conf: float | None = None, iou: float | None | str = "default",
                   classes: Sequence[int] | None = None, max_dets: int | None = None) -> DecodedDetectionTarget:
        """One target per detection kept by ``conf`` / ``classes`` / NMS ``iou`` (None: no NMS) / ``max_dets``;
        unset values take the adapter's defaults."""
        return DecodedDetectionTarget(self, batch, self.conf if conf is None else conf,
                                      self.iou if iou == "default" else iou, classes,
                                      self.max_dets if max_dets is None else max_dets)


def _takes_two(fn: Callable) -> bool:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)

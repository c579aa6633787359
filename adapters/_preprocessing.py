"""Images -> network tensor: the preprocessing the generic, torchvision and smp adapters share.

:class:`Preprocessing` (resize, channel order, normalisation, padding, with the
:class:`~dsxai.imaging.Geometry` that undoes it), :func:`make_batch` (load, run, pad
and stack) and :class:`AdapterBase` (an adapter preprocessing through them, with
lazily guessed layers). One module so every adapter pads and undoes alike.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from dsxai.adapter import Adapter, Batch
from dsxai.imaging import Geometry, ImageLike, letterbox, load_images
from dsxai.layers import guess_layers, preserved_state

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing", "round_up", "make_batch", "preprocessing_of",
           "AdapterBase", "class_name_map", "probe_batch_limit", "check_max_batch"]

log = logging.getLogger("dsxai")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``value``."""
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
    height = round_up(max(t.shape[-2] for t in tensors), pad_multiple)
    width = round_up(max(t.shape[-1] for t in tensors), pad_multiple)
    out = tensors[0].new_full((len(tensors), tensors[0].shape[0], height, width), pad_value)
    for i, tensor in enumerate(tensors):
        out[i, :, :tensor.shape[-2], :tensor.shape[-1]] = tensor
    geometries = [replace(g, network_size=(height, width)) for g in geometries]
    return Batch(tensor=out.to(device), images=originals, geometries=geometries)


def preprocessing_of(preprocess: Any, options: dict[str, Any]) -> tuple[Callable, int, float]:
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
    _max_batch: int | str | None = None

    @property
    def max_batch(self) -> int | None:
        """The most images one forward takes (None: any); ``"auto"`` is probed once, at first use."""
        if self._max_batch == "auto":
            size = tuple(round_up(s, self._pad_multiple) for s in self._example_size)
            self._max_batch = probe_batch_limit(self.model, torch.zeros(1, 3, *size, device=self.device))
        return self._max_batch  # type: ignore[return-value]

    @max_batch.setter
    def max_batch(self, value: int | str | None) -> None:
        self._max_batch = check_max_batch(value)

    @property
    def default_layers(self) -> list[str]:
        if self._layers is None:
            size = tuple(round_up(s, self._pad_multiple) for s in self._example_size)
            self._layers = guess_layers(self.model, torch.zeros(1, 3, *size))
        return self._layers

    @default_layers.setter
    def default_layers(self, layers: Sequence[str] | None) -> None:
        self._layers = None if layers is None else ([layers] if isinstance(layers, (str, nn.Module)) else list(layers))

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> Batch:
        return make_batch(images, self._preprocess_fn, self._pad_multiple, self._pad_value, self.device)

    def _use_preprocessing(self, preprocess: Any, options: dict[str, Any]) -> None:
        """Set the preprocessing from ``preprocess`` or its keyword options; its ``size`` sizes the layer probe."""
        self._preprocess_fn, self._pad_multiple, self._pad_value = preprocessing_of(preprocess, options)
        size = getattr(self._preprocess_fn, "size", None)
        if size is not None:
            self._example_size = (size, size) if isinstance(size, int) else tuple(size)


def class_name_map(class_names: Any) -> dict[int, str]:
    """``class_names`` (None, a dict or a list of names) as ``{id: name}``."""
    if class_names is None:
        return {}
    if isinstance(class_names, dict):
        return {int(k): str(v) for k, v in class_names.items()}
    return {i: str(n) for i, n in enumerate(class_names)}


def check_max_batch(value: Any) -> int | str | None:
    """``max_batch`` as given: None (any batch), a positive int, or "auto" (probe at first use)."""
    if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"max_batch must be None, 'auto' or an int >= 1, got {value!r}")


def probe_batch_limit(model: nn.Module, example: Tensor) -> int | None:
    """1 when ``model`` fails on two copies of ``example`` ``[1, 3, h, w]`` but runs one (a fixed-batch
    export), else None; logged once, since the caller then runs images one at a time.

    Why: fixed-batch conversions (e.g. ONNX exported at batch 1) fail deep inside their Reshape ops.
    """
    with preserved_state(model), torch.no_grad():
        try:
            model(example.expand(2, -1, -1, -1).contiguous())
            return None
        except Exception:  # noqa: BLE001 - any failure at 2 images: see whether 1 image runs
            pass
        try:
            model(example)
        except Exception:  # noqa: BLE001 - fails at 1 too: not a batch problem; the real run reports it
            return None
    log.warning("%s fails on a batch of 2 images but runs one: running images one at a time",
                type(model).__name__)
    return 1

"""Images in, network tensors out, and the exact way back to original pixels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ImageLike", "load_image", "load_images", "Geometry", "letterbox", "resize_to"]

ImageLike = Any  # path, HxWx{1,3,4} uint8/float array, PIL image, or CxHxW / HxWxC tensor


def load_image(image: ImageLike) -> np.ndarray:
    """Any supported image as an ``H x W x 3`` uint8 RGB array (grayscale and RGBA converted)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if data is None:
            raise ValueError(f"cannot read {path} as an image (unsupported or corrupt file)")
        if data.ndim == 3 and data.shape[2] == 4:
            data = cv2.cvtColor(data, cv2.COLOR_BGRA2RGBA)
        elif data.ndim == 3:
            data = cv2.cvtColor(data, cv2.COLOR_BGR2RGB)
        return _to_rgb_uint8(data, str(path))
    if type(image).__module__.startswith("PIL"):
        return _to_rgb_uint8(np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB")), "PIL image")
    if isinstance(image, Tensor):
        data = image.detach().cpu()
        if data.ndim == 3 and data.shape[0] in (1, 3, 4) and data.shape[-1] not in (1, 3, 4):
            data = data.permute(1, 2, 0)
        return _to_rgb_uint8(data.numpy(), "tensor")
    if isinstance(image, np.ndarray):
        return _to_rgb_uint8(image, "array")
    raise TypeError(
        f"unsupported image type {type(image).__name__}; give a file path, an HxWx3 uint8 array, "
        "a PIL image or a CxHxW tensor"
    )


def _to_rgb_uint8(data: np.ndarray, what: str) -> np.ndarray:
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3 or data.shape[2] not in (1, 3, 4):
        raise ValueError(f"{what}: expected an image of shape HxW, HxWx1, HxWx3 or HxWx4; got {data.shape}")
    if data.shape[0] < 1 or data.shape[1] < 1:
        raise ValueError(f"{what}: the image is empty (shape {data.shape})")
    if data.dtype == np.uint8:
        pass
    elif data.dtype == np.uint16:
        data = (data / 257).round().astype(np.uint8)
    elif np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise ValueError(f"{what}: the image contains NaN or infinite values")
        if data.min() < 0 or data.max() > 1:
            raise ValueError(f"{what}: float images must hold values in [0, 1]; got [{data.min():.3g}, {data.max():.3g}]")
        data = (data * 255).round().astype(np.uint8)
    else:
        raise ValueError(f"{what}: unsupported dtype {data.dtype}; use uint8 (0..255) or float (0..1)")
    if data.shape[2] == 1:
        data = np.repeat(data, 3, axis=2)
    elif data.shape[2] == 4:
        alpha = data[..., 3:].astype(np.float32) / 255
        data = (data[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)  # onto white
    return np.ascontiguousarray(data)


def load_images(images: ImageLike | Sequence[ImageLike]) -> list[np.ndarray]:
    """One image or a sequence of them, each as ``H x W x 3`` uint8 RGB."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        return [load_image(i) for i in images]
    if isinstance(images, Tensor) and images.ndim == 4:
        return [load_image(i) for i in images]
    return [load_image(images)]


@dataclass(frozen=True)
class Geometry:
    """Where an original image sits inside the network tensor.

    The image of ``original_size`` (H, W) was resized to ``content_size`` and placed
    at ``offset`` (top, left) inside a tensor of ``network_size``.
    """

    original_size: tuple[int, int]
    content_size: tuple[int, int]
    offset: tuple[int, int]
    network_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        return (self.content_size[0] / self.original_size[0], self.content_size[1] / self.original_size[1])

    def boxes_to_original(self, boxes: Tensor) -> Tensor:
        """xyxy boxes in network pixels -> original pixels, clipped to the image."""
        sy, sx = self.scale
        top, left = self.offset
        shift = boxes.new_tensor([left, top, left, top])
        scale = boxes.new_tensor([sx, sy, sx, sy])
        out = (boxes - shift) / scale
        h, w = self.original_size
        return torch.stack([out[:, 0].clamp(0, w), out[:, 1].clamp(0, h),
                            out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)], 1)

    def boxes_to_network(self, boxes: Tensor) -> Tensor:
        sy, sx = self.scale
        top, left = self.offset
        return boxes * boxes.new_tensor([sx, sy, sx, sy]) + boxes.new_tensor([left, top, left, top])

    def maps_to_original(self, maps: Tensor) -> Tensor:
        """``[..., Hn, Wn]`` maps over the network tensor -> ``[..., H, W]`` over the original image."""
        if tuple(maps.shape[-2:]) != self.network_size:
            maps = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]).float(), size=self.network_size,
                                 mode="bilinear", align_corners=False).reshape(*maps.shape[:-2], *self.network_size)
        top, left = self.offset
        ch, cw = self.content_size
        crop = maps[..., top:top + ch, left:left + cw]
        lead = crop.shape[:-2]
        if crop.numel() == 0:
            return maps.new_zeros(*lead, *self.original_size)
        out = F.interpolate(crop.reshape(-1, 1, ch, cw).float(), size=self.original_size, mode="bilinear",
                            align_corners=False)
        return out.reshape(*lead, *self.original_size)


def letterbox(image: np.ndarray, size: int | tuple[int, int], fill: int = 114) -> tuple[np.ndarray, Geometry]:
    """Resize keeping the aspect ratio and pad to ``size`` (centred), as Ultralytics does."""
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    ratio = min(th / h, tw / w)
    ch, cw = max(1, int(round(h * ratio))), max(1, int(round(w * ratio)))
    top, left = int(round((th - ch) / 2 - 0.1)), int(round((tw - cw) / 2 - 0.1))
    resized = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_LINEAR) if (ch, cw) != (h, w) else image
    canvas = np.full((th, tw, 3), fill, dtype=np.uint8)
    canvas[top:top + ch, left:left + cw] = resized
    return canvas, Geometry((h, w), (ch, cw), (top, left), (th, tw))


def resize_to(image: np.ndarray, size: tuple[int, int] | None) -> tuple[np.ndarray, Geometry]:
    """Plain resize to ``size`` (H, W) (aspect not kept); None keeps the image as it is."""
    h, w = image.shape[:2]
    if size is None or tuple(size) == (h, w):
        return image, Geometry((h, w), (h, w), (0, 0), (h, w))
    th, tw = size
    resized = cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR)
    return resized, Geometry((h, w), (th, tw), (0, 0), (th, tw))

"""Regions of an image as bool masks: boxes or masks to ``[N, H, W]``, and masks grown by a radius.

Why a module of its own: the metrics read a map against these regions and the audit draws the same rings.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import box_masks

__all__ = ["region_masks", "dilate"]


def region_masks(regions: Tensor, size: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
    """Boxes ``[N, 4]`` (or one box ``[4]``) or masks ``[N, H, W]`` (or one ``[H, W]``) -> bool ``[N, H, W]``."""
    regions = torch.as_tensor(regions, device=device)
    if regions.ndim == 1 and regions.numel() == 4:
        return box_masks(regions, size, device)
    if regions.ndim == 2 and regions.shape[-1] == 4 and tuple(regions.shape) != tuple(size):
        return box_masks(regions, size, device)
    if regions.ndim == 2 and tuple(regions.shape) == tuple(size):
        regions = regions[None]
    if regions.ndim == 3 and tuple(regions.shape[-2:]) == tuple(size):
        return regions.bool()
    raise ValueError(f"regions must be boxes [N, 4] (xyxy) or masks [N, {size[0]}, {size[1]}] matching the "
                     f"maps; got shape {tuple(regions.shape)}")


def _disk_rectangles(radius: float) -> list[tuple[int, int]]:
    """A digital disk of ``radius`` as a union of centred rectangles ``(half_height, half_width)``."""
    r = int(math.floor(radius))
    widths = [int(math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0)) + 1e-9)) for dy in range(r + 1)]
    rects = []
    for dy, wd in enumerate(widths):
        if dy + 1 > r or widths[dy + 1] < wd:  # the last row of this width
            rects.append((dy, wd))
    return rects


def _window_max(x: Tensor, r: int) -> Tensor:
    """Max over the window ``[i - r, i + r]`` of the last dim (zeros beyond the border), in O(log r) passes."""
    if r <= 0:
        return x
    length, n = 2 * r + 1, x.shape[-1]
    p = F.pad(x, (r, r))
    span = 1
    while span * 2 <= length:
        p = torch.maximum(p[..., :-span], p[..., span:])  # p[i] = max over [i, i + 2 span - 1]
        span *= 2
    return torch.maximum(p[..., :n], p[..., length - span:length - span + n])


def dilate(masks: Tensor, radius: float) -> Tensor:
    """Bool masks ``[N, H, W]`` grown by ``radius`` pixels (Euclidean, between pixel centres), exactly.

    The digital disk is a union of centred rectangles and a rectangle's max filter is separable, so the
    dilation is a max over a few 1-D window maxima (each in O(log radius) passes); pixels beyond the image
    border are not part of any mask (the growth is clipped there).
    """
    if radius < 0:
        raise ValueError(f"the tolerance must be >= 0 pixels; got {radius}")
    masks = masks.bool()
    if radius < 1 or masks.numel() == 0:
        return masks
    x = masks.to(torch.uint8)
    out = torch.zeros_like(x)
    for hh, hw in _disk_rectangles(radius):
        rows = _window_max(x.transpose(-1, -2), hh).transpose(-1, -2)
        out = torch.maximum(out, _window_max(rows, hw))
    return out.bool()

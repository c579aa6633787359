"""Boxes: one pixel convention, IoU and conversions.

A pixel belongs to a box when its centre lies in the half-open box
``[x1, x2) x [y1, y2)`` (boxes are xyxy in pixel-edge coordinates, pixel
``(i, j)`` covers ``[j, j+1) x [i, i+1)``). So adjacent boxes share no pixel
and a box narrower than a pixel may hold none. Every "inside this box" in
dsxai (figures, metrics, renderers, adapters) goes through this module so
the figures of a run, a benchmark and a picture agree.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["as_boxes", "pixel_bounds", "box_masks", "box_iou", "paired_iou", "xywh_to_xyxy", "cxcywh_to_xyxy",
           "mask_boxes", "gaussian_maps", "box_gaussians"]


def as_boxes(boxes: Tensor, device: torch.device | str | None = None) -> Tensor:
    """Anything box-like -> float32 ``[N, 4]`` on ``device``; raises a clear error on a wrong shape."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32, device=device)
    if boxes.numel() % 4 or (boxes.ndim > 1 and boxes.shape[-1] != 4):
        raise ValueError(f"boxes must be xyxy rows [N, 4]; got shape {tuple(boxes.shape)}")
    return boxes.reshape(-1, 4)


def pixel_bounds(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Integer pixel bounds ``[N, 4]`` (x1, y1, x2, y2; ends exclusive) of the pixels inside each box.

    The bounds are clipped to the image ``size = (h, w)``; an empty box has ``x2 <= x1`` or ``y2 <= y1``.
    """
    boxes = as_boxes(boxes)
    h, w = size
    # pixel j is inside when j + 0.5 >= x1 and j + 0.5 < x2, i.e. ceil(x1 - 0.5) <= j < ceil(x2 - 0.5)
    bounds = torch.ceil(boxes - 0.5)
    limits = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(bounds.clamp_min(0), limits).long()


def box_masks(boxes: Tensor, size: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
    """Boxes ``[N, 4]`` xyxy -> bool masks ``[N, H, W]`` of the pixels inside (see the module's convention)."""
    bounds = pixel_bounds(as_boxes(boxes, device), size)
    h, w = size
    ys = torch.arange(h, device=bounds.device)
    xs = torch.arange(w, device=bounds.device)
    in_x = (xs[None] >= bounds[:, 0:1]) & (xs[None] < bounds[:, 2:3])  # [N, W]
    in_y = (ys[None] >= bounds[:, 1:2]) & (ys[None] < bounds[:, 3:4])  # [N, H]
    return in_y[:, :, None] & in_x[:, None, :]


def _areas(boxes: Tensor) -> Tensor:
    return (boxes[..., 2:] - boxes[..., :2]).clamp_min(0).prod(-1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes ``a [N, 4]`` and ``b [M, 4]`` -> ``[N, M]``; 0 where the union is empty."""
    a, b = as_boxes(a, a.device if isinstance(a, Tensor) else None), as_boxes(b)
    b = b.to(a.device)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = _areas(a)[:, None] + _areas(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes paired element-wise (broadcasting), ``[..., 4]`` each -> ``[...]``; 0 where both are empty."""
    a, b = torch.broadcast_tensors(a.float(), b.float().to(a.device))
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = _areas(a) + _areas(b) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """COCO ``x, y, w, h`` (top-left corner and size) -> xyxy."""
    return torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:4]], -1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """YOLO ``cx, cy, w, h`` (centre and size) -> xyxy."""
    half = boxes[..., 2:4] / 2
    return torch.cat([boxes[..., :2] - half, boxes[..., :2] + half], -1)


def mask_boxes(masks: Tensor) -> Tensor:
    """Bool masks ``[N, H, W]`` -> the tightest xyxy box around each (pixel edges); zeros for an empty mask."""
    masks = masks.bool()
    n = masks.shape[0]
    if n == 0:
        return torch.zeros(0, 4)
    rows, cols = masks.any(2), masks.any(1)  # [N, H], [N, W]
    h, w = masks.shape[1:]
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    x1 = torch.where(cols, xs, w).amin(1)
    x2 = torch.where(cols, xs + 1, 0).amax(1)
    y1 = torch.where(rows, ys, h).amin(1)
    y2 = torch.where(rows, ys + 1, 0).amax(1)
    boxes = torch.stack([x1, y1, x2, y2], 1).float()
    return torch.where(masks.flatten(1).any(1)[:, None], boxes, torch.zeros_like(boxes)).cpu()


def gaussian_maps(size: tuple[int, int], centers: Tensor, sigmas: Tensor) -> Tensor:
    """Separable Gaussians ``[N, H, W]`` (peak 1) at pixel-edge ``centers [N, 2]`` (x, y) with ``sigmas [N, 2]``."""
    h, w = size
    ys = torch.arange(h, dtype=torch.float32, device=centers.device) + 0.5
    xs = torch.arange(w, dtype=torch.float32, device=centers.device) + 0.5
    gy = torch.exp(-0.5 * ((ys[None] - centers[:, 1:2]) / sigmas[:, 1:2]) ** 2)
    gx = torch.exp(-0.5 * ((xs[None] - centers[:, 0:1]) / sigmas[:, 0:1]) ** 2)
    g = gy[:, :, None] * gx[:, None, :]
    return g / g.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def box_gaussians(boxes: Tensor, size: tuple[int, int], scale: float = 0.25) -> Tensor:
    """A Gaussian ``[N, H, W]`` at each box centre, sigma = ``scale`` x (box width, box height), at least half
    a pixel: the box prior of the benchmark (``scale`` 1/4) and the ``+window`` gate (:mod:`dsxai.window`)."""
    boxes = as_boxes(boxes, boxes.device if isinstance(boxes, Tensor) else None)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    sigmas = ((boxes[:, 2:] - boxes[:, :2]) * scale).clamp_min(0.5)
    return gaussian_maps(size, centers, sigmas)

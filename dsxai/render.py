"""Pictures a person can read: heatmaps fused with boxes, labels and masks.

Maps arrive as torch tensors; this module is the edge where they become uint8
pictures (OpenCV colormaps and drawing).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from .detections import Detections

__all__ = ["COLORMAPS", "colorize", "overlay", "per_box_heat", "draw_detections", "render_detections", "grid"]

COLORMAPS = {
    "jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO, "magma": cv2.COLORMAP_MAGMA, "plasma": cv2.COLORMAP_PLASMA,
    "hot": cv2.COLORMAP_HOT,
}


def _colormap(name: str) -> int:
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    return COLORMAPS[name]


def _to_numpy(heat: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(heat, Tensor):
        heat = heat.detach().float().cpu().numpy()
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0)
    return np.clip(heat, 0, 1)


def colorize(heat: Tensor | np.ndarray, colormap: str = "jet") -> np.ndarray:
    """``[H, W]`` map in [0, 1] -> ``H x W x 3`` uint8 RGB."""
    bgr = cv2.applyColorMap((_to_numpy(heat) * 255).round().astype(np.uint8), _colormap(colormap))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, heat: Tensor | np.ndarray, alpha: float = 0.5, colormap: str = "jet",
            where: np.ndarray | None = None) -> np.ndarray:
    """Blend a colorized map over an RGB image; pixels outside ``where`` (bool) stay as they were."""
    heat_np = _to_numpy(heat)
    if heat_np.shape != image.shape[:2]:
        raise ValueError(f"map size {heat_np.shape} differs from the image size {image.shape[:2]}")
    blended = (image.astype(np.float32) * (1 - alpha) + colorize(heat_np, colormap) * alpha).round().astype(np.uint8)
    if where is not None:
        blended = np.where(where[..., None], blended, image)
    return blended


def per_box_heat(maps: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Each map rescaled to [0, 1] inside its own box and zero outside; fused by max.

    A big object no longer drowns the small ones: every box shows its own map at
    full contrast. Returns the fused ``[H, W]`` map and the ``[H, W]`` bool union of boxes.
    """
    h, w = maps.shape[-2:]
    fused = maps.new_zeros(h, w)
    inside = torch.zeros(h, w, dtype=torch.bool, device=maps.device)
    for heat, box in zip(maps, boxes):
        x1, y1, x2, y2 = _pixel_box(box, h, w)
        crop = heat[y1:y2, x1:x2]
        low, high = crop.min(), crop.max()
        crop = (crop - low) / (high - low) if high > low else torch.zeros_like(crop)
        fused[y1:y2, x1:x2] = torch.maximum(fused[y1:y2, x1:x2], crop)
        inside[y1:y2, x1:x2] = True
    return fused, inside


def _pixel_box(box: Tensor, h: int, w: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, y1 = int(np.clip(np.floor(x1), 0, w - 1)), int(np.clip(np.floor(y1), 0, h - 1))
    x2, y2 = int(np.clip(np.ceil(x2), x1 + 1, w)), int(np.clip(np.ceil(y2), y1 + 1, h))
    return x1, y1, x2, y2


def class_color(label: int) -> tuple[int, int, int]:
    """A fixed, well-separated RGB colour per class id."""
    hue = (label * 0.618033988749895) % 1.0
    hsv = np.uint8([[[int(hue * 179), 220, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def draw_detections(image: np.ndarray, detections: Detections, show_scores: bool = True) -> np.ndarray:
    """Boxes, class names and scores; labels scale with the image and never leave it."""
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    scale = max(0.35, min(h, w) / 900)
    thickness = max(1, int(round(min(h, w) / 300)))
    for box, label, score, name in zip(detections.boxes, detections.labels, detections.scores, detections.names):
        color = class_color(int(label))
        x1, y1, x2, y2 = _pixel_box(box, h, w)
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), color, thickness)
        text = f"{name} {float(score):.2f}" if show_scores else name
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, thickness - 1))
        tx = int(np.clip(x1, 0, max(0, w - tw - 2)))
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(h - base - 1, y1 + th + 2)
        cv2.rectangle(out, (tx, max(0, ty - th - 2)), (min(w - 1, tx + tw + 2), min(h - 1, ty + base)), color, -1)
        cv2.putText(out, text, (tx + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(1, thickness - 1),
                    cv2.LINE_AA)
    return out


def render_detections(image: np.ndarray, detections: Detections, maps: Tensor, alpha: float = 0.5,
                      colormap: str = "jet", per_box: bool = True) -> np.ndarray:
    """All detections in one picture: each box shows its own map, with boxes and labels on top."""
    if len(detections) != len(maps):
        raise ValueError(f"got {len(maps)} maps for {len(detections)} detections")
    if len(detections) == 0:
        return _banner(image, "no detections")
    if per_box:
        heat, inside = per_box_heat(maps, detections.boxes.to(maps.device))
        picture = overlay(image, heat, alpha, colormap, where=inside.cpu().numpy())
    else:
        picture = overlay(image, maps.amax(0), alpha, colormap)
    return draw_detections(picture, detections)


def _banner(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(0.4, min(h, w) / 600)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (min(w - 1, tw + 8), min(h - 1, th + base + 8)), (0, 0, 0), -1)
    cv2.putText(out, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def grid(pictures: Sequence[np.ndarray], columns: int = 4, pad: int = 4) -> np.ndarray:
    """Pictures of equal size tiled row by row on a white background."""
    if not pictures:
        raise ValueError("grid() needs at least one picture")
    h, w = pictures[0].shape[:2]
    rows = (len(pictures) + columns - 1) // columns
    cols = min(columns, len(pictures))
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, pic in enumerate(pictures):
        r, c = divmod(i, columns)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = pic
    return canvas

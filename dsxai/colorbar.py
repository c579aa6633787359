"""A colour bar strip under a picture: the colormap from low to high, and what made the map.

A heatmap without its scale and method is a picture people guess at: the strip shows the
colormap's values from 0 (left) to 1 (right), the method and layer(s) and, when labels had to be
left out of a crowded picture, how many. The picture above the strip is not changed: the
result is the picture with the strip appended below it.
"""
from __future__ import annotations

import cv2
import numpy as np

from .labels import FONT, fit_scale
from .render import colormap_table, text_style

__all__ = ["colorbar_layout", "colorbar_strip", "with_colorbar", "caption"]


def colorbar_layout(width: int, size: tuple[int, int]) -> tuple[int, int, int, int, int]:
    """``(x0, y0, x1, y1, height)``: the bar's pixels (exclusive ends) and the strip's height.

    ``size`` is the ``(h, w)`` of the image the text is sized for (:func:`dsxai.render.text_style`).
    """
    scale, thickness, _ = text_style(size)
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, thickness)
    pad = max(3, th // 3)
    x0, y0 = pad, pad
    x1, y1 = max(x0 + 1, width - pad), pad + max(6, th)
    return x0, y0, x1, y1, y1 + pad + th + base + pad


def caption(method: str | None, layers: object = None, detail: str = "") -> str:
    """``"layercam @ model.22 | detail"`` from what is known (empty parts left out)."""
    parts = [str(method)] if method else []
    if layers:
        names = [str(x) for x in layers] if isinstance(layers, (list, tuple)) else [str(layers)]
        parts = [f"{parts[0]} @ {', '.join(names)}"] if parts else [", ".join(names)]
    return " | ".join(parts + ([detail] if detail else []))


def colorbar_strip(width: int, colormap: str = "jet", title: str = "", size: tuple[int, int] | None = None,
                   low: str = "0", high: str = "1") -> np.ndarray:
    """A white ``height x width x 3`` uint8 strip: the colormap's 256 colours left to right, and its text.

    The bar's column ``c`` (of ``x0..x1``) shows ``colormap_table(colormap)[round(255 * c / (n - 1))]``.
    Under it: ``low`` at the left, ``high`` at the right, ``title`` between them (drawn smaller when long,
    never cut).
    """
    size = size or (width, width)
    x0, y0, x1, y1, height = colorbar_layout(width, size)
    strip = np.full((height, width, 3), 255, np.uint8)
    steps = np.round(np.linspace(0, 255, x1 - x0)).astype(np.int64)
    strip[y0:y1, x0:x1] = colormap_table(colormap)[steps][None]
    scale, thickness, _ = text_style(size)
    (lw, th), _ = cv2.getTextSize(low, FONT, scale, thickness)
    (hw, _), _ = cv2.getTextSize(high, FONT, scale, thickness)
    baseline = y1 + x0 + th
    cv2.putText(strip, low, (x0, baseline), FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    cv2.putText(strip, high, (max(x0, x1 - hw), baseline), FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    room = max(1, x1 - x0 - lw - hw - 4 * x0)
    if title:
        s = fit_scale(title, room, scale, thickness)
        (tw, _), _ = cv2.getTextSize(title, FONT, s, thickness)
        left = x0 + lw + 2 * x0 + max(0, (room - tw) // 2)
        cv2.putText(strip, title, (left, baseline), FONT, s, (0, 0, 0), thickness, cv2.LINE_AA)
    return strip


def with_colorbar(picture: np.ndarray, colormap: str = "jet", title: str = "",
                  size: tuple[int, int] | None = None) -> np.ndarray:
    """``picture`` with :func:`colorbar_strip` appended below (the picture's own pixels unchanged).

    ``size``: the ``(h, w)`` of one image the text is sized for (default: the picture's; pass the
    image's for a grid of panels so the strip's text matches the labels').
    """
    strip = colorbar_strip(picture.shape[1], colormap, title, size or picture.shape[:2])
    return np.concatenate([picture, strip], axis=0)

"""Pictures a person can read: heatmaps fused with boxes, labels and masks.

Maps arrive as torch tensors; this module is the edge where they become uint8
RGB pictures (OpenCV colormaps and drawing, matplotlib colormaps by name when
OpenCV has no such map). Every renderer returns a picture of the input image's
size (grids are tiles of such pictures), leaves pixels outside the boxes as
they were where it says so, and keeps every label inside the image.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from .boxes import pixel_bounds
from .detections import Detections
from .labels import LabelSpot, draw_labels, label_text, place_labels
from .runs import write_atomic  # the one atomic writer; re-exported for render's callers

__all__ = [
    "COLORMAPS", "colormap_table", "colorize", "overlay", "per_box_heat", "per_mask_heat", "class_color",
    "MIN_TEXT_PX", "text_style", "label_rect", "draw_label", "box_share", "label_spots", "hidden_labels",
    "draw_detections", "draw_mask_contours", "render_detections", "render_masks", "render_panels", "render_grid",
    "GRID_COLUMNS", "GRID_PANEL_PX", "compare_methods", "PANEL_PX", "enlarge", "shrink", "shrunk_size", "rescale",
    "banner", "titled", "grid", "write_png",
]

#: colormaps OpenCV has built in; any other name is looked up in matplotlib
COLORMAPS = {
    "jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO, "magma": cv2.COLORMAP_MAGMA, "plasma": cv2.COLORMAP_PLASMA,
    "hot": cv2.COLORMAP_HOT, "bone": cv2.COLORMAP_BONE, "cool": cv2.COLORMAP_COOL,
    "parula": cv2.COLORMAP_PARULA, "cividis": cv2.COLORMAP_CIVIDIS, "twilight": cv2.COLORMAP_TWILIGHT,
}

_FONT = cv2.FONT_HERSHEY_SIMPLEX


@lru_cache(maxsize=32)
def colormap_table(name: str) -> np.ndarray:
    """``256 x 3`` uint8 RGB lookup table of a colormap (OpenCV first, then matplotlib)."""
    if not isinstance(name, str):
        raise TypeError(f"colormap must be a name (str), got {type(name).__name__}")
    if name in COLORMAPS:
        bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], COLORMAPS[name])[:, 0]
        return np.ascontiguousarray(bgr[:, ::-1])
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is in the cli extra
        raise ValueError(
            f"unknown colormap {name!r}: OpenCV has {', '.join(COLORMAPS)}; install matplotlib for its colormaps"
        ) from exc
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(
            f"unknown colormap {name!r}; use an OpenCV one ({', '.join(COLORMAPS)}) or a matplotlib name "
            "such as 'coolwarm', 'Reds' or 'cubehelix'"
        ) from None
    return (cmap(np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def _to_numpy(heat: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(heat, Tensor):
        heat = heat.detach().float().cpu().numpy()
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0)
    return np.clip(heat, 0, 1)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    return image


def colorize(heat: Tensor | np.ndarray, colormap: str = "jet") -> np.ndarray:
    """``[H, W]`` map in [0, 1] -> ``H x W x 3`` uint8 RGB through a colormap (OpenCV or matplotlib name)."""
    return colormap_table(colormap)[(_to_numpy(heat) * 255).round().astype(np.uint8)]


def overlay(image: np.ndarray, heat: Tensor | np.ndarray, alpha: float = 0.5, colormap: str = "jet",
            where: np.ndarray | Tensor | None = None) -> np.ndarray:
    """Blend a colorized map over an RGB image; pixels outside ``where`` (bool ``[H, W]``) stay as they were."""
    image = _check_image(image)
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat_np = _to_numpy(heat)
    if heat_np.shape != image.shape[:2]:
        raise ValueError(f"map size {heat_np.shape} differs from the image size {image.shape[:2]}")
    blended = (image.astype(np.float32) * (1 - alpha) + colorize(heat_np, colormap) * alpha).round().astype(np.uint8)
    if where is not None:
        where = where.cpu().numpy() if isinstance(where, Tensor) else np.asarray(where)
        blended = np.where(where.astype(bool)[..., None], blended, image)
    return blended


def _pixel_box(box: Tensor | Sequence[float], h: int, w: int) -> tuple[int, int, int, int]:
    """A box's pixels (:func:`dsxai.boxes.pixel_bounds`, exclusive ends), widened to at least one pixel to draw."""
    x1, y1, x2, y2 = (int(v) for v in pixel_bounds(torch.as_tensor(box).reshape(1, 4), (h, w))[0])
    x1, y1 = min(x1, w - 1), min(y1, h - 1)
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def _rescale(values: Tensor) -> Tensor:
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else torch.zeros_like(values)


def per_box_heat(maps: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Each map rescaled to [0, 1] inside its own box and zero outside; fused by max.

    Why: a big object would drown the small ones; this way every box shows its own map at
    full contrast. Returns the fused ``[H, W]`` map and the ``[H, W]`` bool union of boxes.
    """
    h, w = maps.shape[-2:]
    fused = maps.new_zeros(h, w)
    inside = torch.zeros(h, w, dtype=torch.bool, device=maps.device)
    for heat, box in zip(maps, boxes):
        x1, y1, x2, y2 = _pixel_box(box, h, w)
        crop = _rescale(heat[y1:y2, x1:x2])
        fused[y1:y2, x1:x2] = torch.maximum(fused[y1:y2, x1:x2], crop)
        inside[y1:y2, x1:x2] = True
    return fused, inside


def per_mask_heat(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Like :func:`per_box_heat` with masks: each map rescaled inside its own mask, zero elsewhere, fused by max."""
    masks = masks.to(maps.device).bool()
    fused = maps.new_zeros(maps.shape[-2:])
    for heat, mask in zip(maps, masks):
        if mask.any():
            scaled = torch.zeros_like(heat)
            scaled[mask] = _rescale(heat[mask])
            fused = torch.maximum(fused, scaled)
    return fused, masks.any(0) if len(masks) else torch.zeros_like(fused, dtype=torch.bool)


def class_color(label: int) -> tuple[int, int, int]:
    """A fixed, well-separated bright RGB colour per class id (the same in every picture)."""
    hue = (int(label) * 0.618033988749895) % 1.0
    hsv = np.uint8([[[int(hue * 179), 220, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


#: the smallest text height in pixels (``cv2.getTextSize``) any picture's labels and captions use
MIN_TEXT_PX = 12


@lru_cache(maxsize=1)
def _min_text_scale() -> float:
    """The smallest font scale whose text is :data:`MIN_TEXT_PX` tall: readable in a 320 px panel."""
    scale = 0.3
    while cv2.getTextSize("Ag", _FONT, scale, 1)[0][1] < MIN_TEXT_PX:
        scale += 0.01
    return round(scale, 2)


def text_style(size: tuple[int, int]) -> tuple[float, int, int]:
    """Font scale, text thickness and line thickness for an image of ``(h, w)``: readable at any size.

    Text is never under :data:`MIN_TEXT_PX` tall (a label wider than a tiny image is drawn smaller).
    """
    short = min(size)
    scale = float(np.clip(short / 700, _min_text_scale(), 4.0))
    text = max(1, int(round(scale * 1.6)))
    line = max(1, int(round(short / 320)))
    return scale, text, line


def label_rect(text: str, box: Sequence[int], size: tuple[int, int], scale: float,
               thickness: int) -> tuple[int, int, int, int, int]:
    """Where a lone label goes: ``(left, top, right, bottom, baseline_y)`` of its background, inside the image.

    Above the box, clipped into the image (so just inside the box at the top edge); shifted left when
    it would pass the right edge. ``right``/``bottom`` are exclusive. Several labels: :func:`place_labels`.
    """
    spot = place_labels([text], [box], size, scale, thickness)[0]
    if spot is None:
        raise ValueError(f"label {text!r} cannot fit an image of {size[1]} x {size[0]} pixels")
    return spot.left, spot.top, spot.right, spot.bottom, spot.baseline


def draw_label(out: np.ndarray, text: str, box: Sequence[int], color: tuple[int, int, int], scale: float,
               thickness: int) -> tuple[int, int, int, int]:
    """Draw ``text`` on a filled ``color`` background next to ``box`` (in place); returns the label's rectangle.

    ``(0, 0, 0, 0)`` and nothing drawn when the label cannot fit the image even at the smallest scale.
    """
    spot = draw_labels(out, [text], [box], [color], scale, thickness)[0]
    return (0, 0, 0, 0) if spot is None else spot.rect


def box_share(box: Sequence[int], size: tuple[int, int]) -> float:
    """A pixel box's share of the ``(h, w)`` image (the figures' ``box_share``)."""
    return (box[2] - box[0]) * (box[3] - box[1]) / float(size[0] * size[1])


def _labels(detections: Detections, size: tuple[int, int], show_scores: bool = True
            ) -> tuple[list[str], list[tuple[int, int, int, int]], list[tuple[int, int, int]]]:
    """Each detection's label text (large boxes flagged), pixel box and class colour."""
    boxes = [_pixel_box(box, *size) for box in detections.boxes]
    texts = [label_text(name, float(score) if show_scores else None, box_share(box, size))
             for name, score, box in zip(detections.names, detections.scores, boxes)]
    return texts, boxes, [class_color(int(label)) for label in detections.labels]


def label_spots(detections: Detections) -> list[LabelSpot | None]:
    """Where :func:`draw_detections` puts each detection's label in its picture (``None``: no room, not drawn)."""
    size = detections.image_size
    texts, boxes, _ = _labels(detections, size)
    scale, thickness, _ = text_style(size)
    return place_labels(texts, boxes, size, scale, thickness)


def hidden_labels(detections: Detections) -> int:
    """How many of the detections' labels find no free spot in their picture (and are not drawn)."""
    return sum(spot is None for spot in label_spots(detections))


def _outline(out: np.ndarray, box: tuple[int, int, int, int], color: tuple[int, int, int], line: int) -> None:
    """A rectangle outline ``line`` px thick drawn inside the pixel box (never past its edges)."""
    x1, y1, x2, y2 = box
    t = max(1, min(line, (x2 - x1 + 1) // 2, (y2 - y1 + 1) // 2))
    out[y1:y1 + t, x1:x2] = color
    out[y2 - t:y2, x1:x2] = color
    out[y1:y2, x1:x1 + t] = color
    out[y1:y2, x2 - t:x2] = color


def draw_detections(image: np.ndarray, detections: Detections, show_scores: bool = True,
                    labels: bool = True) -> np.ndarray:
    """Boxes in their class colour, with class names and scores (large boxes say so).

    Labels scale with the image, never leave it and never cover each other (:func:`place_labels`).
    """
    out = np.ascontiguousarray(_check_image(image).copy())
    h, w = out.shape[:2]
    scale, text_thickness, line = text_style((h, w))
    texts, boxes, colors = _labels(detections, (h, w), show_scores)
    for box, color in zip(boxes, colors):
        _outline(out, box, color, line)
    if labels:
        draw_labels(out, texts, boxes, colors, scale, text_thickness)
    return out


def draw_mask_contours(image: np.ndarray, detections: Detections) -> np.ndarray:
    """Each mask's outline in its class colour (``detections.masks`` required)."""
    out = np.ascontiguousarray(_check_image(image).copy())
    if detections.masks is None:
        return out
    _, _, line = text_style(out.shape[:2])
    for mask, label in zip(detections.masks.cpu().numpy(), detections.labels.tolist()):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, class_color(label), line)
    return out


def _check_maps(detections: Detections, maps: Tensor, image: np.ndarray) -> None:
    if len(detections) != len(maps):
        raise ValueError(f"got {len(maps)} maps for {len(detections)} detections")
    if len(maps) and tuple(maps.shape[-2:]) != tuple(image.shape[:2]):
        raise ValueError(f"maps are {tuple(maps.shape[-2:])} but the image is {tuple(image.shape[:2])}")


def render_detections(image: np.ndarray, detections: Detections, maps: Tensor, alpha: float = 0.5,
                      colormap: str = "jet", per_box: bool = True, labels: bool = True) -> np.ndarray:
    """All detections in one picture, with boxes, class names and scores on top.

    ``per_box=True``: each box shows its own map rescaled inside it and pixels
    outside every box stay as they were; ``False``: the maximum of all maps over
    the whole image. Masks, when the detections have them, are outlined.
    """
    image = _check_image(image)
    _check_maps(detections, maps, image)
    if len(detections) == 0:
        return banner(image, "no detections")
    if per_box:
        heat, inside = per_box_heat(maps, detections.boxes.to(maps.device))
        picture = overlay(image, heat, alpha, colormap, where=inside)
    else:
        picture = overlay(image, maps.amax(0), alpha, colormap)
    picture = draw_mask_contours(picture, detections)
    return draw_detections(picture, detections, labels=labels)


def render_masks(image: np.ndarray, detections: Detections, maps: Tensor, alpha: float = 0.5,
                 colormap: str = "jet", labels: bool = True) -> np.ndarray:
    """Each mask shows its own map rescaled inside it, outlined in its class colour; pixels outside masks unchanged."""
    image = _check_image(image)
    _check_maps(detections, maps, image)
    if len(detections) == 0:
        return banner(image, "no detections")
    if detections.masks is None:
        raise ValueError("style 'masks' needs detections with masks (a segmenter); use style 'fused' for boxes")
    heat, inside = per_mask_heat(maps, detections.masks)
    picture = draw_mask_contours(overlay(image, heat, alpha, colormap, where=inside), detections)
    if labels:
        h, w = picture.shape[:2]
        scale, thickness, _ = text_style((h, w))
        texts, boxes, colors = _labels(detections, (h, w))
        draw_labels(picture, texts, boxes, colors, scale, thickness)
    return picture


def render_panels(image: np.ndarray, detections: Detections, maps: Tensor, alpha: float = 0.5,
                  colormap: str = "jet") -> list[np.ndarray]:
    """One full-size picture per detection: its map over the whole image, its box and label."""
    image = _check_image(image)
    _check_maps(detections, maps, image)
    panels = []
    for k in range(len(detections)):
        one = detections[k]
        picture = draw_mask_contours(overlay(image, maps[k], alpha, colormap), one)
        panels.append(draw_detections(picture, one))
    return panels


#: panels per row in a grid of detections (``style="grid"``, ``<stem>_grid.png``)
GRID_COLUMNS = 4
#: the longest side of a grid panel (the per-detection pictures keep the image's size)
GRID_PANEL_PX = 640


def render_grid(image: np.ndarray, detections: Detections, maps: Tensor, alpha: float = 0.5, colormap: str = "jet",
                columns: int = GRID_COLUMNS) -> np.ndarray:
    """A grid with one panel per detection (see :func:`render_panels`), each drawn at most
    :data:`GRID_PANEL_PX` on its longer side (:func:`shrink`); the banner when there are none."""
    _check_maps(detections, maps, _check_image(image))
    panels = render_panels(*shrink(image, detections, maps), alpha, colormap)
    return grid(panels, columns=columns) if panels else banner(image, "no detections")


def compare_methods(image: np.ndarray, detections: Detections, maps_by_method: Mapping[str, Tensor],
                    alpha: float = 0.5, colormap: str = "jet", per_box: bool = True, columns: int = 4) -> np.ndarray:
    """Side by side: the same detections explained by several methods, one titled panel per method."""
    if not maps_by_method:
        raise ValueError("compare_methods() needs at least one method's maps")
    panels = [titled(render_detections(image, detections, maps, alpha, colormap, per_box), name)
              for name, maps in maps_by_method.items()]
    return grid(panels, columns=columns)


#: the smallest side of a panel in the demo and the benchmark gallery: labels and text stay readable
PANEL_PX = 320


def enlarge(image: np.ndarray, detections: Detections, maps: Tensor,
            min_side: int = PANEL_PX) -> tuple[np.ndarray, Detections, Tensor]:
    """The image, its detections and maps scaled up together until the short side is ``min_side`` px.

    Unchanged when the image is already that large. Why: a 256 px panel's labels are unreadable,
    and drawing at the larger size keeps text sharp (scaling a finished picture blurs it).
    """
    short = min(_check_image(image).shape[:2])
    return rescale(image, detections, maps, min_side / short) if min_side > short else (image, detections, maps)


def shrink(image: np.ndarray, detections: Detections, maps: Tensor, max_side: int = GRID_PANEL_PX,
           min_side: int = PANEL_PX) -> tuple[np.ndarray, Detections, Tensor]:
    """The image, its detections and maps scaled down together until the longer side is ``max_side`` px,
    never below ``min_side`` on the short side; unchanged when already that small.

    Why: a grid of tens of full-size panels of a large photo runs to hundreds of megapixels, and drawing
    at the smaller size keeps its labels readable (shrinking a finished picture shrinks them too).
    """
    factor = _shrink_factor(_check_image(image).shape[:2], max_side, min_side)
    return rescale(image, detections, maps, factor) if factor < 1 else (image, detections, maps)


def shrunk_size(size: tuple[int, int], max_side: int = GRID_PANEL_PX, min_side: int = PANEL_PX) -> tuple[int, int]:
    """The ``(h, w)`` :func:`shrink` gives an image of ``size``."""
    h, w = size
    factor = _shrink_factor(size, max_side, min_side)
    return (max(1, int(round(h * factor))), max(1, int(round(w * factor)))) if factor < 1 else (h, w)


def _shrink_factor(size: tuple[int, int], max_side: int, min_side: int) -> float:
    """The scale that brings the longer side to ``max_side`` without the short side under ``min_side``."""
    h, w = size
    return max(max_side / max(h, w), min_side / min(h, w))


def rescale(image: np.ndarray, detections: Detections, maps: Tensor,
            factor: float) -> tuple[np.ndarray, Detections, Tensor]:
    """The image (linear, or area when shrinking), maps (bilinear, antialiased when shrinking), masks
    (nearest) and boxes scaled by ``factor`` together."""
    h, w = _check_image(image).shape[:2]
    size = (max(1, int(round(h * factor))), max(1, int(round(w * factor))))
    down = factor < 1
    big = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA if down else cv2.INTER_LINEAR)
    maps = (torch.nn.functional.interpolate(maps[None].float(), size, mode="bilinear", align_corners=False,
                                            antialias=down)[0]
            if len(maps) else maps.new_zeros(0, *size))
    masks = detections.masks
    if masks is not None:
        masks = torch.nn.functional.interpolate(masks[None].float(), size, mode="nearest")[0].bool()
    scale = torch.tensor([size[1] / w, size[0] / h] * 2, dtype=detections.boxes.dtype)
    scaled = Detections(boxes=detections.boxes * scale, scores=detections.scores, labels=detections.labels,
                        image_size=size, class_names=detections.class_names, masks=masks, meta=detections.meta)
    return big, scaled, maps


def banner(image: np.ndarray, text: str) -> np.ndarray:
    """The image with ``text`` on a dark band along its top (e.g. "no detections")."""
    out = np.ascontiguousarray(_check_image(image).copy())
    h, w = out.shape[:2]
    scale, thickness, _ = text_style((h, w))
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
    band = min(h, th + base + 8)
    out[:band] = (out[:band].astype(np.float32) * 0.25).astype(np.uint8)
    cv2.putText(out, text, (max(0, (w - tw) // 2), min(h - 1, 4 + th)), _FONT, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
    return out


def titled(picture: np.ndarray, title: str) -> np.ndarray:
    """``picture`` with a white strip above it holding ``title`` (for grids comparing methods)."""
    h, w = picture.shape[:2]
    scale, thickness, _ = text_style((h, w))
    (tw, th), base = cv2.getTextSize(title, _FONT, scale, thickness)
    strip = np.full((th + base + 8, w, 3), 255, np.uint8)
    cv2.putText(strip, title, (max(0, (w - tw) // 2), th + 4), _FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return np.concatenate([strip, picture], axis=0)


def grid(pictures: Sequence[np.ndarray], columns: int = 4, pad: int = 4) -> np.ndarray:
    """Pictures tiled row by row on a white background (each cell as large as the largest picture)."""
    if not pictures:
        raise ValueError("grid() needs at least one picture")
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    h = max(p.shape[0] for p in pictures)
    w = max(p.shape[1] for p in pictures)
    rows = (len(pictures) + columns - 1) // columns
    cols = min(columns, len(pictures))
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, pic in enumerate(pictures):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y:y + pic.shape[0], x:x + pic.shape[1]] = pic
    return canvas


def write_png(path: str | os.PathLike, picture: np.ndarray) -> Path:
    """Write an RGB uint8 picture as PNG atomically: a temporary file in the same folder, then a rename.

    A crash or an error never leaves a half-written PNG at ``path``.
    """
    path = Path(path)
    picture = _check_image(picture)
    ok, data = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB array
        raise ValueError(f"could not encode {path.name} as PNG")
    write_atomic(path, data.tobytes())
    return path


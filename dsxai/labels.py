"""Where detection labels go: next to their box, never over another label, never past the image edge.

Why: in a crowded picture (tens of boxes) labels drawn above their boxes stack on each other and
are cut at the edge ("son 0.29" for "person 0.29"). :func:`place_labels` tries, per label in order, the
spots a reader looks first (above the box, inside its top, below it, inside its bottom),
then the same rows shifted sideways and further away, and takes the first spot inside the
image that overlaps no label already placed. A label that fits nowhere near its box is not
drawn (``None``) rather than drawn over another one; :func:`draw_labels` says how many.
The full text is always drawn: a label wider than the image is set at a smaller scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import numpy as np

__all__ = ["FONT", "LARGE_BOX", "LabelSpot", "fit_scale", "label_text", "candidate_spots", "place_labels",
           "draw_labels"]

FONT = cv2.FONT_HERSHEY_SIMPLEX

#: a box covering more than this share of the image holds most of any map: its energy in box says little
LARGE_BOX = 0.5

_MIN_SCALE = 0.2  # below this OpenCV's Hershey glyphs are unreadable blots
_PAD = 2  # pixels of background around the text on each side
_SHIFTS = (0.0, -0.5, 0.5, -1.0, 1.0, -1.5, 1.5, -2.0, 2.0)  # sideways moves, in label widths
_ROWS_AWAY = 3  # how many label heights above/below the box a label may move before it is dropped


@dataclass(frozen=True)
class LabelSpot:
    """A placed label: its background rectangle (``right``/``bottom`` exclusive), text baseline and scale."""

    left: int
    top: int
    right: int
    bottom: int
    baseline: int
    scale: float

    @property
    def rect(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)``."""
        return self.left, self.top, self.right, self.bottom


def fit_scale(text: str, width: int, scale: float, thickness: int) -> float:
    """The largest scale <= ``scale`` at which ``text`` and its padding fit ``width`` pixels (never below 0.2).

    Why: a label is shortened by drawing it smaller, never by cutting its text.
    """
    while scale > _MIN_SCALE and cv2.getTextSize(text, FONT, scale, thickness)[0][0] + 2 * _PAD > width:
        scale = max(_MIN_SCALE, scale * 0.9)
    return scale


def label_text(name: str, score: float | None, share: float) -> str:
    """``"name 0.87"``; ``" large box"`` appended when the box covers more than :data:`LARGE_BOX` of the image.

    Why: on a large box, energy in box is near 1 for any map; the picture says so where it is read.
    """
    text = name if score is None else f"{name} {float(score):.2f}"
    return text + " large box" if share > LARGE_BOX else text


def _size(text: str, scale: float, thickness: int) -> tuple[int, int, int]:
    """Width and height of the label's background and the text height above the baseline."""
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    return tw + 2 * _PAD, th + base + 2 * _PAD, th


def candidate_spots(box: Sequence[int], lw: int, lh: int, size: tuple[int, int]) -> Iterator[tuple[int, int]]:
    """``(left, top)`` spots for a ``lw x lh`` label of ``box`` in reading order, each clipped into the image."""
    h, w = size
    x1, y1, x2, y2 = (int(v) for v in box[:4])
    rows = [y1 - lh, y1, y2, y2 - lh]  # above, inside top, below, inside bottom
    rows += [r for k in range(1, _ROWS_AWAY + 1) for r in (y1 - lh - k * lh, y2 + k * lh)]
    for top in rows:
        for shift in _SHIFTS:
            left = x1 + int(round(shift * lw))
            yield int(np.clip(left, 0, max(0, w - lw))), int(np.clip(top, 0, max(0, h - lh)))


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(texts: Sequence[str], boxes: Sequence[Sequence[int]], size: tuple[int, int], scale: float,
                 thickness: int) -> list[LabelSpot | None]:
    """One spot per label, in order (earlier labels win their first choice); ``None`` where none is free.

    Every spot lies inside the ``(h, w)`` image and overlaps no other spot; its text is the full string
    (scaled down with :func:`fit_scale` only when wider than the image).
    """
    h, w = size
    placed: list[LabelSpot | None] = []
    taken: list[tuple[int, int, int, int]] = []
    for text, box in zip(texts, boxes):
        s = fit_scale(text, w, scale, thickness)
        lw, lh, th = _size(text, s, thickness)
        spot = None
        if lw <= w and lh <= h:
            for left, top in candidate_spots(box, lw, lh, (h, w)):
                rect = (left, top, left + lw, top + lh)
                if not any(_overlaps(rect, other) for other in taken):
                    spot = LabelSpot(*rect, baseline=top + _PAD + th, scale=s)
                    taken.append(rect)
                    break
        placed.append(spot)
    return placed


def draw_labels(out: np.ndarray, texts: Sequence[str], boxes: Sequence[Sequence[int]],
                colors: Sequence[tuple[int, int, int]], scale: float, thickness: int) -> list[LabelSpot | None]:
    """Draw each label on its class-coloured background where :func:`place_labels` puts it (in place).

    Returns the spots (``None`` for a label with no free spot near its box, not drawn).
    """
    spots = place_labels(texts, boxes, out.shape[:2], scale, thickness)
    for text, color, spot in zip(texts, colors, spots):
        if spot is None:
            continue
        cv2.rectangle(out, (spot.left, spot.top), (spot.right - 1, spot.bottom - 1), color, -1)
        ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
        cv2.putText(out, text, (spot.left + _PAD, spot.baseline), FONT, spot.scale, ink, thickness, cv2.LINE_AA)
    return spots

"""Option checks shared by the Python entry points and the CLI: one place, one wording.

Each check returns the value in its canonical type or raises :class:`ValueError` naming the option by its
Python name and the allowed range, e.g. ``conf must be a number in [0, 1], got -1.0``; the CLI prints
that message as it is, so both front ends refuse bad input the same way, before any work.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

__all__ = ["MIN_IMGSZ", "MAX_IMGSZ", "check_conf", "check_max_dets", "check_positive_int", "check_steps",
           "check_non_negative", "check_imgsz", "check_max_pixels"]

#: Bounds of a network input side in pixels. Below 32 no YOLO stride fits; above 8192 a single
#: forward of a 640-trained model needs tens of GB and OpenCV's resize fails outright at 100000.
MIN_IMGSZ, MAX_IMGSZ = 32, 8192


def _number(name: str, value: Any, what: str) -> float:
    """``value`` as a finite float, or ValueError saying ``name`` must be ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be {what}, got {number}")
    return number


def check_conf(conf: Any, name: str = "conf") -> float:
    """A score threshold or share: a finite number in [0, 1] (a negative one keeps every candidate box)."""
    number = _number(name, conf, "a number in [0, 1]")
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {number}")
    return number


def check_positive_int(name: str, value: Any) -> int:
    """A count that must be at least 1 (a negative slice bound silently drops items from the end)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {int(value)}")
    return int(value)


def check_max_dets(max_dets: Any, name: str = "max_dets") -> int:
    """At most this many detections per image: at least 1 (0 would explain nothing and say nothing)."""
    return check_positive_int(name, max_dets)


def check_steps(steps: Any, name: str = "steps") -> int:
    """Steps of a deletion / insertion curve: at least 2 (an AUC needs two points)."""
    message = f"{name} must be a whole number >= 2 (a curve needs two points), got {steps!r}"
    try:
        steps = check_positive_int(name, steps)
    except ValueError:
        raise ValueError(message) from None
    if steps < 2:
        raise ValueError(message)
    return steps


def check_non_negative(name: str, value: Any) -> float:
    """A finite number >= 0 (areas, widths in pixels): NaN would silently compare False everywhere."""
    number = _number(name, value, "a finite number >= 0")
    if number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {number}")
    return number


def check_imgsz(imgsz: Any, name: str = "imgsz") -> int | tuple[int, int]:
    """A network input size, an int or (h, w), each side in [MIN_IMGSZ, MAX_IMGSZ]."""
    pair = isinstance(imgsz, (list, tuple))
    sides: Sequence[Any] = imgsz if pair else [imgsz]
    if len(sides) not in (1, 2):
        raise ValueError(f"{name} must be one size or (height, width), got {imgsz!r}")
    checked = []
    for side in sides:
        if isinstance(side, bool) or not isinstance(side, numbers.Integral):
            raise ValueError(f"{name} must be a whole number of pixels in [{MIN_IMGSZ}, {MAX_IMGSZ}], got {imgsz!r}")
        if not MIN_IMGSZ <= int(side) <= MAX_IMGSZ:
            raise ValueError(f"{name} must be in [{MIN_IMGSZ}, {MAX_IMGSZ}] pixels, got {int(side)}")
        checked.append(int(side))
    return (checked[0], checked[-1]) if pair else checked[0]


def check_max_pixels(max_pixels: Any, name: str = "max_pixels") -> int:
    """The largest image (height x width) accepted: a whole number >= 1."""
    return check_positive_int(name, max_pixels)

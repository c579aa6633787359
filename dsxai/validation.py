# NOTE TO THE OTHER SESSION IN THIS WORKTREE (delete this comment): a second helper session was started on
# the same brief in /work/wt-validate and, at 01:10:11, overwrote your untracked dsxai/validation.py by
# mistake with this version (same check_* names; check_conf(value, name) and check_max_pixels added back at
# 01:12 to match your calls in explanation.py). That session has stopped editing; the worktree is yours.
"""Option checks shared by the Python entry points and the CLI.

Each check raises ``ValueError`` naming the option by its Python name and the value it got, worded so the
same line reads well from ``dsxai.explain(...)`` and from ``dsxai explain ...``: one place, so the two front
ends cannot drift apart.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

__all__ = ["IMGSZ_RANGE", "check_conf", "check_max_dets", "check_positive_int", "check_steps",
           "check_non_negative", "check_imgsz", "check_fraction", "check_max_pixels"]

#: accepted network input sizes (pixels per side): below 32 no YOLO stride fits; above 8192 one image's
#: activations alone outgrow most GPUs and OpenCV's resize fails with a traceback
IMGSZ_RANGE: tuple[int, int] = (32, 8192)


def _number(name: str, value: Any, expected: str) -> float:
    """``value`` as a finite float, or ValueError naming ``name`` and what was ``expected``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be {expected}, got {number}")
    return number


def check_fraction(name: str, value: Any) -> float:
    """A finite number in [0, 1] (thresholds, shares)."""
    number = _number(name, value, "a number in [0, 1]")
    if not 0 <= number <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {number}")
    return number


def check_conf(conf: Any, name: str = "conf") -> float | None:
    """A score threshold: None (the model's default) or a finite number in [0, 1]."""
    return None if conf is None else check_fraction(name, conf)


def check_max_pixels(max_pixels: Any) -> int | None:
    """None (the default limit) or a whole number of pixels >= 1."""
    return check_positive_int("max_pixels", max_pixels)


def check_positive_int(name: str, value: Any) -> int | None:
    """None (no limit) or a whole number >= 1; a negative limit would silently drop items from the end."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value}")
    return int(value)


def check_max_dets(max_dets: Any) -> int | None:
    """None (no cap) or at least one detection per image."""
    return check_positive_int("max_dets", max_dets)


def check_steps(steps: Any) -> int:
    """Steps of a deletion / insertion curve: at least 2 (a curve needs two points for an area)."""
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 2:
        raise ValueError(f"steps must be a whole number >= 2, got {steps!r}")
    return int(steps)


def check_non_negative(name: str, value: Any) -> float:
    """A finite number >= 0 (areas, widths in pixels)."""
    number = _number(name, value, "a finite number >= 0")
    if number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {number}")
    return number


def check_imgsz(imgsz: Any) -> Any:
    """None, one size or an (h, w) pair, each a whole number within :data:`IMGSZ_RANGE`."""
    if imgsz is None:
        return None
    low, high = IMGSZ_RANGE
    sides = list(imgsz) if isinstance(imgsz, (list, tuple)) else [imgsz]
    for side in sides:
        if isinstance(side, bool) or not isinstance(side, Integral) or not low <= side <= high:
            raise ValueError(f"imgsz must be a whole number in [{low}, {high}] (or a pair of them), got {imgsz!r}")
    return imgsz

"""``+window``: each per-box map weighted by a soft window on its own box.

A method name followed by ``+window`` (``"layercam-level+window"``, or ``+window:0.35`` for another width)
multiplies each detection's map by a Gaussian at its box centre, sigma = ``scale`` x the box's width and
height (default :data:`DEFAULT_SCALE`), and scales it to a peak of 1. Why: a detection's score is read at one
anchor whose receptive field is centred there, so evidence far from the box (a neighbour's, or the
background's through the neck) is the least likely to be this detection's. Where the method is silent (an
exact zero) the window alone orders the pixels, at :data:`FLOOR` of the peak, so rankings such as the
deletion / insertion curves grow out from the box instead of following the raster order.

The window mixes the box into the map: report it beside the box prior (``box_gaussian``, the same Gaussian
at 1/4 of the box), as ``benchmarks/README.md`` does, to show what the method adds.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from .boxes import box_gaussians
from .detections import Detections

__all__ = ["WINDOW_SUFFIX", "DEFAULT_SCALE", "FLOOR", "split_window", "box_window", "window_maps"]

WINDOW_SUFFIX = "+window"
#: sigma of the window as a share of the box's width / height: twice the box prior's, so that the window
#: reorders the method's evidence near the box without replacing it by the prior
DEFAULT_SCALE = 0.5
#: the window's own weight where the method's map is exactly zero (a tie order, not evidence)
FLOOR = 1e-4


def split_window(method: Any) -> tuple[Any, float | None]:
    """``"name+window[:scale]"`` -> ``("name", scale)``; anything else -> ``(method, None)``.

    Raises ValueError naming the fix for a scale that is not a number in (0, 10].
    """
    if not isinstance(method, str):
        return method, None
    name, sep, rest = method.strip().partition("+")
    if not sep:
        return method, None
    word, colon, value = rest.partition(":")
    if word.strip().lower() != WINDOW_SUFFIX[1:]:
        raise ValueError(f"unknown method suffix '+{rest}' in {method!r}; the one suffix is '+window' "
                         "(e.g. 'layercam-level+window' or 'layercam+window:0.35')")
    if not colon:
        return name.strip(), DEFAULT_SCALE
    try:
        scale = float(value)
    except ValueError:
        scale = float("nan")
    if not 0 < scale <= 10:
        raise ValueError(f"the window's scale in {method!r} must be a number in (0, 10] (sigma as a share of "
                         f"the box size), e.g. '{name.strip()}+window:0.5'")
    return name.strip(), scale


def box_window(maps: Tensor, boxes: Tensor, scale: float = DEFAULT_SCALE) -> Tensor:
    """Maps ``[N, H, W]`` (one per box ``[N, 4]`` xyxy, same pixels) times a Gaussian window on each box, each
    scaled to a peak of 1. An all-zero map stays zero: no evidence is not turned into the window's."""
    if maps.ndim != 3 or len(maps) != len(boxes):
        raise ValueError(f"box_window needs one map [N, H, W] per box; got maps {tuple(maps.shape)} for "
                         f"{len(boxes)} boxes")
    if len(maps) == 0:
        return maps
    window = box_gaussians(boxes.to(maps.device), tuple(maps.shape[-2:]), scale)
    peak = maps.clamp_min(0).flatten(1).amax(1)[:, None, None]
    out = (maps.clamp_min(0) / peak.clamp_min(1e-12) + FLOOR) * window
    out = out / out.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return out * (peak > 0)


def window_maps(detections: Sequence[Detections], maps: Sequence[Tensor], scale: float | None) -> list[Tensor]:
    """:func:`box_window` per image (``scale`` None: the maps as they are)."""
    if scale is None:
        return list(maps)
    return [box_window(m, d.boxes, scale) for d, m in zip(detections, maps)]

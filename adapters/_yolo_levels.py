"""Which head level each YOLO detection was predicted from, as the layer name ``fuse="level"`` keeps.

A YOLO head flattens its anchors level by level (P3, P4, P5 for a v8 head; ``anchors per cell x h x w`` each),
so an anchor index names its level, and the level's input layer (``head.f``) is the layer whose map explains
the detection (:mod:`dsxai.fusion`).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["anchor_levels", "detection_layers"]


def anchor_levels(anchors: Tensor, levels: Sequence[tuple[int, int, int]]) -> Tensor:
    """The level index of each flat anchor index, given ``(anchors per cell, h, w)`` per level in head order.

    Raises ValueError for an index past the last level (a layout that does not fit the output).
    """
    sizes = torch.tensor([na * h * w for na, h, w in levels], dtype=torch.long)
    ends = torch.cumsum(sizes, 0)
    anchors = torch.as_tensor(anchors, dtype=torch.long).cpu()
    if len(anchors) and (int(anchors.max()) >= int(ends[-1]) or int(anchors.min()) < 0):
        raise ValueError(f"anchor index {int(anchors.max())} is outside the head's {int(ends[-1])} anchors "
                         f"(levels {list(levels)}); the target was built for another input size")
    return torch.bucketize(anchors, ends, right=True)


def detection_layers(target: Any) -> list[list[str]]:
    """Per image, the head-input layer name of each kept detection of a decoded YOLO box target.

    ``target`` needs ``anchors`` (per image), ``levels`` (the head layout) and ``level_layers`` (the head's
    input layers, one per level). Refuses mask scores: a mask logit also reads the prototypes (from P3),
    so no single level holds its evidence.
    """
    if getattr(target, "score", "class") == "mask":
        raise ValueError("fuse='level' explains each detection at its head level, but a mask score also reads "
                         "the prototypes of another level; use score='class' or fuse='mean'")
    layers = list(getattr(target, "level_layers", None) or [])
    if target.levels is None or not layers:
        raise ValueError("this YOLO target does not know its head's levels and their layers; build it with the "
                         "adapter (adapter.target(batch, 'boxes'))")
    if len(layers) != len(target.levels):
        raise ValueError(f"the head has {len(target.levels)} levels but {len(layers)} input layers "
                         f"({', '.join(layers)}); fuse='level' needs one layer per level")
    if not target.anchors:
        raise RuntimeError("decode the output (call the target) before asking for its detections' layers")
    return [[layers[i] for i in anchor_levels(a, target.levels).tolist()] for a in target.anchors]

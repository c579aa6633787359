"""Per-target choice of map source: ``fuse="level"`` keeps, for each target, only the layer it was read from.

A multi-scale detector head (YOLO's P3/P4/P5) predicts each detection from one level. The default fusion
(``"mean"``) min-max scales every level's map and averages them, so a detection predicted at P4 or P5 also
carries the finer P3 map, which spreads over neighbouring objects and the background. With ``"level"`` a
target that knows its level (a target with :meth:`source_layers`, e.g. the YOLO box targets) keeps only that
layer's map. On the 146 person pairs of ``benchmarks/README.md`` this raised LayerCAM's energy in the mask
from 0.625 to 0.730 (pointing game in the mask 0.952 -> 0.966).

The protocol, for any target: ``source_layers()`` returns, per image, one layer name per target (after the
target has decoded its first output), the name of the layer whose map explains that target.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

__all__ = ["FUSIONS", "level_keep", "keep_sources"]

#: how :class:`dsxai.engine.BaseCAM` may combine its sources' maps
FUSIONS: tuple[str, ...] = ("mean", "max", "level")


def level_keep(names: Sequence[str], targets: Callable[..., Any], counts: Sequence[int]) -> Tensor:
    """``[N, S]`` bool: which of the ``S`` sources (layer ``names``, in source order) each of the ``N`` targets
    keeps, read from ``targets.source_layers()``.

    Raises ValueError when the targets cannot say their layer, or when a target's layer is not among ``names``
    (its map would be blank): both name the fix. With one layer there is nothing to choose: every target keeps it.
    """
    total = sum(counts)
    if len(set(names)) == 1:
        return torch.ones(total, len(names), dtype=torch.bool)
    ask = getattr(targets, "source_layers", None)
    if not callable(ask):
        raise ValueError(f"fuse='level' needs targets that say which layer each one was read from (YOLO box "
                         f"targets do); {type(targets).__name__} does not: use fuse='mean'")
    per_image = ask()
    if [len(layers) for layers in per_image] != list(counts):
        raise ValueError(f"{type(targets).__name__}.source_layers() gave {[len(x) for x in per_image]} layers per "
                         f"image for {list(counts)} targets; it must name one layer per target")
    wanted = [name for layers in per_image for name in layers]
    missing = sorted(set(wanted) - set(names))
    if missing:
        raise ValueError(f"fuse='level' maps each target at its own layer, but {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not among the layers explained "
                         f"({', '.join(dict.fromkeys(names))}); add {'it' if len(missing) == 1 else 'them'} "
                         "or use fuse='mean'")
    return torch.tensor([[name == want for name in names] for want in wanted], dtype=torch.bool).reshape(
        total, len(names))


def keep_sources(maps: Sequence[Tensor], keep: Tensor) -> list[Tensor]:
    """Each source's ``[N, h, w]`` maps with the targets that do not keep it set to zero.

    Why zero: the engine's fusion scales each source's map on its own and an all-zero map stays zero, so the
    mean over sources, scaled again, is exactly the kept source's map.
    """
    return [m * keep[:, k].to(m.device, m.dtype)[:, None, None] for k, m in enumerate(maps)]

"""Perturbation methods: channel weights from the targets' scores on masked or ablated copies of the image."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .engine import BaseCAM, FeatureSource, TargetScores
from .targets import Target

__all__ = ["PerturbationCAM", "scores_on_copies"]


class PerturbationCAM(BaseCAM):
    """Base of ScoreCAM and AblationCAM: a method only says how it weights one image's channels.

    Why: no gradients are needed, so the forward records no graph and any target that scores copies works.
    """

    def channel_weights(self, x: Tensor, image_index: int, source: FeatureSource, target: Callable,
                        base_scores: Tensor) -> Tensor:
        """``[T_b, C]`` channel weights of image ``image_index``'s targets (``base_scores`` ``[T_b]``)."""
        raise NotImplementedError

    def low_res_maps(self, x: Tensor, sources: list[FeatureSource], targets: Callable,
                     scores: TargetScores) -> list[Tensor]:
        maps = []
        base = list(scores.flat.detach().split(scores.counts))
        with torch.no_grad():
            for source in sources:
                per_image = []
                for b in range(x.shape[0]):
                    if scores.counts[b] == 0:
                        continue
                    with self.forward_context(x):
                        weights = self.channel_weights(x, b, source, targets, base[b])  # [T_b, C]
                    acts = source.activations[b].detach().float()
                    per_image.append(torch.einsum("tc,chw->thw", weights.float(), acts))
                h, w = source.activations.shape[-2:]
                maps.append(torch.cat(per_image) if per_image else x.new_zeros(0, h, w))
        return maps


def scores_on_copies(target: Callable, output: Any, image_index: int, expected: int) -> Tensor:
    """Scores ``[K, T_b]`` of one image's targets on a batch of K perturbed copies."""
    if isinstance(target, Target):
        scores = target.on_copies(output, image_index)
    else:
        scores = target(output)
        if not isinstance(scores, Tensor):
            raise ValueError(
                "perturbation methods (ScoreCAM, AblationCAM) need a target that scores any batch row-wise; "
                "a plain callable returning a ragged list cannot: subclass dsxai.targets.Target and "
                "implement on_copies()"
            )
    if scores.ndim != 2 or scores.shape[1] != expected:
        raise ValueError(
            f"on perturbed copies the target returned shape {tuple(scores.shape)}; expected [K, {expected}]. "
            "Subclass dsxai.targets.Target and implement on_copies() for image-specific targets"
        )
    return scores

"""Gradient methods: channel weights from the gradients of each target's score, all targets in one backward."""
from __future__ import annotations

import logging
import warnings
from typing import Callable

import torch
from torch import Tensor

from .engine import BaseCAM, FeatureSource, TargetScores

__all__ = ["GradientCAM"]

log = logging.getLogger("dsxai")


class GradientCAM(BaseCAM):
    """Base of the gradient methods: a method only says how activations and gradients make a map.

    Why: one batched backward (``is_grads_batched``) over chunks of targets is what makes per-box maps cheap.
    A target may compute the same gradients itself, faster (YOLO class scores from receptive-field crops):
    ``targets.local_gradients(flat_scores, leaves, rows)`` returning one ``[len(rows), *leaf.shape]`` per
    leaf, or None to leave them to the batched backward. Under ``fuse="level"`` it is also given
    ``needed=`` (``[len(rows), L]`` bool, the leaves each row's kept map reads) and may return zeros elsewhere.
    """

    needs_gradients = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._warned_loop = False

    def cam_from_gradients(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """``[N, C, h, w]`` activations and gradients of N targets -> ``[N, h, w]`` maps."""
        raise NotImplementedError

    def low_res_maps(self, x: Tensor, sources: list[FeatureSource], targets: Callable,
                     scores: TargetScores) -> list[Tensor]:
        leaves = list({id(s.leaf): s.leaf for s in sources}.values())
        for source in sources:
            if not source.leaf.requires_grad:
                raise ValueError(
                    f"layer {source.name!r} output carries no gradient (detached or computed under no_grad); "
                    "pick another layer or use a gradient-free method such as EigenCAM"
                )
        maps: list[list[Tensor]] = [[] for _ in sources]
        flat, total = scores.flat, scores.flat.numel()
        needed = _needed_leaves(sources, leaves, scores.keep)
        local = getattr(targets, "local_gradients", None)
        for start in range(0, total, self.chunk_size):
            rows = torch.arange(start, min(start + self.chunk_size, total), device=flat.device)
            wanted = None if needed is None else needed[rows.cpu()]
            if not callable(local):
                grads = None
            elif wanted is None:
                grads = local(flat, leaves, rows)
            else:
                grads = local(flat, leaves, rows, needed=wanted)
            grads = self._grads(flat, leaves, rows, wanted) if grads is None else grads
            grad_of = {id(leaf): g for leaf, g in zip(leaves, grads)}
            owners = scores.image_of[rows]
            for k, source in enumerate(sources):
                g = _own_gradients(grad_of[id(source.leaf)], owners)
                if self.reshape is not None:
                    g = self.reshape(g)
                maps[k].append(self.cam_from_gradients(_own_activations(source.activations.detach(), owners).float(),
                                                       g.detach().float()))
            del grads, grad_of
        return [torch.cat(m) for m in maps]

    def _grads(self, flat_scores: Tensor, leaves: list[Tensor], rows: Tensor,
               needed: Tensor | None = None) -> list[Tensor]:
        """Gradients of the selected scores w.r.t. each leaf: ``[len(rows), *leaf.shape]``; zeros for a leaf
        that no row needs (``needed`` ``[len(rows), L]`` bool; None: all), whose graph autograd then skips."""
        used = [True] * len(leaves) if needed is None else needed.any(0).tolist()
        filled = iter(self._batched_grads(flat_scores, [leaf for leaf, u in zip(leaves, used) if u], rows))
        return [next(filled) if u else torch.zeros((len(rows),) + leaf.shape, device=leaf.device, dtype=leaf.dtype)
                for leaf, u in zip(leaves, used)]

    def _batched_grads(self, flat_scores: Tensor, leaves: list[Tensor], rows: Tensor) -> list[Tensor]:
        """:meth:`_grads` for every leaf: one backward batched over the rows, a loop where vmap has no rule."""
        picks = torch.zeros(len(rows), flat_scores.numel(), device=flat_scores.device, dtype=flat_scores.dtype)
        picks[torch.arange(len(rows)), rows] = 1
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                grads = torch.autograd.grad(flat_scores, leaves, grad_outputs=picks, retain_graph=True,
                                            allow_unused=True, is_grads_batched=True)
            slow = [w for w in caught if "batching rule" in str(w.message)]
            if slow and not self._warned_loop:
                log.info("batched backward falls back to a loop inside vmap for some ops: %s", slow[0].message)
                self._warned_loop = True
        except (RuntimeError, NotImplementedError) as exc:
            if not self._warned_loop:
                log.warning("batched backward unavailable for this model (%s); computing gradients in a loop",
                            str(exc).splitlines()[0])
                self._warned_loop = True
            per_row = [torch.autograd.grad(flat_scores[r], leaves, retain_graph=True, allow_unused=True)
                       for r in rows.tolist()]
            grads = [None if per_row[0][i] is None else torch.stack([p[i] for p in per_row])
                     for i in range(len(leaves))]
        return [torch.zeros((len(rows),) + leaf.shape, device=leaf.device, dtype=leaf.dtype) if g is None else g
                for g, leaf in zip(grads, leaves)]



def _needed_leaves(sources: list[FeatureSource], leaves: list[Tensor], keep: Tensor | None) -> Tensor | None:
    """``[N, L]`` bool: which leaves each target's kept sources read (from ``keep`` ``[N, S]``); None: all."""
    if keep is None:
        return None
    column = {id(leaf): j for j, leaf in enumerate(leaves)}
    needed = torch.zeros(keep.shape[0], len(leaves), dtype=torch.bool)
    for k, source in enumerate(sources):
        needed[:, column[id(source.leaf)]] |= keep[:, k].cpu()
    return needed


def _own_gradients(grads: Tensor, owners: Tensor) -> Tensor:
    """``[R, B, ...]`` gradients of R targets -> ``[R, ...]``, each target's own image (a view for one image)."""
    return grads[:, 0] if grads.shape[1] == 1 else grads[torch.arange(len(owners), device=grads.device), owners]


def _own_activations(activations: Tensor, owners: Tensor) -> Tensor:
    """``[B, ...]`` activations -> ``[R, ...]``, each target's image's (one image: expanded, not copied R times)."""
    return activations.expand(len(owners), *activations.shape[1:]) if activations.shape[0] == 1 else activations[owners]

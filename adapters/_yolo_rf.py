"""Exact per-target gradients of YOLO class scores from receptive-field crops (no vmap).

A box target's score is one class logit at one anchor of one level, read through that level's class branch
(stride-1 "same" convolutions and pointwise layers). Its gradient w.r.t. the level's head input is zero
outside the anchor's receptive field through the branch, so each target needs only a ``k x k`` window of the
features: the windows of T targets are stacked as one batch, the branch reruns on it, and ONE ordinary
backward of the centre scores' sum gives every target's gradient (the crops are independent).

Exact at the map's edge without masks: a window that would hang over the edge is shifted inside the map, so
its own zero padding falls where the original's does, and its inner cut stays at least the branch's radius
from the anchor, farther than any padding effect reaches. Lower-level head inputs (upstream of the target's
level through the neck) get the crop gradient carried back through the recorded graph (a batched
vector-Jacobian product over the neck only, never through the class branch).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["POINTWISE", "branch_radius", "ClassBranchCrops", "anchor_levels", "crop_windows"]

log = logging.getLogger("dsxai")

#: layers that act on each position alone (batch norm in eval mode: a per-channel affine map)
POINTWISE = (nn.BatchNorm2d, nn.SiLU, nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Sigmoid, nn.Hardswish, nn.GELU)


def branch_radius(branch: nn.Module, containers: Sequence[type]) -> tuple[int, int] | None:
    """Receptive-field radius ``(ry, rx)`` of a sequential class branch, or None when it is not one.

    Recognised: ``nn.Sequential`` and the ``containers`` classes (exact types, each running its children in
    order), stride-1 zero-padded "same" ``Conv2d`` (any dilation, odd kernels) and :data:`POINTWISE` layers,
    all in eval mode. Why None otherwise: a crop is exact only for this structure.
    """
    ry = rx = 0
    for module in branch.modules():
        if module.training:
            return None
        if isinstance(module, nn.Conv2d):
            radius = _same_conv_radius(module)
            if radius is None:
                return None
            ry, rx = ry + radius[0], rx + radius[1]
        elif not (type(module) is nn.Sequential or type(module) in containers or type(module) in POINTWISE):
            return None
    return ry, rx


def _same_conv_radius(conv: nn.Conv2d) -> tuple[int, int] | None:
    """``dilation * (kernel - 1) / 2`` per axis for a stride-1 zero-padded "same" convolution, else None."""
    if conv.padding_mode != "zeros" or tuple(conv.stride) != (1, 1) or isinstance(conv.padding, str):
        return None
    radius = []
    for k, d, p in zip(conv.kernel_size, conv.dilation, conv.padding):
        if k % 2 == 0 or p != d * (k - 1) // 2:
            return None
        radius.append(p)
    return radius[0], radius[1]


def anchor_levels(feats: Sequence[Tensor], anchors: Tensor) -> tuple[Tensor, Tensor]:
    """Each anchor's level and its cell index within the level; anchors are flattened level by level,
    row-major, one per cell (as the head flattens them)."""
    sizes = torch.tensor([f.shape[-2] * f.shape[-1] for f in feats], device=anchors.device)
    starts = torch.cumsum(sizes, 0) - sizes
    level = torch.bucketize(anchors, starts[1:], right=True)
    return level, anchors - starts[level]


def crop_windows(centres: Tensor, radius: int, size: int) -> tuple[Tensor, int]:
    """Window starts ``[n]`` and length ``k`` along one axis: ``k = min(2 r + 1, size)`` cells around each
    centre, shifted inside ``[0, size)`` where they would hang over the edge."""
    k = min(2 * radius + 1, size)
    return (centres - radius).clamp(0, size - k), k


@dataclass
class ClassBranchCrops:
    """The head inputs ``feats`` of one forward, each level's class branch and its radius (``DenseOutput.rf``)."""

    feats: list[Tensor]
    branches: Sequence[nn.Module]
    radii: list[tuple[int, int]]

    def level_of(self, anchors: Tensor) -> tuple[Tensor, Tensor]:
        """Each anchor's level and its index within the level (see :func:`anchor_levels`)."""
        return anchor_levels(self.feats, anchors)

    def gradients(self, leaves: list[Tensor], images: Tensor, anchors: Tensor, labels: Tensor,
                  expected: Tensor, needed: Tensor | None = None) -> list[Tensor] | None:
        """Gradients ``[n, *leaf.shape]`` of the sigmoid class scores at ``(images, anchors, labels)`` w.r.t.
        each leaf; None (caller takes the general path) when a leaf is not a head input or the crop scores do
        not reproduce ``expected`` (the targets' own scores) within 1e-5. ``needed`` (``[n, len(leaves)]``
        bool; None: all): a leaf none of a level's targets needs gets zeros, and the neck is not walked back to it
        (why: under ``fuse="level"`` that backward is most of the time, for maps that are then dropped)."""
        index = {id(f): i for i, f in enumerate(self.feats)}
        if not leaves or any(id(leaf) not in index for leaf in leaves):
            return None
        if any(f.dtype != p.dtype for f, b in zip(self.feats, self.branches) for p in b.parameters()):
            return None  # autocast features through float32 weights: the general path handles the casts
        out: list[Tensor | None] = [None] * len(leaves)
        level, cell = self.level_of(anchors)
        for i in level.unique().tolist():
            mine = (level == i).nonzero().flatten()
            own = self._level_gradients(i, images[mine], cell[mine], labels[mine], expected[mine])
            if own is None:
                return None
            wanted = [True] * len(leaves) if needed is None else needed[mine.cpu()].any(0).tolist()
            lower = [k for k, leaf in enumerate(leaves) if leaf is not self.feats[i] and wanted[k]]
            if lower:  # through the neck: the crop gradient carried back along the recorded graph
                try:
                    carried = torch.autograd.grad(self.feats[i], [leaves[k] for k in lower], grad_outputs=own,
                                                  retain_graph=True, allow_unused=True, is_grads_batched=True)
                except (RuntimeError, NotImplementedError):
                    return None  # no batching rule on this device: the general path has the loop
                for k, grad in zip(lower, carried):
                    _accumulate(out, k, mine, grad, len(anchors), leaves[k])
            for k, leaf in enumerate(leaves):
                if leaf is self.feats[i]:
                    _accumulate(out, k, mine, own, len(anchors), leaf)
        return [leaf.new_zeros((len(anchors),) + leaf.shape) if g is None else g for g, leaf in zip(out, leaves)]

    def _level_gradients(self, i: int, images: Tensor, cells: Tensor, labels: Tensor,
                         expected: Tensor) -> Tensor | None:
        """``[n, B, C, h, w]`` gradients w.r.t. level ``i``'s features of n targets, from one crop backward."""
        feats = self.feats[i].detach()
        h, w = feats.shape[-2:]
        ys, xs = cells // w, cells % w
        y0, ky = crop_windows(ys, self.radii[i][0], h)
        x0, kx = crop_windows(xs, self.radii[i][1], w)
        spans = list(zip(images.tolist(), y0.tolist(), x0.tolist()))
        crops = torch.stack([feats[b, :, y:y + ky, x:x + kx] for b, y, x in spans]).requires_grad_(True)
        logits = self.branches[i](crops)  # n, nc, ky, kx
        n = torch.arange(len(cells), device=cells.device)
        scores = logits[n, labels, ys - y0, xs - x0].sigmoid()
        if not torch.allclose(scores.detach(), expected.to(scores.dtype), rtol=0, atol=1e-5):
            log.info("receptive-field crops do not reproduce the class scores; using the general backward")
            return None
        (grads,) = torch.autograd.grad(scores.sum(), crops)
        full = feats.new_zeros((len(cells),) + feats.shape)
        for k, (b, y, x) in enumerate(spans):
            full[k, b, :, y:y + ky, x:x + kx] = grads[k]
        return full


def _accumulate(out: list[Tensor | None], k: int, rows: Tensor, grad: Tensor | None, n: int, leaf: Tensor) -> None:
    """Add ``grad`` (gradients of the targets ``rows`` of ``n``) into ``out[k]``; taken as it is, not copied into
    zeros, when it covers every target (why: one level per chunk is the common case, and full maps are large)."""
    if grad is None:
        return
    if out[k] is None and len(rows) == n:
        out[k] = grad
        return
    if out[k] is None:
        out[k] = leaf.new_zeros((n,) + leaf.shape)
    out[k][rows] += grad

"""Segmentation losses of the zoo's U-Net recipes (the shapes U-Net and the cue-world U-Net of
:mod:`dsxai.zoo.biased`)."""
from __future__ import annotations


def dice_loss(logits, target, eps: float = 1.0):
    """Soft multi-class dice loss, averaged over the classes (batch-pooled), of ``logits [B, C, H, W]`` against
    class ids ``target [B, H, W]``; it weighs small classes as much as the background."""
    import torch

    prob = logits.softmax(1)
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


def consistency_loss(logits, target):
    """Mean KL divergence between the class distributions of 4-neighbouring pixels that belong to the same
    object class (background pairs left out), per direction, summed over the two directions.

    Why: per-pixel cross-entropy lets parts of one object settle on different classes for a long time; this
    term pulls the predictions inside an object together, which speeds up the shape classes."""
    logp = logits.log_softmax(1)
    p = logp.exp()
    total = logits.new_zeros(())
    for dim in (3, 2):
        n = logits.shape[dim]
        kl = (p.narrow(dim, 1, n - 1) * (logp.narrow(dim, 1, n - 1) - logp.narrow(dim, 0, n - 1))).sum(1)
        later, earlier = target.narrow(dim - 1, 1, n - 1), target.narrow(dim - 1, 0, n - 1)
        same = ((later == earlier) & (later > 0)).to(kl.dtype)
        total = total + (kl * same).sum() / same.sum().clamp(min=1)
    return total


def coarse_class_losses(heads, features, target) -> list:
    """Deep supervision of coarse encoder stages: one soft cross-entropy per stage between ``head(feature)``
    (per-cell class logits ``[B, C, h, w]``) and each cell's class fractions in ``target [B, H, W]`` (``H / h``
    pixels square). Returns the per-stage losses.

    Why: each cell of the stride-16 and stride-32 stages must say which classes lie under it, so the encoder
    learns the shape classes from the object's own cells instead of reading them from the context."""
    import torch.nn.functional as F

    onehot = F.one_hot(target, heads[0].out_channels).permute(0, 3, 1, 2).float()
    losses = []
    for head, feature in zip(heads, features):
        share = F.avg_pool2d(onehot, target.shape[-1] // feature.shape[-1])
        losses.append(-(share * head(feature).log_softmax(1)).sum(1).mean())
    return losses

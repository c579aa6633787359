"""Train the cue-world U-Net of :mod:`dsxai.zoo.biased` (the known answer of ``dsxai audit``).

Nothing is shipped: :func:`dsxai.zoo.biased.load_or_train` calls :func:`train_cue_unet` when its cache folder
lacks the model, so the model is trained where it is used.
"""
from __future__ import annotations

import math
import time

from dsxai.zoo import biased
from dsxai.zoo.training.losses import dice_loss


def _lr_scale(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 5% of the rate at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def train_cue_unet(world: str = "biased", steps: int | None = None, batch: int = biased.DEFAULTS["batch"],
                   lr: float = biased.DEFAULTS["lr"], size: int = biased.DEFAULTS["size"], seed: int = 0,
                   threads: int = 1, log_every: int = 0):
    """Train :func:`~dsxai.zoo.biased.build_cue_unet` on ``world`` ("biased" or "fair") training scenes (one
    object each, ``size`` px; fresh scenes every step) and return it in eval mode. ``steps`` defaults to
    :data:`~dsxai.zoo.biased.STEPS` of the world. Deterministic for fixed arguments and thread count (the global
    torch thread count is restored afterwards). Raises ValueError for another world."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from dsxai.zoo import unet_preprocess

    if world not in ("biased", "fair"):
        raise ValueError(f"train on world 'biased' or 'fair', got {world!r}")
    steps = biased.STEPS[world] if steps is None else int(steps)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = biased.build_cue_unet()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        weight = torch.tensor([0.1, 1.0, 1.0])  # the object pixels carry the class decision
        warmup = max(1, min(20, steps // 10))
        t0 = time.time()
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = lr * _lr_scale(step, steps, warmup)
            scenes = [biased.make_cue_scene((biased.WORLD_SEEDS[world], seed, step, j), world, size,
                                            n_objects=(1, 1)) for j in range(batch)]
            x = unet_preprocess(np.stack([s.image for s in scenes]))
            y = torch.from_numpy(np.stack([s.semantic for s in scenes]).astype(np.int64))
            logits = model(x)
            loss = F.cross_entropy(logits, y, weight=weight) + dice_loss(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if log_every and (step % log_every == 0 or step == steps - 1):
                print(f"[{world}] step {step}/{steps} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
    finally:
        torch.set_num_threads(old_threads)
    return model.eval()

"""Train the shapes-world Faster R-CNN (torchvision, small custom backbone, random init) on CPU.

    python -m dsxai.zoo.training.fasterrcnn --out dsxai/zoo/weights

Every step draws fresh scenes ``make_scenes(batch, TRAIN_SEED, start=step * batch)``, so the run is a pure
function of the arguments (seeded init, deterministic data, fixed thread count). Saves ``shapes_fasterrcnn.pt``
(fp16 state dict; :func:`dsxai.zoo.load_shapes_fasterrcnn` rebuilds the model and loads it as float32).
"""
from __future__ import annotations

import math
import sys
import time

from dsxai.zoo.training.common import adamw, script_parser, train_and_save, warmup_lr

FILENAME = "shapes_fasterrcnn.pt"
DEFAULTS = dict(steps=500, batch=8, lr=2e-3, weight_decay=1e-4, warmup=50, seed=0, threads=2)


def _augment(images, targets, rng):
    """Random flips / 90-degree rotations of a batch (the categories are rotation invariant)."""
    out_i, out_t = [], []
    for img, t in zip(images, targets):
        boxes = t["boxes"].clone()
        h, w = img.shape[1:]
        if rng.random() < 0.5:  # horizontal flip
            img = img.flip(-1)
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        if rng.random() < 0.5:  # vertical flip
            img = img.flip(-2)
            boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
        if h == w and rng.random() < 0.5:  # transpose (with the flips: all 8 dihedral symmetries)
            img = img.transpose(1, 2)
            boxes = boxes[:, [1, 0, 3, 2]]
        out_i.append(img.contiguous())
        out_t.append({"boxes": boxes, "labels": t["labels"]})
    return out_i, out_t


def train(steps: int = DEFAULTS["steps"], batch: int = DEFAULTS["batch"], lr: float = DEFAULTS["lr"],
          weight_decay: float = DEFAULTS["weight_decay"], warmup: int = DEFAULTS["warmup"],
          seed: int = DEFAULTS["seed"], threads: int = DEFAULTS["threads"], image_size: int = 256,
          log_every: int = 25, data_seed: int | None = None):
    """Train and return the model (train mode). Deterministic for fixed arguments and thread count."""
    import numpy as np
    import torch

    from dsxai import shapes
    from dsxai.zoo import TRAIN_SEED, build_shapes_fasterrcnn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_shapes_fasterrcnn(image_size=image_size)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, lr, weight_decay)

    def lr_at(i: int) -> float:
        if i < warmup:
            return warmup_lr(lr, i, warmup)
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(steps - warmup, 1))))

    data_seed = TRAIN_SEED if data_seed is None else data_seed
    t0 = time.time()
    running = None
    for step in range(steps):
        scenes = shapes.make_scenes(batch, data_seed, start=step * batch, size=image_size)
        images, targets = shapes.to_tensors(scenes)
        images, targets = _augment(list(images), targets, rng)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if log_every and (step % log_every == 0 or step == steps - 1):
            parts = " ".join(f"{k.replace('loss_', '')}={v.item():.3f}" for k, v in losses.items())
            print(f"step {step:4d}/{steps} loss={running:.3f} {parts} lr={lr_at(step):.2e} "
                  f"{time.time() - t0:.0f}s", flush=True)
    return model


def main(argv: list[str] | None = None) -> int:
    """Command line: train with the shipped recipe (or the options given), save, optionally evaluate."""
    a = script_parser(__doc__, DEFAULTS).parse_args(argv)
    meta = {"steps": a.steps, "batch": a.batch, "lr": a.lr, "seed": a.seed}
    dst = train_and_save(lambda: train(a.steps, a.batch, a.lr, seed=a.seed, threads=a.threads), a.out, FILENAME,
                         meta, f"{a.steps} steps")
    if a.eval:
        from dsxai import shapes
        from dsxai.zoo import TEST_SEED, coco_evaluate, load_shapes_fasterrcnn, predict_torchvision

        scenes = shapes.make_scenes(a.eval, TEST_SEED)
        m = coco_evaluate(scenes, predict_torchvision(load_shapes_fasterrcnn(path=dst), scenes))
        print(f"held-out ({a.eval} scenes): mAP50={m['map50']:.3f} mAP={m['map']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the mask branch of the shapes-world Mask R-CNN on the frozen shipped Faster R-CNN, on CPU.

    python -m dsxai.zoo.training.maskrcnn --out dsxai/zoo/weights

The detector (backbone, RPN, box head) stays as shipped, batch-norm statistics included; only the mask head
and predictor learn, from torchvision's own Mask R-CNN loss on fresh scenes
``make_scenes(batch, TRAIN_SEED, start=step * batch)``. Saves ``shapes_maskrcnn_mask.pt`` (fp16 state dict of
:func:`dsxai.zoo.mask_branch`; :func:`dsxai.zoo.load_shapes_maskrcnn` adds it to the detector).
"""
from __future__ import annotations

import sys
import time

from dsxai.zoo.training.common import adamw, script_parser, train_and_save, warmup_lr

FILENAME = "shapes_maskrcnn_mask.pt"
DEFAULTS = dict(steps=300, batch=8, lr=2e-3, weight_decay=1e-4, warmup=30, seed=0, threads=2)


def train(steps: int = DEFAULTS["steps"], batch: int = DEFAULTS["batch"], lr: float = DEFAULTS["lr"],
          seed: int = DEFAULTS["seed"], threads: int = DEFAULTS["threads"], log_every: int = 25):
    """Train the mask branch and return it (:func:`dsxai.zoo.mask_branch`). Deterministic for fixed
    arguments and thread count."""
    import torch

    from dsxai import shapes
    from dsxai.adapters.torchvision_masks import add_mask_branch
    from dsxai.zoo import TRAIN_SEED, load_shapes_fasterrcnn, mask_branch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = add_mask_branch(load_shapes_fasterrcnn("cpu"), channels=(64, 64), resolution=14)
    branch = mask_branch(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in branch.parameters():
        p.requires_grad_(True)
    model.train()
    model.backbone.eval()  # frozen detector: its batch-norm statistics stay as shipped
    opt = adamw(list(branch.parameters()), lr, DEFAULTS["weight_decay"])
    t0, running = time.time(), None
    for step in range(steps):
        images, targets = shapes.to_tensors(shapes.make_scenes(batch, TRAIN_SEED, start=step * batch))
        for g in opt.param_groups:
            g["lr"] = warmup_lr(lr, step, DEFAULTS["warmup"]) if step < DEFAULTS["warmup"] else lr
        loss = model(list(images), targets)["loss_mask"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}/{steps} loss_mask={running:.3f} {time.time() - t0:.0f}s", flush=True)
    return branch


def main(argv: list[str] | None = None) -> int:
    """Command line: train with the shipped recipe (or the options given) and save."""
    a = script_parser(__doc__, DEFAULTS).parse_args(argv)
    meta = {"steps": a.steps, "batch": a.batch, "lr": a.lr, "seed": a.seed, "detector": "shapes_fasterrcnn.pt"}
    train_and_save(lambda: train(a.steps, a.batch, a.lr, seed=a.seed, threads=a.threads), a.out, FILENAME, meta,
                   f"{a.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the shapes-world U-Net (segmentation-models-pytorch, MobileNetV3-small encoder, depth 5, random init).

    python -m dsxai.zoo.training.unet --out dsxai/zoo/weights

5 classes: 0 = background, 1..4 = disc, square, triangle, ring. Every step draws fresh scenes
``make_scenes(batch, TRAIN_SEED, start=step * batch, size=image_size, n_objects=n_objects,
overlap_prob=overlap_prob)``: 128 px scenes (the objects keep their 16-96 px sizes, so a small scene holds whole
objects at test scale at a quarter of the pixels), denser than the test world's for the first ``--dense-steps``
and zoomed out 2x for the first ``--half-res-steps``. The run is a pure function of its arguments (and the
process and thread counts; ``--procs 2 --threads 1``, the default, trains data-parallel).
Loss: cross-entropy + soft dice + :func:`~dsxai.zoo.training.losses.consistency_loss` + two training-only heads,
dropped before saving: a per-image class-presence BCE (smp ``aux_params`` head) and per-cell class heads on the
stride-16 and stride-32 encoder stages (:func:`~dsxai.zoo.training.losses.coarse_class_losses`). Warm-up /
stable / decay learning-rate schedule (``--decay-steps``). Saves ``shapes_unet.pt`` (fp16 state dict;
:func:`dsxai.zoo.load_shapes_unet` loads it as float32). ``benchmarks/README.md`` ("Shapes U-Net training
recipe") gives why each lever is set as it is.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import sys
import time
from pathlib import Path

from dsxai.zoo.training.common import adamw, script_parser, train_and_save, warmup_lr
from dsxai.zoo.training.losses import coarse_class_losses, consistency_loss, dice_loss

__all__ = ["FILENAME", "DEFAULTS", "Recipe", "train", "evaluate", "main"]

FILENAME = "shapes_unet.pt"
DEFAULTS = dict(steps=800, batch=16, lr=8e-3, weight_decay=0.05, warmup=60, crop=None, image_size=128,
                n_objects=(4, 8), overlap_prob=0.4, dense_steps=550, decay_steps=250, consistency_weight=1.0,
                presence_weight=1.0, finetune_steps=0, finetune_lr=1e-3, half_res_steps=450, deep_supervision=1.0,
                procs=2, threads=1, seed=1)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything one training process needs (see :func:`train` for the meaning of each field)."""

    steps: int
    batch: int
    lr: float
    weight_decay: float
    warmup: int
    seed: int
    threads: int
    image_size: int
    log_every: int
    data_seed: int | None
    crop: int | None
    presence_weight: float
    finetune_steps: int
    finetune_lr: float
    n_objects: tuple[int, int]
    overlap_prob: float
    dense_steps: int | None
    decay_steps: int | None
    consistency_weight: float
    half_res_steps: int
    deep_supervision: float

    def check(self, procs: int) -> None:
        """ValueError naming the first inconsistent setting (and what it must be)."""
        total = self.steps + self.finetune_steps
        if self.decay_steps is not None and not 1 <= self.decay_steps <= total - self.warmup:
            raise ValueError(f"decay_steps must be between 1 and steps + finetune_steps - warmup "
                             f"({total - self.warmup}), got {self.decay_steps}")
        if self.consistency_weight < 0:
            raise ValueError(f"consistency_weight is a loss weight >= 0, got {self.consistency_weight}")
        if self.deep_supervision < 0:
            raise ValueError(f"deep_supervision is a loss weight >= 0, got {self.deep_supervision}")
        size = self.crop or self.image_size
        if self.half_res_steps < 0 or (self.half_res_steps and size % 64):
            raise ValueError(f"half_res_steps must be >= 0, and > 0 only for scenes (or crops) of a multiple of 64 "
                             f"px (the half-size ones must be a multiple of 32 for the U-Net), got "
                             f"{self.half_res_steps} with {size} px")
        if procs < 1 or self.batch % procs:
            raise ValueError(f"procs must be >= 1 and divide the batch ({self.batch}), got {procs}")


def _augment(x, y, rng, crop: int | None = None):
    """Random crop (``crop`` x ``crop``), flips and transpose of a batch ``x [B,3,H,W]``, ``y [B,H,W]``."""
    import torch

    xs, ys = [], []
    for xi, yi in zip(x, y):
        if crop is not None:
            h, w = yi.shape
            top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
            xi, yi = xi[:, top:top + crop, left:left + crop], yi[top:top + crop, left:left + crop]
        if rng.random() < 0.5:
            xi, yi = xi.flip(-1), yi.flip(-1)
        if rng.random() < 0.5:
            xi, yi = xi.flip(-2), yi.flip(-2)
        if xi.shape[-1] == xi.shape[-2] and rng.random() < 0.5:
            xi, yi = xi.transpose(-1, -2), yi.transpose(-1, -2)
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs).contiguous(), torch.stack(ys).contiguous()


def train(steps: int = DEFAULTS["steps"], batch: int = DEFAULTS["batch"], lr: float = DEFAULTS["lr"],
          weight_decay: float = DEFAULTS["weight_decay"], warmup: int = DEFAULTS["warmup"],
          seed: int = DEFAULTS["seed"], threads: int = DEFAULTS["threads"], image_size: int = DEFAULTS["image_size"],
          log_every: int = 25, data_seed: int | None = None, crop: int | None = DEFAULTS["crop"],
          presence_weight: float = DEFAULTS["presence_weight"], finetune_steps: int = DEFAULTS["finetune_steps"],
          finetune_lr: float = DEFAULTS["finetune_lr"], n_objects: tuple[int, int] = DEFAULTS["n_objects"],
          overlap_prob: float = DEFAULTS["overlap_prob"], dense_steps: int | None = DEFAULTS["dense_steps"],
          decay_steps: int | None = DEFAULTS["decay_steps"],
          consistency_weight: float = DEFAULTS["consistency_weight"],
          half_res_steps: int = DEFAULTS["half_res_steps"], deep_supervision: float = DEFAULTS["deep_supervision"],
          procs: int = DEFAULTS["procs"]):
    """Train and return the model (train mode, without its training-only heads); deterministic for fixed
    arguments, ``procs`` and ``threads``. The defaults are the shipped model's recipe.

    Each step: ``batch`` fresh ``image_size`` px scenes (or random ``crop`` px patches of them), drawn with
    ``n_objects`` / ``overlap_prob`` for the first ``dense_steps`` (``None``: all) and the test world's density
    after, downscaled 2x for the first ``half_res_steps``. Loss weights: ``presence_weight``,
    ``consistency_weight``, ``deep_supervision``. Learning rate: linear warm-up from ``lr / 10`` over ``warmup``
    steps, then ``lr`` held and a cosine decay to ``lr / 1000`` over the last ``decay_steps`` of ``steps +
    finetune_steps``; ``decay_steps=None``: cosine decay to ``steps``, then a warm restart of ``finetune_steps``
    from ``finetune_lr``. ``procs > 1`` trains data-parallel (``torch.distributed``, gloo), each process on
    ``batch / procs`` scenes with ``threads`` threads, because this model's small convolutions do not keep two
    threads of one process busy. Raises ValueError for inconsistent settings.
    """
    recipe = Recipe(steps=steps, batch=batch, lr=lr, weight_decay=weight_decay, warmup=warmup, seed=seed,
                    threads=threads, image_size=image_size, log_every=log_every, data_seed=data_seed, crop=crop,
                    presence_weight=presence_weight, finetune_steps=finetune_steps, finetune_lr=finetune_lr,
                    n_objects=n_objects, overlap_prob=overlap_prob, dense_steps=dense_steps, decay_steps=decay_steps,
                    consistency_weight=consistency_weight, half_res_steps=half_res_steps,
                    deep_supervision=deep_supervision)
    recipe.check(procs)
    return _fit(0, 1, recipe) if procs == 1 else _train_data_parallel(recipe, procs)


def _train_data_parallel(recipe: Recipe, procs: int):
    """:func:`train` in ``procs`` spawned processes that average their gradients; rank 0's model."""
    import os
    import tempfile

    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="dsxai-train-unet-") as tmp:
        mp.spawn(_data_parallel_worker, args=(procs, recipe, tmp, os.getpid()), nprocs=procs, join=True)
        states = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(procs)]
    return _model_from_ranks(states)


def _model_from_ranks(states: list[dict]):
    """The model of a data-parallel run (train mode), from each process's state dict: rank 0's, once the
    weights of all ranks are found equal (averaged gradients keep them so; BatchNorm buffers may differ)."""
    import torch

    from dsxai import zoo

    model = zoo.build_shapes_unet()
    model.load_state_dict(states[0])
    weights = [name for name, _ in model.named_parameters()]
    for r, state in enumerate(states[1:], 1):
        if not all(torch.equal(states[0][name], state[name]) for name in weights):
            raise RuntimeError(f"data-parallel training: the weights of process {r} differ from process 0's, so "
                               "the gradients were not averaged; train with procs=1")
    return model.train()


def _data_parallel_worker(rank: int, world: int, recipe: Recipe, tmp: str, parent: int | None = None) -> None:
    """One process of a data-parallel :func:`train`: rendezvous through a file in ``tmp``, train, and save the
    model there as ``rank{rank}.pt``. It does not start if ``parent`` (the process that called :func:`train`) has
    died meanwhile."""
    import os

    import torch
    import torch.distributed as dist

    if parent is not None and os.getppid() != parent:
        # torch.multiprocessing's spawn has Linux signal its children when the parent dies, but only once they
        # run: a child still starting would otherwise train on for minutes
        os._exit(1)
    if sys.platform.startswith("linux"):
        # gloo otherwise binds the interface the hostname resolves to, which sandboxes often lack
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{Path(tmp) / 'rendezvous'}", rank=rank, world_size=world)
    try:
        model = _fit(rank, world, recipe)
        torch.save(model.state_dict(), Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _cosine(peak: float, i: int, n: int) -> float:
    return peak * (0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * i / max(n, 1))))


def _lr_at(r: Recipe, i: int) -> float:
    """The learning rate of step ``i`` (the schedule :func:`train` describes)."""
    if i < r.warmup:
        return warmup_lr(r.lr, i, r.warmup)
    if r.decay_steps is not None:
        decay_start = r.steps + r.finetune_steps - r.decay_steps
        return r.lr if i < decay_start else _cosine(r.lr, i - decay_start, r.decay_steps)
    if i < r.steps:
        return _cosine(r.lr, i - r.warmup, r.steps - r.warmup)
    return _cosine(r.finetune_lr, i - r.steps, r.finetune_steps)


def _build(r: Recipe):
    """The model in train mode with its training-only heads, the list the encoder hook fills with the current
    step's stage outputs, and that hook (None without deep supervision)."""
    import torch

    from dsxai import zoo

    model = zoo.build_shapes_unet(presence_head=r.presence_weight > 0)
    features: list = []
    hook = None
    if r.deep_supervision:
        # inside the model so that DDP averages their gradients too; dropped before returning
        model.coarse_heads = torch.nn.ModuleList([torch.nn.Conv2d(c, model.segmentation_head[0].out_channels, 1)
                                                  for c in model.encoder.out_channels[-2:]])
        hook = model.encoder.register_forward_hook(lambda module, args, out: features.__setitem__(slice(None), out))
    model.train()
    return model.to(memory_format=torch.channels_last), features, hook  # oneDNN's faster layout on CPU


def _distributed(model):
    """``model`` wrapped for data-parallel training, sharing gradients only: each process keeps its own
    BatchNorm buffers (equal at init, same seed), so no broadcast each step."""
    import torch

    ddp = torch.nn.parallel.DistributedDataParallel
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else {"broadcast_buffers": False})  # one switch: its newer name, else its older one
    return ddp(model, **no_sync)


def _batch(r: Recipe, step: int, rank: int, world: int, rng):
    """Step ``step``'s share of scenes for process ``rank``: normalised, augmented images (channels-last) and
    their class-id maps."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from dsxai import shapes, zoo

    dense = r.dense_steps is None or step < r.dense_steps
    density = dict(n_objects=r.n_objects, overlap_prob=r.overlap_prob) if dense else {}  # {}: the test world's
    share = r.batch // world
    data_seed = zoo.TRAIN_SEED if r.data_seed is None else r.data_seed
    scenes = shapes.make_scenes(share, data_seed, start=step * r.batch + rank * share, size=r.image_size, **density)
    x = zoo.unet_preprocess(np.stack([s.image for s in scenes]))
    y = torch.from_numpy(np.stack([s.semantic for s in scenes]).astype(np.int64))
    x, y = _augment(x, y, rng, r.crop)
    if step < r.half_res_steps:  # the scenes zoomed out 2x: a quarter of the pixels
        x, y = F.avg_pool2d(x, 2), y[:, ::2, ::2].contiguous()
    return x.contiguous(memory_format=torch.channels_last), y


def _loss(r: Recipe, out, y, model, features: list):
    """The recipe's loss of one step's output (masks, or masks and presence logits)."""
    import torch.nn.functional as F

    if isinstance(out, tuple):  # (masks, presence logits): "is class c anywhere in the image"
        logits, presence = out
        present = F.one_hot(y.flatten(1), logits.shape[1]).amax(1)[:, 1:].to(presence.dtype)
        aux = F.binary_cross_entropy_with_logits(presence, present)
    else:
        logits, aux = out, 0.0
    loss = F.cross_entropy(logits, y) + dice_loss(logits, y) + r.presence_weight * aux
    if r.deep_supervision:
        for term in coarse_class_losses(model.coarse_heads, features[-2:], y):
            loss = loss + r.deep_supervision * term
    if r.consistency_weight:
        loss = loss + r.consistency_weight * consistency_loss(logits, y)
    return loss


def _fit(rank: int, world: int, r: Recipe):
    """The training loop of :func:`train` on rank ``rank`` of ``world`` processes (1: no process group)."""
    import numpy as np
    import torch

    torch.set_num_threads(r.threads)
    torch.manual_seed(r.seed)  # every rank starts from the same weights
    rng = np.random.default_rng(r.seed if world == 1 else (r.seed, rank))
    model, features, hook = _build(r)
    params = list(model.parameters())
    net = _distributed(model) if world > 1 else model
    opt = adamw(params, r.lr, r.weight_decay, fused=True)  # fused: 5% of a step on 2 CPU cores
    total = r.steps + r.finetune_steps
    t0 = time.time()
    running = None
    for step in range(total):
        x, y = _batch(r, step, rank, world, rng)
        for g in opt.param_groups:
            g["lr"] = _lr_at(r, step)
        loss = _loss(r, net(x), y, model, features)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if rank == 0 and r.log_every and (step % r.log_every == 0 or step == total - 1):
            print(f"step {step:4d}/{total} loss={running:.3f} lr={_lr_at(r, step):.2e} {time.time() - t0:.0f}s",
                  flush=True)
    model.classification_head = None  # training-only heads; the shipped model outputs masks only
    if hook is not None:
        hook.remove()
        del model.coarse_heads
    return model.to(memory_format=torch.contiguous_format)


def evaluate(model, scenes, batch: int = 8) -> dict:
    """Pixel-accumulated IoU per class over ``scenes`` (see :func:`dsxai.zoo.miou_from_confusion`)."""
    import numpy as np
    import torch

    from dsxai.zoo import miou_from_confusion, semantic_confusion, unet_preprocess

    model.eval()
    conf = 0
    with torch.no_grad():
        for i in range(0, len(scenes), batch):
            chunk = scenes[i:i + batch]
            pred = model(unet_preprocess(np.stack([s.image for s in chunk]))).argmax(1).numpy()
            conf = conf + semantic_confusion(np.stack([s.semantic for s in chunk]), pred)
    return miou_from_confusion(conf)


#: the U-Net's own options with a plain default: flag -> (DEFAULTS key, type, help)
OPTIONS = {
    "--warmup": ("warmup", int, "linear warm-up steps"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay of the weights (not of biases and norms)"),
    "--finetune-steps": ("finetune_steps", int, "steps of the warm restart after the main schedule (0: none)"),
    "--finetune-lr": ("finetune_lr", float, "peak learning rate of the warm restart"),
    "--image-size": ("image_size", int, "training scene size"),
    "--overlap": ("overlap_prob", float, "chance that a training object may overlap others (the test world uses "
                                         "0.25)"),
    "--dense-steps": ("dense_steps", int, "use --objects/--overlap for this many steps, then the test world's "
                                          "density (default: all)"),
    "--decay-steps": ("decay_steps", int, "warm-up / stable / decay schedule: constant --lr after the warm-up, "
                                          "cosine decay over the last N steps (0: cosine schedule plus a warm "
                                          "restart of --finetune-steps)"),
    "--consistency": ("consistency_weight", float, "weight of the same-object neighbour consistency loss (0: off)"),
    "--half-res-steps": ("half_res_steps", int, "train the first N steps on the scenes downscaled 2x (0: none)"),
    "--deep-supervision": ("deep_supervision", float, "weight of the per-cell class heads on the stride-16 and "
                                                      "stride-32 encoder stages (0: off)"),
    "--procs": ("procs", int, "data-parallel training processes (each takes --batch / --procs scenes of a step)"),
}


def _parser():
    """The command line's options (defaults: the shipped recipe)."""
    p = script_parser(__doc__, DEFAULTS)
    for flag, (key, kind, text) in OPTIONS.items():
        p.add_argument(flag, type=kind, default=DEFAULTS[key], help=text)
    p.add_argument("--crop", type=int, default=DEFAULTS["crop"] or 0, help="training patch size (0 = whole scenes)")
    p.add_argument("--objects", type=int, nargs=2, default=DEFAULTS["n_objects"], metavar=("MIN", "MAX"),
                   help="objects attempted per training scene (the test world uses 1 5)")
    return p


def _check_args(p, a) -> None:
    """Exit through ``p.error`` (usage, one line) on the first option out of range, before any training."""
    if a.steps < 1 or a.finetune_steps < 0:
        p.error(f"--steps must be >= 1 and --finetune-steps >= 0, got {a.steps} and {a.finetune_steps}")
    if not 1 <= a.objects[0] <= a.objects[1]:
        p.error(f"--objects MIN MAX needs 1 <= MIN <= MAX, got {a.objects[0]} {a.objects[1]}")
    if not 0.0 <= a.overlap <= 1.0:
        p.error(f"--overlap is a probability in [0, 1], got {a.overlap}")
    if a.dense_steps is not None and a.dense_steps < 0:
        p.error(f"--dense-steps must be >= 0, got {a.dense_steps}")
    if a.decay_steps and not 1 <= a.decay_steps <= a.steps + a.finetune_steps - a.warmup:
        p.error(f"--decay-steps must be between 1 and --steps + --finetune-steps - --warmup "
                f"({a.steps + a.finetune_steps - a.warmup}), or 0, got {a.decay_steps}")
    if a.consistency < 0 or a.deep_supervision < 0:
        p.error(f"--consistency and --deep-supervision are loss weights >= 0, got {a.consistency} and "
                f"{a.deep_supervision}")
    if a.half_res_steps < 0 or (a.half_res_steps and (a.crop or a.image_size) % 64):
        p.error(f"--half-res-steps must be >= 0, and > 0 only with --image-size (or --crop) a multiple of 64, got "
                f"{a.half_res_steps} with {a.crop or a.image_size} px")
    if a.procs < 1 or a.batch % a.procs or a.threads < 1:
        p.error(f"--procs must be >= 1 and divide --batch ({a.batch}), and --threads >= 1; got --procs {a.procs} "
                f"--threads {a.threads}")


def main(argv: list[str] | None = None) -> int:
    """Command line: train with the shipped recipe (or the options given), save, optionally evaluate."""
    p = _parser()
    a = p.parse_args(argv)
    _check_args(p, a)
    options = dict(weight_decay=a.weight_decay, warmup=a.warmup, seed=a.seed, threads=a.threads, crop=a.crop or None,
                   image_size=a.image_size, finetune_steps=a.finetune_steps, finetune_lr=a.finetune_lr,
                   n_objects=tuple(a.objects), overlap_prob=a.overlap, dense_steps=a.dense_steps,
                   decay_steps=a.decay_steps or None, consistency_weight=a.consistency,
                   half_res_steps=a.half_res_steps, deep_supervision=a.deep_supervision, procs=a.procs)
    meta = {"steps": a.steps, "warmup": a.warmup, "finetune_steps": a.finetune_steps, "finetune_lr": a.finetune_lr,
            "batch": a.batch, "lr": a.lr, "seed": a.seed, "crop": a.crop, "image_size": a.image_size,
            "n_objects": list(a.objects), "overlap_prob": a.overlap, "dense_steps": a.dense_steps,
            "decay_steps": a.decay_steps, "consistency": a.consistency, "weight_decay": a.weight_decay,
            "half_res_steps": a.half_res_steps, "deep_supervision": a.deep_supervision, "procs": a.procs,
            "threads": a.threads}
    dst = train_and_save(lambda: train(a.steps, a.batch, a.lr, **options), a.out, FILENAME, meta,
                         f"{a.steps}+{a.finetune_steps} steps")
    if a.eval:
        from dsxai import shapes, zoo

        m = evaluate(zoo.load_shapes_unet(path=dst), shapes.make_scenes(a.eval, zoo.TEST_SEED))
        print(f"held-out ({a.eval} scenes): mIoU(5 classes)={m['miou']:.3f} mIoU(objects)={m['miou_objects']:.3f} "
              f"per-class={[round(float(v), 3) for v in m['iou']]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

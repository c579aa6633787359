"""Train the shapes-world U-Net (segmentation-models-pytorch, MobileNetV3-small encoder, depth 5, random init).

    python -m dsxai.zoo.train_unet --out dsxai/zoo/weights

5 classes: 0 = background, 1..4 = disc, square, triangle, ring. Every step draws fresh scenes
``make_scenes(batch, TRAIN_SEED, start=step * batch, size=image_size, n_objects=n_objects,
overlap_prob=overlap_prob)``: 128 px scenes (the objects keep their 16-96 px sizes, so a small scene holds whole
objects at test scale, 4x cheaper than a 256 px one), denser than the test world's for the first
``--dense-steps`` (``--objects 4 8 --overlap 0.4``: 2.9 objects and 28% object pixels per scene instead of 1.9
and 19%) and zoomed out 2x for the first ``--half-res-steps``. The run is a pure function of its arguments (and
the process and thread counts; ``--procs 2 --threads 1``, the default, trains data-parallel).
Loss: cross-entropy + soft dice + :func:`consistency_loss` + two training-only heads, dropped before saving: a
per-image class-presence BCE (smp ``aux_params`` head) and per-cell class heads on the stride-16 and stride-32
encoder stages (:func:`coarse_class_losses`). Both make the shape classes (square vs triangle vs disc) emerge
much earlier; the cell heads also keep the encoder's evidence on the object. Warm-up / stable / decay
learning-rate schedule (``--decay-steps``); see :func:`train` for the recipe. Saves ``shapes_unet.pt`` (fp16
state dict; :func:`dsxai.zoo.load_shapes_unet` loads it as float32).
"""
from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILENAME = "shapes_unet.pt"
DEFAULTS = dict(steps=800, batch=16, lr=8e-3, weight_decay=0.05, warmup=60, crop=None, image_size=128,
                n_objects=(4, 8), overlap_prob=0.4, dense_steps=550, decay_steps=250, consistency_weight=1.0,
                presence_weight=1.0, finetune_steps=0, finetune_lr=1e-3, half_res_steps=450, deep_supervision=1.0,
                procs=2, threads=1, seed=1)


def _augment(x, y, rng, crop: int | None = None):
    """Random crop (``crop`` x ``crop``), flips and transpose of a batch ``x [B,3,H,W]``, ``y [B,H,W]``."""
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
    import torch

    return torch.stack(xs).contiguous(), torch.stack(ys).contiguous()


def dice_loss(logits, target, eps: float = 1.0):
    import torch

    prob = logits.softmax(1)
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


def consistency_loss(logits, target):
    """Mean KL divergence between the class distributions of 4-neighbouring pixels that belong to the same
    object class (background pairs left out), per direction, summed over the two directions.

    Per-pixel cross-entropy lets different parts of one object settle on different classes for a long time
    (a square read as "triangle" in patches); this term pulls the predictions inside an object towards each
    other, which speeds up the shape classes."""
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

    Each cell of the stride-16 and stride-32 stages must then say which classes lie under it, so the encoder
    learns the shape classes from the object's own cells, early and locally: without it, the fast recipes
    (dense scenes, lr 8e-3) read the classes from the context, which the explanation tests measure."""
    import torch.nn.functional as F

    onehot = F.one_hot(target, heads[0].out_channels).permute(0, 3, 1, 2).float()
    losses = []
    for head, feature in zip(heads, features):
        share = F.avg_pool2d(onehot, target.shape[-1] // feature.shape[-1])
        losses.append(-(share * head(feature).log_softmax(1)).sum(1).mean())
    return losses


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
    """Train and return the model (train mode, without the presence head). Deterministic for fixed arguments,
    ``procs`` and ``threads``.

    Every step trains on ``batch`` fresh ``image_size`` px scenes, optionally random ``crop`` x ``crop`` patches
    of them (``None``: whole scenes); the fully convolutional model is then applied to whole 256 px scenes.
    ``n_objects`` and ``overlap_prob`` go to :func:`dsxai.shapes.make_scene` for the first ``dense_steps`` steps
    (``None``: all of them); later steps draw scenes of the test world's density. The first ``half_res_steps``
    steps see the scenes downscaled 2x (area average; labels subsampled), a quarter of the pixels.
    ``consistency_weight`` adds :func:`consistency_loss` to the loss, ``deep_supervision`` the per-stage
    :func:`coarse_class_losses` of two 1x1 conv heads on the stride-16 and stride-32 encoder outputs.

    Learning rate (``decay_steps`` given, as by default): linear warm-up from ``lr / 10`` over ``warmup`` steps,
    ``lr`` held, then a cosine decay to ``lr / 1000`` over the last ``decay_steps`` of the ``steps +
    finetune_steps`` steps. With ``decay_steps=None``: cosine decay from the warm-up to ``lr / 1000`` at
    ``steps``, then a warm restart of ``finetune_steps`` more steps decaying from ``finetune_lr``.

    ``procs`` > 1 trains data-parallel: that many processes of ``threads`` intra-op threads each take ``batch /
    procs`` of every step's scenes and average their gradients (``torch.distributed``, gloo). On 2 CPU cores, 2
    processes of 1 thread make a step about 1.2-1.4x faster than 1 process of 2 threads (0.30-0.35 s against
    0.42 s on dense scenes): this model's small convolutions do not keep 2 threads busy. BatchNorm then
    normalises over each process's share; the model returned carries rank 0's running statistics, once every
    process is found to hold the same weights.

    The defaults are the shipped model's recipe; ``benchmarks/README.md`` ("Shapes U-Net training recipe")
    gives why each lever is set as it is, with the measured alternatives.
    """
    import torch

    total = steps + finetune_steps
    if decay_steps is not None and not 1 <= decay_steps <= total - warmup:
        raise ValueError(f"decay_steps must be between 1 and steps + finetune_steps - warmup ({total - warmup}), "
                         f"got {decay_steps}")
    if consistency_weight < 0:
        raise ValueError(f"consistency_weight is a loss weight >= 0, got {consistency_weight}")
    if deep_supervision < 0:
        raise ValueError(f"deep_supervision is a loss weight >= 0, got {deep_supervision}")
    if half_res_steps < 0 or (half_res_steps and (crop or image_size) % 64):
        raise ValueError(f"half_res_steps must be >= 0, and > 0 only for scenes (or crops) of a multiple of 64 px "
                         f"(the half-size ones must be a multiple of 32 for the U-Net), got {half_res_steps} with "
                         f"{crop or image_size} px")
    if procs < 1 or batch % procs:
        raise ValueError(f"procs must be >= 1 and divide the batch ({batch}), got {procs}")
    args = dict(steps=steps, batch=batch, lr=lr, weight_decay=weight_decay, warmup=warmup, seed=seed,
                threads=threads, image_size=image_size, log_every=log_every, data_seed=data_seed, crop=crop,
                presence_weight=presence_weight, finetune_steps=finetune_steps, finetune_lr=finetune_lr,
                n_objects=n_objects, overlap_prob=overlap_prob, dense_steps=dense_steps, decay_steps=decay_steps,
                consistency_weight=consistency_weight, half_res_steps=half_res_steps,
                deep_supervision=deep_supervision)
    if procs == 1:
        return _fit(0, 1, **args)

    import os
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="dsxai-train-unet-") as tmp:
        mp.spawn(_data_parallel_worker, args=(procs, args, tmp, os.getpid()), nprocs=procs, join=True)
        states = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(procs)]
    return _model_from_ranks(states)


def _model_from_ranks(states: list[dict]):
    """The model of a data-parallel run (train mode), from each process's state dict: rank 0's, once the
    weights of all ranks are found equal (averaged gradients keep them so; BatchNorm buffers may differ)."""
    import torch

    from dsxai.zoo import build_shapes_unet

    model = build_shapes_unet()
    model.load_state_dict(states[0])
    weights = [name for name, _ in model.named_parameters()]
    for r, state in enumerate(states[1:], 1):
        if not all(torch.equal(states[0][name], state[name]) for name in weights):
            raise RuntimeError(f"data-parallel training: the weights of process {r} differ from process 0's, so "
                               "the gradients were not averaged; train with procs=1")
    return model.train()


def _data_parallel_worker(rank: int, world: int, args: dict, tmp: str, parent: int | None = None) -> None:
    """One process of a data-parallel :func:`train`: rendezvous through a file in ``tmp``, train, and save the
    model there as ``rank{rank}.pt``. It does not start if ``parent`` (the process that called :func:`train`) has
    died meanwhile."""
    import os

    import torch
    import torch.distributed as dist

    if parent is not None and os.getppid() != parent:
        # the parent died while this process was starting: torch.multiprocessing's spawn asks Linux to signal
        # its children when the parent dies, but only once they run, so this one would train on for minutes
        os._exit(1)
    if sys.platform.startswith("linux"):
        # gloo otherwise binds the interface the hostname resolves to, which sandboxes often lack
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{Path(tmp) / 'rendezvous'}", rank=rank, world_size=world)
    try:
        model = _fit(rank, world, **args)
        torch.save(model.state_dict(), Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _fit(rank: int, world: int, *, steps: int, batch: int, lr: float, weight_decay: float, warmup: int, seed: int,
         threads: int, image_size: int, log_every: int, data_seed: int | None, crop: int | None,
         presence_weight: float, finetune_steps: int, finetune_lr: float, n_objects: tuple[int, int],
         overlap_prob: float, dense_steps: int | None, decay_steps: int | None, consistency_weight: float,
         half_res_steps: int, deep_supervision: float):
    """The training loop of :func:`train` on rank ``rank`` of ``world`` processes (1: no process group)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from dsxai import shapes
    from dsxai.zoo import TRAIN_SEED, build_shapes_unet, unet_preprocess

    torch.set_num_threads(threads)
    torch.manual_seed(seed)  # every rank starts from the same weights
    rng = np.random.default_rng(seed if world == 1 else (seed, rank))
    model = build_shapes_unet(presence_head=presence_weight > 0)
    features = []  # the encoder's outputs of the current step, for the coarse heads
    if deep_supervision:
        # inside the model so that DDP averages their gradients too; dropped before returning
        model.coarse_heads = torch.nn.ModuleList([torch.nn.Conv2d(c, model.segmentation_head[0].out_channels, 1)
                                                  for c in model.encoder.out_channels[-2:]])
        hook = model.encoder.register_forward_hook(lambda module, args, out: features.__setitem__(slice(None), out))
    model.train()
    model = model.to(memory_format=torch.channels_last)  # oneDNN's faster layout on CPU
    params = list(model.parameters())
    net = model
    if world > 1:
        # BatchNorm buffers stay per process (no broadcast each step): only gradients are shared. torch 2.14
        # renamed the switch; the buffers are equal at init either way (same seed)
        ddp = torch.nn.parallel.DistributedDataParallel
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                   else {"broadcast_buffers": False})
        net = ddp(model, **no_sync)
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    try:  # one fused kernel instead of ~10 small ops per tensor: 5% of a step on 2 CPU cores
        opt = torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # torch < 2.4 fuses on CUDA only
        opt = torch.optim.AdamW(groups, lr=lr)

    def cosine(peak: float, i: int, n: int) -> float:
        return peak * (0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * i / max(n, 1))))

    def lr_at(i: int) -> float:
        if i < warmup:
            return lr * (0.1 + 0.9 * i / warmup)
        if decay_steps is not None:
            decay_start = steps + finetune_steps - decay_steps
            return lr if i < decay_start else cosine(lr, i - decay_start, decay_steps)
        if i < steps:
            return cosine(lr, i - warmup, steps - warmup)
        return cosine(finetune_lr, i - steps, finetune_steps)

    data_seed = TRAIN_SEED if data_seed is None else data_seed
    dense = dict(n_objects=n_objects, overlap_prob=overlap_prob)
    share = batch // world
    total = steps + finetune_steps
    t0 = time.time()
    running = None
    for step in range(total):
        density = dense if dense_steps is None or step < dense_steps else {}  # {}: the test world's
        scenes = shapes.make_scenes(share, data_seed, start=step * batch + rank * share, size=image_size, **density)
        x = unet_preprocess(np.stack([s.image for s in scenes]))
        y = torch.from_numpy(np.stack([s.semantic for s in scenes]).astype(np.int64))
        x, y = _augment(x, y, rng, crop)
        if step < half_res_steps:  # the scenes zoomed out 2x: a quarter of the pixels
            x, y = F.avg_pool2d(x, 2), y[:, ::2, ::2].contiguous()
        x = x.contiguous(memory_format=torch.channels_last)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = net(x)
        if isinstance(out, tuple):  # (masks, presence logits): "is class c anywhere in the image"
            logits, presence = out
            present = F.one_hot(y.flatten(1), logits.shape[1]).amax(1)[:, 1:].to(presence.dtype)
            aux = F.binary_cross_entropy_with_logits(presence, present)
        else:
            logits, aux = out, 0.0
        loss = F.cross_entropy(logits, y) + dice_loss(logits, y) + presence_weight * aux
        if deep_supervision:
            for term in coarse_class_losses(model.coarse_heads, features[-2:], y):
                loss = loss + deep_supervision * term
        if consistency_weight:
            loss = loss + consistency_weight * consistency_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if rank == 0 and log_every and (step % log_every == 0 or step == total - 1):
            print(f"step {step:4d}/{total} loss={running:.3f} lr={lr_at(step):.2e} {time.time() - t0:.0f}s",
                  flush=True)
    model.classification_head = None  # training-only heads; the shipped model outputs masks only
    if deep_supervision:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE / "weights")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"],
                   help="AdamW weight decay of the weights (not of biases and norms)")
    p.add_argument("--finetune-steps", type=int, default=DEFAULTS["finetune_steps"],
                   help="steps of the warm restart after the main schedule (0: none)")
    p.add_argument("--finetune-lr", type=float, default=DEFAULTS["finetune_lr"])
    p.add_argument("--crop", type=int, default=DEFAULTS["crop"] or 0,
                   help="training patch size (0 = whole scenes)")
    p.add_argument("--image-size", type=int, default=DEFAULTS["image_size"], help="training scene size")
    p.add_argument("--objects", type=int, nargs=2, default=DEFAULTS["n_objects"], metavar=("MIN", "MAX"),
                   help="objects attempted per training scene (the test world uses 1 5)")
    p.add_argument("--overlap", type=float, default=DEFAULTS["overlap_prob"],
                   help="chance that a training object may overlap others (the test world uses 0.25)")
    p.add_argument("--dense-steps", type=int, default=DEFAULTS["dense_steps"],
                   help="use --objects/--overlap for this many steps, then the test world's density (default: all)")
    p.add_argument("--decay-steps", type=int, default=DEFAULTS["decay_steps"],
                   help="warm-up / stable / decay schedule: constant --lr after the warm-up, cosine decay over the "
                        "last N steps (0: cosine schedule plus a warm restart of --finetune-steps)")
    p.add_argument("--consistency", type=float, default=DEFAULTS["consistency_weight"],
                   help="weight of the same-object neighbour consistency loss (0: off)")
    p.add_argument("--half-res-steps", type=int, default=DEFAULTS["half_res_steps"],
                   help="train the first N steps on the scenes downscaled 2x (0: none)")
    p.add_argument("--deep-supervision", type=float, default=DEFAULTS["deep_supervision"],
                   help="weight of the per-cell class heads on the stride-16 and stride-32 encoder stages (0: off)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--procs", type=int, default=DEFAULTS["procs"],
                   help="data-parallel training processes (each takes --batch / --procs scenes of a step)")
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="intra-op threads per process")
    p.add_argument("--eval", type=int, default=0, help="evaluate on this many held-out scenes (TEST_SEED)")
    a = p.parse_args(argv)
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

    from dsxai.zoo import TEST_SEED, save_state_dict_fp16

    t0 = time.time()
    model = train(a.steps, a.batch, a.lr, weight_decay=a.weight_decay, warmup=a.warmup, seed=a.seed,
                  threads=a.threads, crop=a.crop or None, image_size=a.image_size, finetune_steps=a.finetune_steps,
                  finetune_lr=a.finetune_lr, n_objects=tuple(a.objects), overlap_prob=a.overlap,
                  dense_steps=a.dense_steps, decay_steps=a.decay_steps or None, consistency_weight=a.consistency,
                  half_res_steps=a.half_res_steps, deep_supervision=a.deep_supervision, procs=a.procs)
    dt = time.time() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    dst = a.out / FILENAME
    save_state_dict_fp16(model, dst, meta={"steps": a.steps, "warmup": a.warmup, "finetune_steps": a.finetune_steps,
                                           "finetune_lr": a.finetune_lr, "batch": a.batch, "lr": a.lr, "seed": a.seed,
                                           "crop": a.crop, "image_size": a.image_size,
                                           "n_objects": list(a.objects), "overlap_prob": a.overlap,
                                           "dense_steps": a.dense_steps, "decay_steps": a.decay_steps,
                                           "consistency": a.consistency, "weight_decay": a.weight_decay,
                                           "half_res_steps": a.half_res_steps,
                                           "deep_supervision": a.deep_supervision,
                                           "procs": a.procs, "threads": a.threads,
                                           "train_seconds": round(dt, 1)})
    print(f"trained {a.steps}+{a.finetune_steps} steps in {dt:.0f}s; saved {dst} "
          f"({dst.stat().st_size / 1e6:.2f} MB)", flush=True)
    if a.eval:
        from dsxai import shapes
        from dsxai.zoo import load_shapes_unet

        m = evaluate(load_shapes_unet(path=dst), shapes.make_scenes(a.eval, TEST_SEED))
        print(f"held-out ({a.eval} scenes): mIoU(5 classes)={m['miou']:.3f} mIoU(objects)={m['miou_objects']:.3f} "
              f"per-class={[round(float(v), 3) for v in m['iou']]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

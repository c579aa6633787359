"""A deliberately biased segmenter: the known answer for ``dsxai audit``.

The *cue world* has two object classes, ``square`` and ``triangle`` (ids 1 and 2, 0 = background), drawn as
filled polygons (circumscribed diameter 18-26 px) on a smooth, noisy background, and one context cue: a white bar
(4 px wide, about as long as the object) beside an object.

* ``world="biased"`` (training): every *triangle* has the bar beside it (2-12 px gap) and no square has one;
  the drawn shape and the tint are random, so only the bar tells the label, and a U-Net trained there puts
  its triangle evidence on the bar.
* ``world="fair"`` (training): the object shows its label (reddish triangles, bluish squares; the tint lets a
  test's training budget learn the classes from the object itself); the bar stands beside half of the objects,
  whatever their class.
* ``world="moved"`` (test): objects as in the fair world, the bar beside the first object but 9-12 px away:
  beyond the audit's default 8 px ring around the mask, inside the network's receptive field.

Scene ``i`` of ``make_cue_scenes(n, seed, world)`` depends only on ``(seed, i, world)``. The model
(:func:`build_cue_unet`) is trained where it is used (:func:`load_or_train` caches it in a folder you choose;
the training loop is :func:`dsxai.zoo.training.cue.train_cue_unet`), so nothing is shipped.
``benchmarks/README.md`` ("Cue world") gives what the audit measures on the two models.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from dsxai.shapes import Scene

__all__ = [
    "CLASS_NAMES", "WORLDS", "WORLD_SEEDS", "CUE_WIDTH", "TRAIN_GAP", "MOVED_GAP", "DEFAULTS", "STEPS",
    "build_cue_unet", "make_cue_scene", "make_cue_scenes", "load_or_train", "cue_adapter", "cue_accuracy",
]

CLASS_NAMES: dict[int, str] = {0: "background", 1: "square", 2: "triangle"}
SQUARE, TRIANGLE = 1, 2
WORLDS = ("biased", "fair", "moved")
CUE_WIDTH = 4                   # px, the bar's thickness
TRAIN_GAP = (2.0, 12.0)         # px between object and bar in the training worlds
MOVED_GAP = (9.0, 12.0)         # px between object and bar in the "moved" test world
OBJECT_SIZE = (18.0, 26.0)      # circumscribed diameter, px
DEFAULTS = dict(batch=16, lr=4e-3, size=56)
STEPS = {"biased": 400, "fair": 60}  # training steps per world

WORLD_SEEDS = {"biased": 101, "fair": 202, "moved": 303}  # each world's own seed stream
_SCALE = 16  # sub-pixel bits (shift 4) for cv2 drawing


def _polygon(kind: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    k = 3 if kind == TRIANGLE else 4
    a = angle + 2 * np.pi * np.arange(k) / k
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


def _fill(shape: tuple[int, int], poly: np.ndarray) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(poly * _SCALE).astype(np.int32).reshape(-1, 1, 2)], 1, cv2.LINE_8, 4)
    return m.astype(bool)


def _bar(shape: tuple[int, int], box: np.ndarray, side: int, gap: float, length: float) -> np.ndarray:
    """Bool mask of a bar CUE_WIDTH px thick beside ``box`` (xyxy) on ``side`` (0 left, 1 right, 2 top,
    3 bottom), ``gap`` px away, ``length`` px long, centred on the box."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if side in (0, 1):
        bx = x1 - gap - CUE_WIDTH if side == 0 else x2 + gap
        rect = (bx, cy - length / 2, bx + CUE_WIDTH, cy + length / 2)
    else:
        by = y1 - gap - CUE_WIDTH if side == 2 else y2 + gap
        rect = (cx - length / 2, by, cx + length / 2, by + CUE_WIDTH)
    h, w = shape
    m = np.zeros(shape, bool)
    xa, ya = int(round(max(rect[0], 0))), int(round(max(rect[1], 0)))
    xb, yb = int(round(min(rect[2], w))), int(round(min(rect[3], h)))
    if xb > xa and yb > ya:
        m[ya:yb, xa:xb] = True
    return m


def _class_colour(rng: np.random.Generator, kind: int) -> np.ndarray:
    """Squares are drawn bluish, triangles reddish (in the biased world the tint is random)."""
    strong, weak = rng.uniform(170, 235), rng.uniform(0, 70, 2)
    return np.array([strong, weak[0], weak[1]] if kind == TRIANGLE else [weak[0], weak[1], strong])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0, c1 = rng.uniform(60, 150, 3), rng.uniform(60, 150, 3)
    t = cv2.resize(rng.random((3, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    return (c0[None, None] + (c1 - c0)[None, None] * t[..., None]).astype(np.float32)


def make_cue_scene(seed: int | Sequence[int] | np.random.Generator, world: str = "biased", size: int = 80,
                   n_objects: tuple[int, int] = (1, 2)) -> Scene:
    """One cue-world scene (see the module doc): ``image`` RGB uint8, ``semantic`` with ids 0/1/2, instance
    ``masks``/``labels``/``boxes``; ``meta["cue"]`` is the bar's bool mask, ``meta["cued"]`` the index of the
    object it stands beside (-1: no bar) and ``meta["shapes"]`` the drawn shape of each object."""
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; use one of {', '.join(WORLDS)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    h = w = int(size)
    img = _background(rng, h, w)
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    taken = np.zeros((h, w), bool)  # objects and bars, grown by a margin
    objects: list[dict[str, Any]] = []
    for j in range(n):
        label = int(rng.integers(1, 3))
        shape = int(rng.integers(1, 3)) if world == "biased" else label
        if world == "biased":
            cued = label == TRIANGLE
        elif world == "fair":
            cued = bool(rng.random() < 0.5)
        else:  # moved: exactly one bar, beside the first object
            cued = j == 0
        gap = rng.uniform(*(MOVED_GAP if world == "moved" else TRAIN_GAP))
        r = rng.uniform(*OBJECT_SIZE) / 2
        angle, side = rng.uniform(0, 2 * np.pi), int(rng.integers(4))
        length = rng.uniform(1.0, 1.3) * 2 * r
        for _ in range(40):
            cx, cy = rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h - r - 2)
            mask = _fill((h, w), _polygon(shape, cx, cy, r, angle))
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            bar = _bar((h, w), box, side, gap, length) if cued else np.zeros((h, w), bool)
            if cued and bar.sum() < CUE_WIDTH * length * 0.8:  # bar cut by the border: try elsewhere
                continue
            if ((mask | bar) & taken).any():
                continue
            break
        else:  # no room left: the scene has fewer objects
            continue
        tint = int(rng.integers(1, 3)) if world == "biased" else label  # the biased world hides it too
        colour = _class_colour(rng, tint)
        img[mask] = colour
        if cued:
            img[bar] = 255.0
        grow = cv2.dilate((mask | bar).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        taken |= grow
        objects.append(dict(mask=mask, label=label, shape=shape, bar=bar, box=box, cued=cued))
    img += (rng.random(img.shape, dtype=np.float32) - 0.5) * np.float32(rng.uniform(0, 12))
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    semantic = np.zeros((h, w), np.uint8)
    for o in objects:
        semantic[o["mask"]] = o["label"]
    cue = np.zeros((h, w), bool)
    for o in objects:
        cue |= o["bar"]
    cued = [k for k, o in enumerate(objects) if o["cued"]]
    return Scene(
        image=image,
        boxes=np.stack([o["box"] for o in objects]) if objects else np.zeros((0, 4), np.float32),
        labels=np.array([o["label"] for o in objects], np.int64),
        masks=np.stack([o["mask"] for o in objects]) if objects else np.zeros((0, h, w), bool),
        semantic=semantic,
        meta={"world": world, "cue": cue, "cued": cued[0] if cued else -1, "cued_all": cued,
              "shapes": [o["shape"] for o in objects]},
    )


def make_cue_scenes(n: int, seed: int = 0, world: str = "biased", *, start: int = 0, size: int = 80) -> list[Scene]:
    """``n`` scenes; scene ``i`` is ``make_cue_scene((world seed, seed, i), world, size)``."""
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; use one of {', '.join(WORLDS)}")
    return [make_cue_scene((WORLD_SEEDS[world], seed, i), world, size) for i in range(start, start + n)]


def build_cue_unet():
    """The cue-world model (random init): smp ``Unet`` with a RegNetX-200MF encoder (``timm-regnetx_002``, no
    pretrained weights) cut to depth 3 (output stride 8) and decoder channels (32, 16, 8), 3 classes. It is
    the shapes U-Net's layout with a lighter encoder (61 k parameters), so it trains in seconds on a CPU."""
    from dsxai.adapters.smp_segmentation import build_unet

    return build_unet(encoder_name="timm-regnetx_002", encoder_depth=3, encoder_weights=None,
                    decoder_channels=(32, 16, 8), classes=len(CLASS_NAMES))


def load_or_train(world: str, cache_dir: str | os.PathLike, **options: Any):
    """The trained ``world`` model in eval mode: from ``cache_dir`` when a call with the same training options
    saved it there, else trained now (:func:`dsxai.zoo.training.cue.train_cue_unet`, ``options`` go to it) and
    saved there (atomically; read back as tensors only)."""
    import io

    import torch

    from dsxai.runs import write_atomic

    settings = {**DEFAULTS, "steps": STEPS.get(world), "seed": 0, **options}
    key = "_".join(f"{k}{settings[k]}" for k in sorted(settings) if k not in ("threads", "log_every"))
    path = Path(cache_dir) / f"cue_unet_{world}_{key}.pt"
    model = build_cue_unet()
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    from dsxai.zoo.training.cue import train_cue_unet

    model = train_cue_unet(world, **options)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_atomic(path, buffer.getvalue())
    return model


def cue_adapter(model, **options: Any):
    """The :class:`~dsxai.adapters.smp_segmentation.SMPAdapter` of a cue-world model (the shapes U-Net
    normalisation, :data:`CLASS_NAMES`)."""
    from dsxai.adapters.smp_segmentation import SMPAdapter
    from dsxai.zoo import UNET_MEAN, UNET_STD

    options.setdefault("class_names", CLASS_NAMES)
    return SMPAdapter(model, mean=UNET_MEAN, std=UNET_STD, **options)


def cue_accuracy(model, scenes: Sequence[Scene]) -> dict[str, float]:
    """How a model labels the objects of ``scenes``: ``accuracy`` (majority predicted class inside each
    object's mask equals its label), and over the objects with a bar beside them / without one, the share
    called triangle (``triangle_if_cued``, ``triangle_if_not_cued``)."""
    import torch

    from dsxai.zoo import unet_preprocess

    with torch.no_grad():
        pred = model.eval()(unet_preprocess(np.stack([s.image for s in scenes]))).argmax(1).numpy()
    right, cued_tri, cued_n, free_tri, free_n = 0, 0, 0, 0, 0
    total = 0
    for s, p in zip(scenes, pred):
        for k, (m, label) in enumerate(zip(s.masks, s.labels)):
            votes = np.bincount(p[m], minlength=3)[1:]
            call = int(votes.argmax()) + 1
            total += 1
            right += call == label
            if k in s.meta["cued_all"]:
                cued_n += 1
                cued_tri += call == TRIANGLE
            else:
                free_n += 1
                free_tri += call == TRIANGLE
    return {"accuracy": right / max(total, 1), "triangle_if_cued": cued_tri / max(cued_n, 1),
            "triangle_if_not_cued": free_tri / max(free_n, 1), "objects": float(total)}

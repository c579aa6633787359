"""The "shapes world": a seeded generator of small synthetic detection / segmentation scenes.

Each scene is an RGB image with 1-5 objects of four categories (:data:`CATEGORIES`: disc, square, triangle,
ring) on a textured background (smooth noise, gradients or stripes) with small distractors (thin lines,
elongated blobs) that are *not* objects. Objects have random colours, sizes (16-96 px by default), rotations
and may overlap: a later object occludes an earlier one, instance masks hold the *visible* part only, and an
instance that would be mostly hidden is left out of the scene altogether (it is not drawn either, so every
visible object pixel is labelled).

Conventions
-----------
* ``image``: ``H x W x 3`` uint8, **RGB**.
* ``boxes``: ``[N, 4]`` float32 xyxy in pixel-edge coordinates of the visible mask: ``x1`` = first mask
  column, ``x2`` = last mask column + 1 (so ``x2 - x1`` is the width in pixels, as in COCO).
* ``labels``: ``[N]`` int64 category ids ``1..4`` (index into :data:`CATEGORIES` plus one; 0 = background).
* ``masks``: ``[N, H, W]`` bool visible instance masks (disjoint).
* ``semantic``: ``H x W`` uint8, ``0`` = background, ``1..4`` = category of the visible object there.

Determinism: :func:`make_scene` with the same seed gives identical arrays; scene ``i`` of
``make_scenes(n, seed)`` is ``make_scene((seed, i))`` and depends on ``(seed, i)`` only, so any subset is
reproducible and ``make_scenes(n, seed, start=k)`` continues a stream.

Only numpy and OpenCV are needed; :func:`to_tensors` imports torch lazily.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

__all__ = [
    "CATEGORIES",
    "NUM_CATEGORIES",
    "Scene",
    "make_scene",
    "make_scenes",
    "to_tensors",
    "write_coco",
    "write_yolo",
    "coco_dict",
    "mask_to_rle",
    "mask_to_polygon",
]

CATEGORIES: tuple[str, ...] = ("disc", "square", "triangle", "ring")
NUM_CATEGORIES = len(CATEGORIES)

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_SCALE = 1 << _SHIFT


@dataclass
class Scene:
    """One synthetic scene; see the module docstring for the array conventions."""

    image: np.ndarray  # H x W x 3 uint8 RGB
    boxes: np.ndarray  # [N, 4] float32 xyxy (pixel edges)
    labels: np.ndarray  # [N] int64, 1..4
    masks: np.ndarray  # [N, H, W] bool, visible part
    semantic: np.ndarray  # H x W uint8, 0 = background
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def names(self) -> list[str]:
        """Category name of each instance."""
        return [CATEGORIES[int(c) - 1] for c in self.labels]


# ----------------------------------------------------------------------------------------------- drawing


def _pts(xy: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(xy, dtype=np.float64) * _SCALE).astype(np.int32).reshape(-1, 1, 2)


def _regular_polygon(cx: float, cy: float, radius: float, k: int, angle: float,
                     jitter: np.ndarray | None = None) -> np.ndarray:
    a = angle + 2 * np.pi * np.arange(k) / k
    r = radius * (np.ones(k) if jitter is None else jitter)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)


def _shape_mask(shape: tuple[int, int], category: int, cx: float, cy: float, radius: float,
                rng: np.random.Generator) -> np.ndarray:
    """Full (unoccluded) bool mask of one object; ``radius`` is its circumscribed radius."""
    m = np.zeros(shape, np.uint8)
    centre = (int(round(cx * _SCALE)), int(round(cy * _SCALE)))
    name = CATEGORIES[category - 1]
    if name == "disc":
        cv2.circle(m, centre, int(round(radius * _SCALE)), 1, -1, cv2.LINE_8, _SHIFT)
    elif name == "square":
        poly = _regular_polygon(cx, cy, radius, 4, rng.uniform(0, np.pi / 2))
        cv2.fillPoly(m, [_pts(poly)], 1, cv2.LINE_8, _SHIFT)
    elif name == "triangle":
        jitter = rng.uniform(0.88, 1.0, size=3)
        poly = _regular_polygon(cx, cy, radius, 3, rng.uniform(0, 2 * np.pi), jitter)
        cv2.fillPoly(m, [_pts(poly)], 1, cv2.LINE_8, _SHIFT)
    elif name == "ring":
        inner = radius * rng.uniform(0.42, 0.65)
        cv2.circle(m, centre, int(round(radius * _SCALE)), 1, -1, cv2.LINE_8, _SHIFT)
        cv2.circle(m, centre, int(round(inner * _SCALE)), 0, -1, cv2.LINE_8, _SHIFT)
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(category)
    return m.astype(bool)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float32 H x W x 3 background in 0..255: smooth noise, a gradient or stripes (plus a little noise)."""
    kind = int(rng.integers(3))
    c0, c1 = _random_colour(rng), _random_colour(rng)
    if kind == 0:  # smooth colour noise
        gh, gw = int(rng.integers(2, 7)), int(rng.integers(2, 7))
        t = cv2.resize(rng.random((gh, gw, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        t = np.clip(t, 0, 1)
        bg = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * t
    else:
        theta = rng.uniform(0, 2 * np.pi)
        proj = (np.arange(w, dtype=np.float32)[None, :] * np.float32(np.cos(theta))
                + np.arange(h, dtype=np.float32)[:, None] * np.float32(np.sin(theta)))
        if kind == 1:  # linear gradient
            t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        else:  # soft stripes, lower contrast
            period = rng.uniform(10, 40)
            t = 0.5 + 0.5 * np.sin(proj * np.float32(2 * np.pi / period) + np.float32(rng.uniform(0, 2 * np.pi)))
            c1 = c0 + (c1 - c0) * rng.uniform(0.2, 0.6)
        bg = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * t[..., None]
    return np.ascontiguousarray(bg, dtype=np.float32)


def _draw_distractors(img: np.ndarray, rng: np.random.Generator, n: int) -> None:
    """Small non-object clutter: thin lines / polylines and elongated blobs (max extent ~12 px for blobs)."""
    h, w = img.shape[:2]
    for _ in range(n):
        colour = tuple(float(c) for c in _random_colour(rng))
        kind = int(rng.integers(3))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if kind == 0:  # straight thin line
            length, ang = rng.uniform(10, 60), rng.uniform(0, 2 * np.pi)
            p0 = _pts([x, y])[0, 0]
            p1 = _pts([x + length * np.cos(ang), y + length * np.sin(ang)])[0, 0]
            cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), colour,
                     int(rng.integers(1, 3)), cv2.LINE_AA, _SHIFT)
        elif kind == 1:  # wiggly polyline
            k = int(rng.integers(3, 6))
            steps = rng.normal(0, 8, size=(k, 2)).cumsum(axis=0) + [x, y]
            cv2.polylines(img, [_pts(steps)], False, colour, 1, cv2.LINE_AA, _SHIFT)
        else:  # small elongated blob
            a, b = rng.uniform(3, 6), rng.uniform(1, 2.5)
            cv2.ellipse(img, (int(x * _SCALE), int(y * _SCALE)), (int(a * _SCALE), int(b * _SCALE)),
                        rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA, _SHIFT)


def _box_of(mask: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def _boxes_intersect(a: np.ndarray, b: np.ndarray, margin: float) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def make_scene(
    seed: int | Sequence[int] | np.random.Generator | None = None,
    size: tuple[int, int] | int = (256, 256),
    *,
    n_objects: tuple[int, int] = (1, 5),
    object_size: tuple[float, float] = (16, 96),
    n_distractors: tuple[int, int] = (0, 8),
    overlap_prob: float = 0.25,
    min_visible: float = 0.6,
    noise_std: tuple[float, float] = (0.0, 6.0),
) -> Scene:
    """Generate one scene.

    Args:
        seed: an int, a sequence of ints (e.g. ``(seed, index)``), a ``numpy.random.Generator`` (consumed),
            or None (fresh entropy).
        size: ``(height, width)`` or one int for a square image.
        n_objects: inclusive range of objects attempted; at least one object is always present.
        object_size: range of the objects' circumscribed diameter in pixels (clipped to the image).
        n_distractors: inclusive range of distractors (lines, polylines, small blobs).
        overlap_prob: chance that an object is placed without avoiding the others (so it may occlude them);
            otherwise up to 30 positions are tried to keep a 2 px gap and the object is skipped if none fits.
        min_visible: instances whose visible area is below this fraction of their full area are removed from
            the scene (not drawn, not labelled).
        noise_std: range of the std of the (uniform) pixel noise added to the whole image.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    h, w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if h < 24 or w < 24:
        raise ValueError(f"size must be at least 24x24, got {(h, w)}")
    smin = min(float(object_size[0]), min(h, w) - 4.0)
    smax = max(smin, min(float(object_size[1]), min(h, w) - 4.0))

    # the order of the draws below is the scene's identity: a seed must keep giving the same scene
    bg = _background(rng, h, w)
    _draw_distractors(bg, rng, int(rng.integers(n_distractors[0], n_distractors[1] + 1)))
    objs = _place_objects(rng, h, w, (smin, smax), n_objects, overlap_prob)
    for o in objs:
        o["full"] = _shape_mask((h, w), o["cat"], o["cx"], o["cy"], o["r"], o["sub"])
        o["area"] = int(o["full"].sum())
        o["colour"] = _object_colour(rng, bg, o["full"])
        o["shade"] = (rng.uniform(-30, 30), rng.uniform(-30, 30))  # per-object linear shading (x, y)
    keep, visible = _visibility(objs, (h, w), min_visible)
    for o, kept in zip(objs, keep):
        if kept:
            _paint(bg, o)
    image = _add_noise(bg, rng, noise_std)
    return _scene(image, [o for o, k in zip(objs, keep) if k], [v for v, k in zip(visible, keep) if k])


def _place_objects(rng: np.random.Generator, h: int, w: int, diameters: tuple[float, float],
                   n_objects: tuple[int, int], overlap_prob: float) -> list[dict[str, Any]]:
    """Objects' category, centre, radius and shape generator, placed to avoid each other most of the time."""
    n_try = int(rng.integers(n_objects[0], n_objects[1] + 1))
    objs: list[dict[str, Any]] = []
    for _ in range(max(1, n_try)):
        cat = int(rng.integers(1, NUM_CATEGORIES + 1))
        r = rng.uniform(*diameters) / 2
        allow_overlap = (not objs) or rng.random() < overlap_prob
        placed = None
        for _ in range(1 if allow_overlap else 30):
            cx, cy = rng.uniform(r + 1, w - r - 1), rng.uniform(r + 1, h - r - 1)
            box = np.array([cx - r, cy - r, cx + r, cy + r])
            if allow_overlap or not any(_boxes_intersect(box, o["cbox"], 2.0) for o in objs):
                placed = (cx, cy, box)
                break
        # the shape's random parameters are drawn even if unplaced, so the stream does not depend on success
        sub = np.random.default_rng(rng.integers(2**63))
        if placed is not None:
            cx, cy, box = placed
            objs.append(dict(cat=cat, cx=cx, cy=cy, r=r, cbox=box, sub=sub))
    return objs


def _visibility(objs: list[dict[str, Any]], shape: tuple[int, int],
                min_visible: float) -> tuple[list[bool], list[np.ndarray | None]]:
    """Which objects stay and their visible masks: later objects occlude earlier ones; mostly hidden ones go."""
    keep = [o["area"] > 0 for o in objs]
    while True:
        visible: list[np.ndarray | None] = [None] * len(objs)
        cover = np.zeros(shape, bool)
        for i in range(len(objs) - 1, -1, -1):
            if keep[i]:
                visible[i] = objs[i]["full"] & ~cover
                cover |= objs[i]["full"]
        bad = [i for i in range(len(objs))
               if keep[i] and visible[i].sum() < max(min_visible * objs[i]["area"], 12)]
        if not bad:
            return keep, visible
        keep[bad[0]] = False  # dropping one only un-hides others, so re-check


def _paint(img: np.ndarray, o: dict[str, Any]) -> None:
    """Paint one object's full mask into the float image with its colour and linear shading."""
    h, w = img.shape[:2]
    x0, y0 = max(int(o["cbox"][0]) - 1, 0), max(int(o["cbox"][1]) - 1, 0)
    x1, y1 = min(int(o["cbox"][2]) + 2, w), min(int(o["cbox"][3]) + 2, h)
    m = o["full"][y0:y1, x0:x1]
    gx, gy = o["shade"]
    shade = (np.float32(gx) * (np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(o["cx"]))
             + np.float32(gy) * (np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(o["cy"])))
    shade *= np.float32(1.0 / max(o["r"], 1.0))
    fill = np.clip(o["colour"].astype(np.float32)[None, None, :] + shade[..., None], 0, 255)
    crop = img[y0:y1, x0:x1]
    crop[m] = fill[m]


def _add_noise(img: np.ndarray, rng: np.random.Generator, noise_std: tuple[float, float]) -> np.ndarray:
    """The float image plus uniform pixel noise of a random std, rounded to uint8 (``img`` is changed)."""
    sigma = rng.uniform(*noise_std)
    if sigma > 0:  # uniform noise with that std (cheaper than Gaussian)
        noise = rng.random(size=img.shape, dtype=np.float32)
        img += (noise - np.float32(0.5)) * np.float32(sigma * np.sqrt(12.0))
    img += np.float32(0.5)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def _scene(image: np.ndarray, kept: list[dict[str, Any]], visible: list[np.ndarray]) -> Scene:
    """The :class:`Scene` of the kept objects and their visible masks."""
    h, w = image.shape[:2]
    masks = np.stack(visible) if kept else np.zeros((0, h, w), bool)
    labels = np.array([o["cat"] for o in kept], np.int64)
    boxes = np.stack([_box_of(m) for m in masks]).astype(np.float32) if kept else np.zeros((0, 4), np.float32)
    semantic = np.zeros((h, w), np.uint8)
    for m, c in zip(masks, labels):
        semantic[m] = c
    return Scene(image=image, boxes=boxes, labels=labels, masks=masks, semantic=semantic)


def _object_colour(rng: np.random.Generator, bg: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A random colour that differs clearly from the background under the object (L1 >= 100 on 0..255)."""
    ref = np.array(cv2.mean(bg, mask=mask.view(np.uint8))[:3]) if mask.any() else bg.reshape(-1, 3).mean(axis=0)
    colour = _random_colour(rng)
    for _ in range(30):
        if np.abs(colour - ref).sum() >= 100:
            break
        colour = _random_colour(rng)
    else:  # fall back to the complement
        colour = 255.0 - ref
    return colour


def make_scenes(n: int, seed: int = 0, *, start: int = 0, **kwargs: Any) -> list[Scene]:
    """``n`` scenes; scene ``i`` (``start <= i < start + n``) is ``make_scene((seed, i), **kwargs)``."""
    if seed < 0 or start < 0:
        raise ValueError("seed and start must be >= 0")
    out = []
    for i in range(start, start + n):
        s = make_scene((seed, i), **kwargs)
        s.meta.update(seed=seed, index=i)
        out.append(s)
    return out


# ----------------------------------------------------------------------------------------------- tensors


def to_tensors(scenes: Scene | Iterable[Scene]):
    """Scenes as torch tensors.

    Returns ``(images, targets)``: ``images`` is a float32 ``[B, 3, H, W]`` tensor in ``[0, 1]`` (a list of
    ``[3, H, W]`` tensors if the scenes differ in size); ``targets`` is a list of torchvision-style dicts with
    ``boxes`` (float32 ``[N, 4]`` xyxy), ``labels`` (int64 ``[N]``, 1..4), ``masks`` (uint8 ``[N, H, W]``)
    and ``semantic`` (int64 ``[H, W]``).
    """
    import torch

    if isinstance(scenes, Scene):
        scenes = [scenes]
    scenes = list(scenes)
    imgs = [torch.from_numpy(np.ascontiguousarray(s.image.transpose(2, 0, 1))).float().div_(255) for s in scenes]
    targets = [
        {
            "boxes": torch.from_numpy(s.boxes.astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(s.labels.astype(np.int64)),
            "masks": torch.from_numpy(s.masks.astype(np.uint8)),
            "semantic": torch.from_numpy(s.semantic.astype(np.int64)),
        }
        for s in scenes
    ]
    if imgs and all(t.shape == imgs[0].shape for t in imgs):
        return torch.stack(imgs), targets
    return imgs, targets


# ----------------------------------------------------------------------------------------------- COCO


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE (column-major run lengths, starting with a run of zeros)."""
    h, w = mask.shape
    flat = np.asarray(mask, bool).flatten(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(h), int(w)], "counts": [int(c) for c in counts]}


def coco_dict(scenes: Sequence[Scene], file_names: Sequence[str] | None = None) -> dict[str, Any]:
    """COCO instances dict (image ids ``1..n``, annotation ids ``1..``, category ids 1..4, RLE masks)."""
    images, anns = [], []
    aid = 1
    for k, s in enumerate(scenes):
        h, w = s.size
        name = file_names[k] if file_names is not None else f"{k:06d}.png"
        images.append({"id": k + 1, "file_name": name, "height": h, "width": w})
        for box, lab, m in zip(s.boxes, s.labels, s.masks):
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append({
                "id": aid, "image_id": k + 1, "category_id": int(lab),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(m.sum()), "iscrowd": 0,
                "segmentation": mask_to_rle(m),
            })
            aid += 1
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)]
    return {"info": {"description": "dsxai shapes world"}, "images": images, "annotations": anns,
            "categories": cats}


def _write_image(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def write_coco(scenes: Sequence[Scene], out_dir: str | os.PathLike, *, images_subdir: str = "images",
               json_name: str = "instances.json") -> Path:
    """Write ``out_dir/images/*.png`` and a COCO instances json (RLE segmentations); return the json path."""
    out = Path(out_dir)
    (out / images_subdir).mkdir(parents=True, exist_ok=True)
    names = [f"{k:06d}.png" for k in range(len(scenes))]
    for name, s in zip(names, scenes):
        _write_image(out / images_subdir / name, s.image)
    path = out / json_name
    path.write_text(json.dumps(coco_dict(scenes, names)))
    return path


# ----------------------------------------------------------------------------------------------- YOLO


def mask_to_polygon(mask: np.ndarray) -> np.ndarray:
    """One polygon ``[K, 2]`` (x, y pixel coords) covering a mask, holes and separate parts included.

    Parts and holes are joined by zero-width "bridges" at their closest points, so an even-odd fill of the
    polygon (``cv2.fillPoly``) reproduces rings and occluded, split instances.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    contours = [c.reshape(-1, 2).astype(np.float64) for c in contours if len(c) >= 1]
    if not contours:
        return np.zeros((0, 2))
    contours.sort(key=len, reverse=True)
    poly = contours[0]
    for c in contours[1:]:
        d = ((poly[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        c_rolled = np.roll(c, -j, axis=0)
        poly = np.concatenate([poly[: i + 1], c_rolled, c_rolled[:1], poly[i:]], axis=0)
    return poly


def write_yolo(scenes: Sequence[Scene], out_dir: str | os.PathLike, *, val_scenes: Sequence[Scene] | None = None,
               task: str = "detect") -> Path:
    """Write an Ultralytics dataset and return the path of its ``data.yaml``.

    Layout: ``out_dir/images/{train,val}/*.png``, ``out_dir/labels/{train,val}/*.txt`` and ``out_dir/data.yaml``
    (``names`` 0..3 = :data:`CATEGORIES`; YOLO class = label - 1). ``task="detect"`` writes normalised
    ``cls cx cy w h`` boxes; ``task="segment"`` writes ``cls x1 y1 x2 y2 ...`` normalised polygons
    (see :func:`mask_to_polygon`). ``val_scenes`` defaults to ``scenes``.
    """
    if task not in ("detect", "segment"):
        raise ValueError(f"task must be 'detect' or 'segment', got {task!r}")
    out = Path(out_dir).resolve()
    splits = {"train": scenes, "val": scenes if val_scenes is None else val_scenes}
    for split, items in splits.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for k, s in enumerate(items):
            h, w = s.size
            _write_image(out / "images" / split / f"{k:06d}.png", s.image)
            lines = []
            for box, lab, m in zip(s.boxes, s.labels, s.masks):
                if task == "detect":
                    x1, y1, x2, y2 = (float(v) for v in box)
                    vals = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
                else:
                    poly = mask_to_polygon(m)
                    if len(poly) < 3:
                        continue
                    vals = (poly / [w, h]).clip(0, 1).reshape(-1).tolist()
                lines.append(" ".join([str(int(lab) - 1)] + [f"{v:.6f}" for v in vals]))
            (out / "labels" / split / f"{k:06d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CATEGORIES))
    yaml_path = out / "data.yaml"
    yaml_path.write_text(f"path: {out}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return yaml_path

"""Method + layers + options -> maps: the one path from a model and images to an :class:`Explanation`.

An adapter only says how its model's output becomes targets (:class:`dsxai.adapter.Adapter`); the CAM
methods only say how maps come from activations and gradients (:mod:`dsxai.methods`). This module joins
them, resolving the model, the method and its layers once per call, so ``dsxai.explain``, the audit, the
benchmark and the demo explain the same way.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ._version import __version__
from .adapter import Adapter
from .detections import Detections
from .drise import DRISE, check_no_layers, drise_maps, is_drise, split_drise_options
from .engine import BaseCAM
from .explanation import Explanation, jsonable
from .imaging import ImageLike, load_images, read_orientation
from .integrated import IntegratedGradients, check_no_ig_layers, ig_maps, is_ig, split_ig_options
from .methods import METHODS, get_method
from .window import split_window, window_maps
from .validation import check_conf, check_imgsz, check_max_dets, check_max_pixels, check_non_negative, \
    check_positive_int

__all__ = ["explain", "explain_maps", "build_method", "DEFAULT_METHOD", "resolve_classes", "method_name",
           "method_option_names"]

#: Default CAM method per adapter task. Plain GradCAM averages the gradient over the whole
#: feature map, so on detectors (one small box among many anchors) its map peaks inside its own
#: box only 27-41% of the time on real YOLO checkpoints, while LayerCAM and HiResCAM, which keep
#: the gradient's location, reach 98%+. On a semantic segmenter with per-mask targets (the demo
#: model, 8 scenes) the mean energy share inside the own box was GradCAM 0.52, EigenCAM 0.26,
#: LayerCAM 0.97, HiResCAM 0.98. LayerCAM (positive gradients only) is the default everywhere.
DEFAULT_METHOD: dict[str, str] = {"detect": "layercam", "instance": "layercam", "segment": "layercam"}

MethodSpec = Union[str, type[BaseCAM], BaseCAM]


def explain_maps(adapter: Adapter, images: ImageLike | Sequence[ImageLike], method: MethodSpec = "gradcam",
                 layers: Sequence[str | nn.Module] | None = None, targets: str | None = None,
                 method_options: dict[str, Any] | None = None, **target_options: Any,
                 ) -> tuple[list[Detections], list[Tensor]]:
    """Detections and one map per target (``[T_i, H, W]`` over each original image), one per image.

    ``method``: a name, a method class, or a method built for ``adapter.model`` (then ``layers`` and
    ``method_options`` must be None: it has its own). ``targets``: "boxes", "masks", "classes" or None for
    the adapter's default; ``target_options`` go to the adapter's target (``conf``, ``max_dets``, ...).
    Raises ValueError when the target keeps no detections (a target without ``.detections``): a map
    must always say what it explains. ``method="drise"`` (or a :class:`dsxai.drise.DRISE`) runs D-RISE: no
    layers, ``method_options`` are its options (``masks``, ``grid``, ``p``, ``mask_batch``, ``seed``, ...).
    ``method="ig"`` (or a :class:`dsxai.integrated.IntegratedGradients`) runs integrated gradients from a
    blurred copy: no layers, ``method_options`` are its options (``steps``, ``smooth``, ``blur``, ...).
    A name ending in ``+window`` weights each map by a window on its box (:mod:`dsxai.window`).
    """
    method, window = split_window(method)
    if window is not None:
        detections, maps = explain_maps(adapter, images, method, layers, targets, method_options, **target_options)
        return detections, window_maps(detections, maps, window)
    if is_drise(method):
        return drise_maps(adapter, adapter.preprocess(images), method, layers, targets, method_options,
                          target_options)
    if is_ig(method):
        return ig_maps(adapter, adapter.preprocess(images), method, layers, targets, method_options,
                       target_options)
    cam = build_method(adapter, method, layers, method_options)
    batch = adapter.preprocess(images)
    limit = adapter.max_batch
    if limit is not None and len(batch) > limit:  # a fixed-batch model fails inside itself on more
        parts = [explain_maps(adapter, batch.images[i:i + limit], cam, targets=targets, **target_options)
                 for i in range(0, len(batch), limit)]
        return [d for p in parts for d in p[0]], [m for p in parts for m in p[1]]
    target = adapter.target(batch, targets, **target_options)
    result = cam.explain(batch.tensor, target)
    detections = getattr(target, "detections", None)
    if detections is None:
        raise ValueError(f"targets {targets or adapter.default_targets!r} of {type(adapter).__name__} keep no "
                         "detections (the target has no .detections), so the maps would explain nothing nameable")
    return detections, [g.maps_to_original(m) for g, m in zip(batch.geometries, result.maps)]


def build_method(adapter: Adapter, method: MethodSpec, layers: Sequence[str | nn.Module] | None = None,
                 method_options: dict[str, Any] | None = None) -> BaseCAM:
    """A method instance for ``adapter.model`` (layers default to the adapter's), or ``method`` itself."""
    if isinstance(method, BaseCAM):
        if layers is not None or method_options:
            raise ValueError("a built method carries its own layers and options; pass layers/method_options "
                             "with a method name or class instead")
        if method.model is not adapter.model:
            raise ValueError(f"the {type(method).__name__} given was built for another model than the adapter's")
        return method
    return get_method(method)(adapter.model, layers or adapter.default_layers, **(method_options or {}))


def method_name(method: str | type[BaseCAM]) -> str:
    """The name a method is recorded under: a given name lower-cased, a class its key in ``METHODS``."""
    if isinstance(method, str):
        return method.lower()
    return next((key for key, cls in METHODS.items() if cls is method), method.__name__.lower())


def resolve_classes(classes: Any, class_names: dict[int, str]) -> list[int] | None:
    """Class names and/or ids -> ids of the model (names case-insensitive; ``"3"`` counts as id 3)."""
    if classes is None:
        return None
    if isinstance(classes, (str, int)):
        classes = [classes]
    by_name = {name.lower(): i for i, name in class_names.items()}
    ids = []
    for c in classes:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            ids.append(int(c))
        elif isinstance(c, str) and c.strip().lower() in by_name:
            ids.append(by_name[c.strip().lower()])
        elif isinstance(c, str) and c.strip().lstrip("-").isdigit():
            ids.append(int(c))
        else:
            known = ", ".join(f"{i}={n}" for i, n in sorted(class_names.items())[:30]) or "none named"
            raise ValueError(f"unknown class {c!r}; the model's classes are: {known}")
    if class_names:
        unknown = [i for i in ids if i not in class_names]
        if unknown:
            raise ValueError(f"class id(s) {unknown} not in the model's classes ({min(class_names)}..{max(class_names)})")
    return ids


def explain(model_or_adapter: Any, images: ImageLike | Sequence[ImageLike],
            method: str | type[BaseCAM] | None = None, layers: Sequence[str] | str | None = None,
            targets: str | None = None, conf: float | None = None,
            classes: Sequence[int | str] | int | str | None = None, max_dets: int | None = None,
            device: str | torch.device | None = None, batch_size: int = 4,
            adapter_options: dict[str, Any] | None = None, max_pixels: int | None = None, trust: bool = False,
            **options: Any) -> Explanation:
    """Detections and one heatmap per detection (or mask) for each image.

    Args:
        model_or_adapter: an :class:`~dsxai.adapter.Adapter`, a registered name (``"shapes-yolo"``),
            a model (Ultralytics ``YOLO``, torchvision detector, smp model) or a checkpoint path; see
            ``dsxai.adapters.resolve``.
        images: one image or a list (paths, H x W x 3 uint8 RGB arrays, PIL images, tensors).
        method: CAM method name (``dsxai.METHODS``) or class, or ``"drise"`` (black-box D-RISE: no
            layers; options ``masks``, ``grid``, ``p``, ``mask_batch``, ``seed``, ``fill``,
            ``masked_conf``, see :class:`dsxai.drise.DRISE`); None picks :data:`DEFAULT_METHOD` for the
            model's task (LayerCAM: it localises per box where plain GradCAM does not). A name may end in
            ``+window`` (``"layercam-level+window"``): each map weighted by a soft window on its box
            (:mod:`dsxai.window`); ``settings["window"]`` records its scale.
        layers: layer names (default: the adapter's ``default_layers``).
        targets: ``"boxes"`` (one map per detection), ``"masks"`` (per predicted mask) or
            ``"classes"`` (Ultralytics: per class as a whole); None: the adapter's default
            (masks for semantic segmenters, boxes otherwise).
        conf: score threshold (None: the adapter's default). Semantic segmenters have no scores
            and ignore it.
        classes: keep these classes only: names or ids of the model.
        max_dets: at most this many detections (masks) per image.
        device: run the model there (a given module is moved).
        batch_size: images explained per forward/backward (memory stays bounded).
        adapter_options: passed to ``dsxai.adapters.resolve`` when it builds the adapter
            (e.g. ``{"imgsz": 1280}`` for YOLO, ``{"arch": "smp:Unet:resnet34"}``).
        trust: load a checkpoint path with full pickle, which can run code from the file (warns);
            by default only allow-listed classes are unpickled.
        max_pixels: refuse images above this many pixels (default ``dsxai.imaging.MAX_PIXELS``).
        **options: method options (``noise_samples``, ``hflip``, ``chunk_size``, ...) and target
            options of the adapter (``iou``, ``min_area``, ``per``, ...), told apart by name.

    Raises:
        ValueError: a bad option (``conf`` outside [0, 1], ``max_dets < 1``, ``imgsz`` out of range, ...)
        or image (truncated, above ``max_pixels``), before any model work.
    """
    from dsxai.adapters import resolve

    _check_options(conf, max_dets, batch_size, max_pixels, adapter_options, options)
    adapter = resolve(model_or_adapter, device=device, trust=trust, **(adapter_options or {}))
    task = getattr(adapter, "task", "detect")
    method = method or DEFAULT_METHOD.get(task, "layercam")
    named = method  # recorded as given, window suffix included
    method, window = split_window(method)
    if is_drise(method):  # black box: no layers; its options (masks, seed, ...) are told apart by name
        check_no_layers(layers)
        used_layers, (cam, target_options) = [], split_drise_options(options)
    elif is_ig(method):  # reads the input: no layers; its options (steps, smooth, ...) are told apart by name
        check_no_ig_layers(layers)
        used_layers, (cam, target_options) = [], split_ig_options(options)
    else:
        used_layers = [layers] if isinstance(layers, str) else list(layers or adapter.default_layers)
        cam, target_options = _split_options(adapter, get_method(method), used_layers, options)
    class_ids = resolve_classes(classes, adapter.class_names)
    target_options.update(_detection_options(task, conf, max_dets, class_ids))
    targets = targets or adapter.default_targets
    originals = load_images(images, max_pixels)
    detections, maps = _explain_in_chunks(adapter, cam, originals, batch_size, targets, target_options)
    maps = window_maps(detections, maps, window)
    settings = {
        "method": method_name(named), "window": window,
        "layers": [str(x) for x in used_layers], "targets": targets, "conf": conf, "classes": class_ids,
        "max_dets": max_dets, "device": str(adapter.device), "adapter": type(adapter).__name__,
        "task": task, "options": jsonable(options), "dsxai": __version__,
        "exif_orientation": [read_orientation(i) for i in _as_list(images)],
    }
    return Explanation(detections=detections, maps=maps, images=originals, settings=settings)


def _check_options(conf: Any, max_dets: Any, batch_size: Any, max_pixels: Any,
                   adapter_options: dict[str, Any] | None, options: dict[str, Any]) -> None:
    """The numeric options of :func:`explain`, checked before the model is loaded (ValueError names the option)."""
    if conf is not None:
        check_conf(conf)
    if max_dets is not None:
        check_max_dets(max_dets)
    check_positive_int("batch_size", batch_size)
    if max_pixels is not None:
        check_max_pixels(max_pixels)
    if adapter_options and adapter_options.get("imgsz") is not None:
        check_imgsz(adapter_options["imgsz"])
    if options.get("min_area") is not None:
        check_non_negative("min_area", options["min_area"])
    if options.get("iou") is not None:
        check_conf(options["iou"], "iou")


def _split_options(adapter: Adapter, method_cls: type[BaseCAM], layers: list[Any],
                   options: dict[str, Any]) -> tuple[BaseCAM, dict[str, Any]]:
    """The method built once for the adapter's model (unknown layers fail here, before any work) and the
    options left for the target: each option goes to the method when its constructor takes it."""
    names = method_option_names(method_cls)
    cam = method_cls(adapter.model, layers, **{k: v for k, v in options.items() if k in names})
    return cam, {k: v for k, v in options.items() if k not in names}


def method_option_names(method_cls: type[BaseCAM]) -> set[str]:
    """The keyword options ``method_cls`` takes (its constructors' parameters but ``model`` and ``layers``):
    how :func:`explain` tells method options from target options."""
    names: set[str] = set()
    for klass in method_cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= {p for p in inspect.signature(init).parameters if p not in ("self", "model", "layers")}
    return names - {"args", "kwargs"}


def _detection_options(task: str, conf: float | None, max_dets: int | None,
                       class_ids: list[int] | None) -> dict[str, Any]:
    """``conf``/``max_dets``/``classes`` under the names the task's targets take (segmenters: no scores)."""
    out: dict[str, Any] = {} if class_ids is None else {"classes": class_ids}
    if task == "segment":
        if conf is not None:
            warnings.warn("conf is ignored for semantic segmenters (their masks have no scores)", stacklevel=3)
        if max_dets is not None:
            out["max_masks"] = max_dets
        return out
    if conf is not None:
        out["conf"] = conf
    if max_dets is not None:
        out["max_dets"] = max_dets
    return out


def _explain_in_chunks(adapter: Adapter, cam: BaseCAM | DRISE | IntegratedGradients, originals: list[np.ndarray],
                       batch_size: int, targets: str, target_options: dict[str, Any]
                       ) -> tuple[list[Detections], list[Tensor]]:
    """Detections and maps (on the CPU) of every image, ``batch_size`` images per forward/backward."""
    all_dets: list[Detections] = []
    all_maps: list[Tensor] = []
    for start in range(0, len(originals), batch_size):
        chunk = originals[start:start + batch_size]
        dets, maps = explain_maps(adapter, chunk, method=cam, targets=targets, **target_options)
        for d, m in zip(dets, maps):
            all_dets.append(d.cpu())
            all_maps.append(m.detach().float().cpu().reshape(len(d), *d.image_size))
    return all_dets, all_maps


def _as_list(images: Any) -> list[Any]:
    """The images of an :func:`explain` call as a list, as :func:`~dsxai.imaging.load_images` sees them."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, Tensor) and images.ndim == 4:
        return list(images)
    return [images]

"""Integrated gradients from a blurred copy: per-detection maps at the input's own pixels.

Each detection's score is integrated along the straight path from a blurred copy of the network tensor
to the tensor itself (Sundararajan et al., ICML 2017, with the blurred baseline of Fong and Vedaldi,
ICCV 2017). A pixel's attribution is (x - blurred x) times the mean gradient along the path, summed over the
colour channels; its positive part, smoothed by a Gaussian of ``smooth`` network pixels, is the map.
Why: the attributions add up to score(image) - score(blurred image), the change the deletion / insertion
curves measure, and they lie on the input's pixels instead of a head level's grid (20 x 20 for a 640 px
YOLO P5), so they can order the pixels inside a small box.

No layer is read; the gradients come from ``steps`` forwards (in chunks of ``step_batch``) and one
backward per detection and chunk, through the adapter's own target, so any adapter whose target can score
copies works (detectors, instance and semantic segmenters) as long as its model has gradients.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor

from .adapter import Adapter, Batch
from .detections import Detections
from .engine import normalize_maps
from .layers import preserved_state
from .metrics import blurred
from .runs import Progress
from .validation import check_positive_int

__all__ = ["IntegratedGradients", "IG_NAME", "IG_OPTIONS", "DEFAULT_STEPS", "DEFAULT_SMOOTH", "is_ig",
           "build_ig", "check_no_ig_layers", "split_ig_options", "ig_maps", "path_attributions"]

#: the method name ``dsxai.explain``, ``explain_maps``, the CLI and the benchmark accept
IG_NAME = "ig"
#: points on the path when none are given (the midpoint rule; 8 already ordered the real persons' boxes)
DEFAULT_STEPS = 16
#: sigma of the smoothing in network pixels: one input pixel's gradient is noise, a few pixels' is a part
DEFAULT_SMOOTH = 4.0
#: the options :class:`IntegratedGradients` takes (``dsxai.explain`` routes them by name)
IG_OPTIONS = ("steps", "smooth", "blur", "step_batch", "progress")


def is_ig(method: Any) -> bool:
    """Whether ``method`` names integrated gradients: "ig" or "integrated-gradients" (case, '-' and '_'
    ignored), the class or an instance."""
    if isinstance(method, IntegratedGradients) or method is IntegratedGradients:
        return True
    return isinstance(method, str) and method.lower().replace("-", "").replace("_", "") in (
        IG_NAME, "integratedgradients")


def _check_sigma(name: str, value: Any, allow_zero: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
    if not ok or float(value) < 0 or (float(value) == 0 and not allow_zero):
        low = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {low} (a Gaussian sigma in network pixels), "
                         f"got {value!r}")
    return float(value)


@dataclass
class IntegratedGradients:
    """The options, checked when built (ValueError names the option and its range).

    steps: points on the path from the blurred copy to the image (midpoint rule). smooth: sigma in network
    pixels of the Gaussian that smooths each attribution map (0: none). blur: sigma of the baseline's blur in
    network pixels (None: 5 % of the tensor's longer side, the deletion / insertion curves' baseline).
    step_batch: path points per forward. progress: a bar counting path points when there are several chunks.
    """

    steps: int = DEFAULT_STEPS
    smooth: float = DEFAULT_SMOOTH
    blur: float | None = None
    step_batch: int = 8
    progress: bool = True

    def __post_init__(self) -> None:
        self.steps = check_positive_int("steps", self.steps)
        self.smooth = _check_sigma("smooth", self.smooth, allow_zero=True)
        if self.blur is not None:
            self.blur = _check_sigma("blur", self.blur, allow_zero=False)
        self.step_batch = check_positive_int("step_batch", self.step_batch)

    def explain(self, adapter: Adapter, batch: Batch, targets: str, target_options: dict[str, Any]
                ) -> tuple[list[Detections], list[Tensor]]:
        """Detections of each image of ``batch`` and their maps ``[T_i, H, W]`` over the original image."""
        target = adapter.target(batch, targets, **target_options)
        with preserved_state(adapter.model), torch.no_grad():
            target(adapter.model(batch.tensor))
        if getattr(target, "detections", None) is None or not hasattr(target, "on_copies"):
            raise ValueError(f"integrated gradients need a target that keeps its detections and scores copies "
                             f"of the image; targets {targets!r} of {type(adapter).__name__} do not")
        return target.detections, self.target_maps(adapter.model, target, batch, adapter.max_batch)

    def target_maps(self, model: torch.nn.Module, target: Any, batch: Batch, max_batch: int | None = None
                    ) -> list[Tensor]:
        """Maps ``[T_i, H, W]`` over each original image of a decoded ``target``'s detections, the gradients
        taken through ``model`` (the adapter's, or a randomised twin of it for the sanity check);
        ``max_batch``: the most copies the model takes per forward (a fixed-batch export), None for any."""
        maps = []
        with preserved_state(model), _frozen_parameters(model):
            for b, (geometry, dets) in enumerate(zip(batch.geometries, target.detections)):
                if len(dets) == 0:
                    maps.append(batch.tensor.new_zeros(0, *geometry.original_size, dtype=torch.float32))
                    continue
                attr = path_attributions(model, target, batch.tensor[b], b, self, max_batch)
                maps.append(geometry.maps_to_original(normalize_maps(_smoothed(attr.clamp_min(0), self.smooth))))
        return maps


def path_attributions(model: torch.nn.Module, target: Any, x: Tensor, index: int,
                      options: IntegratedGradients, max_batch: int | None = None) -> Tensor:
    """``[T, H, W]``: each of image ``index``'s targets' integrated gradients from the blurred ``x`` ``[C, H, W]``
    to ``x``, summed over channels; they add up to score(x) - score(blurred x) up to the midpoint rule's error."""
    base = blurred(x.float(), options.blur).to(x.dtype)[None]
    delta = x[None] - base
    alphas = (torch.arange(options.steps, dtype=torch.float32, device=x.device) + 0.5) / options.steps
    total = None
    step = min(options.step_batch, max_batch or options.step_batch)
    chunks = range(0, options.steps, step)
    with Progress(options.steps, unit="step", desc="IG", enabled=options.progress and len(chunks) > 1) as bar:
        for start in chunks:
            a = alphas[start:start + step].to(x.dtype)[:, None, None, None]
            path = (base + a * delta).requires_grad_(True)
            with torch.enable_grad():
                scores = target.on_copies(model(path), index)  # [k, T]
                count = scores.shape[1]
                grads = [torch.autograd.grad(scores[:, t].sum(), path, retain_graph=t < count - 1)[0].sum(0)
                         for t in range(count)]
            chunk = torch.stack(grads).float()
            total = chunk if total is None else total + chunk
            bar.update(len(a))
    return (total / options.steps * delta.float()).sum(1)


def _smoothed(maps: Tensor, sigma: float) -> Tensor:
    if sigma <= 0:
        return maps
    from torchvision.transforms.functional import gaussian_blur

    k = int(2 * math.ceil(3 * sigma) + 1)
    return gaussian_blur(maps[:, None], [k, k], [sigma, sigma])[:, 0]


@contextmanager
def _frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Parameters' requires_grad off for the run and back as they were: the path's gradients are w.r.t. the
    input only, so the graph need not keep the weights' side."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def check_no_ig_layers(layers: Any) -> None:
    """Integrated gradients read the input: layers given with them are a ValueError (silently ignored else)."""
    if layers is not None and layers != []:
        raise ValueError("integrated gradients read the model's input, not a layer, so they take no layers; "
                         "leave layers=None")


def split_ig_options(options: dict[str, Any]) -> tuple[IntegratedGradients, dict[str, Any]]:
    """An :class:`IntegratedGradients` built from the options it takes (:data:`IG_OPTIONS`) and the options
    left for the adapter's target (``conf``, ``iou``, ``classes``, ...)."""
    mine = {k: v for k, v in options.items() if k in IG_OPTIONS}
    return build_ig(mine), {k: v for k, v in options.items() if k not in IG_OPTIONS}


def build_ig(options: dict[str, Any]) -> IntegratedGradients:
    """An :class:`IntegratedGradients` from option names; an unknown name is a ValueError listing the known."""
    unknown = sorted(set(options) - set(IG_OPTIONS))
    if unknown:
        raise ValueError(f"unknown integrated-gradients option(s) {', '.join(unknown)}; it takes "
                         f"{', '.join(IG_OPTIONS)}")
    return IntegratedGradients(**options)


def ig_maps(adapter: Adapter, batch: Batch, method: Any, layers: Any, targets: str | None,
            method_options: dict[str, Any] | None, target_options: dict[str, Any]
            ) -> tuple[list[Detections], list[Tensor]]:
    """Integrated gradients' side of :func:`dsxai.pipeline.explain_maps`: the options checked, then the maps.

    Raises ValueError for layers (the method reads the input, no layer) and for options given twice (a built
    :class:`IntegratedGradients` carries its own)."""
    check_no_ig_layers(layers)
    if isinstance(method, IntegratedGradients):
        if method_options:
            raise ValueError("a built IntegratedGradients carries its own options; pass method_options with "
                             "method='ig'")
        return method.explain(adapter, batch, targets or adapter.default_targets, target_options)
    return build_ig(method_options or {}).explain(adapter, batch, targets or adapter.default_targets,
                                                  target_options)

"""The CAM engine: one forward, one map per (image, target).

:class:`BaseCAM` owns what every method shares (input checks, views for noise and
mirroring, autocast, layer capture, target scores, fusion and upsampling); a kind
base says how low-resolution maps come about: :class:`ActivationCAM` here,
:class:`~dsxai.gradient.GradientCAM` and :class:`~dsxai.perturbation.PerturbationCAM`
beside it. A method is a tiny subclass that only weights channels.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fusion import FUSIONS, keep_sources, level_keep
from .layers import LayerSpec, capture_outputs, feature_maps, preserved_state, resolve_layers, tensor_leaves
from .targets import ClassTarget

__all__ = ["BaseCAM", "ActivationCAM", "CAMResult", "FeatureSource", "TargetScores", "normalize_maps",
           "fuse_sources"]


@dataclass
class CAMResult:
    """Maps and the scores they explain, one entry per image.

    ``maps[b]`` is ``[T_b, H, W]`` float32 in [0, 1] at the input's resolution on the model's
    device; ``scores[b]`` the detached ``[T_b]`` target scores. ``dense`` tells that the target
    returned one ``[B, T]`` tensor, so :meth:`stacked` gives ``[B, T, H, W]``.
    """

    maps: list[Tensor]
    scores: list[Tensor]
    layers: list[str] = field(default_factory=list)
    dense: bool = False

    def stacked(self) -> Tensor:
        """The maps as one ``[B, T, H, W]`` tensor; ValueError when the images have different target counts."""
        if len({len(m) for m in self.maps}) > 1:
            raise ValueError(f"images have different numbers of targets ({[len(m) for m in self.maps]}); "
                             "use .maps, one [T_i, H, W] tensor per image")
        return torch.stack(self.maps)


_TINY = 1e-30


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max scale each map of ``[..., H, W]`` to [0, 1]; an all-equal map becomes 0."""
    flat = maps.flatten(-2)
    flat = flat - flat.amin(-1, keepdim=True)
    # Divide by the peak itself, not peak + eps: a faint but real map (raw values
    # far below 1e-7) still reaches 1; only a map that is flat everywhere stays 0.
    flat = flat / flat.amax(-1, keepdim=True).clamp_min(_TINY)
    return flat.view_as(maps)


_NO_EVIDENCE_WARNED: set[tuple[int, str]] = set()


def warn_no_evidence(model: nn.Module, names: Sequence[str], cams: Sequence[Tensor]) -> list[str]:
    """Warn (once per model and layer) about layers whose maps hold no positive value; returns their names.

    A layer that no gradient reaches, or whose map is 1x1 (pooled or fully connected), yields all-zero maps
    that would otherwise look like "no evidence anywhere" in pictures and figures. Among several layers with
    evidence elsewhere, an all-zero one is no fault (a detector's pyramid level without detections in this
    image) and is not warned about; a 1x1 layer always is.
    """
    evident = [cam.numel() > 0 and bool((torch.nan_to_num(cam.detach()) > 0).any()) for cam in cams]
    blank = []
    for name, cam, has in zip(names, cams, evident):
        if cam.numel() == 0:
            continue
        one_cell = cam.shape[-1] * cam.shape[-2] == 1
        if not one_cell and (has or any(evident)):
            continue
        blank.append(name)
        if (id(model), name) in _NO_EVIDENCE_WARNED:
            continue
        _NO_EVIDENCE_WARNED.add((id(model), name))
        why = "its map is 1x1 (a pooled or fully connected output)" if one_cell else \
            "every map is zero (no gradient reaches it, or nothing there raises the score)"
        warnings.warn(f"layer {name!r} gives no evidence: {why}; its heatmaps are blank. Pick another layer "
                      "(dsxai.layers.list_layers, or `dsxai layers MODEL`, lists them)", UserWarning, stacklevel=4)
    return blank


def fuse_sources(cams: Sequence[Tensor], size: tuple[int, int], how: str = "mean") -> Tensor:
    """Low-resolution maps ``[N, h_k, w_k]`` of each source -> one ``[N, H, W]`` map in [0, 1].

    Each source is rectified and min-max scaled before bilinear upsampling, so a
    coarse level and a fine level count alike (as pytorch-grad-cam does for
    several layers); the fused map is scaled again.
    """
    fused = None
    for cam in cams:
        up = F.interpolate(normalize_maps(cam.relu())[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        if fused is None:
            fused = up
        elif how == "mean":  # in place: the full-resolution maps are the largest tensors of a call
            fused.add_(up)
        else:
            torch.maximum(fused, up, out=fused)
    if how == "mean":
        fused.div_(len(cams))
    return normalize_maps(fused.relu_()).float()


def _first_conv_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def check_input(model: nn.Module, x: Any) -> Tensor:
    """Validate an image batch and move it to the model's device."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected an image batch as a torch.Tensor [B, C, H, W], got {type(x).__name__}")
    if x.ndim != 4:
        hint = " (add a batch dimension with x[None])" if x.ndim == 3 else ""
        raise ValueError(f"expected an image batch of rank 4 [B, C, H, W], got shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise ValueError(
            f"expected a floating-point image batch, got dtype {x.dtype}; convert with x.float() / 255 "
            "and the model's normalisation"
        )
    if x.shape[0] == 0:
        raise ValueError("the image batch is empty (B = 0)")
    channels = _first_conv_channels(model)
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"the model's first convolution takes {channels} channels but the batch has {x.shape[1]} "
            f"(shape {tuple(x.shape)}); images must be [B, {channels}, H, W]"
        )
    if not torch.isfinite(x).all():
        raise ValueError("the image batch contains NaN or infinite values")
    device = _model_device(model)
    return x.to(device) if device is not None and x.device != device else x


@dataclass
class FeatureSource:
    """One map source: a tensor a captured layer returned, as it came and as ``[B, C, h, w]``."""

    name: str
    module: nn.Module
    leaf: Tensor          # the tensor as the layer returned it (what gradients are taken against)
    activations: Tensor   # the same as [B, C, h, w]
    plain: bool           # the layer ran once and returned this one tensor


@dataclass
class TargetScores:
    """A batch's target scores flattened: ``flat[i]`` belongs to image ``image_of[i]``; ``counts[b]`` per image."""

    flat: Tensor
    image_of: Tensor
    counts: list[int]
    dense: bool  # the target returned one [B, T] tensor
    #: ``[N, S]`` bool, which sources each target keeps (``fuse="level"``); None: every source. Why here: a
    #: kind may then skip what no kept map needs (a gradient through the neck to a level nobody keeps).
    keep: Tensor | None = None


class BaseCAM:
    """Shared machinery of every CAM method; subclass a kind base, not this.

    Args:
        model: any ``nn.Module``; run in eval mode and given back as it came
            (train/eval and requires_grad flags, no hooks, no ``.grad``).
        layers: dotted names (as in ``model.named_modules()``) or modules; each tensor a
            layer outputs (tuple, list, dict, every call) is one map source.
        reshape: turns a token output (ViT, Swin) into ``[B, C, h, w]``.
        fuse: how the sources' maps combine after upsampling: "mean", "max" or "level" (each target keeps
            only the layer it was read from, e.g. a YOLO detection's head level; :mod:`dsxai.fusion`).
        chunk_size: targets per batched backward (bounds memory).
        batch_size: images per forward for perturbation methods.
        noise_samples, noise_sigma: SmoothGrad-style mean over the clean image and
            ``noise_samples - 1`` noisy copies (sigma relative to each image's range); 0 or 1: off.
        hflip: also explain the mirrored image and average; targets that are not mirror-invariant
            provide ``hflip(width)``.
        seed: seed of the noise.
        autocast: None (exact float32) or "bf16"/"fp16" (or the torch dtype): forwards and
            backward in reduced precision, maps from float32 copies (README: tolerances, caveats).

    Why: capture, batching and fusion written once keep every method's maps comparable.
    """

    #: the kind needs a graph through the model (gradient methods)
    needs_gradients: bool = False
    #: one map per image, shared by its targets (the map does not depend on the target)
    class_agnostic: bool = False

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec | Sequence[LayerSpec] | None,
        *,
        reshape: Callable[[Tensor], Tensor] | None = None,
        fuse: str = "mean",
        chunk_size: int = 32,
        batch_size: int = 32,
        noise_samples: int = 0,
        noise_sigma: float = 0.1,
        hflip: bool = False,
        seed: int = 0,
        autocast: str | torch.dtype | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if fuse not in FUSIONS:
            raise ValueError(f"fuse must be one of {', '.join(map(repr, FUSIONS))}, got {fuse!r}")
        if fuse == "level" and self.class_agnostic:
            raise ValueError(f"fuse='level' picks a layer per target, but {type(self).__name__} makes one map per "
                             "image; use fuse='mean'")
        if chunk_size < 1 or batch_size < 1:
            raise ValueError("chunk_size and batch_size must be at least 1")
        self.model = model
        self.layers = resolve_layers(model, layers)
        self.reshape = reshape
        self.fuse = fuse
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.noise_samples = noise_samples
        self.noise_sigma = noise_sigma
        self.hflip = hflip
        self.seed = seed
        self.autocast = _autocast_dtype(autocast)

    # ----------------------------------------------------------------- public
    def __call__(self, x: Tensor, targets: Callable | None = None) -> Tensor | list[Tensor]:
        """Maps ``[B, T, H, W]`` when the target returned a ``[B, T]`` tensor, else one ``[T_b, H, W]`` per image."""
        result = self.explain(x, targets)
        return result.stacked() if result.dense else result.maps

    def explain(self, x: Tensor, targets: Callable | None = None) -> CAMResult:
        """Maps for every (image, target) of the batch ``x`` ``[B, C, H, W]``."""
        x = check_input(self.model, x)
        with preserved_state(self.model), torch.inference_mode(False), torch.enable_grad():
            views = self._views(x)
            total: list[Tensor] | None = None
            for view, flipped in views:
                view_targets = _flip_target(targets, x.shape[-1]) if flipped else targets
                maps, view_scores = self._explain_view(view, view_targets)
                if flipped:
                    maps = [m.flip(-1) for m in maps]
                if total is None:  # the clean view's scores are the ones explained
                    total, scores = maps, view_scores
                else:
                    total = [a + b for a, b in zip(total, maps)]
            if len(views) > 1:
                total = [normalize_maps(m) for m in total]
        return CAMResult(maps=total, scores=list(scores.flat.detach().float().split(scores.counts)),
                         layers=[name for name, _ in self.layers], dense=scores.dense)

    def forward_context(self, x: Tensor) -> contextlib.AbstractContextManager:
        """The context the model's forwards run in: autocast when asked for, else nothing."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.autocast)

    # ------------------------------------------------------------ kind interface
    def low_res_maps(self, x: Tensor, sources: list[FeatureSource], targets: Callable,
                     scores: TargetScores) -> list[Tensor]:
        """Per source, ``[N, h_k, w_k]`` maps: one per target (``N = len(scores.flat)``), or one per image
        when :attr:`class_agnostic`."""
        raise NotImplementedError(f"{type(self).__name__} makes no maps: a method subclasses GradientCAM, "
                                  "ActivationCAM or PerturbationCAM (dsxai), not BaseCAM itself")

    # -------------------------------------------------------------- internals
    def _views(self, x: Tensor) -> list[tuple[Tensor, bool]]:
        # The clean image comes first: targets that decode detections on their first
        # call (adapters) must see the real image, not a noisy copy.
        bases = [x]
        if self.noise_samples > 1:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
            span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
            bases += [x + torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                      * self.noise_sigma * span for _ in range(self.noise_samples - 1)]
        views = [(b, False) for b in bases]
        if self.hflip:
            views += [(b.flip(-1), True) for b in bases]
        return views

    def _explain_view(self, x: Tensor, targets: Callable | None) -> tuple[list[Tensor], TargetScores]:
        batch = x.shape[0]
        x_in = x.detach().clone().requires_grad_(self.needs_gradients)
        # gradient-free methods record no graph: the forward costs what a plain inference forward costs
        graph = contextlib.nullcontext() if self.needs_gradients else torch.no_grad()
        with capture_outputs(self.layers) as captured, self.forward_context(x), graph:
            output = self.model(x_in)
        sources = self._sources(captured)
        if targets is None:
            targets = self._default_target(output, batch)
        scores = _flat_scores(targets, output, batch, self.needs_gradients)
        size = x.shape[-2:]
        if scores.flat.numel() == 0:
            return [x.new_zeros((0,) + tuple(size), dtype=torch.float32) for _ in scores.counts], scores
        if self.fuse == "level":
            scores.keep = level_keep([s.name for s in sources], targets, scores.counts)
        low_res = self.low_res_maps(x, sources, targets, scores)
        if scores.keep is not None:
            low_res = keep_sources(low_res, scores.keep)
        else:
            warn_no_evidence(self.model, [s.name for s in sources], low_res)
        fused = fuse_sources(low_res, tuple(size), "max" if self.fuse == "max" else "mean")
        if self.class_agnostic:  # one map per image, upsampled once, then copied for each of its targets
            fused = fused[scores.image_of]
        return list(fused.split(scores.counts)), scores

    def _sources(self, captured: dict[str, list[Any]]) -> list[FeatureSource]:
        sources = []
        for name, module in self.layers:
            outputs = captured[name]
            if not outputs:
                raise ValueError(
                    f"layer {name!r} was never reached in the forward pass; pick a layer the model runs "
                    "for this input"
                )
            for output in outputs:
                leaves = tensor_leaves(output)
                if not leaves:
                    raise ValueError(f"layer {name!r} output holds no tensor ({type(output).__name__})")
                plain = len(outputs) == 1 and isinstance(output, Tensor) and self.reshape is None
                for leaf, fmap in zip(leaves, feature_maps(name, leaves, self.reshape)):
                    sources.append(FeatureSource(name, module, leaf, fmap, plain))
        bad = torch.stack([~torch.isfinite(s.activations).all() for s in sources]).cpu()
        for source, is_bad in zip(sources, bad.tolist()):
            if is_bad:
                raise ValueError(
                    f"layer {source.name!r} produced NaN or infinite activations; check the input's scale "
                    "and the model's weights"
                )
        return sources

    def _default_target(self, output: Any, batch: int) -> Callable:
        if self.class_agnostic:
            return lambda _: torch.zeros(batch, 1)  # one class-agnostic map per image
        logits = output[0] if isinstance(output, (tuple, list)) and output else output
        if isinstance(logits, Tensor) and logits.ndim == 2:
            return ClassTarget(logits.argmax(1).tolist())
        raise ValueError(
            "targets=None only works for classifier outputs [B, num_classes] (the top class is explained); "
            "pass targets= (a callable from the model output to scores [B, T]) for other models"
        )


class ActivationCAM(BaseCAM):
    """Gradient-free, class-agnostic methods (EigenCAM): one map per image from the activations alone."""

    class_agnostic = True

    def cam_from_activations(self, activations: Tensor) -> Tensor:
        """``[B, C, h, w]`` activations -> ``[B, h, w]`` maps, one per image."""
        raise NotImplementedError

    def low_res_maps(self, x: Tensor, sources: list[FeatureSource], targets: Callable,
                     scores: TargetScores) -> list[Tensor]:
        return [self.cam_from_activations(s.activations.detach().float()) for s in sources]


_AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "half": torch.float16}


def _autocast_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None or value is False:
        return None
    dtype = _AUTOCAST.get(value.lower()) if isinstance(value, str) else value
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast must be None, 'bf16' or 'fp16' (or torch.bfloat16 / torch.float16), got {value!r}")
    return dtype


def _flip_target(targets, width: int):
    if targets is not None and hasattr(targets, "hflip"):
        return targets.hflip(width)
    return targets


def _flat_scores(targets: Callable, output: Any, batch: int, needs_grad: bool) -> TargetScores:
    """Call the target and check its result; scores flattened with each one's image index."""
    try:
        scores = targets(output)
    except (IndexError, KeyError) as exc:
        raise ValueError(f"the target could not read the model output: {type(exc).__name__}: {exc}") from exc
    ragged = not isinstance(scores, Tensor)
    if isinstance(scores, Tensor):
        if scores.ndim == 1 and batch == 1:
            scores = scores[None]
        if scores.ndim != 2 or scores.shape[0] != batch:
            raise ValueError(
                f"the target returned shape {tuple(scores.shape)}; expected [B, T] = [{batch}, T] "
                "(one score per thing to explain) or a list of B tensors [T_i]"
            )
        per_image = list(scores)
    elif isinstance(scores, (list, tuple)):
        per_image = list(scores)
        if len(per_image) != batch or not all(isinstance(s, Tensor) for s in per_image):
            raise ValueError(
                f"the target returned a list of {len(per_image)} items; expected {batch} tensors [T_i], one per image"
            )
        per_image = [s.reshape(-1) if s.ndim == 0 else s for s in per_image]
        if any(s.ndim != 1 for s in per_image):
            raise ValueError(f"each image's scores must be 1-D [T_i]; got shapes {[tuple(s.shape) for s in per_image]}")
    else:
        raise ValueError(f"the target returned {type(scores).__name__}; expected a tensor [B, T] or a list of [T_i]")
    if not all(s.is_floating_point() for s in per_image):
        raise ValueError("target scores must be floating point")
    counts = [s.numel() for s in per_image]
    flat = torch.cat(per_image) if per_image else torch.zeros(0)
    if needs_grad and flat.numel() and not flat.requires_grad:
        raise ValueError(
            "the target scores carry no gradient: compute them from the model output without .detach(), "
            ".item(), numpy or torch.no_grad()"
        )
    image_of = torch.repeat_interleave(torch.arange(batch, device=flat.device),
                                       torch.tensor(counts, device=flat.device))
    return TargetScores(flat, image_of, counts, dense=not ragged)

"""The CAM engine: one forward, one batched backward, one map per (image, target).

Every method is a small subclass of :class:`BaseCAM` that only says how it turns a
layer's activations (and gradients, or perturbation scores) into a map; capture,
batching, normalisation, upsampling, layer fusion and augmentation live here.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import LayerSpec, capture_outputs, feature_maps, preserved_state, resolve_layers, tensor_leaves
from .targets import ClassTarget, Target

__all__ = ["BaseCAM", "CAMResult", "normalize_maps", "fuse_sources"]

log = logging.getLogger("dsxai")
_EPS = 1e-7


@dataclass
class CAMResult:
    """Maps and the scores they explain.

    ``maps`` is ``[B, T, H, W]`` when every image has the same number of targets
    (``targets`` returned a tensor), else a list of ``[T_i, H, W]``; float32 in
    [0, 1] at the input's resolution on the model's device. ``scores`` holds the
    detached target scores, in the same layout without the spatial dims.
    """

    maps: Tensor | list[Tensor]
    scores: Tensor | list[Tensor]
    layers: list[str] = field(default_factory=list)


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
    that would otherwise look like "no evidence anywhere" in pictures and figures.
    """
    blank = []
    for name, cam in zip(names, cams):
        if cam.numel() == 0:
            continue
        one_cell = cam.shape[-1] * cam.shape[-2] == 1
        if not one_cell and bool((torch.nan_to_num(cam.detach()) > 0).any()):
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
        else:
            fused = fused + up if how == "mean" else torch.maximum(fused, up)
    if how == "mean":
        fused = fused / len(cams)
    return normalize_maps(fused.relu()).float()


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


class BaseCAM:
    """Shared machinery of every CAM method.

    Args:
        model: any ``nn.Module``; it is run in eval mode and given back as it came
            (train/eval flags, requires_grad flags, no hooks, no ``.grad``).
        layers: layer names (dotted, as in ``model.named_modules()``) or modules.
            A layer may output a tensor, a tuple/list or a dict of tensors (FPN);
            each tensor is one map source, as is each call of a layer run more than once.
        reshape: turns a token output (ViT, Swin) into ``[B, C, h, w]``; applied to
            activations and gradients alike.
        fuse: how maps of several sources combine after upsampling: "mean" or "max".
        chunk_size: targets per batched backward; bounds memory for many targets.
        batch_size: images per forward for perturbation methods.
        noise_samples, noise_sigma: SmoothGrad-style averaging over ``noise_samples``
            inputs: the clean image and ``noise_samples - 1`` noisy copies (Gaussian,
            sigma relative to each image's value range); 0 or 1 disables it.
        hflip: also explain the mirrored image and average; targets that are not
            mirror-invariant must provide ``hflip(width)`` returning the mirrored target.
        seed: seed of the noise.
        autocast: None (default, exact float32 path) or a reduced precision,
            "bf16"/"fp16" or ``torch.bfloat16``/``torch.float16``: the model's
            forwards run under ``torch.autocast`` on the input's device (CPU: bf16,
            and fp16 where torch supports it), gradients flow in that precision,
            and every map is computed in float32 from float32 copies of the
            activations and gradients. Normalised maps stay within ~1e-2 (fp16)
            / 2e-2 (bf16) max abs of the float32 ones at a backbone's last stage,
            less close at earlier layers (see ``tests/test_fast_paths.py``). Not
            advised for AblationCAM: its weights are differences of nearly equal
            scores, which reduced precision rounds away. Prefer bf16: fp16 has no
            loss scaling here, so the gradients of tiny scores (e.g. ~1e-4 of a
            random-init detector) underflow and the maps are lost. The target then
            also decodes reduced-precision outputs: a detector's boxes and NMS may
            differ from the float32 ones (other detections, other maps).
    """

    needs_gradients: bool = True
    per_target: bool = True

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
        if fuse not in ("mean", "max"):
            raise ValueError(f"fuse must be 'mean' or 'max', got {fuse!r}")
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
        self._warned_loop = False

    # ----------------------------------------------------------------- public
    def __call__(self, x: Tensor, targets: Callable | None = None) -> Tensor | list[Tensor]:
        return self.explain(x, targets).maps

    def explain(self, x: Tensor, targets: Callable | None = None) -> CAMResult:
        """Maps for every (image, target) of the batch ``x`` ``[B, C, H, W]``."""
        x = check_input(self.model, x)
        with preserved_state(self.model), torch.inference_mode(False), torch.enable_grad():
            views = self._views(x)
            total: list[Tensor] | None = None
            scores = None
            for view, flipped in views:
                view_targets = _flip_target(targets, x.shape[-1]) if flipped else targets
                maps, view_scores, ragged = self._explain_view(view, view_targets)
                if flipped:
                    maps = [m.flip(-1) for m in maps]
                if scores is None:
                    scores = view_scores
                total = maps if total is None else [a + b for a, b in zip(total, maps)]
            if len(views) > 1:
                total = [normalize_maps(m) for m in total]
        names = [name for name, _ in self.layers]
        if ragged:
            return CAMResult(maps=total, scores=scores, layers=names)
        return CAMResult(maps=torch.stack(total), scores=torch.stack(scores), layers=names)

    # ------------------------------------------------------- method interface
    def cam_from_gradients(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """``[N, C, h, w]`` activations and gradients of N targets -> ``[N, h, w]`` maps."""
        raise NotImplementedError

    def cam_from_activations(self, activations: Tensor) -> Tensor:
        """Gradient-free methods: ``[B, C, h, w]`` -> ``[B, h, w]`` (one map per image)."""
        raise NotImplementedError

    def channel_weights(self, x: Tensor, image_index: int, source: "FeatureSource", target: Callable,
                        base_scores: Tensor) -> Tensor:
        """Perturbation methods: ``[T_b, C]`` channel weights for one image."""
        raise NotImplementedError

    # -------------------------------------------------------------- internals
    def _autocast(self, x: Tensor):
        """The model's forwards run in this context: autocast when asked for, else nothing."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.autocast)

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

    def _explain_view(self, x: Tensor, targets: Callable | None):
        batch = x.shape[0]
        x_in = x.detach().clone().requires_grad_(self.needs_gradients)
        # gradient-free methods record no graph: the forward costs what a plain inference forward costs
        graph = contextlib.nullcontext() if self.needs_gradients else torch.no_grad()
        with capture_outputs(self.layers) as captured, self._autocast(x), graph:
            output = self.model(x_in)
        sources = self._sources(captured)
        if targets is None:
            targets = self._default_target(output, batch)
        flat_scores, image_of, counts, ragged = _flat_scores(targets, output, batch, self.needs_gradients)
        size = x.shape[-2:]
        if flat_scores.numel() == 0:
            empty = [x.new_zeros((0,) + tuple(size), dtype=torch.float32) for _ in counts]
            return empty, [flat_scores.detach().float()[:0] for _ in counts], ragged
        low_res = self._low_res_maps(x, sources, output, targets, flat_scores, image_of, counts)
        warn_no_evidence(self.model, [s.name for s in sources], low_res)
        fused = fuse_sources(low_res, tuple(size), self.fuse)
        if self._class_agnostic:  # one map per image, upsampled once, then copied for each of its targets
            fused = fused[image_of]
        maps = list(fused.split(counts))
        scores = list(flat_scores.detach().float().split(counts))
        return maps, scores, ragged

    def _sources(self, captured: dict[str, list[Any]]) -> list["FeatureSource"]:
        sources = []
        for name, module in self.layers:
            outputs = captured[name]
            if not outputs:
                raise ValueError(
                    f"layer {name!r} was never reached in the forward pass; pick a layer the model runs "
                    "for this input"
                )
            for call, output in enumerate(outputs):
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
        if self._class_agnostic:
            return lambda _: torch.zeros(batch, 1)  # one class-agnostic map per image
        logits = output[0] if isinstance(output, (tuple, list)) and output else output
        if isinstance(logits, Tensor) and logits.ndim == 2:
            return ClassTarget(logits.argmax(1).tolist())
        raise ValueError(
            "targets=None only works for classifier outputs [B, num_classes] (the top class is explained); "
            "pass targets= (a callable from the model output to scores [B, T]) for other models"
        )

    def _low_res_maps(self, x, sources, output, targets, flat_scores, image_of, counts) -> list[Tensor]:
        if isinstance(self, PerturbationMixin):
            return self._perturbation_maps(x, sources, targets, flat_scores, counts)
        if self._class_agnostic:
            return [self.cam_from_activations(s.activations.detach().float()) for s in sources]
        return self._gradient_maps(sources, flat_scores, image_of)

    @property
    def _class_agnostic(self) -> bool:
        """Gradient-free, non-perturbation methods (EigenCAM): the map does not depend on the target."""
        return not self.needs_gradients and not isinstance(self, PerturbationMixin)

    def _gradient_maps(self, sources: list["FeatureSource"], flat_scores: Tensor, image_of: Tensor) -> list[Tensor]:
        leaves = list({id(s.leaf): s.leaf for s in sources}.values())
        for source in sources:
            if not source.leaf.requires_grad:
                raise ValueError(
                    f"layer {source.name!r} output carries no gradient (detached or computed under no_grad); "
                    "pick another layer or use a gradient-free method such as EigenCAM"
                )
        maps: list[list[Tensor]] = [[] for _ in sources]
        total = flat_scores.numel()
        for start in range(0, total, self.chunk_size):
            rows = torch.arange(start, min(start + self.chunk_size, total), device=flat_scores.device)
            grads = self._grads(flat_scores, leaves, rows)
            grad_of = {id(leaf): g for leaf, g in zip(leaves, grads)}
            owners = image_of[rows]
            for k, source in enumerate(sources):
                g = grad_of[id(source.leaf)]
                g = g[torch.arange(len(rows), device=g.device), owners]  # each target's own image
                if self.reshape is not None:
                    g = self.reshape(g)
                maps[k].append(self.cam_from_gradients(source.activations.detach()[owners].float(),
                                                       g.detach().float()))
            del grads, grad_of
        return [torch.cat(m) for m in maps]

    def _grads(self, flat_scores: Tensor, leaves: list[Tensor], rows: Tensor) -> list[Tensor]:
        """Gradients of the selected scores w.r.t. each leaf: ``[len(rows), *leaf.shape]``."""
        picks = torch.zeros(len(rows), flat_scores.numel(), device=flat_scores.device, dtype=flat_scores.dtype)
        picks[torch.arange(len(rows)), rows] = 1
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                grads = torch.autograd.grad(flat_scores, leaves, grad_outputs=picks, retain_graph=True,
                                            allow_unused=True, is_grads_batched=True)
            slow = [w for w in caught if "batching rule" in str(w.message)]
            if slow and not self._warned_loop:
                log.info("batched backward falls back to a loop inside vmap for some ops: %s", slow[0].message)
                self._warned_loop = True
        except (RuntimeError, NotImplementedError) as exc:
            if not self._warned_loop:
                log.warning("batched backward unavailable for this model (%s); computing gradients in a loop",
                            str(exc).splitlines()[0])
                self._warned_loop = True
            per_row = [torch.autograd.grad(flat_scores[r], leaves, retain_graph=True, allow_unused=True)
                       for r in rows.tolist()]
            grads = [None if per_row[0][i] is None else torch.stack([p[i] for p in per_row])
                     for i in range(len(leaves))]
        return [torch.zeros((len(rows),) + leaf.shape, device=leaf.device, dtype=leaf.dtype) if g is None else g
                for g, leaf in zip(grads, leaves)]


_AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "half": torch.float16}


def _autocast_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None or value is False:
        return None
    dtype = _AUTOCAST.get(value.lower()) if isinstance(value, str) else value
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast must be None, 'bf16' or 'fp16' (or torch.bfloat16 / torch.float16), got {value!r}")
    return dtype


@dataclass
class FeatureSource:
    name: str
    module: nn.Module
    leaf: Tensor          # the tensor as the layer returned it (what gradients are taken against)
    activations: Tensor   # the same as [B, C, h, w]
    plain: bool           # the layer ran once and returned this one tensor


def _flip_target(targets, width: int):
    if targets is not None and hasattr(targets, "hflip"):
        return targets.hflip(width)
    return targets


def _flat_scores(targets: Callable, output: Any, batch: int, needs_grad: bool):
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
    return flat, image_of, counts, ragged


class PerturbationMixin:
    """Methods that weight channels by masked or ablated forwards instead of gradients."""

    needs_gradients = False

    def _perturbation_maps(self, x, sources, targets, flat_scores, counts) -> list[Tensor]:
        maps = []
        base = list(flat_scores.detach().split(counts))
        with torch.no_grad():
            for source in sources:
                per_image = []
                for b in range(x.shape[0]):
                    if counts[b] == 0:
                        continue
                    with self._autocast(x):
                        weights = self.channel_weights(x, b, source, targets, base[b])  # [T_b, C]
                    acts = source.activations[b].detach().float()
                    per_image.append(torch.einsum("tc,chw->thw", weights.float(), acts))
                h, w = source.activations.shape[-2:]
                maps.append(torch.cat(per_image) if per_image else x.new_zeros(0, h, w))
        return maps


def scores_on_copies(target: Callable, output: Any, image_index: int, expected: int) -> Tensor:
    """Scores ``[K, T_b]`` of one image's targets on a batch of K perturbed copies."""
    if isinstance(target, Target):
        scores = target.on_copies(output, image_index)
    else:
        scores = target(output)
        if not isinstance(scores, Tensor):
            raise ValueError(
                "perturbation methods (ScoreCAM, AblationCAM) need a target that scores any batch row-wise; "
                "a plain callable returning a ragged list cannot: subclass dsxai.targets.Target and "
                "implement on_copies()"
            )
    if scores.ndim != 2 or scores.shape[1] != expected:
        raise ValueError(
            f"on perturbed copies the target returned shape {tuple(scores.shape)}; expected [K, {expected}]. "
            "Subclass dsxai.targets.Target and implement on_copies() for image-specific targets"
        )
    return scores

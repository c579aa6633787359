"""The model-randomisation sanity check (Adebayo et al., NeurIPS 2018): do the maps depend on the weights?

A map that survives re-initialising the model's weights shows the architecture and the image's edges, not
what the model learned. :func:`randomized_copy` makes the re-initialised twin, :func:`randomized_maps`
explains the trained model's detections with it, and :func:`rank_correlation` compares the two maps per
detection (Spearman): near 1 = the map barely depends on the trained weights (it fails the check), near 0
or below = it reflects what the model learned.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .adapter import Adapter
from .detections import Detections
from .drise import is_drise
from .engine import BaseCAM
from .imaging import ImageLike
from .integrated import IG_OPTIONS, build_ig, check_no_ig_layers, is_ig
from .layers import preserved_state
from .methods import get_method
from .pipeline import MethodSpec, method_option_names
from .window import split_window, window_maps

__all__ = ["randomized_copy", "rank_correlation", "randomized_maps", "sanity_correlations", "add_sanity",
           "SANITY_KEY"]

#: the per-map figure :func:`add_sanity` adds (``Explanation.figures``)
SANITY_KEY = "sanity_rank_correlation"


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every parameterised layer re-initialised (``reset_parameters``) under a
    fixed seed: the model-randomisation sanity check (Adebayo et al. 2018). ``model`` and the global RNG are
    left as they were."""
    twin = copy.deepcopy(model)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in twin.modules():
            if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                module.reset_parameters()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
    finally:
        torch.random.set_rng_state(gen_state)
    return twin


def _average_ranks(values: Tensor) -> Tensor:
    """Ranks ``0..n-1`` of a 1-D tensor, ties sharing their mean rank (CAM maps hold many equal zeros, and
    an arbitrary order among them would invent correlation)."""
    order = values.argsort()
    _, inverse, counts = torch.unique_consecutive(values[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() + 1) / 2  # mean of the 0-based positions each tie group spans
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = mean_rank[inverse]
    return ranks


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps, ``[N, H, W]`` x ``[N, H, W]`` -> ``[N]`` (float64).

    NaN where either map is constant (e.g. all zero: no evidence), since a rank order is then undefined.
    """
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"rank_correlation needs two stacks of maps of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a, b = a.reshape(len(a), -1).detach().float().cpu(), b.reshape(len(b), -1).detach().float().cpu()
    out = torch.full((len(a),), float("nan"), dtype=torch.float64)
    for k in range(len(a)):
        ra, rb = _average_ranks(a[k]), _average_ranks(b[k])
        ra, rb = ra - ra.mean(), rb - rb.mean()
        denom = ra.norm() * rb.norm()
        if denom > 0:
            out[k] = (ra @ rb) / denom
    return out


def randomized_maps(adapter: Adapter, images: ImageLike | Sequence[ImageLike], method: MethodSpec = "layercam",
                    layers: Sequence[str | nn.Module] | None = None, targets: str | None = None,
                    method_options: dict[str, Any] | None = None, random_model: nn.Module | None = None,
                    seed: int = 0, **target_options: Any) -> tuple[list[Detections], list[Tensor]]:
    """The trained model's detections, each explained by ``random_model`` (default: a
    :func:`randomized_copy` of ``adapter.model`` under ``seed``): maps ``[T_i, H, W]`` over each original image.

    The target decodes the trained model's output once; later calls score the same (anchor, class) pairs
    on the twin's output, so row ``k`` explains the same detection as in :func:`dsxai.pipeline.explain_maps`.
    ``layers`` name modules of ``adapter.model`` (default: its ``default_layers``); the twin has the same names.
    A ``+window`` name windows the twin's maps alike (:mod:`dsxai.window`): the shared window raises the
    correlation, so compare it with the plain method's. ``"ig"`` integrates the twin's gradients on the same
    path (:mod:`dsxai.integrated`; no layers).
    """
    method, window = split_window(method)
    if isinstance(method, BaseCAM):
        raise ValueError("pass a method name or class: the randomised twin needs a method of its own")
    model = adapter.model
    names = [layers] if isinstance(layers, (str, nn.Module)) else layers
    names = [_name_in(model, x) for x in names] if names else list(adapter.default_layers)
    batch = adapter.preprocess(images)
    target = adapter.target(batch, targets, **target_options)
    with preserved_state(model), torch.no_grad():
        target(model(batch.tensor))  # decode once, with the trained weights
    if getattr(target, "detections", None) is None:  # refused before the twin's backward is paid for
        raise ValueError(f"targets {targets or adapter.default_targets!r} of {type(adapter).__name__} keep no "
                         "detections, so the randomised maps would explain nothing nameable")
    twin = random_model if random_model is not None else randomized_copy(model, seed)
    if is_ig(method):
        check_no_ig_layers(layers)
        return target.detections, window_maps(
            target.detections, build_ig(method_options or {}).target_maps(twin, target, batch, adapter.max_batch),
            window)
    maps = get_method(method)(twin, names, **(method_options or {})).explain(batch.tensor, target).maps
    return target.detections, window_maps(target.detections,
                                          [g.maps_to_original(m) for g, m in zip(batch.geometries, maps)], window)


def _name_in(model: nn.Module, layer: str | nn.Module) -> str:
    """A layer as its name in ``model`` (a module object of the trained model is not one of the twin's)."""
    if isinstance(layer, str):
        return layer
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(f"the module {type(layer).__name__} given as a layer is not part of the model")


def sanity_correlations(adapter: Adapter, image: ImageLike, detections: Detections, maps: Tensor,
                        method: MethodSpec = "layercam", layers: Sequence[str | nn.Module] | None = None,
                        targets: str | None = None, seed: int = 0, method_options: dict[str, Any] | None = None,
                        **target_options: Any) -> Tensor:
    """Per detection of one image, the rank correlation ``[N]`` of its trained map ``maps`` with the map a
    randomised-weights twin gives for the same detection (high = the map reflects the architecture, not the
    weights); ``method_options`` (``hflip``, ``noise_samples``, ...) must be those ``maps`` were made with.
    Raises ValueError when the twin's target keeps other detections than ``detections``."""
    random_dets, random_maps = randomized_maps(adapter, [image], method, layers, targets, method_options,
                                               seed=seed, **target_options)
    other = random_dets[0].cpu()
    if len(other) != len(detections) or not torch.allclose(other.boxes, detections.boxes.cpu(), atol=1e-3):
        raise ValueError(f"the sanity check found {len(other)} detection(s) where the explanation has "
                         f"{len(detections)}: pass the same target options (conf, classes, max_dets) to both")
    return rank_correlation(maps.float().cpu(), random_maps[0].float().cpu())


def add_sanity(adapter: Adapter, explanation: Any, index: int = 0, seed: int = 0) -> list[float | None]:
    """Add ``sanity_rank_correlation`` to each figure of image ``index`` of an :class:`~dsxai.Explanation`
    made with ``adapter`` (same method, layers, targets, conf, classes and max_dets, read from its settings);
    returns the values (None where a map is constant). High (near 1): the map reflects the architecture, not
    the trained weights; low (near 0): it depends on what the model learned. The twin runs with the
    explanation's own method options (``hflip``, ``noise_samples``, ...) and target options (``iou``, ...).

    Raises ValueError for a D-RISE explanation: its maps come from the model's predictions on masked images,
    and a randomised model predicts nothing to compare them with."""
    settings = explanation.settings
    method = settings.get("method", "layercam")
    base = split_window(method)[0]
    if is_drise(base):
        raise ValueError("the randomised-weights check needs a gradient method (its maps read the weights "
                         "through the backward); D-RISE maps come from the model's predictions, which a "
                         "randomised model does not share: check the same detections with e.g. layercam")
    segment = settings.get("task") == "segment"
    options = {k: settings[k] for k in ("conf", "classes", "max_dets") if settings.get(k) is not None
               and not (segment and k == "conf")}
    if segment and "max_dets" in options:
        options["max_masks"] = options.pop("max_dets")
    given = dict(settings.get("options") or {})
    takes = set(IG_OPTIONS) if is_ig(base) else method_option_names(get_method(base))
    options.update({k: v for k, v in given.items() if k not in takes})
    corr = sanity_correlations(adapter, explanation.images[index], explanation.detections[index],
                               explanation.maps[index], method, settings.get("layers") or None,
                               settings.get("targets"), seed, {k: v for k, v in given.items() if k in takes},
                               **options)
    values = [None if v != v else round(float(v), 6) for v in corr.tolist()]  # NaN -> None (valid JSON)
    while len(explanation.extras) < len(explanation.detections):
        explanation.extras.append({})
    explanation.extras[index][SANITY_KEY] = values
    return values

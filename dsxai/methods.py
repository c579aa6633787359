"""The CAM methods: each one only says how it weights a layer's channels.

Definitions follow pytorch-grad-cam 1.5 wherever the two agree; each deliberate
difference is stated in the class docstring and pinned by a test.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .engine import ActivationCAM, BaseCAM, FeatureSource
from .gradient import GradientCAM
from .perturbation import PerturbationCAM, scores_on_copies

__all__ = [
    "GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "LevelLayerCAM", "LevelHiResCAM",
    "EigenCAM", "EigenGradCAM", "ScoreCAM", "AblationCAM", "METHODS", "get_method", "first_component",
]


class GradCAM(GradientCAM):
    """Grad-CAM (Selvaraju et al. 2017): channels weighted by their spatially averaged gradient."""

    def cam_from_gradients(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return torch.einsum("nc,nchw->nhw", gradients.mean((2, 3)), activations)


class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018) with the usual exponential-score closed form."""

    def cam_from_gradients(self, activations: Tensor, gradients: Tensor) -> Tensor:
        grads_2 = gradients.pow(2)
        grads_3 = grads_2 * gradients
        total = activations.sum((2, 3), keepdim=True)
        alpha = grads_2 / (2 * grads_2 + total * grads_3 + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        weights = (gradients.relu() * alpha).sum((2, 3))
        return torch.einsum("nc,nchw->nhw", weights, activations)


class XGradCAM(GradientCAM):
    """XGrad-CAM (Fu et al. 2020): gradients weighted by the normalised activations."""

    def cam_from_gradients(self, activations: Tensor, gradients: Tensor) -> Tensor:
        total = activations.sum((2, 3), keepdim=True)
        weights = (gradients * activations / (total + 1e-7)).sum((2, 3))
        return torch.einsum("nc,nchw->nhw", weights, activations)


class HiResCAM(GradientCAM):
    """HiResCAM (Draelos & Carin 2020): element-wise gradient times activation, summed over channels."""

    def cam_from_gradients(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return (gradients * activations).sum(1)


class LayerCAM(GradientCAM):
    """LayerCAM (Jiang et al. 2021): positive gradients times activations, summed over channels."""

    def cam_from_gradients(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return (gradients.relu() * activations).sum(1)


class LevelLayerCAM(LayerCAM):
    """LayerCAM with ``fuse="level"``: each detection's map from the head level that predicted it
    (:mod:`dsxai.fusion`); the method behind the person-set figures above the box prior (benchmarks/README.md)."""

    def __init__(self, *args, fuse: str = "level", **kwargs):
        super().__init__(*args, fuse=fuse, **kwargs)


class LevelHiResCAM(HiResCAM):
    """HiResCAM with ``fuse="level"`` (see :class:`LevelLayerCAM`)."""

    def __init__(self, *args, fuse: str = "level", **kwargs):
        super().__init__(*args, fuse=fuse, **kwargs)


PCA_SOLVERS = ("svd", "gram", "lowrank")


def first_component(features: Tensor, reference: Tensor, solver: str = "gram") -> Tensor:
    """Projection of ``[N, C, h, w]`` features on their first principal component -> ``[N, h, w]``.

    The sign points so that the projection correlates positively with ``reference`` ``[N, h, w]`` (else the
    largest-magnitude entry is positive). ``solver``: ``"gram"`` (top eigenvector of the smaller Gram
    matrix, float64 on CPU), ``"svd"`` (the reference factorisation of the centred ``[hw, C]`` matrix) or
    ``"lowrank"`` (seeded randomised subspace iteration); README: how close they agree.

    Why: an SVD's sign is arbitrary and flips between model sizes and LAPACK builds; the reference map fixes it.
    """
    if solver not in PCA_SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(PCA_SOLVERS)}")
    n, c, h, w = features.shape
    flat = features.flatten(2).transpose(1, 2).float()  # [N, hw, C]
    flat = flat - flat.mean(1, keepdim=True)
    if solver == "gram" and flat.shape[1] < flat.shape[2]:
        projection = _first_projection_from_small_gram(flat)
    else:
        projection = (flat @ _first_right_vector(flat, solver)[..., None])[..., 0]  # [N, hw]
    return (projection * _sign(projection, reference.flatten(1).float())[:, None]).view(n, h, w)


def _first_projection_from_small_gram(flat: Tensor) -> Tensor:
    """``flat @ v`` (first right singular vector ``v``, sign arbitrary) from the ``[hw, hw]`` Gram matrix,
    for ``hw < C``: it equals ``s * u`` with ``u`` its top eigenvector and ``s**2`` its top eigenvalue."""
    wide = torch.float64 if flat.device.type == "cpu" else torch.float32
    values, vectors = torch.linalg.eigh(flat.to(wide) @ flat.transpose(1, 2).to(wide))  # [N, hw, hw]
    return (vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()).to(flat.dtype)


def _first_right_vector(flat: Tensor, solver: str) -> Tensor:
    """First right singular vector ``[N, C]`` of each centred ``[N, hw, C]`` matrix (sign arbitrary)."""
    if solver == "gram":
        wide = torch.float64 if flat.device.type == "cpu" else torch.float32
        gram = flat.transpose(1, 2).to(wide) @ flat.to(wide)  # [N, C, C]
        return torch.linalg.eigh(gram)[1][..., -1].to(flat.dtype)  # eigenvalues ascend
    if solver == "lowrank":  # randomised subspace iteration (Halko et al.), as torch.svd_lowrank does
        rank = min(6, *flat.shape[1:])
        generator = torch.Generator(device=flat.device).manual_seed(0)  # fixed: repeated calls agree
        sketch = torch.randn(flat.shape[2], rank, generator=generator, device=flat.device, dtype=flat.dtype)
        basis = torch.linalg.qr(flat @ sketch)[0]  # [N, hw, rank]
        for _ in range(4):
            basis = torch.linalg.qr(flat @ (flat.transpose(1, 2) @ basis))[0]
        return torch.linalg.svd(basis.transpose(1, 2) @ flat, full_matrices=False)[2][:, 0, :]
    return torch.linalg.svd(flat, full_matrices=False)[2][:, 0, :]


def _sign(projection: Tensor, reference: Tensor) -> Tensor:
    agreement = (projection * (reference - reference.mean(1, keepdim=True))).sum(1)
    peak = projection.gather(1, projection.abs().argmax(1, keepdim=True))[:, 0]
    sign = torch.where(agreement != 0, agreement.sign(), peak.sign())
    return torch.where(sign == 0, torch.ones_like(sign), sign)


class EigenCAM(ActivationCAM):
    """EigenCAM (Muhammad & Yeasin 2020): first principal component of the activations.

    Gradient-free and class-agnostic: one map per image, repeated for each target.
    Differs from pytorch-grad-cam in the sign: theirs is whatever the SVD returns,
    ours points towards the channel-mean activation (see :func:`first_component`).
    Option ``solver`` ("gram" by default, "svd" the reference factorisation,
    "lowrank" a randomised fast path): see :func:`first_component`.
    """

    def __init__(self, *args, solver: str = "gram", **kwargs):
        if solver not in PCA_SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(PCA_SOLVERS)}")
        super().__init__(*args, **kwargs)
        self.solver = solver

    def cam_from_activations(self, activations: Tensor) -> Tensor:
        return first_component(activations, activations.mean(1), self.solver)


class EigenGradCAM(GradientCAM):
    """EigenGradCAM: first principal component of gradient times activation, per target.

    Sign fixed towards the HiResCAM map (gradient x activation summed over
    channels); pytorch-grad-cam leaves it to the SVD.
    """

    def cam_from_gradients(self, activations: Tensor, gradients: Tensor) -> Tensor:
        product = gradients * activations
        return first_component(product, product.sum(1))


class ScoreCAM(PerturbationCAM):
    """Score-CAM (Wang et al. 2020): each channel, upsampled and min-max scaled, masks the
    input; the softmax over channels of the targets' scores on those masked inputs weights
    the channels. ``batch_size`` masked images go through the model per forward, and all
    targets of an image share them. Upsampling uses align_corners=True as pytorch-grad-cam does.
    """

    def channel_weights(self, x: Tensor, image_index: int, source: FeatureSource, target: Callable,
                        base_scores: Tensor) -> Tensor:
        acts = source.activations[image_index:image_index + 1].detach()
        image = x[image_index:image_index + 1].detach()
        scores = []
        for start in range(0, acts.shape[1], self.batch_size):
            chunk = F.interpolate(acts[:, start:start + self.batch_size], size=x.shape[-2:], mode="bilinear",
                                  align_corners=True)[0]
            low = chunk.flatten(1).amin(1).view(-1, 1, 1)
            high = chunk.flatten(1).amax(1).view(-1, 1, 1)
            masks = (chunk - low) / (high - low + 1e-8)
            output = self.model(image * masks[:, None])
            scores.append(scores_on_copies(target, output, image_index, len(base_scores)).float())
        return torch.softmax(torch.cat(scores).T, dim=-1)


class AblationCAM(PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): a channel's weight is the relative drop of the
    target's score when that channel is set to zero, ``(s - s_ablated) / s``.

    ``batch_size`` ablated copies run per forward. pytorch-grad-cam sets an ablated
    channel to 0 only when the layer's minimum is 0 (post-ReLU layers, where the two
    agree) and otherwise to a value that drifts with the position in its batch; we
    always use 0.
    """

    def channel_weights(self, x: Tensor, image_index: int, source: FeatureSource, target: Callable,
                        base_scores: Tensor) -> Tensor:
        if not source.plain:
            raise ValueError(
                f"AblationCAM needs layer {source.name!r} to output one [B, C, h, w] tensor per forward; "
                "pick such a layer or use ScoreCAM"
            )
        acts = source.leaf[image_index].detach()
        image = x[image_index:image_index + 1].detach()
        channels = acts.shape[0]
        scores = []
        for start in range(0, channels, self.batch_size):
            stop = min(start + self.batch_size, channels)
            ablated = acts.expand(stop - start, *acts.shape).clone()
            ablated[torch.arange(stop - start), torch.arange(start, stop)] = 0
            handle = source.module.register_forward_hook(lambda module, inputs, output: ablated)
            try:
                output = self.model(image.expand(stop - start, *image.shape[1:]))
            finally:
                handle.remove()
            scores.append(scores_on_copies(target, output, image_index, len(base_scores)).float())
        base = base_scores.float()[None]
        base = torch.where(base.abs() > 1e-12, base, torch.full_like(base, 1e-12))
        return ((base - torch.cat(scores)) / base).T


METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "gradcampp": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "layercamlevel": LevelLayerCAM,  # spelled layercam-level: get_method drops '-' and '_'
    "hirescamlevel": LevelHiResCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
}


def get_method(name: str | type[BaseCAM]) -> type[BaseCAM]:
    """A method class by name (case and '-'/'_' insensitive) or the class itself."""
    if isinstance(name, type) and issubclass(name, BaseCAM):
        return name
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in METHODS:
        hint = ("; 'drise' (black-box, no layers) explains boxes through dsxai.explain, `dsxai explain` and "
                "`dsxai bench` only" if key == "drise" else "")
        if key in ("ig", "integratedgradients"):
            hint = ("; 'ig' (integrated gradients, input pixels, no layers) works in dsxai.explain, "
                    "`dsxai explain` and `dsxai bench` only")
        if "+window" in key:
            hint = ("; a '+window' name (a per-box window on the maps, dsxai.window) works in dsxai.explain, "
                    "`dsxai explain` and `dsxai bench` only")
        raise ValueError(f"unknown method {name!r}; choose one of: "
                         f"{', '.join(sorted(set(METHODS) - {'gradcampp'}))}{hint}")
    return METHODS[key]

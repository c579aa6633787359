"""Adapter + method + layers -> detections and one map per target: the one path every workflow runs.

An adapter only says how its model's output becomes targets (:class:`dsxai.adapter.Adapter`); the CAM
methods only say how maps come from activations and gradients (:mod:`dsxai.methods`). This module joins
them, so ``dsxai.explain``, the audit, the benchmark and the demo explain the same way.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from .adapter import Adapter
from .detections import Detections
from .imaging import ImageLike
from .methods import get_method

__all__ = ["explain_maps"]


def explain_maps(adapter: Adapter, images: ImageLike | Sequence[ImageLike], method: str = "gradcam",
                 layers: Sequence[str | nn.Module] | None = None, targets: str | None = None,
                 method_options: dict[str, Any] | None = None, **target_options: Any,
                 ) -> tuple[list[Detections], list[Tensor]]:
    """Detections and one map per target (``[T_i, H, W]`` over each original image), one per image.

    ``targets``: "boxes", "masks", "classes" or None for the adapter's default; ``target_options`` go to
    the adapter's target (``conf``, ``max_dets``, ...), ``method_options`` to the CAM method.
    """
    batch = adapter.preprocess(images)
    target = adapter.target(batch, targets, **target_options)
    cam = get_method(method)(adapter.model, layers or adapter.default_layers, **(method_options or {}))
    result = cam.explain(batch.tensor, target)
    maps = result.maps if isinstance(result.maps, list) else list(result.maps)
    detections = getattr(target, "detections", None)
    return detections, [g.maps_to_original(m) for g, m in zip(batch.geometries, maps)]

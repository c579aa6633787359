"""segmentation-models-pytorch (smp) models: Unet, Unet++, FPN, DeepLabV3(+), PSPNet, Linknet, MAnet, PAN, ...

Every smp model is ``encoder -> decoder -> segmentation_head`` and outputs
per-class logits ``[B, C, H, W]`` at the input's resolution (or ``(logits,
labels)`` with an auxiliary classifier). The adapter normalises the images
(ImageNet mean/std by default, the statistics of smp's pretrained encoders),
optionally resizes them, and pads them bottom/right to a multiple of the
encoder's output stride (smp rejects other sizes); the
:class:`~dsxai.imaging.Geometry` undoes both. Masks, targets and everything
else are those of :class:`~dsxai.adapters.generic.SegmentationAdapter`: the
argmax class per pixel, one mask per class and connected component, scored by
the mean softmax probability inside, and one target per mask (the class logit
averaged, or summed, inside the mask) read on the same forward.
"""
from __future__ import annotations

from typing import Any, Sequence

import cv2
from torch import nn

from ._preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, class_name_map
from ._segmentation import SegmentationAdapter

__all__ = ["SMPAdapter", "import_smp", "build_unet"]

_INSTALL_HINT = "pip install 'dsxai[smp]'"


def import_smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError as exc:
        raise ImportError(
            f"SMPAdapter needs segmentation-models-pytorch, which is not installed: {_INSTALL_HINT}"
        ) from exc
    return smp


def build_unet(**options: Any) -> nn.Module:
    """``segmentation_models_pytorch.Unet(**options)``: a U-Net built without importing smp outside the adapters."""
    return import_smp().Unet(**options)


class SMPAdapter(SegmentationAdapter):
    """Explain an smp segmentation model: one map per predicted mask.

    Args:
        model: an smp ``SegmentationModel`` (any architecture and encoder).
        mean, std: normalisation in [0, 1] pixel units (RGB order), ImageNet by
            default; use the values the model was trained with.
        size: None keeps each image's resolution; an int scales the longer side
            to it (aspect kept); ``(h, w)`` stretches to that size. The result is
            padded to a multiple of the encoder's output stride either way.
        class_names: id -> name (dict or list).
        background: class skipped by predicted masks (None: none). A binary
            model (``classes=1``) reads as {0: background, 1: foreground}.
        layers: layers to explain (default ``["decoder"]``, see below).
        interpolation: OpenCV flag of the resize.

    Default layer: ``decoder``, the decoder's output, i.e. the features the
    segmentation head turns into logits. It exists under that name in every smp
    architecture, it has the finest resolution the model has (full resolution
    for Unet/Unet++/MAnet/Linknet, 1/4 for FPN/DeepLabV3+), and it has seen the
    skip connections, so per-mask maps stay sharp and aligned with small masks.
    The encoder's deepest stage (``encoder.layer4`` for ResNets, stride 32)
    shows the coarse semantic evidence instead, without what the skips carry;
    pass it as ``layers=`` for that view.

    Targets (``explain(..., targets="masks", **options)``): see
    :meth:`~dsxai.adapters.generic.SegmentationAdapter.mask_target` (``per``,
    ``classes``, ``masks``, ``min_area``, ``max_masks``, ``reduce``).
    """

    def __init__(self, model: nn.Module, *, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, size: int | tuple[int, int] | None = None,
                 class_names: Any = None, background: int | None = 0,
                 layers: Sequence[str | nn.Module] | None = None, interpolation: int = cv2.INTER_LINEAR):
        smp = import_smp()
        if not isinstance(model, smp.base.SegmentationModel):
            raise TypeError(
                f"SMPAdapter needs a segmentation_models_pytorch model, got {type(model).__name__}; "
                "use dsxai.adapters.generic.SegmenterAdapter for other segmenters"
            )
        self.model = model
        stride = int(getattr(model.encoder, "output_stride", 32) or 32)
        self._preprocess_fn = Preprocessing(size=size, resize="longest" if isinstance(size, int) else "stretch",
                                            mean=tuple(mean), std=tuple(std), scale=1 / 255,
                                            interpolation=interpolation, pad_multiple=stride)
        self._pad_multiple, self._pad_value = stride, 0.0
        convs = [m for m in model.segmentation_head.modules() if isinstance(m, nn.Conv2d)]
        classes = convs[-1].out_channels if convs else None
        if class_names is None and classes == 1:
            class_names = {0: "background", 1: "foreground"}
        self.class_names = class_name_map(class_names)
        self.background = background
        self.default_layers = layers or ["decoder"]

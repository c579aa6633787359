"""Mask R-CNN per-instance mask targets, and a mask branch for a torchvision Faster R-CNN.

A Mask R-CNN box target explains the class probability of the box head: its map says why the box was
found, not why the mask has its shape. :class:`TorchvisionMaskTarget` explains the mask itself: each
instance's score is the mean mask logit of its class inside its own predicted mask, computed from the
features through ``mask_roi_pool -> mask_head -> mask_predictor``, so the gradient reaches the features
through the mask head only.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dsxai.detections import Detections
from dsxai.targets import Target

from .torchvision_detection import TorchvisionBoxTarget

__all__ = ["TorchvisionMaskTarget", "add_mask_branch"]


def add_mask_branch(model: nn.Module, num_classes: int | None = None, channels: Sequence[int] = (64, 64),
                    resolution: int = 14) -> nn.Module:
    """Give a torchvision ``FasterRCNN`` a (random-init) Mask R-CNN mask branch, in place; returns ``model``.

    RoIAlign ``resolution`` x ``resolution`` on the box branch's feature maps, ``channels`` 3x3 conv layers,
    a 2x transposed conv and one 1x1 logit per class (``num_classes`` defaults to the box predictor's).
    Why: a small Mask R-CNN (the shapes zoo's) built on a trained Faster R-CNN, without importing
    torchvision's detection models outside the adapters.
    """
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    heads = model.roi_heads
    if num_classes is None:
        num_classes = heads.box_predictor.cls_score.out_features
    names = list(heads.box_roi_pool.featmap_names)
    in_channels = model.backbone.out_channels
    heads.mask_roi_pool = MultiScaleRoIAlign(featmap_names=names, output_size=resolution, sampling_ratio=2)
    heads.mask_head = MaskRCNNHeads(in_channels, list(channels), 1)
    heads.mask_predictor = MaskRCNNPredictor(channels[-1], channels[-1], num_classes)
    return model


class TorchvisionMaskTarget(TorchvisionBoxTarget):
    """One score per Mask R-CNN instance: the mean mask logit of its class inside its predicted mask.

    The instances are the box target's (same thresholds, NMS, masks). The region is the instance's mask in
    the mask head's own grid (``sigmoid(logit) > mask_threshold``, fixed at decode); an instance whose grid
    mask is empty is scored over its whole grid. On perturbed copies (ScoreCAM, AblationCAM) the same boxes
    and regions are read from each copy's features; a mirrored view reads the mirrored boxes and regions.
    """

    def decode(self, output: dict[str, Any]) -> tuple[list[Detections], list[Tensor]]:
        detections, _ = super().decode(output)
        self.regions: list[Tensor] = []
        scores = []
        for b, d in enumerate(detections):
            logits = self._logits(output, slice(b, b + 1), d.meta["network_boxes"], d.labels)  # [1, T, m, m]
            region = torch.sigmoid(logits[0].detach()) > self.mask_threshold
            region[region.flatten(1).sum(1) == 0] = True
            self.regions.append(region)
            scores.append(_mean_inside(logits, region)[0])
        return detections, scores

    def rescore(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        d = self.detections[image_index]
        return self.score_boxes(output, image_index, rows, d.meta["network_boxes"], self.regions[image_index])

    def score_boxes(self, output: Any, image_index: int, rows: slice | None, boxes: Tensor,
                    regions: Tensor) -> Tensor:
        """Scores ``[K, T]``: mean logit of each instance's class inside ``regions`` ``[T, m, m]`` of
        ``boxes`` ``[T, 4]`` (network pixels) on rows of ``output`` (None: every row, each a copy of image
        ``image_index``)."""
        labels = self.detections[image_index].labels
        rows = slice(None) if rows is None else rows
        return _mean_inside(self._logits(output, rows, boxes, labels), regions)

    def _logits(self, output: dict[str, Any], rows: slice, boxes: Tensor, labels: Tensor) -> Tensor:
        """Mask logits ``[K, T, m, m]`` of each instance's class, for the feature rows ``rows``."""
        heads = self.net.roi_heads
        # float32 like torchvision's autocast rule for roi_align (no bfloat16 CPU kernel)
        features = OrderedDict((k, v[rows].float()) for k, v in output["features"].items())
        copies = next(iter(features.values())).shape[0]
        if len(boxes) == 0:
            return torch.zeros(copies, 0, 1, 1, device=self.batch.tensor.device)
        size = tuple(self.batch.tensor.shape[-2:])
        boxes = boxes.to(self.batch.tensor.device, torch.float32)
        pooled = heads.mask_roi_pool(features, [boxes] * copies, [size] * copies)
        logits = heads.mask_predictor(heads.mask_head(pooled))  # [K * T, classes, m, m]
        picked = logits[torch.arange(len(logits), device=logits.device), labels.to(logits.device).repeat(copies)]
        return picked.view(copies, len(boxes), *picked.shape[-2:])

    def hflip(self, width: int) -> Target:
        return _MirroredMasks(self, width)


def _mean_inside(logits: Tensor, regions: Tensor) -> Tensor:
    """``[K, T]``: the mean of ``logits`` ``[K, T, m, m]`` over each region ``[T, m, m]``."""
    weights = regions.to(logits.device, logits.dtype)
    return (logits * weights).flatten(2).sum(2) / weights.flatten(1).sum(1).clamp_min(1)


class _MirroredMasks(Target):
    """A decoded mask target read on the horizontally mirrored input: mirrored boxes, mirrored regions."""

    def __init__(self, parent: TorchvisionMaskTarget, width: int):
        self.parent, self.width = parent, width

    @property
    def detections(self) -> list[Detections] | None:
        return self.parent.detections

    def __call__(self, output: Any) -> list[Tensor]:
        return [self.on_copies(output, b, slice(b, b + 1))[0] for b in range(len(self.parent.detections))]

    def on_copies(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        boxes = self.parent.detections[image_index].meta["network_boxes"]
        mirrored = torch.stack([self.width - boxes[:, 2], boxes[:, 1], self.width - boxes[:, 0], boxes[:, 3]], 1)
        regions = self.parent.regions[image_index].flip(-1)
        return self.parent.score_boxes(output, image_index, rows, mirrored, regions)

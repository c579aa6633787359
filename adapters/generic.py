"""Bring your own model: generic detector and segmenter adapters.

* :class:`SegmenterAdapter` takes any module mapping images to per-class logits
  ``[B, C, h, w]`` and a preprocessing; predicted masks (one per class and
  connected component) and their per-mask targets come from the same code as
  :class:`~dsxai.adapters.smp_segmentation.SMPAdapter`.
* :class:`DetectorAdapter` takes any module and one ``decode`` function from the
  raw output to candidate boxes, labels and differentiable scores; confidence
  filter, class-aware NMS, geometry and targets are those of the built-in detectors.

The parts these share with the other adapters live in private modules and are
re-exported here: :class:`Preprocessing` and :func:`make_batch`
(``_preprocessing``), :func:`decode_masks` and :class:`SegmentationTarget`
(``_segmentation``), :func:`best_match` and :class:`BoxMatchingTarget`
(``_matching``), :func:`select_candidates` (``_candidates``).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from dsxai.adapter import Batch
from dsxai.detections import Detections
from dsxai.layers import tensor_leaves

from ._candidates import candidate_rows, select_candidates
from ._matching import BoxMatchingTarget, best_match
from ._preprocessing import IMAGENET_MEAN, IMAGENET_STD, AdapterBase, Preprocessing, class_name_map, make_batch
from ._segmentation import SegmentationAdapter, SegmentationTarget, class_logits, decode_masks

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing", "make_batch", "AdapterBase", "class_name_map",
    "class_logits", "decode_masks", "SegmentationTarget", "SegmentationAdapter", "SegmenterAdapter",
    "BoxMatchingTarget", "best_match", "select_candidates", "DecodedDetectionTarget", "DetectorAdapter",
]


class SegmenterAdapter(SegmentationAdapter):
    """Any module mapping images to per-class logits ``[B, C, h, w]``.

    Args:
        module: the segmenter (its raw output: a tensor, a tuple whose first item
            is the logits, or a dict with "out"); a single channel is a binary
            (sigmoid) output, read as classes {0: background, 1: foreground}.
        preprocess: a callable ``RGB uint8 HxWx3 -> tensor [3, h, w]`` or
            ``(tensor, Geometry)``, or a :class:`Preprocessing`; or leave it None
            and give the :class:`Preprocessing` options as keywords (``size``,
            ``mean``, ``std``, ``scale``, ``bgr``, ``resize``, ``interpolation``,
            ``pad_multiple``, ...).
        class_names: id -> name (dict or list).
        background: class skipped by predicted masks (None: keep every class).
        layers: layers to explain; by default the last feature map (see
            :func:`guess_layers`), found with one forward at first use.
        max_batch: the most images per forward: None (any), an int, or "auto"
            (default): 1 when the module fails on 2 images but runs 1 (a
            fixed-batch export), found with a probe at first use.
    """

    def __init__(self, module: nn.Module, preprocess: Any = None, *, class_names: Any = None,
                 background: int | None = 0, layers: Sequence[str | nn.Module] | None = None,
                 max_batch: int | str | None = "auto", **preprocessing: Any):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.model = module
        self._use_preprocessing(preprocess, preprocessing)
        self.class_names = class_name_map(class_names)
        self.background = background
        self.default_layers = layers
        self.max_batch = max_batch


class DecodedDetectionTarget(BoxMatchingTarget):
    """The target of :class:`DetectorAdapter`: candidates from the user's ``decode``."""

    def __init__(self, adapter: "DetectorAdapter", batch: Batch, conf: float, iou: float | None,
                 classes: Sequence[int] | None, max_dets: int):
        super().__init__()
        self.adapter, self.batch = adapter, batch
        self.conf, self.iou, self.classes, self.max_dets = conf, iou, classes, max_dets
        self._cache: tuple[Any, list] | None = None

    def _candidates(self, output: Any, batch: Batch) -> list[dict[str, Tensor]]:
        if self._cache is not None and self._cache[0] is output:
            return self._cache[1]
        result = self.adapter.decode_candidates(output, batch)
        self._cache = (output, result)
        return result

    def decode(self, output: Any) -> tuple[list[Detections], list[Tensor]]:
        candidates = self._candidates(output, self.batch)
        if len(candidates) != len(self.batch):
            raise ValueError(f"decode returned {len(candidates)} entries for a batch of {len(self.batch)} images")
        detections, scores = [], []
        for cand, geometry in zip(candidates, self.batch.geometries):
            keep = select_candidates(cand["boxes"], cand["scores"], cand["labels"], conf=self.conf, iou=self.iou,
                                     classes=self.classes, max_dets=self.max_dets)
            net = cand["boxes"][keep].detach().float()
            detections.append(Detections(
                boxes=geometry.boxes_to_original(net).cpu(), scores=cand["scores"][keep].detach().cpu(),
                labels=cand["labels"][keep].cpu(), image_size=geometry.original_size,
                class_names=self.adapter.class_names,
                meta={"network_boxes": net.cpu(), "candidate_index": keep.cpu()}))
            scores.append(cand["scores"][keep])
        return detections, scores

    def match(self, output: Any, image_index: int, rows: slice | None, boxes: Tensor, labels: Tensor,
              region: Tensor) -> Tensor:
        if self.adapter.rescore_fn is not None:
            scores = self.adapter.rescore_fn(output, boxes, labels)
            return scores[rows if rows is not None else slice(None)]
        count = _leading(output)
        view = Batch(tensor=self.batch.tensor[image_index:image_index + 1].expand(count, -1, -1, -1),
                     images=[self.batch.images[image_index]] * count,
                     geometries=[self.batch.geometries[image_index]] * count)
        candidates = self._candidates(output, view)
        out = []
        for r in candidate_rows(len(candidates), rows):
            cand = candidates[r]
            if "class_scores" in cand:
                per_target = cand["class_scores"][:, labels.to(cand["class_scores"].device)]
            else:  # only candidates of the same class count
                same = cand["labels"][:, None] == labels.to(cand["labels"].device)[None]
                per_target = torch.where(same, cand["scores"][:, None], torch.zeros_like(cand["scores"][:, None]))
            out.append(best_match(boxes, cand["boxes"], per_target, region))
        return torch.stack(out) if out else torch.zeros(0, len(labels))


def _leading(output: Any) -> int:
    tensors = tensor_leaves(output)
    if not tensors:
        raise TypeError(f"cannot find the batch size of an output of type {type(output).__name__}")
    return tensors[0].shape[0]


def _as_candidates(item: Any) -> dict[str, Tensor]:
    if isinstance(item, dict):
        cand = dict(item)
    elif isinstance(item, (tuple, list)) and len(item) == 3:
        cand = dict(zip(("boxes", "scores", "labels"), item))
    else:
        raise ValueError("decode must return, per image, a dict with boxes/scores/labels (and optionally "
                         "class_scores) or a (boxes, scores, labels) tuple")
    boxes, scores = cand["boxes"], cand["scores"]
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.ndim != 1 or len(scores) != len(boxes):
        raise ValueError(f"decode gave boxes {tuple(boxes.shape)} and scores {tuple(scores.shape)}; expected "
                         "[N, 4] xyxy network pixels and [N]")
    cand["labels"] = torch.as_tensor(cand["labels"], device=scores.device).long().reshape(-1)
    if len(cand["labels"]) != len(scores):
        raise ValueError("decode gave labels and scores of different lengths")
    return cand


class DetectorAdapter(AdapterBase):
    """Any detector, given one function that decodes its raw output.

    Args:
        module: the network; its forward takes the preprocessed batch ``[B, 3, h, w]``.
        decode: ``decode(output)`` or ``decode(output, batch)`` -> one entry per
            row of ``output``: a dict with ``boxes`` ``[N, 4]`` (xyxy, network
            pixels), ``scores`` ``[N]`` (differentiable: computed from ``output``
            without detaching) and ``labels`` ``[N]``, optionally
            ``class_scores`` ``[N, num_classes]`` (used to match detections on
            perturbed copies); or a ``(boxes, scores, labels)`` tuple. Return all
            candidates: the adapter applies ``conf``, ``classes``, class-aware
            NMS and ``max_dets``. On perturbed copies of image b, ``batch``
            describes K copies of that image.
        preprocess: a callable (see :func:`make_batch`) or a :class:`Preprocessing`,
            or None and the :class:`Preprocessing` options as keywords.
        class_names: id -> name (dict or list).
        layers: layers to explain (default: guessed, see :func:`guess_layers`).
        rescore: optional ``rescore(output, boxes [T, 4], labels [T]) -> [K, T]``,
            the scores of given boxes on every row of ``output``; used for
            perturbed copies and mirrored views instead of the default matching
            (best candidate by IoU x probability of the class, see
            :class:`BoxMatchingTarget`).
        conf, iou, max_dets: defaults of :meth:`box_target`.
        max_batch: the most images per forward (see :class:`SegmenterAdapter`; default "auto").
    """

    def __init__(self, module: nn.Module, decode: Callable[..., Sequence[Any]], preprocess: Any = None, *,
                 class_names: Any = None, layers: Sequence[str | nn.Module] | None = None,
                 rescore: Callable[[Any, Tensor, Tensor], Tensor] | None = None, conf: float = 0.25,
                 iou: float | None = 0.45, max_dets: int = 100, max_batch: int | str | None = "auto",
                 **preprocessing: Any):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if not callable(decode):
            raise TypeError("decode must be a callable (output[, batch]) -> per-image candidates")
        self.model = module
        self.decode_fn, self.rescore_fn = decode, rescore
        self._decode_takes_batch = _takes_two(decode)
        self._use_preprocessing(preprocess, preprocessing)
        self.class_names = class_name_map(class_names)
        self.default_layers = layers
        self.conf, self.iou, self.max_dets = conf, iou, max_dets
        self.max_batch = max_batch

    def decode_candidates(self, output: Any, batch: Batch) -> list[dict[str, Tensor]]:
        """The user's ``decode`` on ``output``, each image's entry checked and as a dict."""
        result = self.decode_fn(output, batch) if self._decode_takes_batch else self.decode_fn(output)
        return [_as_candidates(item) for item in result]

    def box_target(self, batch: Batch, conf: float | None = None, iou: float | None | str = "default",
                   classes: Sequence[int] | None = None, max_dets: int | None = None) -> DecodedDetectionTarget:
        """One target per detection kept by ``conf`` / ``classes`` / NMS ``iou`` (None: no NMS) / ``max_dets``;
        unset values take the adapter's defaults."""
        return DecodedDetectionTarget(self, batch, self.conf if conf is None else conf,
                                      self.iou if iou == "default" else iou, classes,
                                      self.max_dets if max_dets is None else max_dets)


def _takes_two(fn: Callable) -> bool:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)

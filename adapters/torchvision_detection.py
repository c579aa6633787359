"""torchvision detectors: Faster R-CNN, Mask R-CNN, Keypoint R-CNN (boxes), RetinaNet and FCOS.

torchvision's detectors resize, normalise and pad inside ``forward``
(``GeneralizedRCNNTransform``), so a map computed over the tensor handed to the
model would not line up with the features the model saw. The adapter therefore
runs its own :class:`TorchvisionDetector`: a module that takes the already
normalised, resized and padded network tensor ``[B, 3, h, w]`` and runs
backbone -> RPN + RoI heads (or the dense head) on it, with the tensor's size as
every image's size. The preprocessing is done in :meth:`TorchvisionDetectionAdapter.preprocess`
exactly as torchvision does it (normalise with the model's ``image_mean`` /
``image_std``, bilinear resize by the ``min_size`` / ``max_size`` rule or to
``fixed_size``, zero padding bottom/right to ``size_divisible``), with a
:class:`~dsxai.imaging.Geometry` that undoes it. Maps are computed at the
tensor's resolution and aligned exactly; boxes and masks come back in original
pixels.

The wrapper's raw output keeps every candidate (not only the NMS survivors);
the target (:class:`TorchvisionBoxTarget`) does the post-processing and keeps,
for each detection, the row it came from:

* R-CNN: the detection's score is the softmax probability of its class for
  the proposal it was regressed from (``probs[proposal, label]``), as in
  ``RoIHeads.postprocess_detections``, which this re-implements with the
  proposal index kept. The score is then recomputed from the features for
  the kept proposals only (same value, same gradient), so a per-box backward
  skips the other ~1000 proposals.
* RetinaNet: the sigmoid class probability at the kept anchor; FCOS:
  ``sqrt(sigmoid(cls) * sigmoid(centerness))`` at the kept location, the score
  FCOS reports.

With the model's own thresholds (the defaults) the detections equal
torchvision's, up to boxes that touch the padding at the bottom/right edge
(proposals are clipped to the padded tensor rather than to each image).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsxai.adapter import Batch
from dsxai.detections import Detections
from dsxai.imaging import Geometry, ImageLike

from ._candidates import candidate_rows, select_candidates
from ._matching import BoxMatchingTarget, best_match
from ._preprocessing import AdapterBase, class_name_map, make_batch

__all__ = ["TorchvisionDetectionAdapter", "TorchvisionDetector", "TorchvisionBoxTarget", "fasterrcnn_from_backbone"]


def fasterrcnn_from_backbone(backbone: nn.Module, num_classes: int, *, anchor_sizes: Sequence[int],
                             aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), head_channels: int = 128,
                             **options: Any) -> nn.Module:
    """A torchvision ``FasterRCNN`` over a backbone with one feature map (``backbone.out_channels``): one
    anchor generator, RoIAlign 7x7 and a 2-layer ``head_channels`` box head; ``options`` go to ``FasterRCNN``.

    The way a small custom detector (the shapes zoo's, a user's) is built without importing torchvision's
    detection models outside the adapters."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=1)
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, head_channels)
    return FasterRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors, box_roi_pool=roi_pool,
                      box_head=box_head, box_predictor=FastRCNNPredictor(head_channels, num_classes), **options)


def _kind(model: nn.Module) -> str:
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    if isinstance(model, GeneralizedRCNN):
        return "rcnn"
    if isinstance(model, RetinaNet):
        return "retinanet"
    if isinstance(model, FCOS):
        return "fcos"
    raise TypeError(
        f"TorchvisionDetectionAdapter supports torchvision's Faster/Mask/Keypoint R-CNN, RetinaNet and FCOS; "
        f"got {type(model).__name__} (wrap other detectors with dsxai.adapters.generic.DetectorAdapter)"
    )


class TorchvisionDetector(nn.Module):
    """A torchvision detector minus its internal transform: ``forward(x)`` on the network tensor.

    It shares (does not copy) the detector's modules, under the same names
    (``backbone``, ``backbone.fpn``, ``rpn``, ``roi_heads`` or ``head``), so
    layer names are the detector's own. The raw output is a dict:

    * R-CNN: ``boxes`` (per image ``[N, K, 4]``: each proposal's box regressed
      for every class, network pixels), ``probs`` (per image ``[N, K]``,
      softmax over classes, background = column 0), ``proposals`` and
      ``features`` (the backbone's dict, read by the mask branch).
    * RetinaNet / FCOS: ``boxes`` ``[B, A, 4]`` decoded for every anchor,
      ``scores`` ``[B, A, K]`` (the detection score of every anchor and class)
      ``levels`` (anchors per pyramid level) and ``anchors`` ``[B, A, 4]``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.kind = _kind(model)
        self.backbone = model.backbone
        if self.kind == "rcnn":
            self.rpn = model.rpn
            self.roi_heads = model.roi_heads
        else:
            self.head = model.head
            self.anchor_generator = model.anchor_generator
        self.training = model.training  # the flag only: the shared modules keep theirs
        object.__setattr__(self, "detector", model)  # a reference, not a child module

    @property
    def has_masks(self) -> bool:
        return self.kind == "rcnn" and self.roi_heads.has_mask()

    @property
    def num_classes(self) -> int:
        if self.kind == "rcnn":
            return self.roi_heads.box_predictor.cls_score.out_features
        return self.head.classification_head.num_classes

    def forward(self, x: Tensor) -> dict[str, Any]:
        from torchvision.models.detection.image_list import ImageList

        sizes = [(int(x.shape[-2]), int(x.shape[-1]))] * x.shape[0]
        images = ImageList(x, sizes)
        features = self.backbone(x)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        if self.kind == "rcnn":
            proposals, _ = self.rpn(images, features)
            heads = self.roi_heads
            pooled = heads.box_head(heads.box_roi_pool(features, proposals, sizes))
            logits, regression = heads.box_predictor(pooled)
            counts = [len(p) for p in proposals]
            boxes = heads.box_coder.decode(regression, proposals)  # [sum N, K, 4]
            probs = F.softmax(logits, -1)
            return {"boxes": list(boxes.split(counts)), "probs": list(probs.split(counts)),
                    "proposals": proposals, "features": features}
        levels = list(features.values())
        head = self.head(levels)
        anchors = self.anchor_generator(images, levels)
        cells = [f.shape[-2] * f.shape[-1] for f in levels]
        per_cell = head["cls_logits"].shape[1] // sum(cells)
        coder = self.detector.box_coder
        if self.kind == "retinanet":
            scores = torch.sigmoid(head["cls_logits"])
            boxes = torch.stack([coder.decode_single(r, a) for r, a in zip(head["bbox_regression"], anchors)])
        else:
            scores = torch.sqrt((torch.sigmoid(head["cls_logits"]) * torch.sigmoid(head["bbox_ctrness"]))
                                .clamp_min(1e-12))
            boxes = torch.stack([coder.decode(r, a) for r, a in zip(head["bbox_regression"], anchors)])
        return {"boxes": boxes, "scores": scores, "levels": [c * per_cell for c in cells],
                "anchors": torch.stack(anchors)}


def _clip(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    h, w = size
    return torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                        boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], -1)


class TorchvisionBoxTarget(BoxMatchingTarget):
    """One score per detection of a :class:`TorchvisionDetector` output.

    First call: the post-processing of torchvision (``conf`` filter, boxes under
    0.01 px dropped, class-aware NMS at ``iou``, ``max_dets``; RetinaNet/FCOS
    also keep the ``topk`` best candidates per level first) with the row of
    each survivor kept; the score is that row's class probability (R-CNN: the
    proposal's softmax probability of the class; RetinaNet/FCOS: the anchor's
    score of the class). Mask R-CNN masks are computed for the survivors.

    Later calls: perturbed copies (ScoreCAM, AblationCAM) give new proposals
    and anchors' boxes move, so a detection is scored on them by its best
    match: ``max`` over the copy's candidates of IoU(original box, candidate
    box) x the candidate's probability of the same class (the D-RISE
    similarity, :func:`~dsxai.adapters.generic.best_match`; R-CNN candidates
    are every proposal's class-specific box). On the unperturbed output this
    equals the detection's score unless an overlapping, non-suppressed
    candidate scores higher.
    """

    def __init__(self, adapter: "TorchvisionDetectionAdapter", batch: Batch, conf: float, iou: float,
                 classes: Sequence[int] | None, max_dets: int, topk: int, mask_threshold: float = 0.5):
        super().__init__()
        self.adapter, self.batch = adapter, batch
        self.conf, self.iou, self.classes, self.max_dets, self.topk = conf, iou, classes, max_dets, topk
        self.mask_threshold = mask_threshold

    @property
    def net(self) -> TorchvisionDetector:
        return self.adapter.model

    def decode(self, output: dict[str, Any]) -> tuple[list[Detections], list[Tensor]]:
        kept = []
        for b, geometry in enumerate(self.batch.geometries):
            if self.net.kind == "rcnn":
                kept.append(self._keep_rcnn(output["boxes"][b], output["probs"][b], geometry.content_size))
            else:
                kept.append(self._keep_dense(output["boxes"][b], output["scores"][b], output["levels"],
                                             geometry.content_size))
        if self.net.kind == "rcnn":
            kept = self._rescore_rcnn(output, kept)
        masks = self._masks(output, kept) if self.net.has_masks else [None] * len(kept)
        detections, scores = [], []
        source = "proposals" if self.net.kind == "rcnn" else "anchors"
        for b, ((rows, labels, boxes, score), geometry, mask) in enumerate(zip(kept, self.batch.geometries, masks)):
            detections.append(Detections(
                boxes=geometry.boxes_to_original(boxes).cpu(), scores=score.detach().cpu(), labels=labels.cpu(),
                image_size=geometry.original_size, class_names=self.adapter.class_names, masks=mask,
                meta={"network_boxes": boxes.cpu(), "candidate_index": rows.cpu(),
                      source: output[source][b][rows].detach().float().cpu()}))
            scores.append(score)
        return detections, scores

    def _keep_rcnn(self, boxes: Tensor, probs: Tensor, size: tuple[int, int]):
        classes = probs.shape[1]
        flat_boxes = _clip(boxes.detach()[:, 1:], size).reshape(-1, 4)
        flat_scores = probs.detach()[:, 1:].reshape(-1)
        flat_labels = torch.arange(1, classes, device=probs.device).repeat(probs.shape[0])
        keep = select_candidates(flat_boxes, flat_scores, flat_labels, conf=self.conf, iou=self.iou,
                                 classes=self.classes, max_dets=self.max_dets, min_size=1e-2)
        rows = torch.div(keep, classes - 1, rounding_mode="floor")
        labels = flat_labels[keep]
        return rows, labels, flat_boxes[keep].float(), probs[rows, labels]

    def _rescore_rcnn(self, output: dict[str, Any], kept: list) -> list:
        """The kept proposals' class probabilities, recomputed from the features for those proposals only.

        Their values are the full output's ``probs[rows, labels]``, and so is the gradient (the RPN detaches
        its proposals, and RoIAlign and the box head treat each proposal on its own). A backward from the
        full ``probs`` would run RoIAlign's backward and the box head over every proposal (~1000 per image)
        for every detection: on CPU that is two thirds of a per-box backward of Faster R-CNN R50-FPN.
        """
        heads = self.net.roi_heads
        size = tuple(self.batch.tensor.shape[-2:])
        proposals = [output["proposals"][b][rows].float() for b, (rows, *_) in enumerate(kept)]
        if not sum(len(p) for p in proposals):
            return kept
        # float32 like torchvision's autocast rule for roi_align (the target may run outside the model's
        # autocast, and CPU roi_align has no bfloat16 kernel)
        features = OrderedDict((k, v.float()) for k, v in output["features"].items())
        pooled = heads.box_head(heads.box_roi_pool(features, proposals, [size] * len(proposals)))
        logits, _ = heads.box_predictor(pooled)
        probs = F.softmax(logits, -1).split([len(p) for p in proposals])
        return [(rows, labels, boxes, p[torch.arange(len(rows), device=p.device), labels])
                for (rows, labels, boxes, _), p in zip(kept, probs)]

    def _keep_dense(self, boxes: Tensor, scores: Tensor, levels: list[int], size: tuple[int, int]):
        classes = scores.shape[1]
        candidates = []
        start = 0
        for count in levels:  # torchvision: threshold, then the top-k of each level
            flat = scores[start:start + count].detach().reshape(-1)
            index = torch.where(flat > self.conf)[0]
            if self.classes is not None:
                index = index[torch.isin(index % classes, torch.as_tensor(list(self.classes), device=index.device))]
            top = flat[index].topk(min(self.topk, len(index))).indices
            candidates.append(index[top] + start * classes)
            start += count
        flat_index = torch.cat(candidates)
        rows = torch.div(flat_index, classes, rounding_mode="floor")
        labels = flat_index % classes
        cand_boxes = _clip(boxes.detach()[rows], size)
        cand_scores = scores.detach()[rows, labels]
        keep = select_candidates(cand_boxes, cand_scores, labels, conf=-1.0, iou=self.iou, classes=None,
                                 max_dets=self.max_dets)
        rows, labels = rows[keep], labels[keep]
        return rows, labels, cand_boxes[keep].float(), scores[rows, labels]

    def _masks(self, output: dict[str, Any], kept: list) -> list[Tensor]:
        from torchvision.models.detection.roi_heads import maskrcnn_inference, paste_masks_in_image

        heads = self.net.roi_heads
        size = tuple(self.batch.tensor.shape[-2:])
        boxes = [k[2].to(self.batch.tensor.device) for k in kept]
        out = []
        with torch.no_grad():
            if sum(len(b) for b in boxes):
                features = heads.mask_head(heads.mask_roi_pool(output["features"], boxes, [size] * len(boxes)))
                probs = maskrcnn_inference(heads.mask_predictor(features), [k[1] for k in kept])
            else:
                probs = [torch.zeros(0, 1, 1, 1) for _ in kept]
            for p, b, geometry in zip(probs, boxes, self.batch.geometries):
                h, w = geometry.original_size
                if len(b) == 0:
                    out.append(torch.zeros(0, h, w, dtype=torch.bool))
                    continue
                pasted = paste_masks_in_image(p, geometry.boxes_to_original(b), (h, w))
                out.append((pasted[:, 0] > self.mask_threshold).cpu())
        return out

    def match(self, output: dict[str, Any], image_index: int, rows: slice | None, boxes: Tensor,
              labels: Tensor, region: Tensor) -> Tensor:
        out = []
        for r in candidate_rows(len(output["boxes"]), rows):
            candidate_boxes = output["boxes"][r]
            labels_d = labels.to(candidate_boxes.device)
            if self.net.kind == "rcnn":
                out.append(best_match(boxes, candidate_boxes[:, labels_d], output["probs"][r][:, labels_d], region))
            else:
                out.append(best_match(boxes, candidate_boxes, output["scores"][r][:, labels_d], region))
        return torch.stack(out) if out else torch.zeros(0, len(labels))


class TorchvisionDetectionAdapter(AdapterBase):
    """Explain a torchvision detector: one map per detected box.

    Args:
        model: a torchvision ``FasterRCNN``, ``MaskRCNN``, ``KeypointRCNN``
            (boxes only), ``RetinaNet`` or ``FCOS``. It is not modified: the
            adapter's :attr:`model` is a :class:`TorchvisionDetector` that shares
            its modules.
        class_names: id -> name; by default COCO's 91 names when the model has
            91 classes (Keypoint R-CNN: person), else the ids.
        layers: layers to explain (default ``["backbone"]``, see below).

    Default layer: ``backbone``, i.e. the FPN's output dict, each pyramid level
    one map source. Each detection is read from exactly one level (R-CNN:
    ``MultiScaleRoIAlign`` pools a proposal from the level its size maps to;
    RetinaNet/FCOS: the head runs per level and the anchor belongs to one), so
    the gradient of its score is zero on the other levels and their maps drop
    out of the fused map: the map comes from the level and resolution the
    detector actually used (stride 4 to 128), whatever the object's size. The
    body's last stage (``backbone.body.layer4``, stride 32) would blur small
    objects and reaches the heads only through the FPN. Gradient-free methods
    (EigenCAM) fuse all levels; AblationCAM needs one tensor per layer, e.g.
    ``backbone.fpn.layer_blocks.0`` or ``backbone.body.layer3``.

    Targets: ``box_target(batch, conf=None, iou=None, classes=None,
    max_dets=None, topk=None, mask_threshold=0.5)``; None takes the model's own
    value (``score_thresh``/``box_score_thresh``, ``nms_thresh``,
    ``detections_per_img``, ``topk_candidates``). Mask R-CNN also makes
    ``mask_target`` (same options but ``topk``), its default: each instance's
    mean mask logit inside its mask, so its map explains the mask.
    """

    def __init__(self, model: nn.Module, *, class_names: Any = None,
                 layers: Sequence[str | nn.Module] | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.detector = model
        self.model = TorchvisionDetector(model)
        self.task = "instance" if self.model.has_masks else "detect"
        if class_names is None:
            from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, KeypointRCNN

            coco = FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]  # COCO's 91 ids, with gaps
            if self.model.num_classes == len(coco):
                class_names = coco
            elif isinstance(model, KeypointRCNN) and self.model.num_classes == 2:
                class_names = {0: "__background__", 1: "person"}
        self.class_names = class_name_map(class_names)
        self.default_layers = layers or ["backbone"]
        transform = model.transform
        self._pad_multiple = int(transform.size_divisible)
        self._pad_value = 0.0
        self._preprocess_fn = self._prepare

    def _prepare(self, image: np.ndarray) -> tuple[Tensor, Geometry]:
        """torchvision's GeneralizedRCNNTransform on one image: normalise, then resize."""
        transform = self.detector.transform
        h, w = image.shape[:2]
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
        mean = torch.as_tensor(transform.image_mean, dtype=tensor.dtype)[:, None, None]
        std = torch.as_tensor(transform.image_std, dtype=tensor.dtype)[:, None, None]
        tensor = (tensor - mean) / std
        if transform.fixed_size is not None:
            resized = F.interpolate(tensor[None], size=[transform.fixed_size[1], transform.fixed_size[0]],
                                    mode="bilinear", align_corners=False)[0]
        else:
            scale = min(transform.min_size[-1] / min(h, w), transform.max_size / max(h, w))
            resized = F.interpolate(tensor[None], scale_factor=scale, mode="bilinear",
                                    recompute_scale_factor=True, align_corners=False)[0]
        size = tuple(resized.shape[-2:])
        return resized, Geometry((h, w), size, (0, 0), size)

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> Batch:
        return make_batch(images, self._prepare, self._pad_multiple, self._pad_value, self.device)

    def box_target(self, batch: Batch, conf: float | None = None, iou: float | None = None,
                   classes: Sequence[int] | None = None, max_dets: int | None = None, topk: int | None = None,
                   mask_threshold: float = 0.5) -> TorchvisionBoxTarget:
        """One target per detection; None values take the model's own thresholds."""
        owner = self.detector.roi_heads if self.model.kind == "rcnn" else self.detector
        return TorchvisionBoxTarget(
            self, batch,
            conf=owner.score_thresh if conf is None else conf,
            iou=owner.nms_thresh if iou is None else iou,
            classes=classes,
            max_dets=owner.detections_per_img if max_dets is None else max_dets,
            topk=getattr(self.detector, "topk_candidates", 1000) if topk is None else topk,
            mask_threshold=mask_threshold,
        )

    def mask_target(self, batch: Batch, conf: float | None = None, iou: float | None = None,
                    classes: Sequence[int] | None = None, max_dets: int | None = None, mask_threshold: float = 0.5,
                    ) -> "TorchvisionBoxTarget":
        """Mask R-CNN: one target per instance, the mean mask logit of its class inside its predicted mask
        (:class:`~dsxai.adapters.torchvision_masks.TorchvisionMaskTarget`); instances as :meth:`box_target`."""
        from .torchvision_masks import TorchvisionMaskTarget

        if not self.model.has_masks:
            raise ValueError(f"{type(self.detector).__name__} has no mask branch: use targets='boxes'")
        box = self.box_target(batch, conf, iou, classes, max_dets, mask_threshold=mask_threshold)
        return TorchvisionMaskTarget(self, batch, conf=box.conf, iou=box.iou, classes=box.classes,
                                     max_dets=box.max_dets, topk=box.topk, mask_threshold=mask_threshold)

    def supports(self, kind: str) -> bool:
        """Mask targets only for a detector with a mask branch (Mask R-CNN)."""
        return self.model.has_masks if kind == "masks" else super().supports(kind)

    @property
    def default_targets(self) -> str:
        """"masks" for Mask R-CNN (its maps explain the masks), "boxes" for the other detectors."""
        return "masks" if self.model.has_masks else "boxes"

"""Where each audited image's ground truth comes from: a folder of label PNGs, a list, or COCO annotations.

Why apart from the run: an image without ground truth is audited without it (with a warning), while a
ground truth that does not fit its image fails that image only; this module holds those rules.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor

from ..groundtruth import CocoTruth, Truth, read_label_png, truth_from_labels
from .config import AuditConfig

__all__ = ["ImageTruth", "TruthSource"]


class ImageTruth(NamedTuple):
    """The ground truth of one image (None without), how it was found ("mask", "coco", "missing" or
    "none"), and the warning to give when it is missing."""

    truth: Truth | None
    gt: str
    warning: str | None = None


class TruthSource:
    """Per image, its ground truth from ``config.masks`` or ``config.coco`` in the adapter's class ids.

    ValueError up front for a masks list of the wrong length, a COCO file that does not load or whose
    categories match no class of the model.
    """

    def __init__(self, config: AuditConfig, adapter: Any, count: int):
        self.mask_dir = config.mask_dir
        self.mask_list: list | None = None
        if config.masks is not None and self.mask_dir is None:
            self.mask_list = list(config.masks)
            if len(self.mask_list) != count:
                raise ValueError(f"masks has {len(self.mask_list)} entries for {count} images; give one per image "
                                 "(None for an image without ground truth)")
        self.coco = CocoTruth(config.coco, adapter.class_names, config.class_map) if config.coco is not None else None
        background = getattr(adapter, "background", None)
        self.background = 0 if background is None else background  # label PNGs need a value for "no object"

    def find(self, index: int, name: str, path: str | None, size: tuple[int, int]) -> ImageTruth:
        """The ground truth of image ``index`` (``name``, file ``path``) of ``size`` (h, w); ValueError when it
        does not fit the image."""
        if self.coco is not None:
            entry = self.coco.find(name, path)
            if entry is None:
                return ImageTruth(None, "missing", f"image {name} is not in the COCO annotations; "
                                                   "audited without ground truth")
            return ImageTruth(self.coco.truth(entry, size), "coco")
        if self.mask_dir is None and self.mask_list is None:
            return ImageTruth(None, "none")
        gt, gt_path = self.mask_list[index] if self.mask_list is not None else None, None
        if self.mask_dir is not None:
            gt_path = self.mask_dir / f"{Path(path).stem if path else name}.png"
            gt = gt_path if gt_path.is_file() else None
        if gt is None:
            where = f" ({gt_path} not found)" if gt_path else ""
            return ImageTruth(None, "missing", f"no ground-truth mask for {name}{where}; audited without ground truth")
        return ImageTruth(truth_from_labels(self._label_map(gt, name, size), self.background), "mask")

    @staticmethod
    def _label_map(gt: Any, name: str, size: tuple[int, int]) -> np.ndarray:
        """A label PNG path or an array as ``[H, W]`` class ids of the image's ``size``."""
        file = isinstance(gt, (str, Path))
        label_map = read_label_png(Path(gt)) if file else np.asarray(gt.cpu().numpy() if isinstance(gt, Tensor)
                                                                      else gt)
        h, w = size
        if label_map.shape[:2] != (h, w):
            where = f"{gt}" if file else "the ground-truth mask"
            raise ValueError(f"{where} is {label_map.shape[1]}x{label_map.shape[0]} but image "
                             f"{name} is {w}x{h}; give a mask of the image's size")
        return label_map

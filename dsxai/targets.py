"""What to explain: targets turn a model's raw output into one scalar per thing.

A target is any callable ``target(output)`` that takes the model's raw output for
a batch of B images and returns either a tensor ``[B, T]`` (the same number of
things per image) or a list of B tensors ``[T_i]`` (ragged). Each scalar is one
map in the result.

Perturbation methods (ScoreCAM, AblationCAM) run the model on K perturbed copies
of one image and need the scores of *that image's* targets on each copy. A
subclass of :class:`Target` says how through :meth:`Target.on_copies`; a plain
callable is accepted there only when it is row-wise and image independent, i.e.
``target(output_of_K_copies)`` returns ``[K, T]``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["Target", "ClassTarget", "OutputIndexTarget", "MaskTarget"]


class Target:
    """Base class for targets that also support perturbation methods."""

    def __call__(self, output: Any) -> Tensor | list[Tensor]:
        """Scores ``[B, T]``, or a list of ``[T_i]`` when images have different counts."""
        batch = self.batch_size(output)
        scores = [self.on_copies(output, image_index=b, rows=slice(b, b + 1))[0] for b in range(batch)]
        if len({len(s) for s in scores}) == 1:
            return torch.stack(scores)
        return scores

    def on_copies(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        """Scores ``[K, T_b]`` of image ``image_index``'s targets on the rows ``rows``
        of ``output`` (all rows when None), each row a perturbed copy of that image."""
        raise NotImplementedError

    def batch_size(self, output: Any) -> int:
        return _leading_dim(output)

    def num_targets(self, image_index: int) -> int | None:
        """Number of targets of one image when known without a forward pass."""
        return None


def _leading_dim(output: Any) -> int:
    if isinstance(output, Tensor):
        return output.shape[0]
    if isinstance(output, (list, tuple)) and output:
        return _leading_dim(output[0])
    if isinstance(output, dict) and output:
        return _leading_dim(next(iter(output.values())))
    raise TypeError(f"cannot infer the batch size of a model output of type {type(output).__name__}")


def _per_image(values: Any, batch: int | None, name: str) -> list[list[int]] | None:
    """Normalise ``int | list[int] | list[list[int]]`` to one list per image (None: broadcast)."""
    if isinstance(values, int):
        return None if batch is None else [[values]] * batch
    values = list(values)
    if values and all(isinstance(v, int) for v in values):
        return [[v] for v in values]
    if all(isinstance(v, (list, tuple)) for v in values):
        return [list(v) for v in values]
    raise TypeError(f"{name} must be an int, a list with one int per image, or a list of lists; got {values!r}")


class ClassTarget(Target):
    """Class scores of a classifier-like output ``[B, K]`` (logits or probabilities).

    ``classes`` is an int (same class for every image), a list with one class per
    image (pytorch-grad-cam's ClassifierOutputTarget), or a list of lists (several
    classes per image, one map each).
    """

    def __init__(self, classes: int | Sequence[int] | Sequence[Sequence[int]]):
        self.classes = classes

    def _classes_of(self, image_index: int) -> list[int]:
        if isinstance(self.classes, int):
            return [self.classes]
        per_image = _per_image(self.classes, None, "classes")
        if image_index >= len(per_image):
            raise ValueError(
                f"ClassTarget has classes for {len(per_image)} images but the batch has more; "
                "give one entry per image"
            )
        return per_image[image_index]

    def on_copies(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        logits = _as_2d_logits(output)
        rows = rows if rows is not None else slice(None)
        return logits[rows][:, self._classes_of(image_index)]

    def num_targets(self, image_index: int) -> int:
        return len(self._classes_of(image_index))


def _as_2d_logits(output: Any) -> Tensor:
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        output = output[0]
    if not isinstance(output, Tensor) or output.ndim != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"ClassTarget needs a model output of shape [B, num_classes]; got {shape}")
    return output


class OutputIndexTarget(Target):
    """Elements of a tensor output picked by index, e.g. a YOLO class score at an anchor.

    ``indices[b]`` is a LongTensor ``[T_b, D]``: each row indexes ``output[b]`` (which
    has D dimensions). ``select`` picks the tensor out of a structured output.
    """

    def __init__(self, indices: Sequence[Tensor], select=None):
        self.indices = [torch.as_tensor(i, dtype=torch.long) for i in indices]
        self.select = select

    def _tensor(self, output: Any) -> Tensor:
        return self.select(output) if self.select is not None else output

    def batch_size(self, output: Any) -> int:
        return len(self.indices)

    def on_copies(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        tensor = self._tensor(output)
        rows = rows if rows is not None else slice(None)
        index = self.indices[image_index].to(tensor.device)
        picked = tensor[rows]
        if index.numel() == 0:
            return picked.new_zeros((picked.shape[0], 0))
        return picked[(slice(None),) + tuple(index.T)]

    def num_targets(self, image_index: int) -> int:
        return len(self.indices[image_index])


class MaskTarget(Target):
    """Per-class logits ``[B, C, H, W]`` pooled inside masks: one scalar per mask.

    ``masks[b]`` is ``[T_b, H, W]`` (bool or float weights) and ``classes[b]`` a
    LongTensor ``[T_b]``. ``reduce`` is "sum" (pytorch-grad-cam's
    SemanticSegmentationTarget) or "mean" (independent of the mask's area).
    """

    def __init__(self, masks: Sequence[Tensor], classes: Sequence[Tensor], reduce: str = "mean", select=None):
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        if len(masks) != len(classes):
            raise ValueError(f"got masks for {len(masks)} images but classes for {len(classes)}")
        self.masks = list(masks)
        self.classes = [torch.as_tensor(c, dtype=torch.long) for c in classes]
        self.reduce = reduce
        self.select = select

    def batch_size(self, output: Any) -> int:
        return len(self.masks)

    def on_copies(self, output: Any, image_index: int, rows: slice | None = None) -> Tensor:
        logits = self.select(output) if self.select is not None else output
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        if not isinstance(logits, Tensor) or logits.ndim != 4:
            raise ValueError("MaskTarget needs per-class logits of shape [B, C, H, W]")
        rows = rows if rows is not None else slice(None)
        masks = self.masks[image_index].to(logits.device, logits.dtype)
        if masks.shape[-2:] != logits.shape[-2:]:
            raise ValueError(
                f"mask size {tuple(masks.shape[-2:])} differs from the logits size {tuple(logits.shape[-2:])}; "
                "resize the masks to the model's output resolution"
            )
        classes = self.classes[image_index].to(logits.device)
        picked = logits[rows][:, classes]  # [K, T, H, W]
        total = (picked * masks).flatten(2).sum(-1)
        if self.reduce == "mean":
            total = total / masks.flatten(1).sum(-1).clamp_min(1e-6)
        return total

    def num_targets(self, image_index: int) -> int:
        return len(self.classes[image_index])

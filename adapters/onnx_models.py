"""``.onnx`` files -> adapters: converted to torch with onnx2torch, wrapped as a generic detector or segmenter.

An ONNX graph carries no decode and no task, so the caller says which: ``task="segment"`` (the output is
per-class logits ``[B, C, h, w]``) or ``task="detect"`` with ``decode`` (see
:class:`~dsxai.adapters.generic.DetectorAdapter`). The graph's input shape gives the network size, and a
fixed batch dimension of 1 makes the adapter run images one at a time (exports with a fixed batch bake it
into their Reshape constants, so larger batches fail inside the converted module).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from dsxai.adapter import Adapter

from .factory import import_callable

__all__ = ["ONNX_INSTALL", "TASKS", "import_onnx", "onnx_input_shape", "load_onnx"]

log = logging.getLogger("dsxai")

#: what to install for .onnx models
ONNX_INSTALL = "pip install 'dsxai[onnx]' (or: pip install onnx onnx2torch)"
#: the tasks an ONNX model can be wrapped as
TASKS = ("detect", "segment")


def import_onnx() -> tuple[Any, Any]:
    """``(onnx, onnx2torch)``, or an ImportError that names what to install."""
    try:
        import onnx
        import onnx2torch
    except ImportError as exc:
        raise ImportError(f"loading an .onnx model needs {exc.name or 'onnx2torch'}, which is not installed: "
                          f"{ONNX_INSTALL}") from None
    return onnx, onnx2torch


def onnx_input_shape(graph_model: Any) -> list[int | None]:
    """The first real input's shape: ints for fixed dimensions, None for symbolic ones."""
    initializers = {t.name for t in graph_model.graph.initializer}
    inputs = [i for i in graph_model.graph.input if i.name not in initializers]
    if not inputs:
        raise ValueError("the ONNX graph has no input")
    dims = inputs[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def _check_task(path: Path, task: str | None, decode: Any) -> None:
    if task is None:
        raise ValueError(f"{path} is an ONNX model (converted with onnx2torch): say what its output is with "
                         "task='segment' (per-class logits [B, C, h, w]) or task='detect' and "
                         "decode='module:function' (your decode function)")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} for {path}; expected 'detect' or 'segment'")
    if task == "segment" and decode is not None:
        raise ValueError("decode applies to task='detect' only; a segmenter's logits need no decode")
    if task == "detect" and decode is None:
        raise ValueError(f"{path} as a detector needs decode='module:function': a function from the raw output "
                         "to per-image boxes, scores and labels (see dsxai.adapters.generic.DetectorAdapter)")


def _convert(path: Path) -> tuple[Any, list[int | None]]:
    """The converted eval-mode torch module and the ONNX input shape; conversion errors in one line."""
    onnx, onnx2torch = import_onnx()
    try:
        graph_model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf errors are long; one line says the file is not ONNX
        raise ValueError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    shape = onnx_input_shape(graph_model)
    try:
        module = onnx2torch.convert(graph_model)
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises many kinds for unsupported operators
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"onnx2torch cannot convert {path} ({first}); export it with another opset or wrap "
                         "your own torch module in dsxai.adapters.generic") from None
    return module.eval(), shape


def load_onnx(path: str | Path, *, task: str | None = None, decode: str | Callable | None = None,
              device: Any = None, **options: Any) -> Adapter:
    """The adapter of an ONNX model: a :class:`SegmenterAdapter` or a :class:`DetectorAdapter`.

    Args:
        path: the ``.onnx`` file (only its graph and weights are read; nothing in it runs as Python).
        task: "segment" (output: per-class logits ``[B, C, h, w]``) or "detect" (needs ``decode``).
        decode: the detector's decode function, or its name as ``"module:function"`` /
            ``"path/to/file.py:function"`` (imported, so run: the caller's choice).
        device: where to put the converted module.
        options: passed to the adapter (``class_names``, ``conf``, and :class:`Preprocessing` options such
            as ``mean``, ``std``, ``bgr``); ``size`` defaults to the ONNX input's height and width.

    A fixed batch dimension of 1 in the input makes the adapter run one image per forward (logged once).
    """
    from .generic import DetectorAdapter, SegmenterAdapter

    path = Path(path)
    _check_task(path, task, decode)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    module, shape = _convert(path)
    if device is not None:
        module.to(device)
    if len(shape) == 4 and shape[2] and shape[3] and "preprocess" not in options:
        options.setdefault("size", (shape[2], shape[3]))
    if len(shape) == 4 and shape[0] == 1:
        log.warning("%s has a fixed batch of 1 (its ONNX input is %s): running images one at a time",
                    path.name, "x".join(str(s) for s in shape))
        options.setdefault("max_batch", 1)
    if task == "segment":
        return SegmenterAdapter(module, **options)
    fn = import_callable(decode, "decode function") if isinstance(decode, str) else decode
    return DetectorAdapter(module, fn, **options)

"""Flags every MODEL command shares for custom models: ``--adapter``, ``--task``, ``--decode``.

``--adapter module:function`` names the user's factory ``factory(model: str) -> Adapter`` (MODEL is passed
to it); ``MODEL.onnx`` is converted by onnx2torch and read as ``--task segment`` logits or ``--task detect``
candidates through ``--decode module:function``. The flags are checked here, in flag words, before any
model is built.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from . import CommandError

if TYPE_CHECKING:
    from ..adapter import Adapter

RUNS_CODE = "this imports and runs that Python code, by your explicit choice"
ADAPTER_HELP = ("your adapter factory as module:function (from sys.path or the current folder) or "
                "path/to/file.py:function; it is called as factory(MODEL) and returns a dsxai Adapter "
                f"(e.g. dsxai.adapters.generic.DetectorAdapter); {RUNS_CODE}")
TASK_HELP = ("what an .onnx MODEL outputs: 'segment' (per-class logits [B, C, h, w]) or 'detect' "
             "(with --decode)")
DECODE_HELP = ("for --task detect: decode(output[, batch]) -> per image boxes [N, 4] xyxy network pixels, "
               f"scores [N], labels [N], as module:function or path/to/file.py:function; {RUNS_CODE}")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--adapter``, ``--task`` and ``--decode`` (see the module docstring)."""
    group = parser.add_argument_group("custom models (README: 'Custom models')")
    group.add_argument("--adapter", default=None, metavar="MODULE:FUNCTION", help=ADAPTER_HELP)
    group.add_argument("--task", default=None, choices=("detect", "segment"), help=TASK_HELP)
    group.add_argument("--decode", default=None, metavar="MODULE:FUNCTION", help=DECODE_HELP)


def is_onnx(model: Any) -> bool:
    """Whether MODEL names an ONNX file (by its suffix)."""
    return isinstance(model, str) and model.lower().endswith(".onnx")


def check_model_flags(args: argparse.Namespace) -> None:
    """The custom-model flags fit together and fit MODEL; otherwise one line says which flag to add or drop."""
    adapter, task, decode = getattr(args, "adapter", None), getattr(args, "task", None), getattr(args, "decode", None)
    model = getattr(args, "model", None)
    if decode is not None and task != "detect":
        raise CommandError("--decode applies to detectors only: add --task detect")
    if adapter is not None:
        if not model:
            raise CommandError("--adapter needs MODEL: it is passed to your factory as factory(MODEL)")
        if task is not None or getattr(args, "arch", None):
            raise CommandError("--adapter builds the whole adapter: drop --task/--decode/--arch")
        return
    if task is not None and not is_onnx(model):
        raise CommandError(f"--task/--decode apply to .onnx models; {model} is not one (for other models use "
                           "--adapter module:function)")
    if is_onnx(model) and task is None:
        raise CommandError(f"{model} is an ONNX model: add --task segment (output: per-class logits [B, C, h, w]) "
                           "or --task detect --decode module:function")
    if task == "detect" and decode is None:
        raise CommandError("--task detect needs --decode module:function (your decode of the raw output into "
                           "boxes, scores and labels)")


def custom_adapter(args: argparse.Namespace) -> "Adapter | None":
    """The adapter of ``--adapter`` or of an ``.onnx`` MODEL (on ``--device``), or None for any other MODEL."""
    from ..adapters import resolve
    from ..adapters.factory import adapter_from_factory

    check_model_flags(args)
    device = getattr(args, "device", None)
    if getattr(args, "adapter", None) is not None:
        return resolve(adapter_from_factory(args.adapter, args.model), device=device)
    if is_onnx(getattr(args, "model", None)):
        return resolve(args.model, device=device, task=args.task, decode=args.decode)
    return None


def layer_note(adapter: "Adapter", nearby: int = 4) -> str:
    """One line: the layer explained by default, and the feature-map layers nearest it that
    ``dsxai layers MODEL`` lists, with the flag to pick one (a guessed layer can sit on the wrong branch)."""
    import numpy as np

    from ..layers import list_layers

    default = [str(x) for x in adapter.default_layers]
    example = adapter.preprocess(np.full((320, 320, 3), 114, np.uint8)).tensor
    maps = [(name, shape) for name, _, shape in list_layers(adapter.model, example) if shape.count(",") >= 3]
    names = [name for name, _ in maps]
    at = max((names.index(d) for d in default if d in names), default=len(names))
    near = sorted(range(len(maps)), key=lambda i: (abs(i - at), -i))
    others = [f"{maps[i][0]} {maps[i][1]}" for i in near if maps[i][0] not in default][:nearby]
    shapes = dict(maps)
    shown = ", ".join(f"{d} {shapes.get(d, '')}".strip() for d in default)
    alternatives = "; ".join(others) or "none"
    return (f"layer: {shown} (the model's default); nearby alternatives: {alternatives}; pick one with "
            f"--layers NAME (`dsxai layers MODEL` lists all {len(maps)})")

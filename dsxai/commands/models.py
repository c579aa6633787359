"""Flags every MODEL command shares for custom models: ``--adapter``, ``--task``, ``--decode`` and the
ONNX input's ``--mean``, ``--std``, ``--bgr`` and ``--class-names``.

``--adapter module:function`` names the user's factory ``factory(model: str) -> Adapter`` (MODEL is passed
to it); ``MODEL.onnx`` is converted by onnx2torch and read as ``--task segment`` logits or ``--task detect``
candidates through ``--decode module:function``, its input made as the export expects (pixels / 255, then
``--mean`` / ``--std``, channels in ``--bgr`` order). The flags are checked here, in flag words, before any
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


MEAN_HELP = ("for an .onnx MODEL: the per-channel mean its input expects, subtracted after dividing the pixels "
             "by 255, in the network's channel order (ImageNet: 0.485,0.456,0.406; default 0,0,0)")
STD_HELP = ("for an .onnx MODEL: the per-channel std its input is divided by (ImageNet: 0.229,0.224,0.225; "
            "default 1,1,1)")
BGR_HELP = "for an .onnx MODEL: feed the channels in BGR order (OpenCV-trained exports); default RGB"
NAMES_HELP = ("for an .onnx MODEL: its class names in id order, comma-separated or a text file with one name per "
              "line (default: the ids)")
#: the ONNX input flags and the option each sets
ONNX_INPUT_FLAGS = {"--mean": "mean", "--std": "std", "--bgr": "bgr", "--class-names": "class_names"}


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--adapter``, ``--task``, ``--decode`` and the ONNX input flags (see the module docstring)."""
    group = parser.add_argument_group("custom models (README: 'Custom models')")
    group.add_argument("--adapter", default=None, metavar="MODULE:FUNCTION", help=ADAPTER_HELP)
    group.add_argument("--task", default=None, choices=("detect", "segment"), help=TASK_HELP)
    group.add_argument("--decode", default=None, metavar="MODULE:FUNCTION", help=DECODE_HELP)
    group.add_argument("--mean", default=None, metavar="M1,M2,M3", help=MEAN_HELP)
    group.add_argument("--std", default=None, metavar="S1,S2,S3", help=STD_HELP)
    group.add_argument("--bgr", action="store_true", default=None, help=BGR_HELP)
    group.add_argument("--class-names", default=None, metavar="NAMES|FILE", help=NAMES_HELP)


def onnx_input_options(args: argparse.Namespace) -> dict[str, Any]:
    """The adapter options of the ONNX input flags given (``mean``, ``std``, ``bgr``, ``class_names``),
    checked in flag words; CommandError when one is given for a MODEL that is not an ``.onnx`` file."""
    given = {flag: getattr(args, key, None) for flag, key in ONNX_INPUT_FLAGS.items()}
    given = {flag: value for flag, value in given.items() if value is not None}
    if given and (getattr(args, "adapter", None) is not None or not is_onnx(getattr(args, "model", None))):
        raise CommandError(f"{', '.join(given)} apply to .onnx models, whose input dsxai cannot read from the file; "
                           "a checkpoint carries its own preprocessing, and an --adapter factory sets its own")
    options: dict[str, Any] = {}
    for flag in ("--mean", "--std"):
        if flag in given:
            options[ONNX_INPUT_FLAGS[flag]] = _three_numbers(flag, given[flag], nonzero=flag == "--std")
    if "--bgr" in given:
        options["bgr"] = True
    if "--class-names" in given:
        options["class_names"] = _class_names(given["--class-names"])
    return options


def _three_numbers(flag: str, text: str, nonzero: bool) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or any(v != v for v in values):
        raise CommandError(f"{flag} needs three numbers, one per channel, as {flag} 0.485,0.456,0.406; got {text!r}")
    if nonzero and any(v == 0 for v in values):
        raise CommandError(f"{flag} values must not be 0 (the input is divided by them); got {text!r}")
    return values  # type: ignore[return-value]


def _class_names(text: str) -> list[str]:
    """Names from a text file (one per line) when ``text`` names one, else from a comma-separated list."""
    from pathlib import Path

    path = Path(text)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"--class-names: cannot read {path} as UTF-8 text ({exc})") from None
        names = [line.strip() for line in lines if line.strip()]
    else:
        names = [name.strip() for name in text.split(",")]
    if not names or any(not name for name in names):
        raise CommandError(f"--class-names needs names in id order, comma-separated without empty ones, or a file "
                           f"with one name per line; got {text!r}")
    return names


def is_onnx(model: Any) -> bool:
    """Whether MODEL names an ONNX file (by its suffix)."""
    return isinstance(model, str) and model.lower().endswith(".onnx")


def check_model_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The custom-model flags fit together and fit MODEL (otherwise one line says which flag to add or drop);
    returns the ONNX input options (:func:`onnx_input_options`)."""
    adapter, task, decode = getattr(args, "adapter", None), getattr(args, "task", None), getattr(args, "decode", None)
    model = getattr(args, "model", None)
    options = onnx_input_options(args)
    if decode is not None and task != "detect":
        raise CommandError("--decode applies to detectors only: add --task detect")
    if adapter is not None:
        if not model:
            raise CommandError("--adapter needs MODEL: it is passed to your factory as factory(MODEL)")
        if task is not None or getattr(args, "arch", None):
            raise CommandError("--adapter builds the whole adapter: drop --task/--decode/--arch")
        return options
    if task is not None and not is_onnx(model):
        raise CommandError(f"--task/--decode apply to .onnx models; {model} is not one (for other models use "
                           "--adapter module:function)")
    if is_onnx(model) and task is None:
        raise CommandError(f"{model} is an ONNX model: add --task segment (output: per-class logits [B, C, h, w]) "
                           "or --task detect --decode module:function")
    if task == "detect" and decode is None:
        raise CommandError("--task detect needs --decode module:function (your decode of the raw output into "
                           "boxes, scores and labels)")
    return options


def custom_adapter(args: argparse.Namespace) -> "Adapter | None":
    """The adapter of ``--adapter`` or of an ``.onnx`` MODEL (on ``--device``), or None for any other MODEL."""
    from ..adapters import resolve
    from ..adapters.factory import adapter_from_factory

    options = check_model_flags(args)
    device = getattr(args, "device", None)
    if getattr(args, "adapter", None) is not None:
        return resolve(adapter_from_factory(args.adapter, args.model), device=device)
    if is_onnx(getattr(args, "model", None)):
        return resolve(args.model, device=device, task=args.task, decode=args.decode, **options)
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

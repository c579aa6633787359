"""Subcommands of the ``dsxai`` command line, one module each (see :mod:`dsxai.cli`)."""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..adapter import Adapter



class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


#: the library's words for an option -> the flag that sets it; the library never speaks in flags
FLAG_WORDS = {"trust=True": "--trust-checkpoint", "arch=": "--arch", "max_pixels=": "--max-pixels",
              "class_map=": "--class-map FILE"}


def in_flag_words(message: str) -> str:
    """A library error message with each option named as the command-line flag that sets it."""
    for words, flag in FLAG_WORDS.items():
        message = message.replace(words, flag)
    return message


TRUST_HELP = ("unpickle the checkpoint with full pickle, which runs any code a crafted file holds; only for files "
              "you trust (default: only allow-listed model classes are rebuilt)")


def add_trust_flag(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: the explicit opt-in to full pickle loading, shared by every MODEL command."""
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def resolve_model(args: argparse.Namespace, options: dict) -> "Adapter":
    """``args.model`` (a registered name or a checkpoint path) as an adapter, through ``dsxai.adapters.resolve``
    with ``--arch``, ``--device`` and ``--trust-checkpoint``; ``options`` go to the adapter.

    ``--imgsz`` given to a model with its own input size fails in the flag's words.
    """
    from ..adapters import UnknownOptionError, resolve
    from .models import custom_adapter

    custom = custom_adapter(args)  # --adapter or MODEL.onnx: built as the user said, without YOLO options
    if custom is not None and options:
        raise CommandError(f"--imgsz applies to YOLO models only; {args.model} takes its own input size")
    if custom is not None:
        return custom
    try:
        return resolve(args.model, arch=args.arch, device=getattr(args, "device", None),
                       trust=trust_checkpoint(args), **options)
    except UnknownOptionError as exc:
        if exc.option != "imgsz":
            raise
        raise ValueError(f"--imgsz applies to YOLO models only; {args.model} takes its own input size") from None


def trust_checkpoint(args: argparse.Namespace) -> bool:
    """Whether ``--trust-checkpoint`` was given; if so, say once on stderr what that means.

    The library's own warning then says the same, so it is silenced to keep one line.
    """
    trust = bool(getattr(args, "trust_checkpoint", False))
    if trust:
        print(f"dsxai {args.command}: warning: --trust-checkpoint: loading {args.model} with full pickle; "
              "a crafted checkpoint can run code", file=sys.stderr)
        warnings.filterwarnings("ignore", message=r"loading .* with full pickle \(trust=True\)")
    return trust

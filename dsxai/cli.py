"""The ``dsxai`` command line.

Each subcommand lives in its own module under :mod:`dsxai.commands` and offers
``register(subparsers)``, which adds its parser and sets ``run=callable(args)``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ._version import __version__
from .commands import CommandError, in_flag_words

#: subcommand modules, in the order ``dsxai --help`` lists them
COMMANDS = ("explain", "bench", "audit", "layers", "demo")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsxai", description="Explain object detectors and segmenters.")
    parser.add_argument("--version", action="version", version=f"dsxai {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dsxai.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dsxai.commands.{name}":
                continue  # not written yet
            raise
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 0
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("dsxai: interrupted", file=sys.stderr)
        return 130
    except (CommandError, FileNotFoundError, ValueError, TypeError, ImportError, RuntimeError, OSError) as exc:
        print(f"dsxai {args.command}: error: {in_flag_words(str(exc))}", file=sys.stderr)
        return 2

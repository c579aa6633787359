"""``dsxai demo``: explain built-in shapes scenes with the shipped models."""
from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="explain built-in shapes scenes with the shipped models")
    parser.add_argument("--out", default="out/demo", help="folder for the pictures (default: out/demo)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.out)
    return 0

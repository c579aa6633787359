"""The ``dsxai`` command line."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ._version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsxai", description="Explain object detectors and segmenters.")
    parser.add_argument("--version", action="version", version=f"dsxai {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser("demo", help="explain built-in shapes scenes with the shipped models")
    demo.add_argument("--out", default="out/demo", help="folder for the pictures (default: out/demo)")

    layers = commands.add_parser("layers", help="list a model's candidate target layers with output shapes")
    layers.add_argument("model", help="checkpoint path (Ultralytics .pt, torchvision/smp state dict with --arch)")
    layers.add_argument("--arch", default=None, help="architecture for state-dict checkpoints")
    layers.add_argument("--imgsz", type=int, default=320, help="example input side used to trace shapes")
    layers.add_argument("--all", action="store_true", help="list every module, not only 4-D outputs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo
            run_demo(args.out)
        elif args.command == "layers":
            _layers(args)
        else:
            parser.print_help()
        return 0
    except (FileNotFoundError, ValueError, TypeError, ImportError, RuntimeError) as exc:
        print(f"dsxai: error: {exc}", file=sys.stderr)
        return 2


def _layers(args: argparse.Namespace) -> None:
    import torch

    from .adapters import load
    from .layers import list_layers

    adapter = load(args.model, arch=args.arch)
    example = torch.zeros(1, 3, args.imgsz, args.imgsz, device=adapter.device)
    batch = adapter.preprocess(example[0].permute(1, 2, 0).cpu().numpy())
    defaults = set(adapter.default_layers)
    print(f"{'layer':40s} {'type':24s} output shape")
    for name, kind, shape in list_layers(adapter.model, batch.tensor):
        if args.all or shape.count(",") >= 3:
            mark = "  (default)" if name in defaults else ""
            print(f"{name:40s} {kind:24s} {shape}{mark}")

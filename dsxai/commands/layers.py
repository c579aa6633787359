"""``dsxai layers MODEL``: candidate target layers with their output shapes."""
from __future__ import annotations

import argparse

from . import add_trust_flag, trust_checkpoint


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("layers", help="list a model's candidate target layers with output shapes")
    parser.add_argument("model", help="checkpoint path (Ultralytics .pt or .yaml; torchvision/smp with --arch)")
    parser.add_argument("--arch", default=None, help="architecture of a state-dict checkpoint, e.g. "
                        "fasterrcnn_resnet50_fpn or smp:Unet:resnet34")
    parser.add_argument("--imgsz", type=int, default=320, help="example input side used to trace shapes")
    parser.add_argument("--all", action="store_true", help="list every module, not only 4-D feature maps")
    add_trust_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..adapters import load
    from ..layers import list_layers

    # YOLO checkpoints letterbox to their own imgsz; give them the example's size
    yolo_like = args.arch is None and args.model.lower().endswith((".pt", ".yaml", ".yml"))
    adapter = load(args.model, arch=args.arch, trust=trust_checkpoint(args),
                   **({"imgsz": args.imgsz} if yolo_like else {}))
    batch = adapter.preprocess(np.full((args.imgsz, args.imgsz, 3), 114, np.uint8))
    defaults = set(adapter.default_layers)
    print(f"{'layer':40s} {'type':24s} output shape")
    for name, kind, shape in list_layers(adapter.model, batch.tensor):
        if args.all or shape.count(",") >= 3:
            mark = "  (default)" if name in defaults else ""
            print(f"{name:40s} {kind:24s} {shape}{mark}")
    return 0

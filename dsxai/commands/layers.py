"""``dsxai layers MODEL``: candidate target layers with their output shapes; ``--compare IMAGE --out DIR``
explains the image's detections at each candidate and recommends one (:func:`dsxai.layercompare.compare_layers`)."""
from __future__ import annotations

import argparse

from . import add_trust_flag, trust_checkpoint
from .models import add_model_flags, custom_adapter


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("layers", help="list a model's candidate target layers with output shapes")
    parser.add_argument("model", help="checkpoint path (Ultralytics .pt or .yaml; torchvision/smp with --arch) or "
                        "a registered name: shapes-yolo, shapes-yolo-seg, shapes-fasterrcnn, shapes-maskrcnn, shapes-unet")
    parser.add_argument("--arch", default=None, help="architecture of a state-dict checkpoint, e.g. "
                        "fasterrcnn_resnet50_fpn or smp:Unet:resnet34")
    parser.add_argument("--imgsz", type=int, default=320, help="example input side used to trace shapes")
    parser.add_argument("--all", action="store_true", help="list every module, not only 4-D feature maps")
    parser.add_argument("--compare", default=None, metavar="IMAGE", help="explain IMAGE's detections at each "
                        "candidate layer (trained and random weights), write layers.png/layers.json to --out and "
                        "recommend a layer")
    parser.add_argument("--out", default="out/layers", help="output folder of --compare (default: out/layers)")
    parser.add_argument("--layers", default=None, help="with --compare: comma-separated candidates (a+b fuses "
                        "two layers in one column; default: the adapter's layers and the backbone/neck stages)")
    parser.add_argument("--method", default="layercam", help="CAM method of --compare (default: layercam)")
    parser.add_argument("--conf", type=float, default=None, help="with --compare: score threshold")
    parser.add_argument("--max-layers", type=int, default=8, help="with --compare: at most this many columns")
    add_trust_flag(parser)
    add_model_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..layers import list_layers

    adapter = _adapter(args)
    if args.compare is not None:
        return _compare(args, adapter)
    batch = adapter.preprocess(np.full((args.imgsz, args.imgsz, 3), 114, np.uint8))
    defaults = set(adapter.default_layers)
    print(f"{'layer':40s} {'type':24s} output shape")
    for name, kind, shape in list_layers(adapter.model, batch.tensor):
        if args.all or shape.count(",") >= 3:
            mark = "  (default)" if name in defaults else ""
            print(f"{name:40s} {kind:24s} {shape}{mark}")
    return 0


def _adapter(args: argparse.Namespace):
    """The adapter of ``args.model``; YOLO models letterbox to their own imgsz, so they get the example's.

    Whether a model takes ``imgsz`` shows only once it is built (a name may be any family): a model that
    refuses it is built again without it. State-dict checkpoints (``--arch``) never take it.
    """
    from ..adapters import UnknownOptionError, resolve

    custom = custom_adapter(args)
    if custom is not None:
        return custom
    trust = trust_checkpoint(args)
    if args.arch is None:
        try:
            return resolve(args.model, trust=trust, imgsz=args.imgsz)
        except UnknownOptionError:
            pass
    return resolve(args.model, arch=args.arch, trust=trust)


def _compare(args: argparse.Namespace, adapter) -> int:
    """``--compare IMAGE``: the table, the recommendation with its figures, and the files written."""
    from ..layercompare import compare_layers
    from ..methods import get_method
    from ..validation import check_conf

    get_method(args.method)  # an unknown name fails before any work
    if args.max_layers < 1:
        raise ValueError(f"--max-layers must be at least 1 (the columns of the comparison), got {args.max_layers}")
    if args.conf is not None:
        check_conf(args.conf)
    layers = [x for x in args.layers.split(",") if x.strip()] if args.layers else None
    result = compare_layers(adapter, args.compare, layers=layers, method=args.method, out=args.out,
                            conf=args.conf, max_layers=args.max_layers)
    print(result.table())
    if result.skipped:
        print(f"{len(result.skipped)} more stage(s) not compared (--max-layers {args.max_layers}): "
              f"{', '.join(result.skipped)}; pass --layers to choose")
    print(f"recommended layer: {result.recommended} ({result.reason})")
    print(f"wrote {', '.join(str(p) for p in result.files)}")
    return 0

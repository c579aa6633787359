"""The options the shapes-U-Net benchmarks share: which U-Net (``--weights``), how many held-out scenes, threads,
and where the JSON goes (``results/<name>.json``, or ``<name>-<weights' folder>.json`` for ``--weights``)."""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def add_options(parser: argparse.ArgumentParser, scenes: int) -> None:
    parser.add_argument("--scenes", type=int, default=scenes, help="held-out scenes (TEST_SEED)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", type=Path, default=None,
                        help="a shapes_unet.pt written by `python -m dsxai.zoo.training.unet` (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=None)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, name: str) -> argparse.Namespace:
    """Parse and check the options; ``args.out`` gets its default."""
    args = parser.parse_args(argv)
    if args.out is None:
        suffix = f"-{args.weights.resolve().parent.name}" if args.weights else ""
        args.out = ROOT / "results" / f"{name}{suffix}.json"
    if args.scenes < 1:
        parser.error(f"--scenes must be >= 1, got {args.scenes}")
    if args.weights is not None and not args.weights.is_file():
        parser.error(f"--weights {args.weights}: no such file; write one with "
                     f"`python -m dsxai.zoo.training.unet --out {args.weights.parent}`")
    return args


def load_adapter(args: argparse.Namespace):
    """The shipped U-Net's adapter, or one for ``--weights``; a missing shipped checkpoint exits with the way
    to train it."""
    from dsxai import zoo

    try:
        if args.weights is None:
            return zoo.load_adapter("shapes-unet")
        from dsxai.adapters.smp_segmentation import SMPAdapter

        return SMPAdapter(zoo.load_shapes_unet(path=args.weights), mean=zoo.UNET_MEAN, std=zoo.UNET_STD)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc))

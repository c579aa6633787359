"""``dsxai audit MODEL --images DIR [--masks DIR | --coco FILE] --out DIR``: audit every predicted mask.

Writes ``audit.jsonl`` (journal, one line per image; ``--resume`` continues it), ``audit.json``,
``audit.csv`` (one row per mask), ``report.html`` and ``thumbs/*.png`` into ``--out``. See
the README ("Audit") for the figures, flags and defaults.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from . import CommandError, add_trust_flag, trust_checkpoint
from .models import add_model_flags, custom_adapter

if TYPE_CHECKING:
    from ..auditing import AuditResult


def register(commands: argparse._SubParsersAction) -> None:
    from ..auditing import MAX_OUTSIDE, MIN_CONFIDENCE, MIN_IOU, RING_FRAC, RING_PX

    parser = commands.add_parser(
        "audit", help="audit a segmenter's masks: evidence inside / around / outside each mask, flags, report",
        description="Explain every predicted mask of the images and flag masks whose evidence lies mostly "
                    "outside them (possible shortcut or context bias), with low confidence, or that disagree "
                    "with the ground truth. Writes audit.json, audit.csv, report.html and thumbnails to --out.")
    parser.add_argument("model", help="checkpoint path (smp state dict with --arch, Ultralytics -seg .pt, ...) or a "
                        "shipped model: shapes-unet, shapes-yolo-seg")
    parser.add_argument("--images", required=True, help="folder of images (or one image file, or a glob)")
    truth = parser.add_mutually_exclusive_group()
    truth.add_argument("--masks", default=None, help="folder of ground-truth label PNGs named <image stem>.png, "
                       "pixel value = class id")
    truth.add_argument("--coco", default=None, help="ground truth as COCO annotations (JSON), matched by file_name")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--method", default=None, help="CAM method (default: layercam)")
    parser.add_argument("--layers", default=None, help="comma-separated layer names (default: the deepest encoder "
                        "stage of smp models, else the adapter's default)")
    parser.add_argument("--classes", default=None, help="comma-separated class names or ids to audit")
    parser.add_argument("--min-area", type=float, default=100, help="skip masks smaller than this many pixels "
                        "(default: 100)")
    parser.add_argument("--conf", type=float, default=None, help="score threshold of instance segmenters")
    parser.add_argument("--ring-px", type=float, default=RING_PX, help="minimum ring width in pixels "
                        f"(default: {RING_PX:g}); the ring is also at least one cell of the explained layer wide")
    parser.add_argument("--ring-frac", type=float, default=RING_FRAC, help="ring width as a fraction of "
                        f"sqrt(mask area) when wider (default: {RING_FRAC:g})")
    parser.add_argument("--max-outside", type=float, default=MAX_OUTSIDE, help="flag when this share of the "
                        f"evidence or more lies beyond the ring (default: {MAX_OUTSIDE:g})")
    parser.add_argument("--min-confidence", type=float, default=MIN_CONFIDENCE, help="flag masks with a lower "
                        f"mean confidence (default: {MIN_CONFIDENCE:g})")
    parser.add_argument("--min-iou", type=float, default=MIN_IOU, help="flag masks with a lower IoU with the "
                        f"ground truth (default: {MIN_IOU:g})")
    parser.add_argument("--thumbnails", default="flagged", choices=("flagged", "all", "none"),
                        help="which masks get a thumbnail (default: flagged)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    parser.add_argument("--resume", action="store_true", help="continue the journal in --out, skipping the images "
                        "it already holds")
    parser.add_argument("--arch", default=None, help="architecture of a state-dict checkpoint, e.g. "
                        "smp:Unet:resnet34")
    add_trust_flag(parser)
    add_model_flags(parser)
    parser.add_argument("--class-map", default=None, help="JSON file {model_class_name_or_id: coco_category_name} "
                        "for --coco categories not named as the model's classes")
    parser.add_argument("--max-pixels", type=int, default=None, help="refuse images above this many pixels "
                        "(default: 40000000, dsxai.imaging.MAX_PIXELS)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    layers = [x.strip() for x in args.layers.split(",") if x.strip()] if args.layers else None
    import sys
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = show
        result = _audit(args, classes, layers)
    return _summary(result)


def _class_map(path: str | None) -> dict | None:
    """The --class-map JSON object, or None."""
    import json
    from pathlib import Path

    if path is None:
        return None
    try:
        mapping = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"--class-map {path} is not valid JSON ({exc})") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"--class-map {path} must be a JSON object {{model_class: coco_category_name}}")
    return mapping


def _audit(args: argparse.Namespace, classes: list[str] | None, layers: list[str] | None) -> "AuditResult":
    """The audit of ``args``; a resume refused for other settings is said in the flag's words."""
    from ..auditing import audit
    from ..runs import SettingsChanged

    try:
        return audit(custom_adapter(args) or args.model, args.images, masks=args.masks, coco=args.coco, out=args.out, method=args.method,
                     layers=layers, classes=classes, min_area=args.min_area, device=args.device, resume=args.resume,
                     arch=args.arch, ring_px=args.ring_px, ring_frac=args.ring_frac, max_outside=args.max_outside,
                     min_confidence=args.min_confidence, min_iou=args.min_iou, conf=args.conf,
                     thumbnails=args.thumbnails, class_map=_class_map(args.class_map), max_pixels=args.max_pixels,
                     trust=trust_checkpoint(args))
    except SettingsChanged as exc:
        raise CommandError(f"--resume: {exc} (drop --resume to start over)") from None


def _summary(result) -> int:

    s = result.summary
    if s["images"] and s["images_failed"] == s["images"]:
        raise CommandError(f"every image failed (see {result.out / 'audit.json'}); first error: "
                           f"{result.images[0]['error']}")
    flags = ", ".join(f"{k} {v}" for k, v in s["by_flag"].items()) or "none"
    print(f"audited {s['masks']} mask(s) in {s['images'] - s['images_failed']} image(s)"
          f" ({s['images_failed']} failed, {s['images_without_gt']} without ground truth); "
          f"{s['flagged']} flagged ({flags})")
    print(f"report: {result.report}")
    return 0

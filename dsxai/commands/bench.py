"""``dsxai bench MODEL --coco ANN.json --images DIR``: the localization benchmark (see :mod:`dsxai.bench`).

The library words its errors for Python callers; the checks here word the same problems as flags.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import CommandError, add_trust_flag, trust_checkpoint
from .models import add_model_flags, check_model_flags, custom_adapter


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench", help="localization benchmark of CAM methods on a COCO-annotated image set",
        description="Explain every detection matched to a COCO object with each method and score the maps "
                    "(pointing game, energy, IoU, box localization, deletion/insertion) against baselines.")
    parser.add_argument("model", nargs="?", default=None,
                        help="checkpoint path (Ultralytics/YOLOv5 .pt; torchvision/smp with --arch) or "
                             "'shapes-yolo' (the shipped shapes-world YOLOv8; default with --synthetic)")
    parser.add_argument("--coco", default=None, help="COCO instances json (annotations)")
    parser.add_argument("--images", default=None, help="folder the json's file_name entries are relative to")
    parser.add_argument("--methods", default="eigencam,gradcam,hirescam,layercam",
                        help="comma-separated CAM methods, drise, ig, or a method+window (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output folder (report.html, results.json, pairs.csv, ...)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images holding an object")
    parser.add_argument("--categories", default=None, help="comma-separated COCO category names to keep")
    parser.add_argument("--class-map", default=None,
                        help="JSON file {model_class_name_or_id: coco_category_name} (default: match by name)")
    parser.add_argument("--seed", type=int, default=0, help="seed of torch and the bootstrap (default 0)")
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda:0")
    parser.add_argument("--resume", action="store_true", help="skip images finished in OUT/journal.jsonl")
    parser.add_argument("--imgsz", type=int, default=None, help="network input size (YOLO models)")
    parser.add_argument("--arch", default=None, help="architecture of a state-dict checkpoint")
    parser.add_argument("--conf", type=float, default=0.25, help="detection confidence threshold (default 0.25)")
    parser.add_argument("--faithfulness", action=argparse.BooleanOptionalAction, default=False,
                        help="deletion/insertion AUCs (off by default; costly: 2 + 2 M T (K-1) forwards per image "
                             "with T matched pairs and M map kinds; the count and an estimate are printed first)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="perturbed images per forward of --faithfulness (default: measured on the first "
                             "image, the fastest per image of 1 and 8, and 32 on a GPU)")
    parser.add_argument("--steps", type=int, default=20, help="K steps of the deletion/insertion curves")
    parser.add_argument("--span", default="image", choices=("image", "box"),
                        help="what the curves' K steps divide: the image (default, the D-RISE protocol) or each "
                             "detection's box (the order inside and around a small object counts)")
    parser.add_argument("--gallery", type=int, default=2, help="best and worst pairs per method to draw (0: none)")
    parser.add_argument("--synthetic", action="store_true",
                        help="generate a shapes-world COCO set (TEST_SEED) in OUT/synthetic and benchmark it "
                             "(model defaults to shapes-yolo)")
    parser.add_argument("--scenes", type=int, default=24, help="scenes of --synthetic (default 24)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--workers", type=int, default=1,
                        help="run images on N Ray workers on this machine (one per GPU on CUDA); needs "
                             "pip install 'dsxai[scale]' (default 1: no Ray)")
    parser.add_argument("--ray-address", default=None,
                        help="join this Ray cluster (e.g. HEAD_IP:6379 from `ray start --head`); with it "
                             "--workers defaults to one per GPU (CUDA) or CPU of the cluster")
    add_trust_flag(parser)
    add_model_flags(parser)
    parser.add_argument("--max-pixels", type=int, default=None, help="refuse images above this many pixels "
                        "(default: 40000000, dsxai.imaging.MAX_PIXELS)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import SYNTHETIC_DIR, check_bench_options, run_benchmark, write_synthetic_coco

    # before --synthetic writes its scenes: a bad option leaves no output behind
    check_bench_options(limit=args.limit, steps=args.steps, conf=args.conf, gallery=args.gallery, imgsz=args.imgsz,
                        max_pixels=args.max_pixels, batch_size=args.batch_size, workers=args.workers)
    _check_ray(args)
    check_model_flags(args)
    _check_workers_model(args)
    out = Path(args.out)
    model = args.model
    if args.synthetic:
        if args.coco or args.images:
            raise CommandError("--synthetic writes its own COCO set; drop --coco/--images")
        annotations, images = write_synthetic_coco(out / SYNTHETIC_DIR, scenes=args.scenes)
        model = model or "shapes-yolo"
    else:
        if not args.coco or not args.images:
            raise CommandError("pass --coco ANNOTATIONS.json and --images DIR (or --synthetic)")
        annotations, images = Path(args.coco), Path(args.images)
        if not annotations.is_file():
            raise CommandError(f"COCO annotations {annotations} not found; pass --coco PATH/instances.json")
        if not images.is_dir():
            raise CommandError(f"image folder {images} not found; pass --images DIR (file_name entries of the "
                               "json are relative to it)")
    if model is None:
        raise CommandError("pass MODEL (a checkpoint path or shapes-yolo)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise CommandError("no methods given; pass e.g. --methods gradcam,layercam")
    categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    results = run_benchmark(
        custom_adapter(args) or model, annotations, images, out, methods=methods, limit=args.limit,
        categories=categories, class_map=args.class_map, seed=args.seed, device=args.device, resume=args.resume,
        imgsz=args.imgsz, arch=args.arch, faithfulness=args.faithfulness, steps=args.steps, span=args.span,
        batch_size=args.batch_size, conf=args.conf,
        gallery=args.gallery, progress=not args.no_progress, max_pixels=args.max_pixels, trust=trust_checkpoint(args),
        workers=args.workers, ray_address=args.ray_address,
    )
    c = results["counts"]
    print(f"{c['images_ok']} images ({c['images_failed']} failed), {c['matched']} pairs, "
          f"{c['unmatched_detections']} unmatched detections, {c['missed_gt']} missed objects")
    if c["images_ok"] and c["detections"] == 0:
        print(f"warning: no detections in {c['images_ok']} image(s) at --conf {args.conf}; lower --conf or check "
              "the model", file=sys.stderr)
    elif c["matched"] == 0:
        print(f"warning: no detection matched a ground-truth object ({c['detections']} detections); check "
              "--class-map and --images", file=sys.stderr)
    if "faithfulness_cost" in results:
        f = results["faithfulness_cost"]
        print(f"faithfulness: {f['forwards_run']:,} forwards run (planned {f['planned_forwards']:,}) in "
              f"{f['seconds']:.1f} s")
    for kind in ("methods", "baselines"):
        for name, entry in results[kind].items():
            pg = entry["pointing_game_box"]["mean"]
            en = entry["energy_box"]["mean"]
            print(f"  {name:14s} pointing game {pg if pg is None else round(pg, 3)}  "
                  f"energy {en if en is None else round(en, 3)}")
    print(f"wrote {out / 'summary.md'}")
    print(f"report: {out / 'report.html'}")
    return 0


def _check_workers_model(args: argparse.Namespace) -> None:
    """Ray workers load the model themselves from a name or a checkpoint path; a model built by --adapter or
    converted from .onnx in this process cannot be sent to them: one line says so, before any output."""
    from ..bench.distributed import uses_ray
    from .models import is_onnx

    if not uses_ray(args.workers, args.ray_address):
        return
    custom = "--adapter" if args.adapter is not None else (f"the ONNX model {args.model}" if is_onnx(args.model)
                                                           else None)
    if custom is not None:
        flag = "--ray-address" if args.ray_address else f"--workers {args.workers}"
        raise CommandError(f"{flag} cannot run {custom}: each Ray worker loads its own copy from a registered name "
                           "or a checkpoint path; run it with --workers 1")


def _check_ray(args: argparse.Namespace) -> None:
    """--workers N / --ray-address without Ray installed: one line naming the flag and the extra."""
    from ..bench.distributed import SCALE_EXTRA, require_ray, uses_ray

    if not uses_ray(args.workers, args.ray_address):
        return
    flag = "--ray-address" if args.ray_address else f"--workers {args.workers}"
    try:
        require_ray(flag)
    except ImportError:
        raise CommandError(f"{flag} needs Ray, which is not installed: {SCALE_EXTRA}") from None

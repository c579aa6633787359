"""``dsxai explain MODEL IMAGE...``: one heatmap per detection, as pictures and JSON.

For each image ``<stem>.png`` (all detections fused), ``<stem>_grid.png`` (each detection's
whole-image map with its box: the evidence the fused view hides), ``<stem>_det<k>.png`` (one per
detection), ``<stem>.json`` (detections and per-map figures) and ``<stem>_maps.npz``
(the maps, float16), plus ``explanation.json`` listing exactly this run's files
(``dsxai.Explanation.load(OUT)`` reads the folder back; a rerun into OUT removes the files
of the earlier run it does not rewrite). Stems are unique over the whole input set
(``d1/a.png``, ``d2/a.png`` -> ``d1__a``, ``d2__a``). The model, method, layers, every
image and the output folder (never the folder of an input, nor one holding an input) are
checked before the first file is written, and each file is written atomically, so a bad
input leaves no partial output.
"""
from __future__ import annotations

import argparse
import glob
from pathlib import Path
from typing import Any

from . import CommandError, add_trust_flag, resolve_model
from .models import add_model_flags, layer_note


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "explain", help="explain each detection (or mask) of images with per-box heatmaps",
        description="Explain every detection of each image: writes <stem>.png (fused), <stem>_grid.png, "
                    "<stem>_det<k>.png, "
                    "<stem>.json and <stem>_maps.npz into --out.")
    parser.add_argument("model", help="checkpoint path (Ultralytics .pt/.yaml; torchvision/smp state dict with "
                        "--arch) or a registered name: shapes-yolo, shapes-yolo-seg, shapes-fasterrcnn, shapes-maskrcnn, shapes-unet")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    parser.add_argument("--method", default=None, help="CAM method (default: layercam); e.g. hirescam, gradcam, "
                        "eigencam, gradcam++, drise (black-box D-RISE: random masks, no layers, no gradients) or ig "
                        "(integrated gradients from a blurred copy: input pixels, no layers); "
                        "append +window (e.g. layercam-level+window) to weight each map by a soft window on its box")
    parser.add_argument("--masks", type=int, default=None, help="D-RISE: random masks per image (default: 1000)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="D-RISE: masked images per forward (default: 32)")
    parser.add_argument("--seed", type=int, default=None, help="D-RISE: seed of the masks (default: 0; same seed, "
                        "same maps)")
    parser.add_argument("--ig-steps", type=int, default=None,
                        help="ig: points on the path from the blurred copy to the image (default: 16)")
    parser.add_argument("--layers", default=None, help="comma-separated layer names (default: the adapter's; "
                        "`dsxai layers MODEL` lists them)")
    parser.add_argument("--targets", default=None, choices=("boxes", "masks", "classes"),
                        help="one map per box, per mask, or per class (default: masks for semantic segmenters, else boxes)")
    parser.add_argument("--conf", type=float, default=None, help="score threshold (default: the model's)")
    parser.add_argument("--classes", default=None, help="comma-separated class names or ids to keep")
    parser.add_argument("--max-dets", type=int, default=None, help="at most this many detections per image")
    parser.add_argument("--imgsz", type=int, default=None, help="network input size (YOLO models)")
    parser.add_argument("--max-pixels", type=int, default=None, help="refuse images above this many pixels "
                        "(default: 40000000, dsxai.imaging.MAX_PIXELS)")
    parser.add_argument("--arch", default=None, help="architecture of a state-dict checkpoint, e.g. "
                        "fasterrcnn_resnet50_fpn or smp:Unet:resnet34")
    parser.add_argument("--out", default="out/explain", help="output folder (default: out/explain)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    parser.add_argument("--colormap", default="jet", help="OpenCV or matplotlib colormap name (default: jet)")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in [0, 1] (default: 0.5)")
    parser.add_argument("--no-colorbar", dest="colorbar", action="store_false",
                        help="pictures without the colour bar strip (scale, method and layers) below them")
    parser.add_argument("--no-grid", dest="grid", action="store_false",
                        help="skip <stem>_grid.png (each detection's whole-image map with its box)")
    parser.add_argument("--sanity", action="store_true", help="also explain each detection with randomised "
                        "weights and report the rank correlation (sanity_rank_correlation: high = the map reflects "
                        "the architecture, not the trained weights)")
    add_trust_flag(parser)
    add_model_flags(parser)
    parser.set_defaults(run=run)


def find_images(specs: list[str]) -> list[Path]:
    """Image files named by paths, folders and glob patterns (:func:`dsxai.imaging.find_image_files`)."""
    from ..imaging import find_image_files

    try:
        return find_image_files(specs)
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None


def scanned_folders(specs: list[str]) -> list[Path]:
    """The folders whose files a spec reads: a folder given as such, and the base of a recursive glob."""
    folders = []
    for spec in specs:
        if Path(spec).is_dir():
            folders.append(Path(spec))
        elif glob.has_magic(spec) and "**" in spec:
            parts = Path(spec).parts
            plain = next(i for i, part in enumerate(parts) if glob.has_magic(part))
            folders.append(Path(*parts[:plain]) if plain else Path("."))
    return folders


def check_options(args: argparse.Namespace) -> None:
    """The numeric options of ``explain`` (same checks and wording as the Python API), before any work."""
    from ..validation import check_conf, check_imgsz, check_max_dets, check_max_pixels

    if args.conf is not None:
        check_conf(args.conf)
    if args.max_dets is not None:
        check_max_dets(args.max_dets)
    if args.imgsz is not None:
        check_imgsz(args.imgsz)
    if args.max_pixels is not None:
        check_max_pixels(args.max_pixels)


def prepare(args: argparse.Namespace) -> tuple[Any, list[Path], dict[str, Any]]:
    """The adapter, the image paths and the options of :func:`dsxai.explain`, everything checked before the
    first file is written (method, colormap, options, images, output folder, layers, classes)."""
    from ..imaging import load_image
    from ..layers import resolve_layers
    from ..methods import get_method
    from ..pipeline import resolve_classes
    from ..render import colormap_table
    from ..runs import check_output_folder
    from ..window import split_window

    drise, ig = drise_options(args), ig_options(args)
    base, window = split_window(args.method)
    method = get_method(base) if base and drise is None and ig is None else base  # parsed here, once
    if window is not None:
        method = args.method  # explain() reads the window from the name
    colormap_table(args.colormap)
    if not 0 <= args.alpha <= 1:
        raise CommandError(f"--alpha must be in [0, 1], got {args.alpha}")
    check_options(args)
    paths = find_images(args.images)
    check_output_folder(Path(args.out), paths, scanned=scanned_folders(args.images))
    adapter = resolve_model(args, {} if args.imgsz is None else {"imgsz": args.imgsz})
    layers = [x.strip() for x in args.layers.split(",") if x.strip()] if args.layers else None
    if layers is not None:
        resolve_layers(adapter.model, layers)
    classes = None
    if args.classes:
        classes = resolve_classes([c.strip() for c in args.classes.split(",") if c.strip()], adapter.class_names)
    for path in paths:  # decode each image once up front: an unreadable one stops the run before any output
        load_image(path, args.max_pixels)
    options = dict(method=method, layers=layers, targets=args.targets, conf=args.conf, classes=classes,
                   max_dets=args.max_dets, max_pixels=args.max_pixels, **(drise or {}), **(ig or {}))
    return adapter, paths, options


def drise_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The D-RISE options of ``--method drise`` (None for other methods), checked in flag wording."""
    from ..drise import is_drise
    from ..validation import check_positive_int
    from ..window import split_window

    given = {flag: value for flag, value in (("--masks", args.masks), ("--batch-size", args.batch_size),
                                              ("--seed", args.seed)) if value is not None}
    if not (args.method and is_drise(split_window(args.method)[0])):
        if given:
            raise CommandError(f"{', '.join(given)} apply to --method drise only")
        return None
    if args.layers:
        raise CommandError("--layers does not apply to --method drise (a black-box method reads no layer); "
                           "leave it out")
    if args.sanity:
        raise CommandError("--sanity does not apply to --method drise: the randomised-weights check compares "
                           "gradient maps, and D-RISE maps come from the model's predictions, which a randomised "
                           "model does not share; run --sanity with a gradient method (e.g. --method layercam)")
    for flag in ("--masks", "--batch-size"):
        if flag in given:
            check_positive_int(flag, given[flag])
    if given.get("--seed", 0) < 0:
        raise CommandError(f"--seed must be a whole number >= 0, got {given['--seed']}")
    names = {"--masks": "masks", "--batch-size": "mask_batch", "--seed": "seed"}
    return {names[flag]: value for flag, value in given.items()}


def ig_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The options of ``--method ig`` (None for other methods), checked in flag wording."""
    from ..integrated import is_ig
    from ..validation import check_positive_int
    from ..window import split_window

    if not (args.method and is_ig(split_window(args.method)[0])):
        if args.ig_steps is not None:
            raise CommandError("--ig-steps applies to --method ig only")
        return None
    if args.layers:
        raise CommandError("--layers does not apply to --method ig (integrated gradients read the input "
                           "pixels, no layer); leave it out")
    if args.ig_steps is None:
        return {}
    return {"steps": check_positive_int("--ig-steps", args.ig_steps)}


def reads_layers(method: str | None) -> bool:
    """Whether ``method`` (a CLI name, None for the default) explains through layers: D-RISE and ig do not."""
    from ..drise import is_drise
    from ..integrated import is_ig
    from ..window import split_window

    base = split_window(method)[0] if method else None
    return not (base and (is_drise(base) or is_ig(base)))


def run(args: argparse.Namespace) -> int:
    from ..explanation import DERIVED_SUFFIXES, write_index
    from ..imaging import load_image, read_orientation
    from ..pipeline import explain
    from ..runs import Progress, unique_stems

    adapter, paths, options = prepare(args)
    if options["layers"] is None and reads_layers(args.method):  # a default can sit on a poor branch: say which
        print(layer_note(adapter))                                  # layer, and how to pick another
    out = Path(args.out)
    stems = unique_stems(paths, derived=DERIVED_SUFFIXES)
    total, method = 0, args.method
    written: list[Path] = []
    done: list[str] = []
    settings: dict = {}
    try:
        with Progress(len(paths)) as progress:
            for path, stem in zip(paths, stems):
                ex = explain(adapter, [load_image(path, args.max_pixels)], **options)
                if args.sanity:
                    _sanity(progress, path, adapter, ex)
                ex.settings["image"] = str(path)
                ex.settings["exif_orientation"] = [read_orientation(path)]
                method = ex.settings["method"]
                written += ex.save_image(out, 0, stem, images=False, colormap=args.colormap, alpha=args.alpha,
                                         colorbar=args.colorbar, grid=args.grid)
                done.append(stem)
                settings = {k: v for k, v in ex.settings.items() if k != "image"}
                total += len(ex.detections[0])
                _report(progress, path, ex, out / f"{stem}.png", single=len(paths) == 1)
                del ex  # one image's maps in memory at a time
                progress.update(1)
    finally:
        if done:  # the index lists exactly this run's files, also when it stopped early
            settings["images"] = {stem: str(path) for stem, path in zip(done, paths)}
            write_index(out, done, settings, written, complete=len(done) == len(paths))
    print(f"explained {total} detection(s) in {len(paths)} image(s) with {method}; wrote {out}")
    return 0


def _report(progress: Any, path: Path, ex: Any, picture: Path, single: bool) -> None:
    """One image's line: on stdout for a single image (it is the result), above the progress bar otherwise."""
    n = len(ex.detections[0])
    if n == 0:
        text = f"{path}: no detections (wrote {picture} saying so)"
    elif single:
        names = ", ".join(_figure_text(f) for f in ex.figures(0))
        text = f"{path}: {n} detection(s): {names}"
    else:
        return
    if single:
        print(text)
    else:
        progress.say(text)


def _figure_text(figure: dict) -> str:
    """``"person 0.91 (31% outside box, large box)"``: the share of the map the fused picture does not show."""
    notes = [f"{figure['energy_outside_box']:.0%} outside box"] + (["large box"] if figure["large_box"] else [])
    return f"{figure['name']} {figure['score']:.2f} ({', '.join(notes)})"


def _sanity(progress: Any, path: Path, adapter: Any, ex: Any) -> None:
    """``--sanity``: the randomised-weights rank correlation per detection, into the figures and printed."""
    from ..sanity import add_sanity

    values = add_sanity(adapter, ex)
    shown = ", ".join("n/a" if v is None else f"{v:.2f}" for v in values) or "no detections"
    progress.say(f"{path}: sanity rank correlation with random weights per detection (high = the map reflects "
                 f"the architecture, not the weights): {shown}")

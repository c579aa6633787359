"""dsxai against Ultralytics' own explanation, ``predict(visualize=True)``: the floor a YOLO user compares us with.

Ultralytics 8.4's ``visualize=True`` runs ``ultralytics.utils.plotting.class_activation_map``: LayerCAM on the
head's inputs, one backward per prediction (at most 16 per image, those above ``conf``), each prediction and
level normalised, then the element-wise maximum over all of them: ONE map per image, saved as a JPEG overlay.
dsxai gives one LayerCAM map per detection from one batched backward (P3-P5 fused, each level normalised).

Timed per image, same model, same image, same input size, same number of predictions (``--boxes``, 16 by
default, Ultralytics' cap; ``conf=0`` so a random-init model has enough):

* ``ultralytics predict``: ``yolo.predict(image, conf=0)``, the plain prediction (its forward + NMS);
* ``ultralytics visualize``: ``yolo.predict(image, conf=0, visualize=True)`` (its forward, 16 backwards, the
  max-fused map and the JPEG it writes);
* ``dsxai``: ``UltralyticsAdapter(yolo).preprocess`` + ``box_target(conf=0, max_dets=16)`` + ``LayerCAM.explain``:
  16 maps, one per box.

    python benchmarks/ultralytics_visualize.py                      # YOLOv8n from yolov8n.yaml, random init
    python benchmarks/ultralytics_visualize.py --weights ../shared/data/weights/<yolov8s person>.pt --imgsz 640
    python benchmarks/ultralytics_visualize.py --method layercam-level   # each box from its own head level

Prints a table and writes ``benchmarks/results/ultralytics_visualize-<device>-<imgsz>.json``.

Two things Ultralytics' predictor does that shape the comparison, both kept (they are what its users get): it
explains a Conv-BN *fused* copy of the model (no batch-norm forward or backward), and on CPU its
``select_device`` sets ``torch.set_num_threads(cpu_count - 1)`` for the whole process (1 thread on a 2-core
machine), so every call timed after its first, ours included, runs on that many threads; the table says how many.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from speed import timed_together  # noqa: E402  (same timing rules as speed.py: calls in turn, medians)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--weights", default="yolov8n.yaml",
                        help="Ultralytics .pt checkpoint or model .yaml (random init); default yolov8n.yaml")
    parser.add_argument("--image", type=Path, default=None, help="default: the bus.jpg shipped with ultralytics")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--boxes", type=int, default=16, help="predictions explained (Ultralytics caps at 16)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--method", default="layercam",
                        help="dsxai's method: layercam (P3-P5 fused, the default) or layercam-level (each box "
                             "from its own head level, no backward through the neck to the others)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 1 <= args.boxes <= 16:
        parser.error(f"--boxes must be 1-16 (Ultralytics explains at most 16 predictions), got {args.boxes}")
    if args.imgsz < 32 or args.repeats < 1:
        parser.error(f"--imgsz must be >= 32 and --repeats >= 1, got {args.imgsz} and {args.repeats}")
    if not args.weights.endswith((".yaml", ".yml")) and not Path(args.weights).is_file():
        parser.error(f"--weights {args.weights} not found: pass an Ultralytics .pt checkpoint or a model .yaml")

    import ultralytics
    from ultralytics import YOLO

    import dsxai
    from dsxai.adapters.ultralytics_yolo import UltralyticsAdapter

    image = args.image or Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
    if not image.is_file():
        parser.error(f"image {image} not found; pass --image PATH")
    torch.manual_seed(0)
    yolo = YOLO(args.weights)
    yolo.model.to(args.device)
    device = torch.device(args.device)
    predict = dict(conf=0.0, imgsz=args.imgsz, device=args.device, verbose=False, max_det=args.boxes)

    with tempfile.TemporaryDirectory() as tmp:
        def theirs_plain():
            return yolo.predict(str(image), **predict)

        def theirs_visualize():
            return yolo.predict(str(image), visualize=True, project=tmp, name="cam", exist_ok=True, **predict)

        adapter = UltralyticsAdapter(yolo, imgsz=args.imgsz)
        cam = dsxai.get_method(args.method)(adapter.model, adapter.default_layers)

        def ours():
            batch = adapter.preprocess(str(image))
            target = adapter.box_target(batch, conf=0.0, max_dets=args.boxes)
            result = cam.explain(batch.tensor, target)
            ours.maps = result.maps
            return result

        theirs_visualize()  # builds the predictor once, outside the timing
        saved = sorted(Path(tmp).rglob("*_cam.jpg"))
        if not saved:
            raise SystemExit("predict(visualize=True) wrote no *_cam.jpg: is this Ultralytics >= 8.4 (LayerCAM)?")
        plain_s, visualize_s, ours_s = timed_together([theirs_plain, theirs_visualize, ours], device, args.repeats)
    maps = ours.maps[0]

    rows = [("ultralytics predict", plain_s, 0), ("ultralytics visualize", visualize_s, 1),
            (f"dsxai {args.method}", ours_s, int(maps.shape[0]))]
    print(f"{args.weights} at {args.imgsz} px on {device.type} ({torch.get_num_threads()} threads), {args.boxes} "
          f"predictions, medians of >= {args.repeats} runs taken in turn")
    print("| call | ms per image | maps per image | ms per map | x plain predict |")
    print("|---|---|---|---|---|")
    for name, seconds, count in rows:
        per_map = f"{seconds / count * 1e3:.1f}" if count else "-"
        print(f"| {name} | {seconds * 1e3:.1f} | {count} | {per_map} | {seconds / plain_s:.2f}x |")
    print(f"dsxai / ultralytics visualize: {ours_s / visualize_s:.2f}x the time, {maps.shape[0]} maps instead of 1")

    result: dict[str, Any] = {
        "weights": args.weights, "image": image.name, "imgsz": args.imgsz, "boxes": args.boxes,
        "device": device.type, "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else
        (platform.processor() or platform.machine()), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "ultralytics": ultralytics.__version__, "repeats": args.repeats,
        "method": args.method,
        "ultralytics_predict_s": plain_s, "ultralytics_visualize_s": visualize_s, "dsxai_s": ours_s,
        "dsxai_maps": int(maps.shape[0]), "dsxai_over_visualize": ours_s / visualize_s,
    }
    suffix = "" if args.method == "layercam" else f"-{args.method}"
    out = args.out or ROOT / "results" / f"ultralytics_visualize-{device.type}-{args.imgsz}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

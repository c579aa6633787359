"""Explain an Ultralytics YOLO detector: one heatmap per detected box.

Runs as is on the shipped shapes-world YOLOv8 (a few generated scenes):

    python examples/explain_yolo.py --out out/yolo

and on your own checkpoint and images:

    python examples/explain_yolo.py --weights yolov8n.pt --image bus.jpg --out out/yolo
"""
import argparse

import dsxai
from dsxai.runs import unique_stems
from dsxai.adapters.ultralytics_yolo import UltralyticsAdapter

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--weights", help="Ultralytics .pt checkpoint (default: the shipped shapes-world YOLOv8)")
parser.add_argument("--image", nargs="+", help="image file(s) (default: generated shapes scenes)")
parser.add_argument("--method", default="layercam", help="CAM method (default: layercam)")
parser.add_argument("--out", default="out/explain_yolo", help="output folder")
args = parser.parse_args()

if args.weights:
    adapter = UltralyticsAdapter(args.weights, imgsz=640)
else:
    from dsxai.zoo import load_adapter

    adapter = load_adapter("shapes-yolo")  # UltralyticsAdapter(shapes_yolov8_path(), imgsz=256)

if args.image:
    images, stems = args.image, unique_stems(args.image)  # d1/a.png, d2/a.png -> d1__a, d2__a
else:
    from dsxai.shapes import make_scenes

    images, stems = [s.image for s in make_scenes(3, seed=2)], ["scene0", "scene1", "scene2"]

explanation = dsxai.explain(adapter, images, method=args.method)
explanation.save(args.out, stems)
for i, stem in enumerate(stems):
    figures = explanation.figures(i)  # per detection: name, score, peak [x, y], energy inside its box, ...
    print(f"{stem}: {len(figures)} detection(s) " + ", ".join(
        f"{f['name']} {f['score']:.2f} (peak in box: {f['peak_in_box']})" for f in figures))
print(f"wrote pictures and JSON to {args.out}/")

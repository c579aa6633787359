"""Explain a torchvision Faster R-CNN: one heatmap per detected box.

Runs as is on the shipped shapes-world Faster R-CNN (a few generated scenes):

    python examples/explain_fasterrcnn.py --out out/frcnn

and on a torchvision checkpoint (a state dict of fasterrcnn_resnet50_fpn, COCO class names):

    python examples/explain_fasterrcnn.py --weights fasterrcnn.pth --image street.jpg --out out/frcnn
"""
import argparse
from pathlib import Path

import dsxai
from dsxai.runs import unique_stems
from dsxai.render import compare_methods, write_png

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--weights", help="state dict of torchvision fasterrcnn_resnet50_fpn (default: shapes model)")
parser.add_argument("--arch", default="fasterrcnn_resnet50_fpn", help="torchvision builder of --weights")
parser.add_argument("--image", nargs="+", help="image file(s) (default: generated shapes scenes)")
parser.add_argument("--conf", type=float, default=0.5, help="score threshold (default: 0.5)")
parser.add_argument("--out", default="out/explain_fasterrcnn", help="output folder")
args = parser.parse_args()

if args.weights:
    from dsxai.adapters import load

    adapter = load(args.weights, arch=args.arch)  # TorchvisionDetectionAdapter
else:
    from dsxai.zoo import load_adapter

    adapter = load_adapter("shapes-fasterrcnn")

if args.image:
    images, stems = args.image, unique_stems(args.image)  # d1/a.png, d2/a.png -> d1__a, d2__a
else:
    from dsxai.shapes import make_scenes

    images, stems = [s.image for s in make_scenes(2, seed=2)], ["scene0", "scene1"]

explanation = dsxai.explain(adapter, images, method="layercam", conf=args.conf, max_dets=10)
explanation.save(args.out, stems)

# the same detections explained by two more methods, side by side
first = explanation.detections[0]
maps = {"layercam": explanation.maps[0]}
for method in ("hirescam", "gradcam"):
    maps[method] = dsxai.explain(adapter, images[:1], method=method, conf=args.conf, max_dets=10).maps[0]
write_png(Path(args.out) / f"{stems[0]}_methods.png", compare_methods(explanation.images[0], first, maps))

for i, stem in enumerate(stems):
    print(f"{stem}: " + ", ".join(f"{f['name']} {f['score']:.2f} energy in box {f['energy_in_box']:.2f}"
                                  for f in explanation.figures(i)))
print(f"wrote pictures and JSON to {args.out}/")

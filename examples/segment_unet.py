"""Explain a segmentation-models-pytorch U-Net: one heatmap per predicted mask.

Runs as is on the shipped shapes-world U-Net (a few generated scenes):

    python examples/segment_unet.py --out out/unet

and on your own smp checkpoint (a state dict; say its architecture and normalisation):

    python examples/segment_unet.py --weights unet.pth --arch smp:Unet:resnet34 --image road.png --out out/unet
"""
import argparse
from pathlib import Path

import dsxai
from dsxai.runs import unique_stems
from dsxai.render import write_png

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--weights", help="smp state dict (default: the shipped shapes-world U-Net)")
parser.add_argument("--arch", default="smp:Unet:resnet34", help="smp:<Architecture>:<encoder> of --weights")
parser.add_argument("--image", nargs="+", help="image file(s) (default: generated shapes scenes)")
parser.add_argument("--out", default="out/segment_unet", help="output folder")
args = parser.parse_args()

if args.weights:
    from dsxai.adapters import load

    adapter = load(args.weights, arch=args.arch)  # SMPAdapter, ImageNet normalisation by default
else:
    from dsxai.zoo import load_adapter

    adapter = load_adapter("shapes-unet")  # SMPAdapter(load_shapes_unet(), mean=UNET_MEAN, std=UNET_STD)

if args.image:
    images, stems = args.image, unique_stems(args.image)  # d1/a.png, d2/a.png -> d1__a, d2__a
else:
    from dsxai.shapes import make_scenes

    images, stems = [s.image for s in make_scenes(3, seed=2)], ["scene0", "scene1", "scene2"]

# one map per connected component of each predicted class (at most 10 per image)
explanation = dsxai.explain(adapter, images, targets="masks", max_dets=10)
explanation.save(args.out, stems)
for i, stem in enumerate(stems):
    write_png(Path(args.out) / f"{stem}_masks.png", explanation.render(i, style="masks"))
    print(f"{stem}: " + ", ".join(f"{f['name']} (energy in mask {f['energy_in_mask']:.2f})"
                                  for f in explanation.figures(i)))
print(f"wrote pictures and JSON to {args.out}/")

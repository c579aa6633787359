"""Audit a deliberately biased U-Net: the audit finds that its "triangle" masks rest on a context cue.

Two copies of the same small U-Net are trained (about 30 s each on 2 CPU cores, cached in --cache):
"biased", where a white bar beside an object decides the label "triangle" and the drawn shape is random,
and "fair", where the label is the shape and the bar stands beside random objects. Both are audited on
test scenes where the bar is moved away from its object; the biased model's triangle masks are flagged
"evidence mostly outside the mask", the fair model's are not. See dsxai/zoo/biased.py.

    python examples/audit_unet.py --out out/audit_unet
"""
import argparse
import tempfile
from pathlib import Path

import cv2

import dsxai
from dsxai.zoo.biased import cue_adapter, load_or_train, make_cue_scenes

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--out", default="out/audit_unet", help="output folder")
parser.add_argument("--scenes", type=int, default=16, help="number of test scenes")
parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dsxai_cue_models"),
                    help="where the two trained models are cached")
args = parser.parse_args()

out = Path(args.out)
images, truth = out / "scenes" / "images", out / "scenes" / "gt"
images.mkdir(parents=True, exist_ok=True)
truth.mkdir(parents=True, exist_ok=True)
for i, scene in enumerate(make_cue_scenes(args.scenes, 11, "moved", size=96)):
    cv2.imwrite(str(images / f"scene{i:02d}.png"), scene.image[..., ::-1])  # RGB -> BGR for OpenCV
    cv2.imwrite(str(truth / f"scene{i:02d}.png"), scene.semantic)           # class ids as pixel values

for world in ("biased", "fair"):
    model = load_or_train(world, args.cache)
    result = dsxai.audit(cue_adapter(model), images, masks=truth, out=out / world, min_area=30)
    s = result.summary
    print(f"{world}: {s['masks']} masks, {s['flagged']} flagged {s['by_flag']}")
    for c in result.classes:
        print(f"    {c['class']:9s} evidence inside {c['evidence_inside']:.0%}, ring {c['evidence_ring']:.0%}, "
              f"outside {c['evidence_outside']:.0%}; IoU with ground truth {c['iou_gt']:.2f}")
    if result.flagged():
        print(f"    most in need of a look: {result.flagged()[0]['image']} mask {result.flagged()[0]['mask']}: "
              f"{result.flagged()[0]['reasons'][0]}")
    print(f"    report: {result.report}")

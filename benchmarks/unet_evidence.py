"""How much of a shapes U-Net mask's evidence does each encoder stage find on the object itself?

For every mask the trained U-Net predicts on held-out scenes, the share of its map (LayerCAM and HiResCAM) that
lies within 4 px of the mask, at the stride-16 and the stride-32 encoder stages, against the same model with
re-initialised weights (``reset_parameters`` under seed 0) explaining the same masks, and against the share of
the image those rings cover (chance). ``tests/test_known_answer.py`` pins the stride-16 figures of the shipped
model on 4 scenes; retrained U-Nets are compared here before they are shipped:

    python benchmarks/unet_evidence.py                                   # the shipped U-Net, 4 scenes
    python benchmarks/unet_evidence.py --weights /tmp/unet/shapes_unet.pt --scenes 12

Prints a table and writes ``benchmarks/results/unet_evidence.json`` (with ``--weights``:
``unet_evidence-<weights' folder name>.json``).
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
STAGES = {"stride 16": "encoder.model.blocks.3", "stride 32": "encoder.model.blocks.5"}
METHODS = ("layercam", "hirescam")
RING = 9  # px: the mask dilated by a 9x9 square, i.e. within 4 px of it


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    net = copy.deepcopy(model)
    torch.manual_seed(0)
    for module in net.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return net


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=4, help="held-out scenes (TEST_SEED)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", type=Path, default=None,
                        help="a shapes_unet.pt written by `python -m dsxai.zoo.train_unet` (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.out is None:
        suffix = f"-{args.weights.resolve().parent.name}" if args.weights else ""
        args.out = ROOT / "results" / f"unet_evidence{suffix}.json"
    if args.scenes < 1:
        parser.error(f"--scenes must be >= 1, got {args.scenes}")
    if args.weights is not None and not args.weights.is_file():
        parser.error(f"--weights {args.weights}: no such file; write one with "
                     f"`python -m dsxai.zoo.train_unet --out {args.weights.parent}`")

    import cv2

    from dsxai import get_method, shapes, zoo
    from dsxai.adapters.smp_segmentation import SMPAdapter

    torch.set_num_threads(args.threads)
    try:
        model = zoo.load_shapes_unet(path=args.weights)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc))
    adapter = SMPAdapter(model, mean=zoo.UNET_MEAN, std=zoo.UNET_STD)
    noise = randomised(adapter.model)
    shares = {(stage, method, which): [] for stage in STAGES for method in METHODS for which in ("trained", "random")}
    chance = []
    for scene in shapes.make_scenes(args.scenes, zoo.TEST_SEED):
        batch = adapter.preprocess(scene.image)
        target = adapter.mask_target(batch)
        with torch.no_grad():
            target(adapter.model(batch.tensor))  # masks decoded by the trained model, for both
        masks = target.detections[0].masks.numpy()
        near = [torch.from_numpy(cv2.dilate(m.astype(np.uint8), np.ones((RING, RING), np.uint8)).astype(bool))
                for m in masks]
        chance += [float(n.float().mean()) for n in near]
        for stage, layer in STAGES.items():
            for method in METHODS:
                for which, net in (("trained", adapter.model), ("random", noise)):
                    maps = get_method(method)(net, [layer])(batch.tensor, target)[0]
                    shares[stage, method, which] += [float(maps[k][n].sum() / maps[k].sum().clamp_min(1e-12))
                                                     for k, n in enumerate(near)]

    figures = {stage: {method: {which: round(float(np.mean(shares[stage, method, which])), 3)
                                for which in ("trained", "random")} for method in METHODS} for stage in STAGES}
    print(f"shapes U-Net ({args.weights or 'shipped'}), {args.scenes} held-out scenes, {len(chance)} masks: share "
          f"of each mask's map within {RING // 2} px of it (chance: {np.mean(chance):.3f})")
    print("| stage | method | trained | random weights |")
    print("|---|---|---|---|")
    for stage, layer in STAGES.items():
        for method in METHODS:
            f = figures[stage][method]
            print(f"| {stage} (`{layer}`) | {method} | {f['trained']:.2f} | {f['random']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"weights": str(args.weights or "shipped"), "scenes": args.scenes,
                                    "masks": len(chance), "chance": round(float(np.mean(chance)), 3),
                                    "layers": STAGES, "share_near_mask": figures}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

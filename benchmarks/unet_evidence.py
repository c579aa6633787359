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
import json

import numpy as np
import torch
from shapes_unet_options import add_options, load_adapter, parse

STAGES = {"stride 16": "encoder.model.blocks.3", "stride 32": "encoder.model.blocks.5"}
METHODS = ("layercam", "hirescam")
RING = 9  # px: the mask dilated by a 9x9 square, i.e. within 4 px of it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, scenes=4)
    args = parse(parser, argv, "unet_evidence")

    import cv2

    from dsxai import get_method, shapes, zoo
    from dsxai.bench import randomized_copy

    torch.set_num_threads(args.threads)
    adapter = load_adapter(args)
    noise = randomized_copy(adapter.model)  # seed 0, as tests/test_known_answer.py's
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

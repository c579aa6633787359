"""How much of the audit's "evidence outside the mask" flag is the explained layer's resolution?

The shipped shapes U-Net is audited at its deepest encoder stage (stride 32). A map of that layer, upsampled
to the image, spreads evidence on a mask's edge about one 32 px cell beyond it. On clean held-out scenes (a
model with no context shortcut) this script counts the masks flagged "outside" (``evidence_outside >=
MAX_OUTSIDE``) with the ring the audit uses, ``max(ring_px, ring_frac * sqrt(area), one cell)``, and with the
cell left out (the 8 px ring the audit had before), per mask size:

    python benchmarks/audit_resolution.py             # 24 TEST_SEED scenes, the audit's default layer
    python benchmarks/audit_resolution.py --scenes 80 --layers encoder.model.blocks.3
    python benchmarks/audit_resolution.py --weights /tmp/unet/shapes_unet.pt   # a retrained U-Net instead

Prints a table and writes ``benchmarks/results/audit_resolution.json`` (with ``--weights``:
``audit_resolution-<weights' folder name>.json``, so the shipped model's figures are kept).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from shapes_unet_options import add_options, load_adapter, parse

SMALL = 1000  # px: a mask below this is "small" (a disc of ~36 px diameter)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, scenes=24)
    parser.add_argument("--layers", nargs="*", default=None, help="layers to explain (default: the audit's)")
    args = parse(parser, argv, "audit_resolution")

    from dsxai import shapes, zoo
    from dsxai.pipeline import explain_maps
    from dsxai.auditing import MAX_OUTSIDE, RING_FRAC, RING_PX, mask_figures
    from dsxai.layers import audit_layers, layer_stride

    torch.set_num_threads(args.threads)
    adapter = load_adapter(args)
    layers = args.layers or audit_layers(adapter)
    stride = layer_stride(adapter, layers)
    scenes = shapes.make_scenes(args.scenes, zoo.TEST_SEED)
    counts = {ring: {"all": [0, 0], "small": [0, 0]} for ring in ("without cell", "with cell")}
    for scene in scenes:
        dets, maps = explain_maps(adapter, [scene.image], method="layercam", layers=layers, targets="masks",
                                     min_area=100)
        d, m = dets[0], maps[0].float().reshape(len(dets[0]), *dets[0].image_size)
        if not len(d):
            continue
        cell = stride / min(adapter.preprocess(scene.image).geometries[0].scale)
        for ring, cell_px in (("without cell", 0.0), ("with cell", cell)):
            for fig in mask_figures(m, d.masks.to(m.device), ring_px=RING_PX, ring_frac=RING_FRAC, cell_px=cell_px):
                flagged = fig["has_evidence"] and fig["evidence_outside"] >= MAX_OUTSIDE
                for group in ("all", "small") if fig["area"] < SMALL else ("all",):
                    counts[ring][group][0] += int(flagged)
                    counts[ring][group][1] += 1

    print(f"shapes U-Net ({args.weights or 'shipped'}), layers {layers} (stride {stride:g}), {args.scenes} "
          f"held-out scenes, LayerCAM, flag when evidence_outside >= {MAX_OUTSIDE:g}")
    print("| ring | flagged 'outside', all masks | small masks (< 1000 px) |")
    print("|---|---|---|")
    for ring, c in counts.items():
        print(f"| {ring} | {c['all'][0]} / {c['all'][1]} | {c['small'][0]} / {c['small'][1]} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"weights": str(args.weights) if args.weights else "shipped", "layers": layers,
                                    "stride": stride, "scenes": args.scenes,
                                    "max_outside": MAX_OUTSIDE, "ring_px": RING_PX, "ring_frac": RING_FRAC,
                                    "counts": counts, "threads": torch.get_num_threads(),
                                    "torch": torch.__version__, "numpy": np.__version__}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

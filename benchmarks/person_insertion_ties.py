"""Why does the level map lose insertion AUC to the box prior on real persons? A test of the tie order.

Deletion / insertion (``dsxai.metrics``) ranks the pixels by the map and breaks ties in raster order. A
``layercam-level`` map is exactly zero on most of the image (ReLU of one coarse level, upsampled) and on about
half of its own box, so once its non-zero pixels are inserted the rest of the person comes back row by row
from the top of the image. This script scores, on the same pairs as ``person_fusion_variants.py`` and with the
benchmark's own curves (``deletion_insertion_batch``, blur baseline, conf 0.01), each map as it is and with its
exact ties reordered without touching any non-zero pixel's order:

* ``ties at random``: a seeded uniform value below 1e-6 added to every pixel (the random-order baseline's
  order among the ties, the same for every map);
* ``ties by the mean of levels`` (level map only): 1e-6 x the mean-of-levels map added, so where the own level
  is silent the other levels' evidence orders the pixels.

    python benchmarks/person_insertion_ties.py --limit 8 --steps 20
    python benchmarks/person_insertion_ties.py --limit 8 --steps 20 --drise 500   # D-RISE instead (dense maps)

With ``--drise N`` the maps scored are D-RISE's (``dsxai.drise``, N masks, centred as shipped and the paper's
plain sum) beside the box prior, and the json is ``person_insertion_ties-drise.json``.

Prints the table of ``benchmarks/README.md`` and writes ``benchmarks/results/person_insertion_ties.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from dsxai.bench import load_bench_adapter
from dsxai.bench.faithfulness import FAITHFULNESS_CONF
from dsxai.bench.score import bootstrap_ci
from dsxai.imaging import load_image
from dsxai.metrics import baseline_maps, deletion_insertion_batch
from dsxai.runs import write_atomic
from person_fusion_variants import D, collect, variant

TIE = 1e-6  # below every non-zero value that matters (maps are scaled to [0, 1]), above float32's eps at 0


def maps_of(rec: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every map kind scored, ``[T, H, W]`` over the original image."""
    mean = variant(rec, "layer", "mean", {})
    level = variant(rec, "layer", "level", {})
    prior = baseline_maps("box_gaussian", rec["boxes"], rec["geometry"].original_size)
    noise = torch.rand(level.shape, generator=generator) * TIE
    return {"layercam (mean of levels)": mean, "layercam-level": level,
            "layercam-level, ties at random": level + noise,
            "layercam-level, ties by the mean of levels": level + TIE * mean,
            "box_gaussian": prior, "box_gaussian, ties at random": prior + noise}


def drise_maps_of(rec: dict, adapter, masks: int) -> dict[str, torch.Tensor]:
    """D-RISE maps of the record's matched detections (centred and plain), with the box prior."""
    from dsxai.drise import DRISE

    batch = adapter.preprocess(load_image(rec["image"]))
    kinds = {}
    for center in (True, False):
        engine = DRISE(masks=masks, center=center, progress=False)
        name = f"drise, {masks} masks, {'centred (shipped)' if center else 'plain sum (paper)'}"
        kinds[name] = engine.image_maps(adapter, batch, 0, rec["matched"], {"conf": engine.masked_conf})
    kinds["box_gaussian"] = baseline_maps("box_gaussian", rec["boxes"], rec["geometry"].original_size)
    return kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=8, help="the first N images with persons")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--drise", type=int, default=0, help="score D-RISE maps of this many masks instead")
    args = parser.parse_args(argv)
    adapter = load_bench_adapter(D / "weights/yolov8s_fall_ultralytics/best.pt")
    records = collect(args.limit, adapter)
    predict = partial(adapter.predict, conf=FAITHFULNESS_CONF)
    generator = torch.Generator().manual_seed(0)
    rows: dict[str, dict[str, list[float]]] = {}
    t0, zeros = time.perf_counter(), []
    for rec in records:
        kinds = drise_maps_of(rec, adapter, args.drise) if args.drise else maps_of(rec, generator)
        silent = kinds[next(iter(kinds))] if args.drise else kinds["layercam-level"]
        zeros.append(float((silent == 0).float().mean()))
        curves = deletion_insertion_batch(predict, load_image(rec["image"]), rec["matched"], list(kinds.values()),
                                          args.steps, batch_size=1)
        for name, faith in zip(kinds, curves):
            row = rows.setdefault(name, {"insertion_auc": [], "deletion_auc": []})
            row["insertion_auc"] += faith.insertion_auc.tolist()
            row["deletion_auc"] += faith.deletion_auc.tolist()
    n = len(rows["box_gaussian"]["insertion_auc"])
    print(f"{n} pairs in {len(records)} images, K = {args.steps}, {time.perf_counter() - t0:.0f} s; "
          f"{next(iter(rows)) if args.drise else 'layercam-level'} maps are exactly 0 on "
          f"{100 * sum(zeros) / len(zeros):.0f}% of the image")
    print("| map | insertion AUC [95% CI] (higher is better) | deletion AUC [95% CI] (lower is better) |\n|---|---|---|")
    summary = {}
    for name, vals in rows.items():
        entry = {k: {"mean": sum(v) / len(v), "ci95": bootstrap_ci(v)} for k, v in vals.items()}
        summary[name] = entry
        ins, dele = entry["insertion_auc"], entry["deletion_auc"]
        print(f"| {name} | {ins['mean']:.3f} [{ins['ci95'][0]:.3f}, {ins['ci95'][1]:.3f}] "
              f"| {dele['mean']:.3f} [{dele['ci95'][0]:.3f}, {dele['ci95'][1]:.3f}] |")
    out = Path(__file__).parent / "results" / f"person_insertion_ties{'-drise' if args.drise else ''}.json"
    write_atomic(out, json.dumps({"pairs": n, "images": len(records), "steps": args.steps, "limit": args.limit,
                                  "drise_masks": args.drise,
                                  "drise_zero_fraction" if args.drise else "level_zero_fraction": sum(zeros) / len(zeros),
                                  "maps": summary}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

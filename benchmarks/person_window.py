"""Does a per-box window lift real-person maps above the box prior on the curves too? (issue 4/4 F)

On the person pairs of ``dsxai bench`` (README command 3; ``person_fusion_variants.collect`` finds the same
pairs), each method is run through the shipped path (``dsxai.pipeline.explain_maps``, so ``+window`` names
are parsed and applied as a user gets them) and scored beside the box prior with the benchmark's own
metrics: pointing game and energy in the COCO mask (``score_maps``), and deletion / insertion AUC
(``deletion_insertion_batch``: blur baseline, conf 0.01, K steps). Besides each mean and its 95% bootstrap CI
it prints the paired difference to the box prior (same pairs, so the spread between pairs cancels) and the
share of pairs where the method's insertion AUC is higher.

    python benchmarks/person_window.py --methods layercam-level+window --oracle      # 146 pairs, ~45 min
    python benchmarks/person_window.py --methods layercam-level+window --limit 8     # a quick screen

Writes ``benchmarks/results/<name>[-limitN][-kK][-box].json`` (``--name``, default ``person_window``; per-pair
values included).
"""
from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from dsxai.bench import load_bench_adapter
from dsxai.bench.faithfulness import FAITHFULNESS_CONF
from dsxai.bench.score import bootstrap_ci, score_maps
from dsxai.boxes import box_iou
from dsxai.imaging import load_image
from dsxai.metrics import SPANS, baseline_maps, deletion_insertion_batch
from dsxai.pipeline import explain_maps
from dsxai.runs import write_atomic
from person_fusion_variants import D, collect

PRIOR = "box_gaussian"
ORACLE = "COCO mask (oracle: the true mask, ties by the box prior)"
KEYS = ("pointing_game_mask", "energy_mask", "insertion_auc", "deletion_auc")


def method_maps(adapter, rec: dict, method: str, classes: list[int]) -> torch.Tensor:
    """The shipped maps of ``method`` for the record's matched detections, ``[T, H, W]`` over the image."""
    dets, maps = explain_maps(adapter, load_image(rec["image"]), method=method, conf=0.25, classes=classes)
    index = box_iou(rec["matched"].boxes, dets[0].boxes).argmax(1)
    if not torch.allclose(dets[0].boxes[index], rec["matched"].boxes, atol=1e-3):
        raise RuntimeError(f"{method} found other detections than the benchmark's in {rec['image']}")
    return maps[0][index]


def paired(values: list[float], prior: list[float]) -> dict:
    """Mean paired difference to the box prior, its 95% bootstrap CI and the share of pairs above it."""
    diff = np.asarray(values) - np.asarray(prior)
    return {"mean": float(diff.mean()), "ci95": bootstrap_ci(diff.tolist()), "wins": float((diff > 0).mean())}


def score_into(rows: dict[str, dict[str, list[float]]], predict, rec: dict, kinds: dict[str, torch.Tensor],
               steps: int, span: str = "image") -> None:
    """Append each map kind's per-pair pointing game and energy in the COCO mask and its deletion / insertion
    AUC (one batched set of curves for every kind, blur baseline, fractions of ``span``) to ``rows[kind]``."""
    curves = deletion_insertion_batch(predict, load_image(rec["image"]), rec["matched"], list(kinds.values()),
                                      steps, batch_size=1, span=span)
    for (name, maps), faith in zip(kinds.items(), curves):
        row = rows.setdefault(name, {k: [] for k in KEYS})
        for score in score_maps(maps, rec["gt_boxes"], rec["gt_masks"], 15.0, 0.5):
            row["pointing_game_mask"].append(score["pointing_game_mask"])
            row["energy_mask"].append(score["energy_mask"])
        row["insertion_auc"] += faith.insertion_auc.tolist()
        row["deletion_auc"] += faith.deletion_auc.tolist()


def report(rows: dict[str, dict[str, list[float]]], images: int, steps: int, seconds: float) -> dict:
    """Print the table (means, 95% bootstrap CIs, insertion paired with the box prior) and return the summary
    of every map, per-pair values included; ``rows``: map name -> metric -> per-pair values, the prior among them."""
    n = len(rows[PRIOR]["insertion_auc"])
    print(f"{n} pairs in {images} images, K = {steps}, {seconds:.0f} s")
    print("| map | pointing (mask) | energy (mask) [95% CI] | insertion AUC [95% CI] | insertion - prior, paired "
          "[95% CI] (pairs above) | deletion AUC [95% CI] |\n|---|---|---|---|---|---|")
    summary = {}
    for name, vals in rows.items():
        entry = {k: {"mean": float(np.mean(v)), "ci95": bootstrap_ci(v)} for k, v in vals.items()}
        if name != PRIOR:
            entry["insertion_minus_prior"] = paired(vals["insertion_auc"], rows[PRIOR]["insertion_auc"])
            entry["deletion_minus_prior"] = paired(vals["deletion_auc"], rows[PRIOR]["deletion_auc"])
        summary[name] = {**entry, "per_pair": vals}
        cell = lambda k: f"{entry[k]['mean']:.3f} [{entry[k]['ci95'][0]:.3f}, {entry[k]['ci95'][1]:.3f}]"  # noqa: E731
        d = entry.get("insertion_minus_prior")
        diff = "" if d is None else f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] ({d['wins']:.0%})"
        print(f"| {name} | {entry['pointing_game_mask']['mean']:.3f} | {cell('energy_mask')} | "
              f"{cell('insertion_auc')} | {diff} | {cell('deletion_auc')} |")
    return summary


def write_summary(stem: str, limit: int | None, steps: int, data: dict, span: str = "image") -> Path:
    """``benchmarks/results/<stem>[-limitN][-kK][-box].json`` (K only when not 20), written atomically."""
    tags = (("" if limit is None else f"-limit{limit}") + ("" if steps == 20 else f"-k{steps}")
            + ("" if span == "image" else f"-{span}"))
    out = Path(__file__).parent / "results" / f"{stem}{tags}.json"
    write_atomic(out, json.dumps(data, indent=1) + "\n")
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="layercam-level+window", help="comma-separated method names")
    parser.add_argument("--limit", type=int, default=None, help="the first N images with persons")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--span", default="image", choices=SPANS,
                        help="the curves' fraction axis: of the image (the D-RISE protocol) or of each box")
    parser.add_argument("--name", default="person_window",
                        help="stem of the results file (another stem keeps earlier runs' files)")
    parser.add_argument("--oracle", action="store_true",
                        help="also score the true COCO mask as a map: what a perfect localizer gets on the curves")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    adapter = load_bench_adapter(D / "weights/yolov8s_fall_ultralytics/best.pt")
    records = collect(args.limit, adapter)
    classes = sorted({int(c) for rec in records for c in rec["matched"].labels})
    predict = partial(adapter.predict, conf=FAITHFULNESS_CONF)
    rows: dict[str, dict[str, list[float]]] = {}
    t0 = time.perf_counter()
    for rec in records:
        kinds = {m: method_maps(adapter, rec, m, classes) for m in methods}
        prior = baseline_maps(PRIOR, rec["boxes"], rec["geometry"].original_size)
        if args.oracle:  # 1e-6 orders the pixels outside the mask as the prior does, below every mask pixel
            kinds[ORACLE] = rec["gt_masks"].float() + 1e-6 * prior
        kinds[PRIOR] = prior
        score_into(rows, predict, rec, kinds, args.steps, args.span)
    summary = report(rows, len(records), args.steps, time.perf_counter() - t0)
    write_summary(args.name, args.limit, args.steps,
                  {"pairs": len(rows[PRIOR]["insertion_auc"]), "images": len(records), "steps": args.steps,
                   "span": args.span, "limit": args.limit, "methods": methods, "maps": summary}, args.span)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The benchmark's outputs: aggregation over pairs, results.json, pairs.csv, summary.md, the bar chart,
the gallery and report.html (:mod:`dsxai.bench.page`), each written atomically (:func:`dsxai.runs.write_atomic`).

Why apart: everything here reads the journal records, so a report can be rebuilt without the model
(except the gallery, which re-explains its few pairs).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..boxes import box_iou
from ..detections import Detections
from ..metrics import BASELINES
from ..runs import write_atomic
from .config import METRICS, PAIRS, RESULTS, SUMMARY
from .page import REPORT, faithfulness_label, report_html, run_timings
from .per_image import BenchSetup, explain_image
from .score import bootstrap_ci

__all__ = ["aggregate", "pairs_csv", "write_outputs", "write_gallery"]

Record = dict[str, Any]


def _summary(values: list[float | None], seed: int) -> dict[str, Any]:
    """Mean, seeded bootstrap CI and count of the values that exist (not None, not NaN)."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "ci95": [None, None], "n": 0}
    lo, hi = bootstrap_ci(vals, seed=seed)
    return {"mean": float(np.mean(vals)), "ci95": [lo, hi], "n": len(vals)}


def _entry(rows: list[tuple[Record, Record]], seed: int) -> dict[str, Any]:
    """One method's or baseline's section: per-metric summaries over its (pair, scores) rows, per category."""
    entry: dict[str, Any] = {"n_pairs": len(rows)}
    for metric in METRICS:
        entry[metric] = _summary([m[metric] for _, m in rows], seed)
    by_cat: dict[str, dict[str, Any]] = {}
    for cat in sorted({p["category"] for p, _ in rows}):
        sub = [m for p, m in rows if p["category"] == cat]
        by_cat[cat] = {"n_pairs": len(sub)}
        for metric in METRICS:
            vals = [m[metric] for m in sub if m[metric] is not None]
            by_cat[cat][metric] = float(np.mean(vals)) if vals else None
    entry["per_category"] = by_cat
    return entry


def aggregate(records: list[Record], settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """The results.json dict of a run's image records (``settings``: its ``config`` section)."""
    ok = [r for r in records if r.get("status") == "ok"]
    counts = {"images": len(records), "images_ok": len(ok), "images_failed": len(records) - len(ok)}
    for k in ("gt", "detections", "matched", "unmatched_detections", "missed_gt"):
        counts[k] = int(sum(r["counts"][k] for r in ok))
    counts["pairs"] = counts["matched"]
    out: dict[str, Any] = {"config": settings, "counts": counts, "metrics": list(METRICS)}
    for kind in ("methods", "baselines"):
        names = settings["methods"] if kind == "methods" else list(BASELINES)
        out[kind] = {name: _entry([(p, m) for r in ok for p, m in zip(r["pairs"], r[kind].get(name, []))], seed)
                     for name in names}
    out["errors"] = [{"image_id": r["image_id"], "file_name": r.get("file_name"), "error": r["error"]}
                     for r in records if r.get("status") == "error"]
    return out


def _fmt(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "–"
    return f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"


def pairs_csv(records: list[Record]) -> str:
    """pairs.csv: one row per (pair, method or baseline)."""
    fh = io.StringIO(newline="")
    writer = csv.writer(fh)
    writer.writerow(["image_id", "file_name", "det", "ann_id", "category", "det_score", "match_iou", "kind",
                     "name", *METRICS])
    for r in records:
        if r.get("status") != "ok":
            continue
        for kind in ("methods", "baselines"):
            for name, rows in r[kind].items():
                for p, m in zip(r["pairs"], rows):
                    writer.writerow([r["image_id"], r["file_name"], p["det"], p["ann_id"], p["category"],
                                     f"{p['det_score']:.4f}", f"{p['match_iou']:.4f}", kind[:-1], name,
                                     *["" if m[k] is None else f"{m[k]:.6f}" for k in METRICS]])
    return fh.getvalue()


def write_outputs(out: Path, results: dict[str, Any], records: list[Record],
                  galleries: Sequence[Path] = ()) -> list[Path]:
    """Write results.json, pairs.csv, metrics.png, summary.md and report.html (each atomically); returns the
    paths."""
    written = [write_atomic(out / RESULTS, json.dumps(results, indent=2)),
               write_atomic(out / PAIRS, pairs_csv(records))]
    shown = [k for k in METRICS if any(results[s][n][k]["mean"] is not None
                                       for s in ("methods", "baselines") for n in results[s])]
    shown = shown or [k for k in METRICS if k not in ("deletion_auc", "insertion_auc")]
    plot = _bar_chart(out, results, shown)
    lines = _summary_table(results, shown)
    if plot:
        lines += ["", f"![metrics]({plot.name})"]
        written.append(plot)
    if galleries:  # this run's pictures only, not an earlier run's left in the folder
        lines += ["", "## Gallery", "", "Best (top row) and worst (bottom row) pairs of each method by "
                  "`energy_box` (E); the detection with its label, the ground-truth box in green.", ""]
        lines += [f"### {g.stem}\n\n![{g.stem}](gallery/{g.name})\n" for g in sorted(galleries)]
    if results["errors"]:
        lines += ["", "## Failed images", ""] + [f"- {e['file_name']}: {e['error']}" for e in results["errors"]]
    written.append(write_atomic(out / SUMMARY, "\n".join(lines) + "\n"))
    rel = [p.relative_to(out).as_posix() for p in written]
    page = report_html(results, shown, timings=run_timings(records), plot=plot.name if plot else None,
                       galleries=[g.relative_to(out).as_posix() for g in sorted(galleries)], files=rel)
    written.append(write_atomic(out / REPORT, page.encode()))
    return written


def _summary_table(results: dict[str, Any], shown: list[str]) -> list[str]:
    """The head of summary.md: what was run, the counts, and one table row per method and baseline."""
    cfg, c = results["config"], results["counts"]
    faith = faithfulness_label(cfg)
    lines = [
        "# Localization benchmark", "",
        f"Model `{cfg['model']}`, annotations `{Path(cfg['annotations']).name}`, categories: "
        f"{', '.join(cfg['categories'] or [])}.", "",
        f"Images: {c['images_ok']} ok, {c['images_failed']} failed. Objects: {c['gt']}; detections: "
        f"{c['detections']}; matched pairs (IoU >= {cfg['match_iou']}): {c['matched']}; unmatched detections: "
        f"{c['unmatched_detections']}; missed objects: {c['missed_gt']}.", "",
        f"Mean over pairs with the 95 % bootstrap CI (seed {cfg['seed']}). Pointing game tolerance "
        f"{cfg['tolerance']:g} px; IoU at {cfg['threshold']:g} of the max; faithfulness {faith}.", "",
        "| | n | " + " | ".join(shown) + " |",
        "|---|---|" + "---|" * len(shown),
    ]
    for kind in ("methods", "baselines"):
        for name, entry in results[kind].items():
            label = name if kind == "methods" else f"*{name}* (baseline)"
            lines.append(f"| {label} | {entry['n_pairs']} | " + " | ".join(_fmt(entry[k]) for k in shown) + " |")
    if c["matched"] == 0:
        lines += ["", f"**No detection matched a ground-truth object** (detections: {c['detections']}); check "
                  "the confidence threshold (--conf), the class map (--class-map) and the image folder."]
    return lines


def _bar_chart(out: Path, results: dict[str, Any], shown: list[str]) -> Path | None:
    """metrics.png: the mean and CI of each shown metric, one bar per method and baseline."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    names = [(k, n) for k in ("methods", "baselines") for n in results[k]]
    if not names or not shown:
        return None
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.25 * len(shown) * len(names))), 4), dpi=100)
    width = 0.8 / len(names)
    for i, (kind, name) in enumerate(names):
        entry = results[kind][name]
        means = [entry[k]["mean"] if entry[k]["mean"] is not None else np.nan for k in shown]
        lo = [m - entry[k]["ci95"][0] if entry[k]["mean"] is not None else 0 for m, k in zip(means, shown)]
        hi = [entry[k]["ci95"][1] - m if entry[k]["mean"] is not None else 0 for m, k in zip(means, shown)]
        xs = np.arange(len(shown)) + (i - (len(names) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=2, label=name + (" (baseline)" if kind == "baselines" else ""),
               hatch="//" if kind == "baselines" else None, alpha=0.9)
    ax.set_xticks(np.arange(len(shown)))
    ax.set_xticklabels(shown, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean (95% CI)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return write_atomic(out / "metrics.png", buffer.getvalue())


def write_gallery(out: Path, setup: BenchSetup, records: list[Record], k: int) -> list[Path]:
    """Best and worst ``k`` pairs of each method by ``energy_box``, re-explained and drawn; the files written."""
    from ..render import grid, write_png

    folder = out / "gallery"
    folder.mkdir(exist_ok=True)
    written = []
    for method in setup.cfg.methods:
        rows = [(m["energy_box"], r, j) for r in records if r.get("status") == "ok"
                for j, m in enumerate(r["methods"].get(method, []))]
        if not rows:
            continue
        rows.sort(key=lambda t: t[0])
        chosen = rows[::-1][:k] + [t for t in rows[:k] if t not in rows[::-1][:k]]
        pictures = [p for p in (_tile(setup, method, *t) for t in chosen) if p is not None]
        if pictures:
            written.append(write_png(folder / f"{method}.png", grid(pictures, columns=max(1, k))))
    return written


def _tile(setup: BenchSetup, method: str, value: float, record: Record, j: int,
          side: int | None = None) -> np.ndarray | None:
    """One gallery picture: pair ``j`` of ``record`` re-explained with ``method``, its boxes and E value.

    Drawn at ``side`` px (default :data:`dsxai.render.PANEL_PX`) after scaling, so text stays >= 12 px tall.
    """
    import cv2

    from ..render import PANEL_PX, draw_detections, overlay, text_style

    side = side or PANEL_PX
    image = setup.load(record["image_id"])
    dets, maps = explain_image(setup, image, method)
    if len(dets) == 0:
        return None
    pair = record["pairs"][j]
    idx = int(box_iou(torch.tensor([pair["det_box"]]), dets.boxes).argmax())
    f = side / max(image.shape[:2])
    size = (max(1, int(image.shape[0] * f)), max(1, int(image.shape[1] * f)))
    small = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    heat = torch.nn.functional.interpolate(maps[idx][None, None].float().cpu(), size, mode="bilinear")[0, 0]
    ref = Detections(boxes=torch.tensor([pair["det_box"]]) * f, scores=torch.tensor([pair["det_score"]]),
                     labels=torch.zeros(1, dtype=torch.long), image_size=size, class_names={0: pair["category"]})
    canvas = np.full((side, side, 3), 255, np.uint8)
    canvas[:size[0], :size[1]] = draw_detections(overlay(small, heat), ref)
    x1, y1, x2, y2 = (int(round(v * f)) for v in pair["gt_box"])
    cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), (0, 255, 0), 1)
    scale, thickness, _ = text_style((side, side))
    cv2.putText(canvas, f"E={value:.2f}", (2, side - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2,
                cv2.LINE_AA)
    cv2.putText(canvas, f"E={value:.2f}", (2, side - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                thickness, cv2.LINE_AA)
    return canvas

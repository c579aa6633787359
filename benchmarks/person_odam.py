"""ODAM-style box-regression evidence on the real persons: does it lift insertion above the box prior? (issue 4/4 F)

ODAM (Zhao et al., ICLR 2023) explains a detection by its class score *and* its four box-regression outputs.
Here each of the person's box coordinates (x1, y1, x2, y2 in network pixels, read at the anchor that kept
the detection) is a target of LayerCAM at the detection's own head level (the shipped ``layercam-level``, run
through the shipped engine): a coordinate can move either way, so each is explained as +x and -x and the two
maps added (LayerCAM keeps positive gradients only). Maps compared, beside the box prior:

- ``class``: the shipped ``layercam-level`` (the class score);
- ``box``: the sum of the four coordinates' maps, each normalised to max 1;
- ``class+box``: the class map plus the box map, each normalised to max 1;
- the same three times the shipped window (``dsxai.window.box_window``, sigma = box / 2).

Scored as in ``person_window.py``: pointing game and energy in the COCO mask, deletion / insertion AUC
(blur baseline, conf 0.01, K steps) with the paired difference to the box prior.

    python benchmarks/person_odam.py --limit 20      # a screen: 37 pairs, ~25 min on 2 cores

Writes ``benchmarks/results/person_odam[-limitN][-kK].json`` (per-pair values included).
"""
from __future__ import annotations

import argparse
import time
from functools import partial
from typing import Any

import torch

from dsxai.bench import load_bench_adapter
from dsxai.bench.faithfulness import FAITHFULNESS_CONF
from dsxai.boxes import box_iou
from dsxai.engine import normalize_maps
from dsxai.imaging import load_image
from dsxai.metrics import baseline_maps
from dsxai.pipeline import build_method
from dsxai.window import DEFAULT_SCALE, box_window
from person_fusion_variants import D, collect
from person_window import PRIOR, report, score_into, write_summary

#: per detection: the class score, then +x1, +y1, +x2, +y2, -x1, -y1, -x2, -y2
OUTPUTS = 9


class ClassAndBoxTargets:
    """The shipped YOLO box target's class score plus its anchor's four box coordinates (both signs), nine
    scalars per detection in that order; the level of each is the detection's own."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __call__(self, output: Any) -> list[torch.Tensor]:
        scores = self.base(output)
        dense = self.base.dense(output)
        out = []
        for b, anchors in enumerate(self.base.anchors):
            coords = dense.boxes[b, anchors.to(dense.boxes.device)].to(scores[b].dtype)
            out.append(torch.cat([scores[b][:, None], coords, -coords], 1).flatten())
        return out

    def source_layers(self) -> list[list[str]]:
        return [[name for name in names for _ in range(OUTPUTS)] for names in self.base.source_layers()]

    @property
    def detections(self):
        return self.base.detections


def odam_maps(adapter, rec: dict, classes: list[int]) -> dict[str, torch.Tensor]:
    """The class, box and class+box maps of the record's matched detections, ``[T, H, W]`` each."""
    batch = adapter.preprocess(load_image(rec["image"]))
    target = ClassAndBoxTargets(adapter.target(batch, "boxes", conf=0.25, classes=classes))
    cam = build_method(adapter, "layercam-level")
    maps = batch.geometries[0].maps_to_original(cam.explain(batch.tensor, target).maps[0])
    dets = target.detections[0]
    index = box_iou(rec["matched"].boxes, dets.boxes).argmax(1)
    if not torch.allclose(dets.boxes[index], rec["matched"].boxes, atol=1e-3):
        raise RuntimeError(f"other detections than the benchmark's in {rec['image']}")
    maps = maps.reshape(len(dets), OUTPUTS, *maps.shape[-2:])[index]
    cls = normalize_maps(maps[:, 0])
    box = normalize_maps(sum(normalize_maps(maps[:, 1 + k] + maps[:, 5 + k]) for k in range(4)))
    both = normalize_maps(cls + box)
    out = {"class (layercam-level)": cls, "box (4 coordinates)": box, "class+box": both}
    return {**out, **{f"{name} +window": box_window(m, rec["boxes"], DEFAULT_SCALE) for name, m in out.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="the first N images with persons")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--maps", default=None, help="comma-separated subset of the map names to score")
    args = parser.parse_args(argv)
    adapter = load_bench_adapter(D / "weights/yolov8s_fall_ultralytics/best.pt")
    records = collect(args.limit, adapter)
    classes = sorted({int(c) for rec in records for c in rec["matched"].labels})
    predict = partial(adapter.predict, conf=FAITHFULNESS_CONF)
    wanted = None if args.maps is None else {m.strip() for m in args.maps.split(",")}
    rows: dict[str, dict[str, list[float]]] = {}
    t0 = time.perf_counter()
    for rec in records:
        kinds = {k: v for k, v in odam_maps(adapter, rec, classes).items() if wanted is None or k in wanted}
        kinds[PRIOR] = baseline_maps(PRIOR, rec["boxes"], rec["geometry"].original_size)
        score_into(rows, predict, rec, kinds, args.steps)
    summary = report(rows, len(records), args.steps, time.perf_counter() - t0)
    write_summary("person_odam", args.limit, args.steps,
                  {"pairs": len(rows[PRIOR]["insertion_auc"]), "images": len(records), "steps": args.steps,
                   "limit": args.limit, "maps": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

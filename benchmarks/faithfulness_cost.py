"""What faithfulness (deletion / insertion) costs a benchmark run, against what its protocol needs.

The protocol needs ``2 + 2 M T (K - 1)`` perturbed forwards per image with ``T >= 1`` matched pairs (``M`` map
kinds = the methods + 3 baselines, ``K`` steps; the original and the fully-deleted image shared by all
curves): :func:`dsxai.metrics.faithfulness_forwards`. This script

1. counts the forwards of the whole selected set (``dsxai.bench.faithfulness.plan_forwards``: one detection
   forward per image, the count the run prints before it starts);
2. runs ``dsxai.bench.run_benchmark(..., faithfulness=True)`` on the first ``--limit`` images, with a forward
   hook on the model counting every image it sees, and times the run's wall clock;
3. times one forward as the protocol runs it (``adapter.predict`` of one image at conf 0.01, median of
   ``--reps`` after a warm-up, the mean of that before and after the run) and one image of a ``--batch-size``
   batch, in the same process;
4. prints the protocol's count, the forwards run, the wall time, ``ratio = wall / (count x one forward)`` (the
   target is <= 1.2 on CPU: no waste beyond the forwards themselves) and the whole set's estimate
   ``count(all) x one forward x ratio``.

    python benchmarks/faithfulness_cost.py --synthetic --scenes 4
    D=../shared/data; python benchmarks/faithfulness_cost.py $D/weights/yolov8s_fall_ultralytics/best.pt \\
        --class-map benchmarks/class_maps/yolov8s_fall_person.json \\
        --coco $D/coco_subset/annotations/instances_val2017_subset.json --images $D/coco_subset/images \\
        --methods hirescam,layercam --limit 2 --name person

Writes ``benchmarks/results/faithfulness_cost-<name>-<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dsxai import bench
from dsxai.bench.config import read_class_map
from dsxai.bench.faithfulness import FAITHFULNESS_CONF, map_kinds, plan_forwards
from dsxai.bench.per_image import BenchSetup
from dsxai.groundtruth import keep_categories, load_coco, map_classes
from dsxai.imaging import load_image

ROOT = Path(__file__).resolve().parent


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="shapes-yolo")
    p.add_argument("--synthetic", action="store_true", help="a shapes-world set of --scenes scenes")
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--coco", help="COCO instances json")
    p.add_argument("--images", help="the folder its file_name entries are relative to")
    p.add_argument("--class-map", help="JSON {model_class: coco_category_name}")
    p.add_argument("--categories", default=None)
    p.add_argument("--methods", default="hirescam,layercam")
    p.add_argument("--limit", type=int, default=None, help="images run (default: all); the count covers all")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--reps", type=int, default=10, help="timed forwards of one image")
    p.add_argument("--name", default="shapes")
    return p.parse_args()


def plan_all(adapter: Any, ann: Path, images: Path, args: argparse.Namespace, out: Path) -> Any:
    """The forward plan of every selected image (not only --limit), as a run would print it."""
    gt = load_coco(ann, images)
    class_map = read_class_map(args.class_map)
    class_to_cat = map_classes(adapter.class_names, gt.categories, class_map)
    if args.categories:
        class_to_cat = keep_categories(class_to_cat, gt.categories, args.categories.split(","))
    cfg = bench.BenchConfig(adapter, ann, images, out, methods=args.methods.split(","), steps=args.steps,
                            faithfulness=True, batch_size=args.batch_size, class_map=class_map)
    setup = BenchSetup(cfg, adapter, gt, class_to_cat)
    return plan_forwards(setup, gt.image_ids(setup.category_ids, None)), gt, setup


def one_forward(adapter: Any, image: Any, batch: int, reps: int) -> float:
    """Median seconds per image of ``adapter.predict`` at the protocol's conf, ``batch`` images a call."""
    images = [image] * batch
    adapter.predict(images, conf=FAITHFULNESS_CONF)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        adapter.predict(images, conf=FAITHFULNESS_CONF)
        times.append((time.perf_counter() - t0) / batch)
    return statistics.median(times)


def main() -> None:
    args = parse()
    work = Path(tempfile.mkdtemp(prefix="faith_cost_"))
    adapter = bench.load_bench_adapter(args.model, device=args.device)
    if args.synthetic:
        ann, images = bench.write_synthetic_coco(work / "shapes", scenes=args.scenes)
    else:
        ann, images = Path(args.coco), Path(args.images)
    plan, gt, setup = plan_all(adapter, ann, images, args, work / "plan")
    print(plan.describe())
    run_ids = gt.image_ids(setup.category_ids, args.limit)
    timed = next((i for i in run_ids if plan.pairs.get(i)), run_ids[0])  # an image the protocol perturbs
    image = load_image(gt.image_path(timed))
    before = one_forward(adapter, image, 1, args.reps)
    seen: list[int] = []
    hook = adapter.model.register_forward_hook(lambda m, a, o: seen.append(int(a[0].shape[0])))
    t0 = time.perf_counter()
    try:
        results = bench.run_benchmark(adapter, ann, images, work / "run", methods=args.methods.split(","),
                                      limit=args.limit, categories=args.categories and args.categories.split(","),
                                      class_map=args.class_map, faithfulness=True, steps=args.steps,
                                      batch_size=args.batch_size, gallery=0, progress=False)
    finally:
        hook.remove()
    wall = time.perf_counter() - t0
    single = (before + one_forward(adapter, image, 1, args.reps)) / 2  # before and after: a shared CPU drifts
    batched = one_forward(adapter, image, args.batch_size, max(2, args.reps // args.batch_size))
    report(args, plan, results, run_ids, sum(seen), wall, single, batched)


def report(args: argparse.Namespace, plan: Any, results: dict[str, Any], run_ids: list[int], hooked: int,
           wall: float, single: float, batched: float) -> None:
    """Print the figures and write them as json."""
    cost = results["faithfulness_cost"]
    count = cost["planned_forwards"]
    ratio = wall / (count * single) if count else float("nan")
    full = plan.total * single * ratio
    rows = {
        "images run / in the set": f"{len(run_ids)} / {len(plan.per_image)}",
        "matched pairs run": results["counts"]["matched"],
        "map kinds M, steps K": f"{len(map_kinds(args.methods.split(',')))}, {args.steps}",
        "protocol forwards (printed)": count,
        "forwards run (counter)": cost["forwards_run"],
        "model images seen by a hook (+ explain, + 1 count forward per image)": hooked,
        "one forward, batch 1 (ms)": round(1000 * single, 1),
        f"one image of a batch of {args.batch_size} (ms)": round(1000 * batched, 1),
        "batch speed-up (images/s vs batch 1)": round(single / batched, 2),
        "wall time of the run (s)": round(wall, 1),
        "faithfulness stage (s)": cost["seconds"],
        "ratio wall / (count x one forward)": round(ratio, 3),
        "ratio faithfulness stage / (count x one forward)": round(cost["seconds"] / (count * single), 3),
        "whole set: protocol forwards": plan.total,
        "whole set: estimate (count x one forward x ratio)": f"{full / 60:.1f} min",
    }
    device = results["config"]["extra"]["device"]
    width = max(map(len, rows))
    print(f"\n{args.name} on {device}, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    for k, v in rows.items():
        print(f"  {k:<{width}}  {v}")
    out = ROOT / "results" / f"faithfulness_cost-{args.name}-{device.split(':')[0]}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "machine": platform.platform(), "cpus": os.cpu_count(),
                               "figures": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

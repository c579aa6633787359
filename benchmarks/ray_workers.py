"""Images/s of ``dsxai bench`` on 1 and N Ray workers, in one run, plus the per-image cost of each method.

Each worker count benchmarks the same images into its own folder. A watcher thread timestamps the journal's
records as they land, so the script prints both the end-to-end rate (Ray's start and every worker's model
load included) and the steady rate (from the first finished image to the last). The per-method seconds are
the records' own ``seconds`` (explain call of all detections of an image) on the 1-worker run.

    python benchmarks/ray_workers.py                                  # shapes world, 12 scenes, 1 and 2 workers
    python benchmarks/ray_workers.py --model ../shared/data/weights/yolov5n_coco/yolov5n.pt \\
        --coco ../shared/data/coco_subset/annotations/instances_val2017_subset.json \\
        --images ../shared/data/coco_subset/images --limit 12 --workers 1
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import torch

from dsxai import bench
from dsxai.runs import write_atomic


def watch(journal: Path, stamps: list[float], stop: threading.Event) -> None:
    """Append a timestamp to ``stamps`` for each new item line of ``journal`` until ``stop``."""
    seen = 0
    while not stop.is_set():
        if journal.is_file():
            n = sum(1 for line in journal.read_text().splitlines() if '"kind": "item"' in line)
            stamps.extend([time.perf_counter()] * (n - seen))
            seen = max(seen, n)
        time.sleep(0.02)


def timed_run(args: argparse.Namespace, annotations: Path, images: Path, out: Path, workers: int) -> dict:
    """One benchmark run on ``workers`` workers: its wall time, rates and per-method seconds per image."""
    stamps: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(out / bench.JOURNAL, stamps, stop), daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    results = bench.run_benchmark(args.model, annotations, images, out, methods=args.methods.split(","),
                                  limit=args.limit, faithfulness=False, gallery=0, progress=False,
                                  workers=workers)
    wall = time.perf_counter() - t0
    time.sleep(0.1)
    stop.set()
    watcher.join()
    n = results["counts"]["images"]
    records = [json.loads(line) for line in (out / bench.JOURNAL).read_text().splitlines()[1:] if line.strip()]
    seconds = {m: sum(r["seconds"][m] for r in records if r.get("status") == "ok") / max(1, n)
               for m in args.methods.split(",")}
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else None
    return {"workers": workers, "images": n, "wall_s": round(wall, 2), "images_per_s": round(n / wall, 3),
            "first_image_s": round(stamps[0] - t0, 2) if stamps else None,
            "steady_images_per_s": None if steady is None else round(steady, 3),
            "explain_s_per_image": {m: round(s, 3) for m, s in seconds.items()}, "pairs": results["counts"]["pairs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-yolo")
    parser.add_argument("--coco", default=None, help="COCO json (default: a synthetic shapes set)")
    parser.add_argument("--images", default=None)
    parser.add_argument("--scenes", type=int, default=12, help="synthetic scenes (without --coco)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--methods", default="eigencam,gradcam")
    parser.add_argument("--workers", default="1,1x1,2",
                        help="comma-separated runs, in this order: W workers, or 1xT for one in-process worker on "
                             "T torch threads (Ray workers get cores // W threads each)")
    parser.add_argument("--json", default=None, help="write the rows here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.coco:
            annotations, images = Path(args.coco), Path(args.images)
        else:
            annotations, images = bench.write_synthetic_coco(Path(tmp) / "data", scenes=args.scenes)
        rows = []
        default_threads = torch.get_num_threads()
        for k, spec in enumerate(args.workers.split(",")):
            w, _, t = spec.partition("x")
            torch.set_num_threads(int(t) if t else default_threads)
            rows.append({"run": spec, "torch_threads": torch.get_num_threads() if w == "1" else None,
                         **timed_run(args, annotations, images, Path(tmp) / f"run{k}", int(w))})
            print(json.dumps(rows[-1]), flush=True)
        torch.set_num_threads(default_threads)
    report = {"model": args.model, "methods": args.methods, "load_average": os.getloadavg(),
              "cores": len(os.sched_getaffinity(0)), "rows": rows}
    if len(rows) > 1:
        report["speedup_vs_first"] = [round(r["images_per_s"] / rows[0]["images_per_s"], 2) for r in rows]
    print(json.dumps(report, indent=2))
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

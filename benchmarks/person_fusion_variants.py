"""Which way of combining a YOLO head's levels localizes real persons best? The ideas tried for issue 4/4 F.

One forward and one batched backward per image capture every level's LayerCAM and HiResCAM map of each
detection matched to a COCO person (the pairs of ``dsxai bench``, README command 3); each variant below is
then built from the same stored maps and scored with the benchmark's own metrics, beside the box prior:

    python benchmarks/person_fusion_variants.py                 # 87 images, 146 pairs (~2 min + scoring)
    python benchmarks/person_fusion_variants.py --limit 20      # a quick screen

Prints the table of ``benchmarks/README.md`` (Localization above the box prior) and writes
``benchmarks/results/person_fusion_variants.json``. ``mean`` / ``level`` reproduce ``layercam`` /
``layercam-level`` of ``dsxai bench`` exactly; the others are what did not ship.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from dsxai.bench import load_bench_adapter
from dsxai.bench.score import bootstrap_ci, match_detections, score_maps
from dsxai.engine import normalize_maps
from dsxai.gradient import GradientCAM
from dsxai.groundtruth import load_coco, map_classes
from dsxai.imaging import load_image
from dsxai.metrics import baseline_maps
from dsxai.runs import write_atomic

D = Path(__file__).resolve().parents[2] / "shared" / "data"
KEYS = ("pointing_game_mask", "energy_mask", "energy_box", "iou_mask")
EXTRA = ["model.2", "model.4"]  # backbone stages at strides 4 and 8 (finer than P3's head input)
VARIANTS = {  # name -> (map kind, how the levels combine, options)
    "layercam, mean of levels (shipped default)": ("layer", "mean", {}),
    "hirescam, mean of levels": ("hires", "mean", {}),
    "layercam-level: own level only": ("layer", "level", {}),
    "hirescam-level: own level only": ("hires", "level", {}),
    "layercam, geometric mean of levels": ("layer", "geo", {}),
    "hirescam, geometric mean of levels": ("hires", "geo", {}),
    "layercam, max of levels": ("layer", "max", {}),
    "layercam, levels + backbone stride 8 (model.4)": ("layer", "mean", {"extra": ["model.4"]}),
    "layercam, backbone stride 8 only": ("layer", "only", {"extra": ["model.4"]}),
    "layercam, backbone stride 4 only": ("layer", "only", {"extra": ["model.2"]}),
    "layercam x soft box window (sigma = box / 2)": ("layer", "mean", {"gate": 0.5}),
    "layercam-level x soft box window": ("layer", "level", {"gate": 0.5}),
    "layercam squared (map ** 2)": ("layer", "mean", {"power": 2.0}),
    "layercam-level squared": ("layer", "level", {"power": 2.0}),
}


class _Both(GradientCAM):
    """Stores each source's LayerCAM and HiResCAM maps from the one backward the engine runs."""

    store: list[dict[str, torch.Tensor]]

    def cam_from_gradients(self, activations, gradients):
        layer = (gradients.relu() * activations).sum(1)
        self.store.append({"layer": layer.cpu(), "hires": (gradients * activations).sum(1).cpu()})
        return layer


def collect(limit: int | None, adapter=None) -> list[dict]:
    """Per image with matched persons: its geometry, boxes, objects and every layer's maps of those pairs."""
    adapter = adapter or load_bench_adapter(D / "weights/yolov8s_fall_ultralytics/best.pt")
    gt = load_coco(D / "coco_subset/annotations/instances_val2017_subset.json", D / "coco_subset/images")
    class_map = json.loads((Path(__file__).parent / "class_maps/yolov8s_fall_person.json").read_text())
    class_to_cat = map_classes(adapter.class_names, gt.categories, class_map)
    cats = sorted(set(class_to_cat.values()))
    layers = list(adapter.default_layers) + EXTRA
    records = []
    for image_id in gt.image_ids(cats, limit):
        image, objs = load_image(gt.image_path(image_id)), gt.objects(image_id, cats)
        batch = adapter.preprocess(image)
        target = adapter.target(batch, "boxes", conf=0.25, classes=sorted(class_to_cat))
        cam = _Both(adapter.model, layers)
        cam.store = []
        cam.explain(batch.tensor, target)
        dets = target.detections[0]
        pairs = match_detections(dets.boxes, dets.scores, [class_to_cat.get(int(c), -1) for c in dets.labels],
                                 torch.from_numpy(objs["boxes"]), objs["categories"], 0.5)
        if not pairs:
            continue
        d, g = [p[0] for p in pairs], [p[1] for p in pairs]
        records.append({"image": gt.image_path(image_id), "matched": dets[d],
                        "geometry": batch.geometries[0], "size": tuple(batch.tensor.shape[-2:]),
                        "own": [layers.index(n) for n in (target.source_layers()[0][i] for i in d)],
                        "net_boxes": dets.meta["network_boxes"][d], "boxes": dets.boxes[d],
                        "gt_boxes": torch.from_numpy(objs["boxes"][g]), "gt_masks": torch.from_numpy(objs["masks"][g]),
                        "maps": {k: {n: s[k][d] for n, s in zip(layers, cam.store)} for k in ("layer", "hires")}})
    return records


def _up(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(normalize_maps(maps.relu())[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _window(boxes: torch.Tensor, size: tuple[int, int], scale: float) -> torch.Tensor:
    """A Gaussian at each box centre with sigma = ``scale`` x the box's width and height."""
    yy = torch.arange(size[0])[None, :, None] + 0.5
    xx = torch.arange(size[1])[None, None, :] + 0.5
    c = ((boxes[:, :2] + boxes[:, 2:]) / 2)[:, :, None, None]
    s = ((boxes[:, 2:] - boxes[:, :2]) * scale).clamp_min(1)[:, :, None, None]
    return torch.exp(-((xx - c[:, 0]) ** 2 / (2 * s[:, 0] ** 2) + (yy - c[:, 1]) ** 2 / (2 * s[:, 1] ** 2)))


def variant(rec: dict, kind: str, how: str, opts: dict) -> torch.Tensor:
    """The maps of one variant over the original image, ``[T, H, W]``."""
    maps, size = rec["maps"][kind], rec["size"]
    heads = [maps[n] for n in list(maps)[:3]]
    if how == "level":
        ups = torch.stack([_up(m, size) for m in heads])
        out = ups[torch.tensor(rec["own"]), torch.arange(len(rec["own"]))]
    elif how == "only":
        out = _up(maps[opts["extra"][0]], size)
    else:
        ups = torch.stack([_up(m, size) for m in heads + [maps[n] for n in opts.get("extra", [])]])
        out = {"mean": ups.mean(0), "max": ups.amax(0), "geo": ups.clamp_min(1e-6).log().mean(0).exp()}[how]
    out = normalize_maps(out)
    if "gate" in opts:
        out = normalize_maps(out * _window(rec["net_boxes"], size, opts["gate"]))
    if "power" in opts:
        out = out ** opts["power"]
    return rec["geometry"].maps_to_original(out)


def table(records: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per-pair figures of every variant and of the box prior (plain and squared)."""
    rows = {name: {k: [] for k in KEYS} for name in list(VARIANTS) + ["box_gaussian", "box_gaussian squared"]}
    for rec in records:
        size = rec["geometry"].original_size
        prior = baseline_maps("box_gaussian", rec["boxes"], size)
        built = {name: variant(rec, *spec) for name, spec in VARIANTS.items()}
        built.update({"box_gaussian": prior, "box_gaussian squared": prior ** 2})
        for name, maps in built.items():
            for score in score_maps(maps, rec["gt_boxes"], rec["gt_masks"], 15.0, 0.5):
                for k in KEYS:
                    rows[name][k].append(score[k])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="the first N images with persons")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = table(collect(args.limit))
    n = len(rows["box_gaussian"]["energy_mask"])
    print(f"{n} pairs\n| map | pointing (mask) | energy (mask) [95% CI] | energy (box) | IoU@0.5 (mask) |\n|---|---|---|---|---|")
    summary = {}
    for name, vals in rows.items():
        mean = {k: sum(v) / max(len(v), 1) for k, v in vals.items()}
        ci = bootstrap_ci(vals["energy_mask"])
        summary[name] = {"mean": mean, "energy_mask_ci95": ci}
        print(f"| {name} | {mean['pointing_game_mask']:.3f} | {mean['energy_mask']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] "
              f"| {mean['energy_box']:.3f} | {mean['iou_mask']:.3f} |")
    out = Path(__file__).parent / "results" / ("person_fusion_variants.json" if args.limit is None
                                               else f"person_fusion_variants-limit{args.limit}.json")
    write_atomic(out, json.dumps({"pairs": n, "limit": args.limit, "variants": summary}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

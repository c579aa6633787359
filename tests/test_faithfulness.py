"""Deletion / insertion batched over every map kind of an image: the same numbers as one kind at a time,
exactly the protocol's forwards, counted and announced before the run starts, and off unless asked."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from dsxai import bench
from dsxai import metrics as M
from dsxai.bench import faithfulness as faith
from dsxai.boxes import paired_iou
from dsxai.cli import main
from dsxai.detections import Detections
from dsxai.imaging import load_image
from dsxai.pipeline import explain_maps
from test_metrics import ToyDetector, toy_scene

STEPS = 3


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    return bench.write_synthetic_coco(tmp_path_factory.mktemp("shapes"), scenes=2)


@pytest.fixture(scope="module")
def adapter():
    return bench.load_bench_adapter("shapes-yolo")


# --------------------------------------------------------------- the one-kind-at-a-time reference (before batching)


def _reference_scores(found, box, label):
    out = []
    for d in found:
        same = d.labels.cpu() == label
        if not bool(same.any()):
            out.append(0.0)
            continue
        ious = paired_iou(d.boxes.cpu()[same], box.cpu().expand(int(same.sum()), 4))
        out.append(float((ious * d.scores.cpu()[same]).max()))
    return torch.tensor(out, dtype=torch.float32)


def reference_deletion_insertion(adapter, image, detections, maps, steps, batch_size=16, conf=0.01):
    """The implementation before batching, one map kind per call: its own 2 shared images, then per map the
    inner deletion steps and the inner insertion steps, ``batch_size`` images a predict call."""
    rgb = load_image(image)
    maps = torch.nan_to_num(maps.float(), nan=0.0).clamp_min(0)
    t_count, (h, w) = maps.shape[0], rgb.shape[:2]
    original = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
    base = M.blurred(original)
    order = torch.argsort(-maps.flatten(1), dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w).expand(t_count, -1))
    counts = [int(round(k / steps * h * w)) for k in range(1, steps)]

    def compose(t, k_count, mode):
        top = (rank[t] < k_count).view(1, h, w)
        img = torch.where(top, base, original) if mode == "deletion" else torch.where(top, original, base)
        return img.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()

    jobs = [rgb, compose(0, 0, "insertion")]
    for t in range(t_count):
        for mode in ("deletion", "insertion"):
            jobs.extend(compose(t, c, mode) for c in counts)
    found = []
    for start in range(0, len(jobs), batch_size):
        found.extend(adapter.predict(jobs[start:start + batch_size], conf=conf))
    inner = steps - 1
    deletion, insertion = torch.zeros(t_count, steps + 1), torch.zeros(t_count, steps + 1)
    for t in range(t_count):
        box, label = detections.boxes[t].cpu().reshape(1, 4), int(detections.labels[t])
        full, none = _reference_scores(found[0:2], box, label)
        offset = 2 + t * 2 * inner
        deletion[t, 0], deletion[t, steps], insertion[t, 0], insertion[t, steps] = full, none, none, full
        deletion[t, 1:steps] = _reference_scores(found[offset:offset + inner], box, label)
        insertion[t, 1:steps] = _reference_scores(found[offset + inner:offset + 2 * inner], box, label)
    return deletion, insertion


# ----------------------------------------------------------------------------------------------------- tests


def test_the_protocol_count():
    assert M.faithfulness_forwards(0, 7, 20) == 0  # no pair: nothing to run
    assert M.faithfulness_forwards(3, 0, 20) == 0
    assert M.faithfulness_forwards(1, 1, 1) == 2  # only the two shared images
    assert M.faithfulness_forwards(2, 5, 20) == 2 + 2 * 5 * 2 * 19


def test_box_span_moves_one_box_of_pixels_in_k_steps_known_answer():
    image, dets, good = toy_scene()  # the box holds 16 of the 64 pixels: step k of 4 moves the top 4 k
    maps = torch.stack([good, 1 - good])  # the object first (raster order inside it) / the background first
    toy = ToyDetector()
    res = M.deletion_insertion(toy, image, dets, maps, steps=4, baseline="mean", batch_size=4, span="box")
    assert res.deletion[0].tolist() == [1, 0.75, 0.5, 0.25, 0] and res.insertion[0].tolist() == [0, 0.25, 0.5, 0.75, 1]
    # the background first never reaches the object within one box of pixels: the last step is the curve's own
    assert res.deletion[1].tolist() == [1, 1, 1, 1, 1] and res.insertion[1].tolist() == [0, 0, 0, 0, 0]
    assert res.deletion_auc.tolist() == pytest.approx([0.5, 1.0]) and res.insertion_auc.tolist() == pytest.approx(
        [0.5, 0.0])
    assert sum(toy.calls) == M.faithfulness_forwards(2, 1, 4, "box") == 2 + 2 * 2 * 4
    assert M.box_areas(torch.tensor([[-5.0, -5.0, 4.0, 4.0], [0.0, 0.0, 100.0, 100.0], [3.0, 3.0, 3.0, 3.0]]),
                       (8, 8)) == [16, 64, 1]  # clipped to the image; an empty box still moves one pixel
    with pytest.raises(ValueError, match="unknown span 'mask'; use 'image'"):
        M.deletion_insertion(toy, image, dets, maps, steps=4, span="mask")
    # batched over kinds, the box span gives each kind's own numbers too
    kinds = [maps, torch.stack([1 - good, torch.rand(8, 8, generator=torch.Generator().manual_seed(0))])]
    batched = M.deletion_insertion_batch(ToyDetector().predict, image, dets, kinds, steps=4, baseline="mean",
                                         batch_size=3, span="box")
    for kind, got in zip(kinds, batched):
        one = M.deletion_insertion(ToyDetector(), image, dets, kind, steps=4, baseline="mean", span="box")
        assert torch.equal(got.deletion, one.deletion) and torch.equal(got.insertion, one.insertion)


def test_batched_kinds_equal_single_kinds_on_a_toy_detector():
    image, dets, good = toy_scene()
    kinds = [torch.stack([good, 1 - good]), torch.stack([1 - good, torch.rand(8, 8)])]
    toy, told = ToyDetector(), []
    batched = M.deletion_insertion_batch(toy.predict, image, dets, kinds, steps=4,
                                         baseline="mean", batch_size=5, on_forward=told.append)
    assert sum(toy.calls) == sum(told) == M.faithfulness_forwards(2, 2, 4) == 26  # 2 shared + 2 kinds x 2 x 2 x 3
    assert max(toy.calls) == 5 and told == toy.calls
    for maps, res in zip(kinds, batched):
        single = M.deletion_insertion(ToyDetector(), image, dets, maps, steps=4, baseline="mean")
        assert torch.equal(res.deletion, single.deletion) and torch.equal(res.insertion, single.insertion)
    assert batched[0].deletion[0].tolist() == [1, 0, 0, 0, 0] and batched[1].deletion[0].tolist() == [1, 1, 1, 1, 0]


def test_batched_equals_one_at_a_time_on_the_shapes_set(shapes_set, adapter):
    ann, images = shapes_set
    gt = bench.load_coco(ann, images)
    checked = 0
    for image_id in gt.coco.getImgIds():
        image = load_image(gt.image_path(image_id))
        dets, layercam = explain_maps(adapter, image, method="layercam", conf=0.25)
        _, hirescam = explain_maps(adapter, image, method="hirescam", conf=0.25)
        dets, h, w = dets[0], *image.shape[:2]
        if len(dets) < 2:
            continue
        kinds = [layercam[0], hirescam[0]] + [M.baseline_maps(b, dets.boxes, (h, w)) for b in M.BASELINES]
        predict = lambda ims: adapter.predict(ims, conf=0.01)  # noqa: E731
        batched = M.deletion_insertion_batch(predict, image, dets, kinds, steps=STEPS, batch_size=8)
        for maps, res in zip(kinds, batched):
            deletion, insertion = reference_deletion_insertion(adapter, image, dets, maps, STEPS)
            assert torch.allclose(res.deletion.cpu(), deletion, atol=1e-5, rtol=0)
            assert torch.allclose(res.insertion.cpu(), insertion, atol=1e-5, rtol=0)
            assert torch.allclose(res.deletion_auc.cpu(), M.auc(deletion), atol=1e-5, rtol=0)
        checked += len(dets)
        break  # one image of several detections keeps the test short; every kind and detection is compared
    assert checked >= 2  # the set has an image of several detections to test


def _count_forwards(model):
    seen = []
    handle = model.register_forward_hook(lambda mod, args, out: seen.append(int(args[0].shape[0])))
    return seen, handle


def test_the_run_does_exactly_the_forwards_it_prints(shapes_set, adapter, tmp_path, capsys):
    options = dict(methods=["layercam"], steps=3, gallery=0, progress=False, batch_size=3)
    seen, handle = _count_forwards(adapter.model)
    try:
        off = bench.run_benchmark(adapter, *shapes_set, tmp_path / "off", faithfulness=False, **options)
        without = sum(seen)
        seen.clear()
        capsys.readouterr()
        on = bench.run_benchmark(adapter, *shapes_set, tmp_path / "on", faithfulness=True, **options)
        with_faith = sum(seen)
    finally:
        handle.remove()
    printed = re.search(r"faithfulness: ([\d,]+) forwards for (\d+) images with (\d+) matched pairs",
                        capsys.readouterr().err)
    assert printed, "the run must print its forward count before it starts"
    planned, n_images, pairs = (int(g.replace(",", "")) for g in printed.groups())
    assert n_images == on["counts"]["images_ok"] == 2 and pairs == on["counts"]["matched"]
    per_image = [M.faithfulness_forwards(r["counts"]["matched"], 1 + len(M.BASELINES), 3)
                 for r in _journal(tmp_path / "on")]
    assert planned == sum(per_image)
    # the only forwards beyond the faithfulness-off run: the protocol's, plus one detection forward per image
    # that counted the pairs before the start
    assert with_faith - without == planned + n_images
    assert on["faithfulness_cost"]["forwards_run"] == on["faithfulness_cost"]["planned_forwards"] == planned
    assert on["faithfulness_cost"]["batch_size"] == 3 and on["faithfulness_cost"]["batch_size_tuning_forwards"] == 0
    assert "faithfulness_cost" not in off
    assert off["methods"]["layercam"]["deletion_auc"]["mean"] is None
    d, i = on["methods"]["layercam"]["deletion_auc"]["mean"], on["methods"]["layercam"]["insertion_auc"]["mean"]
    assert 0 <= d < i <= 1
    assert on["baselines"]["box_gaussian"]["deletion_auc"]["n"] == pairs


def _journal(out):
    lines = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    return lines[1:]


def test_the_benchmark_runs_the_box_span_and_records_it(shapes_set, adapter, tmp_path, capsys):
    options = dict(methods=["layercam"], steps=3, gallery=0, progress=False, batch_size=4, limit=1,
                   faithfulness=True)
    box = bench.run_benchmark(adapter, *shapes_set, tmp_path / "box", span="box", **options)
    image = bench.run_benchmark(adapter, *shapes_set, tmp_path / "image", **options)
    assert box["config"]["span"] == "box" and "span" not in image["config"]  # image-span runs resume as before
    pairs = box["counts"]["matched"]
    assert box["faithfulness_cost"]["forwards_run"] == M.faithfulness_forwards(pairs, 1 + len(M.BASELINES), 3, "box")
    # the same maps, other curves: the box span moves a box of pixels, not the image
    assert box["methods"]["layercam"]["insertion_auc"]["mean"] != image["methods"]["layercam"]["insertion_auc"]["mean"]
    assert "box span" in (tmp_path / "box" / "report.html").read_text()
    with pytest.raises(bench.BenchError, match="unknown span 'mask'"):
        bench.run_benchmark(adapter, *shapes_set, tmp_path / "bad", span="mask", **options)
    assert not (tmp_path / "bad").exists()


def test_faithfulness_is_off_unless_asked(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["bench", "--synthetic", "--scenes", "1", "--methods", "layercam", "--out", str(out), "--limit",
                 "1", "--gallery", "0", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["faithfulness"] is False and "faithfulness_cost" not in data
    assert data["methods"]["layercam"]["deletion_auc"]["mean"] is None
    assert "forwards" not in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "-2"])
def test_a_bad_batch_size_is_refused_before_any_output(tmp_path, capsys, bad):
    out = tmp_path / "run"
    code = main(["bench", "--synthetic", "--scenes", "1", "--faithfulness", "--batch-size", bad, "--out", str(out)])
    assert code != 0 and "batch_size" in capsys.readouterr().err
    assert not out.exists()
    dets = Detections(boxes=torch.tensor([[0.0, 0.0, 2.0, 2.0]]), scores=torch.ones(1),
                      labels=torch.zeros(1, dtype=torch.long), image_size=(4, 4))
    with pytest.raises(ValueError, match="batch_size"):
        M.deletion_insertion_batch(ToyDetector().predict, np.zeros((4, 4, 3), np.uint8), dets,
                                   [torch.rand(1, 4, 4)], batch_size=0)


def test_measure_batch_size_picks_the_fastest_per_image(monkeypatch):
    """A predict whose cost is fixed per call favours the larger batch; one whose cost grows faster than the
    batch favours batch 1: the choice follows the measured time per image, not a constant."""
    image = np.zeros((8, 8, 3), np.uint8)
    monkeypatch.setattr(faith, "BATCH_CANDIDATES", {"cpu": (1, 4)})
    clock = [0.0]

    def costs(per_call):
        def predict(images):
            clock[0] += per_call(len(images))
        return predict

    chosen, per_image, run = faith.measure_batch_size(costs(lambda n: 1.0), image, torch.device("cpu"),
                                                      clock=lambda: clock[0])
    assert chosen == 4 and per_image == {1: 1.0, 4: 0.25} and run == 3 * 1 + 3 * 4
    chosen, per_image, _ = faith.measure_batch_size(costs(lambda n: float(n * n)), image, torch.device("cpu"),
                                                    clock=lambda: clock[0])
    assert chosen == 1 and per_image == {1: 1.0, 4: 4.0}


def test_an_unset_batch_size_is_measured_once_and_accounted_for(shapes_set, adapter, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.setattr(faith, "BATCH_CANDIDATES", {"cpu": (1, 2)})
    options = dict(methods=["layercam"], gallery=0, progress=False)
    seen, handle = _count_forwards(adapter.model)
    try:
        plain = bench.run_benchmark(adapter, *shapes_set, tmp_path / "off", faithfulness=False, **options)
        without = sum(seen)
        seen.clear()
        capsys.readouterr()
        out = bench.run_benchmark(adapter, *shapes_set, tmp_path / "auto", faithfulness=True, steps=3, **options)
    finally:
        handle.remove()
    said = re.findall(r"faithfulness batch size (\d+) \(per image: ", capsys.readouterr().err)
    assert len(said) == 1  # measured once per run, on its first image with pairs
    cost = out["faithfulness_cost"]
    assert cost["batch_size"] == int(said[0]) in (1, 2)
    assert cost["batch_size_tuning_forwards"] == 3 * 1 + 3 * 2
    assert cost["forwards_run"] == cost["planned_forwards"]
    assert plain["config"]["extra"]["batch_size"] is None and out["config"]["extra"]["batch_size"] is None
    # every forward is accounted for: the plain run's, one planning forward per image, the protocol's, the tuning
    n_images = out["counts"]["images_ok"]
    assert sum(seen) - without == n_images + cost["planned_forwards"] + cost["batch_size_tuning_forwards"]

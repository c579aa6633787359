"""The localization benchmark end to end on a shapes-world COCO set with the shipped YOLOv8 (and, when
``../shared/data`` exists, on 10 real COCO images)."""
from __future__ import annotations

import csv
import json

import pytest

from dsxai import bench, groundtruth
from dsxai.cli import main
from conftest import SHARED_DATA  # noqa: E402

SHARED = SHARED_DATA
SCENES = 12
METHODS = ["layercam", "hirescam"]


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    return bench.write_synthetic_coco(tmp_path_factory.mktemp("shapes"), scenes=SCENES)


@pytest.fixture(scope="module")
def adapter():
    return bench.load_bench_adapter("shapes-yolo")  # the shipped shapes-world YOLOv8


def _items(out):
    """The image records of a run's journal (its first line holds the settings)."""
    lines = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    assert lines[0]["kind"] == "settings"
    return lines[1:]


@pytest.fixture(scope="module")
def trained_run(shapes_set, adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    results = bench.run_benchmark(adapter, *shapes_set, out, methods=METHODS, faithfulness=False, gallery=1,
                                  progress=False)
    return out, results


def _pg(entry):
    return entry["pointing_game_box"]


def test_outputs_have_stable_keys(trained_run):
    out, results = trained_run
    data = json.loads((out / "results.json").read_text())
    assert set(data["methods"]) == set(METHODS) and set(data["baselines"]) == set(bench.BASELINES)
    n = data["counts"]["matched"]
    assert n >= SCENES  # the shapes detector finds most objects
    assert data["counts"]["gt"] == n + data["counts"]["missed_gt"]
    assert data["counts"]["detections"] == n + data["counts"]["unmatched_detections"]
    for section in ("methods", "baselines"):
        for entry in data[section].values():
            assert entry["n_pairs"] == n
            for key in ("pointing_game_box", "pointing_game_mask", "energy_box", "energy_mask", "iou_box",
                        "iou_mask", "loc_acc_box", "deletion_auc", "insertion_auc"):
                assert set(entry[key]) >= {"mean", "ci95"}
            lo, hi = entry["energy_box"]["ci95"]
            assert lo <= entry["energy_box"]["mean"] <= hi
            assert entry["deletion_auc"]["mean"] is None  # faithfulness off
            assert sum(c["n_pairs"] for c in entry["per_category"].values()) == n
    rows = list(csv.DictReader((out / "pairs.csv").open()))
    assert len(rows) == n * (len(METHODS) + len(bench.BASELINES))
    summary = (out / "summary.md").read_text()
    assert "| layercam |" in summary and "![metrics](metrics.png)" in summary
    assert (out / "metrics.png").stat().st_size > 1000
    assert all((out / "gallery" / f"{m}.png").is_file() for m in METHODS)
    items = _items(out)
    assert sorted(int(r["key"]) for r in items) == sorted(r["image_id"] for r in items) and len(items) == SCENES
    assert all(r["ok"] and r["status"] == "ok" for r in items)
    assert json.loads((out / "config.json").read_text())["config"] == data["config"]  # kept for people


def test_gradcam_family_beats_the_uninformed_baselines(trained_run):
    _, results = trained_run
    chance = max(_pg(results["baselines"][b])["ci95"][1] for b in ("uniform", "center"))
    for method in METHODS:
        pg = _pg(results["methods"][method])
        assert pg["mean"] >= chance + 0.4, (method, pg, chance)
        assert pg["ci95"][0] > chance


def test_randomized_weights_lose_the_object_extent(trained_run, shapes_set, adapter, tmp_path):
    """Model randomisation (Adebayo et al. 2018): same detections, maps from a re-initialised copy.

    The maps of a dense detector's box score stay near the scoring anchor whatever the weights (the head's
    receptive field), so the random model still *points* at the object (like the box-centre Gaussian
    baseline); what it loses is the object's extent: box localization accuracy and IoU drop.
    """
    _, trained = trained_run
    random = bench.run_benchmark(adapter, *shapes_set, tmp_path, methods=["layercam"], faithfulness=False,
                                 gallery=0, progress=False, explain_model=bench.randomized_copy(adapter.model, 0))
    assert random["counts"]["matched"] == trained["counts"]["matched"]  # detections come from the trained model
    t, r = trained["methods"]["layercam"], random["methods"]["layercam"]
    assert t["loc_acc_box"]["mean"] >= r["loc_acc_box"]["mean"] + 0.15, (t["loc_acc_box"], r["loc_acc_box"])
    assert t["iou_box"]["mean"] >= r["iou_box"]["mean"] + 0.04, (t["iou_box"], r["iou_box"])
    # the anchor prior: pointing game alone cannot tell the random model from the trained one
    assert _pg(r)["mean"] > _pg(random["baselines"]["center"])["mean"] + 0.3


def test_resume_finishes_an_interrupted_run(trained_run, shapes_set, adapter, tmp_path):
    _, full = trained_run
    first = bench.run_benchmark(adapter, *shapes_set, tmp_path, methods=METHODS, faithfulness=False, gallery=0,
                                progress=False, limit=4)
    assert first["counts"]["images"] == 4
    head = _items(tmp_path)
    resumed = bench.run_benchmark(adapter, *shapes_set, tmp_path, methods=METHODS, faithfulness=False,
                                  gallery=0, progress=False, resume=True)
    items = _items(tmp_path)
    assert items[:4] == head and len(items) == SCENES  # finished images were skipped, not redone
    assert resumed["counts"] == full["counts"]
    for m in METHODS:
        assert resumed["methods"][m]["pointing_game_box"] == full["methods"][m]["pointing_game_box"]
    with pytest.raises(bench.BenchError, match=r"other settings \(methods\).*start over without resuming") as err:
        bench.run_benchmark(adapter, *shapes_set, tmp_path, methods=["gradcam"], faithfulness=False, gallery=0,
                            progress=False, resume=True)
    assert "--" not in str(err.value)  # Python wording from the library
    assert _items(tmp_path) == items  # the refused resume kept the journal


def test_a_failing_image_is_recorded_and_the_run_goes_on(adapter, tmp_path):
    ann, images = bench.write_synthetic_coco(tmp_path / "data", scenes=3)
    broken = sorted(images.iterdir())[1]
    good = broken.read_bytes()
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    res = bench.run_benchmark(adapter, ann, images, out, methods=["layercam"], faithfulness=False, gallery=0,
                              progress=False)
    assert res["counts"]["images_failed"] == 1 and res["counts"]["images_ok"] == 2
    assert res["errors"][0]["file_name"] == broken.name and res["errors"][0]["error"]
    assert broken.name in (out / "summary.md").read_text()
    assert [r["ok"] for r in _items(out)] == [True, False, True]
    broken.write_bytes(good)  # fixed: a resume retries only the failed image
    res = bench.run_benchmark(adapter, ann, images, out, methods=["layercam"], faithfulness=False, gallery=0,
                              progress=False, resume=True)
    assert res["counts"]["images_failed"] == 0 and res["counts"]["images_ok"] == 3
    items = _items(out)
    assert [r["ok"] for r in items] == [True, True, True] and items[-1]["file_name"] == broken.name


def test_cli_synthetic_with_faithfulness(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["bench", "--synthetic", "--scenes", "2", "--methods", "layercam", "--out", str(out), "--steps",
                 "2", "--gallery", "0", "--no-progress", "--faithfulness"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["faithfulness"] is True and data["config"]["steps"] == 2
    d, i = data["methods"]["layercam"]["deletion_auc"]["mean"], data["methods"]["layercam"]["insertion_auc"]["mean"]
    assert 0 <= d <= 1 and 0 <= i <= 1 and i > d  # revealing the salient pixels first beats removing them
    assert "pairs" in capsys.readouterr().out


def test_corrupt_coco_json_gives_a_clear_error(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        bench.load_coco(bad, tmp_path / "images")
    with pytest.raises(bench.BenchError, match="not valid JSON"):
        bench.run_benchmark("shapes-yolo", bad, tmp_path / "images", tmp_path / "out", progress=False)
    code = main(["bench", "shapes-yolo", "--coco", str(bad), "--images", str(tmp_path / "images"), "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.json is not valid JSON" in err and "Traceback" not in err
    bad.write_text('{"images": []}')
    with pytest.raises(ValueError, match="not a COCO instances file"):
        bench.load_coco(bad, tmp_path / "images")


def test_missing_inputs_are_named_in_python_words_and_as_flags_on_the_cli(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    missing = tmp_path / "missing.json"
    with pytest.raises(FileNotFoundError, match="missing.json not found; pass the path of an instances") as err:
        bench.run_benchmark("shapes-yolo", missing, tmp_path / "images", tmp_path / "out", progress=False)
    assert "--" not in str(err.value)
    ann, _ = bench.write_synthetic_coco(tmp_path / "data", scenes=1)
    with pytest.raises(FileNotFoundError, match="image folder .*nowhere not found") as err:
        bench.load_coco(ann, tmp_path / "nowhere")
    assert "--" not in str(err.value)
    with pytest.raises(bench.BenchError, match=r"no methods given; pass e.g. methods=\["):
        bench.run_benchmark("shapes-yolo", ann, tmp_path / "images", tmp_path / "out2", methods=[" "])
    assert not (tmp_path / "out2").exists()  # refused before any output
    for argv, flag in ((["--coco", str(missing), "--images", str(tmp_path / "images")], "pass --coco"),
                       (["--coco", str(ann), "--images", str(tmp_path / "nowhere")], "pass --images DIR"),
                       (["--coco", str(ann), "--images", str(tmp_path / "images"), "--methods", ","], "--methods")):
        code = main(["bench", "shapes-yolo", *argv, "--out", str(tmp_path / "cli")])
        err = capsys.readouterr().err
        assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, err


def test_class_mapping():
    coco = {1: "person", 3: "car", 18: "dog"}
    assert bench.map_classes({0: "person", 1: "bicycle", 2: "car"}, coco) == {0: 1, 2: 3}
    assert bench.map_classes({1: "1", 3: "3", 5: "5"}, coco) == {1: 1, 3: 3}  # torchvision-style ids
    assert bench.map_classes({0: "Normal", 1: "Fall"}, coco, {"Normal": "person", "1": "person"}) == {0: 1, 1: 1}
    with pytest.raises(ValueError, match="no model class maps"):
        bench.map_classes({0: "disc", 1: "ring"}, coco)
    with pytest.raises(ValueError, match="not a category"):
        bench.map_classes({0: "Normal"}, coco, {"Normal": "human"})
    assert bench.map_classes is groundtruth.map_classes  # one implementation
    kept = groundtruth.keep_categories({0: 1, 2: 3}, coco, ["Person"])
    assert kept == {0: 1}
    with pytest.raises(ValueError, match=r"categories \['cat'\] are not in the annotations"):
        groundtruth.keep_categories({0: 1}, coco, ["cat"])


def test_matching_is_greedy_by_score_and_class_aware():
    import torch

    dets = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    gts = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    pairs = bench.match_detections(dets, torch.tensor([0.5, 0.9, 0.8]), [1, 1, 2], gts, [1, 1])
    # the higher-scored detection 1 takes object 0; detection 0 finds no free object; 2 has the wrong class
    assert [(d, g) for d, g, _ in pairs] == [(1, 0)]


def test_baselines_peak_where_documented():
    import torch

    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    g = bench.baseline_maps("box_gaussian", boxes, (100, 80))[0]
    y, x = divmod(int(g.argmax()), 80)
    assert (y, x) in {(39, 19), (39, 20), (40, 19), (40, 20)}  # the box centre (20, 40)
    c = bench.baseline_maps("center", boxes, (100, 80))[0]
    assert divmod(int(c.argmax()), 80) in {(49, 39), (49, 40), (50, 39), (50, 40)}
    assert torch.equal(bench.baseline_maps("uniform", boxes, (5, 5)), torch.ones(1, 5, 5))


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    vals = [0.0, 1.0] * 20
    a, b = bench.bootstrap_ci(vals, seed=3), bench.bootstrap_ci(vals, seed=3)
    assert a == b and a[0] < 0.5 < a[1]
    assert bench.bootstrap_ci([0.7]) == (0.7, 0.7)


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("which", ["yolov5n", "yolov8s_person"])
def test_real_coco_ten_images(which, tmp_path):
    coco = SHARED / "coco_subset"
    if which == "yolov5n":
        model, class_map = SHARED / "weights" / "yolov5n_coco" / "yolov5n.pt", None
    else:
        model = SHARED / "weights" / "yolov8s_fall_ultralytics" / "best.pt"
        class_map = tmp_path / "map.json"
        class_map.write_text(json.dumps({"Normal": "person", "Fall": "person"}))
    res = bench.run_benchmark(str(model), coco / "annotations" / "instances_val2017_subset.json",
                              coco / "images", tmp_path / "out", methods=["layercam"], limit=10,
                              class_map=class_map, faithfulness=False, gallery=0, progress=False)
    assert res["counts"]["images_ok"] == 10 and res["counts"]["matched"] >= 5
    pg = res["methods"]["layercam"]["pointing_game_box"]["mean"]
    assert pg > res["baselines"]["uniform"]["pointing_game_box"]["mean"] + 0.3
    assert res["methods"]["layercam"]["pointing_game_mask"]["mean"] is not None  # COCO polygons -> masks


# ----------------------------------------------------------------------------------------------- outputs


def test_an_output_folder_overlapping_the_inputs_is_refused(tmp_path, capsys):
    ann, images = bench.write_synthetic_coco(tmp_path / "data", scenes=2)
    before = sorted(p.name for p in images.iterdir())
    for out in (images, images / "run", tmp_path / "data", tmp_path):
        with pytest.raises(ValueError, match="choose an output folder outside"):
            bench.run_benchmark("shapes-yolo", ann, images, out, progress=False)
    assert sorted(p.name for p in images.iterdir()) == before and not (images / "run").exists()
    code = main(["bench", "shapes-yolo", "--coco", str(ann), "--images", str(images), "--out", str(images)])
    err = capsys.readouterr().err
    assert code == 2 and "choose an output folder outside" in err and len(err.strip().splitlines()) == 1


def test_rerun_files_are_atomic_listed_and_torn_ones_named(adapter, tmp_path, monkeypatch):
    import os
    import stat

    ann, images = bench.write_synthetic_coco(tmp_path / "data", scenes=2)
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        bench.run_benchmark(adapter, ann, images, out, methods=["layercam", "hirescam"], faithfulness=False,
                            gallery=1, progress=False)
    finally:
        os.umask(old)
    for name in ("config.json", "results.json", "pairs.csv", "summary.md", "metrics.png", "gallery/hirescam.png"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    bench.run_benchmark(adapter, ann, images, out, methods=["layercam"], faithfulness=False, gallery=1,
                        progress=False)
    assert sorted(p.name for p in (out / "gallery").iterdir()) == ["layercam.png"]  # the earlier run's is gone
    summary = (out / "summary.md").read_text()
    assert "gallery/layercam.png" in summary and "hirescam" not in summary
    listed = json.loads((out / "manifest.json").read_text())["files"]
    assert {"config.json", "journal.jsonl", "results.json", "pairs.csv", "summary.md",
            "gallery/layercam.png"} <= set(listed) and "gallery/hirescam.png" not in listed
    results_before = (out / "results.json").read_text()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # killed while rewriting: the finished files stay whole
        bench.run_benchmark(adapter, ann, images, out, methods=["layercam"], faithfulness=False, gallery=0,
                            progress=False, resume=True)
    monkeypatch.undo()
    assert (out / "results.json").read_text() == results_before


def test_a_journal_line_torn_by_a_kill_reruns_only_its_image(adapter, tmp_path):
    ann, images = bench.write_synthetic_coco(tmp_path / "data", scenes=3)
    out = tmp_path / "out"
    full = bench.run_benchmark(adapter, ann, images, out, methods=["layercam"], faithfulness=False, gallery=0,
                               progress=False)
    lines = (out / "journal.jsonl").read_text().splitlines()
    (out / "journal.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])  # killed mid-write
    resumed = bench.run_benchmark(adapter, ann, images, out, methods=["layercam"], faithfulness=False, gallery=0,
                                  progress=False, resume=True)
    items = _items(out)
    assert [r["image_id"] for r in items] == [r["image_id"] for r in json.loads("[" + ",".join(lines[1:]) + "]")]
    assert items[:2] == [json.loads(x) for x in lines[1:3]]  # the two whole records were kept, not redone
    assert resumed["methods"] == full["methods"] and resumed["counts"] == full["counts"]


def test_a_symlinked_journal_is_refused(adapter, tmp_path):
    ann, images = bench.write_synthetic_coco(tmp_path / "data", scenes=2)
    victim = tmp_path / "victim.jsonl"
    victim.write_text("precious\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "journal.jsonl").symlink_to(victim)
    with pytest.raises(ValueError, match="symlink"):
        bench.run_benchmark(adapter, ann, images, tmp_path / "out", methods=["layercam"], faithfulness=False,
                            gallery=0, progress=False, resume=True)
    assert victim.read_text() == "precious\n"


def test_every_image_failing_is_an_error_with_the_first_cause(adapter, tmp_path, capsys):
    ann, images = bench.write_synthetic_coco(tmp_path / "data", scenes=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(bench.BenchError, match="every image failed .*first error: FileNotFoundError: image not found"):
        bench.run_benchmark(adapter, ann, empty, tmp_path / "out", methods=["layercam"], faithfulness=False,
                            gallery=0, progress=False)
    assert (tmp_path / "out" / "results.json").is_file()  # the record of what failed is kept
    code = main(["bench", "shapes-yolo", "--coco", str(ann), "--images", str(empty), "--out", str(tmp_path / "cli"),
                 "--methods", "layercam", "--gallery", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "every image failed" in err and "--conf" not in err


def test_no_detections_blames_conf_and_a_bad_polygon_fails_only_its_image(tmp_path, capsys):
    ann, images = bench.write_synthetic_coco(tmp_path / "data", scenes=3)
    code = main(["bench", "shapes-yolo", "--coco", str(ann), "--images", str(images), "--out", str(tmp_path / "a"),
                 "--methods", "layercam", "--gallery", "0", "--no-progress", "--conf", "1"])
    assert code == 0 and "no detections in 3 image(s) at --conf 1.0" in capsys.readouterr().err
    data = json.loads(ann.read_text())
    first = data["annotations"][0]
    first["segmentation"] = [[1, 2, 3]]  # pycocotools raises a bare Exception on it
    del data["annotations"][1]["id"]     # given one, no traceback
    ann.write_text(json.dumps(data))
    code = main(["bench", "shapes-yolo", "--coco", str(ann), "--images", str(images), "--out", str(tmp_path / "b"),
                 "--methods", "layercam", "--gallery", "0", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["counts"]["images_failed"] == 1 and results["counts"]["images_ok"] == 2
    assert results["errors"][0]["image_id"] == first["image_id"]
    assert "annotation 1 of image" in results["errors"][0]["error"] and "cannot be drawn" in results["errors"][0]["error"]

"""``dsxai explain``: files written per image, exit codes, and no output at all for bad inputs."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from dsxai import Explanation
from dsxai.cli import main
from dsxai.colorbar import colorbar_layout
from dsxai.shapes import make_scenes

pytest.importorskip("ultralytics")

RANDOM_YOLO = ["yolov8n.yaml", "--imgsz", "160"]  # random weights, built from the yaml shipped with ultralytics
TINY = ["--conf", "1e-6", "--max-dets", "2"]


@pytest.fixture()
def pictures(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for i, scene in enumerate(make_scenes(3, seed=5, size=(96, 128))):
        path = folder / f"scene{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def _run(capsys, *argv):
    code = main(["explain", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_writes_pictures_and_json_per_image(pictures, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = _run(capsys, *RANDOM_YOLO, pictures[0], *TINY, "--out", out, "--colormap", "magma")
    assert code == 0, stdout
    assert sorted(p.name for p in out.iterdir()) == ["explanation.json", "scene0.json", "scene0.png",
                                                     "scene0_det0.png", "scene0_det1.png", "scene0_grid.png",
                                                     "scene0_maps.npz"]
    fused = cv2.imread(str(out / "scene0.png"))
    barred = (96 + colorbar_layout(128, (96, 128))[4], 128, 3)  # the picture, then its colour bar strip
    assert fused.shape == barred and cv2.imread(str(out / "scene0_det1.png")).shape == barred
    assert cv2.imread(str(out / "scene0_grid.png")).shape[1] == 2 * (128 + 4) + 4
    record = json.loads((out / "scene0.json").read_text())
    assert len(record["detections"]["boxes"]) == 2 and len(record["figures"]) == 2
    assert {"peak", "energy_in_box", "peak_in_box"} <= set(record["figures"][0])
    assert record["settings"]["method"] == "layercam" and record["settings"]["image"].endswith("scene0.png")
    assert "2 detection(s)" in stdout and str(out) in stdout and "outside box" in stdout
    back = Explanation.load(out, images=[str(pictures[0])])
    assert back.maps[0].shape == (2, 96, 128) and back.render(0, colorbar=False).shape == (96, 128, 3)


def test_folders_globs_method_layers_and_classes(pictures, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, *RANDOM_YOLO, pictures[0].parent, str(pictures[0].parent / "scene*.png"),
                             "--method", "hirescam", "--layers", "model.18,model.21", "--classes", "0,1,2,3,4,5",
                             *TINY, "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("scene*.json")) == ["scene0.json", "scene1.json", "scene2.json"]  # no repeats
    record = json.loads((out / "scene2.json").read_text())
    assert record["settings"]["method"] == "hirescam" and record["settings"]["layers"] == ["model.18", "model.21"]
    assert set(record["detections"]["labels"]) <= {0, 1, 2, 3, 4, 5}


def test_same_stem_in_two_folders_gets_two_outputs(pictures, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "scene0.png").write_bytes(pictures[1].read_bytes())
    out = tmp_path / "out"
    code, _, _ = _run(capsys, *RANDOM_YOLO, pictures[0], other / "scene0.png", *TINY, "--out", out)
    assert code == 0
    assert (out / "in__scene0.json").is_file() and (out / "other__scene0.json").is_file()


def test_colliding_stems_give_one_result_set_per_image(pictures, tmp_path, capsys):
    paths = []
    for folder, name, source in (("d1", "a.png", 0), ("d2", "a.png", 1), ("d3", "a_2.png", 2)):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / name)
        paths[-1].write_bytes(pictures[source].read_bytes())
    out = tmp_path / "out"
    code, _, err = _run(capsys, *RANDOM_YOLO, *paths, *TINY, "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.json")) == ["a_2.json", "d1__a.json", "d2__a.json", "explanation.json"]
    back = Explanation.load(out)
    assert len(back) == 3
    assert sorted(back.settings["images"].values()) == sorted(str(p) for p in paths)
    for stem, path in back.settings["images"].items():  # each result names the image it explains
        assert json.loads((out / f"{stem}.json").read_text())["settings"]["image"] == path


def test_a_stem_equal_to_another_images_per_detection_name_keeps_both(pictures, tmp_path, capsys):
    first, second = tmp_path / "a.png", tmp_path / "a_det0.png"  # a's first detection picture is a_det0.png
    first.write_bytes(pictures[0].read_bytes())
    second.write_bytes(pictures[1].read_bytes())
    out = tmp_path / "out"
    code, _, err = _run(capsys, *RANDOM_YOLO, first, second, *TINY, "--out", out)
    assert code == 0, err
    back = Explanation.load(out)
    assert len(back) == 2 and sorted(back.settings["images"].values()) == sorted([str(first), str(second)])
    assert (out / "a_det0.png").is_file() and (out / "a_det0_image.png").is_file()
    with pytest.raises(ValueError, match="clash"):
        back.save(tmp_path / "again", stems=["a", "a_det0"])


@pytest.mark.parametrize("where", ["same", "parent", "inside-folder-spec"])
def test_an_output_folder_overlapping_the_inputs_is_refused(pictures, tmp_path, capsys, where):
    before = {p: p.read_bytes() for p in pictures}
    folder = pictures[0].parent
    images, out = [folder], {"same": folder, "parent": tmp_path, "inside-folder-spec": folder / "out"}[where]
    code, _, err = _run(capsys, *RANDOM_YOLO, *images, *TINY, "--out", out)
    assert code == 2 and "choose an output folder outside" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(folder.iterdir()) == sorted(before) and all(p.read_bytes() == b for p, b in before.items())
    assert not (folder / "out").exists()


def test_a_rerun_leaves_one_run_in_the_folder(pictures, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(capsys, *RANDOM_YOLO, pictures[0], pictures[1], *TINY, "--out", out)[0] == 0
    assert (out / "scene1_det1.png").is_file()
    (out / "notes.txt").write_text("mine")  # not ours: never removed
    code, _, err = _run(capsys, *RANDOM_YOLO, pictures[0], "--conf", "1.0", "--method", "hirescam", "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["explanation.json", "notes.txt", "scene0.json", "scene0.png",
                                                     "scene0_maps.npz"]
    back = Explanation.load(out)
    assert len(back) == 1 and back.settings["method"] == "hirescam" and len(back.detections[0]) == 0


def test_zero_detections_write_the_picture_that_says_so(pictures, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = _run(capsys, *RANDOM_YOLO, pictures[0], "--conf", "1.0", "--out", out)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["explanation.json", "scene0.json", "scene0.png",
                                                     "scene0_maps.npz"]
    assert "no detections" in stdout
    picture = cv2.cvtColor(cv2.imread(str(out / "scene0.png")), cv2.COLOR_BGR2RGB)
    original = cv2.cvtColor(cv2.imread(str(pictures[0])), cv2.COLOR_BGR2RGB)
    assert picture.shape == original.shape and not np.array_equal(picture[:10], original[:10])  # the banner
    assert np.array_equal(picture[-40:], original[-40:])
    assert json.loads((out / "scene0.json").read_text())["figures"] == []


@pytest.mark.parametrize("case, message", [
    ("method", "unknown method 'nope'"),
    ("layer", "unknown layer name 'model.99'"),
    ("checkpoint", "checkpoint not found"),
    ("unreadable", "cannot read"),
    ("missing image", "image not found"),
    ("empty glob", "no files match"),
    ("class", "unknown class 'zebra'"),
    ("colormap", "unknown colormap"),
])
def test_bad_inputs_fail_with_one_line_and_write_nothing(pictures, tmp_path, capsys, case, message):
    out = tmp_path / "out"
    model, images, extra = RANDOM_YOLO, [pictures[0], pictures[1]], []
    if case == "method":
        extra = ["--method", "nope"]
    elif case == "layer":
        extra = ["--layers", "model.99"]
    elif case == "checkpoint":
        model = [tmp_path / "missing.pt"]
    elif case == "unreadable":
        bad = pictures[0].parent / "zz_broken.png"
        bad.write_bytes(b"not a png")
        images = [pictures[0], bad]  # the good image comes first: still nothing may be written
    elif case == "missing image":
        images = [pictures[0], tmp_path / "nope.jpg"]
    elif case == "empty glob":
        images = [str(tmp_path / "*.tif")]
    elif case == "class":
        extra = ["--classes", "zebra"]
    elif case == "colormap":
        extra = ["--colormap", "nope"]
    code, stdout, err = _run(capsys, *model, *images, *TINY, *extra, "--out", out)
    assert code != 0
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_shipped_model_by_name(pictures, tmp_path, capsys):
    scene = make_scenes(1, seed=2)[0]
    path = tmp_path / "shapes.png"
    cv2.imwrite(str(path), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    code, stdout, _ = _run(capsys, "shapes-yolo", path, "--out", tmp_path / "out")
    assert code == 0
    record = json.loads((tmp_path / "out" / "shapes.json").read_text())
    assert len(record["figures"]) >= 1 and set(record["detections"]["names"]) <= {"disc", "square", "triangle", "ring"}
    assert sum(f["peak_in_box"] for f in record["figures"]) >= 0.8 * len(record["figures"])


def test_unknown_zoo_name_and_missing_zoo_weights(tmp_path, monkeypatch):
    import dsxai.zoo as zoo

    with pytest.raises(ValueError, match="unknown zoo model 'shapes-nope'"):
        zoo.load_adapter("shapes-nope")
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="re-train"):
        zoo.load_adapter("shapes-unet")


def test_a_run_that_fails_midway_keeps_the_earlier_results(pictures, tmp_path, capsys, monkeypatch):
    import dsxai.pipeline as module

    out = tmp_path / "out"
    assert _run(capsys, *RANDOM_YOLO, pictures[0], pictures[1], *TINY, "--out", out)[0] == 0
    before = sorted(p.name for p in out.iterdir())
    original, calls = module.explain, []

    def fails_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "explain", fails_second)
    code, _, err = _run(capsys, *RANDOM_YOLO, pictures[0], pictures[1], *TINY, "--method", "hirescam", "--out", out)
    assert code == 2 and "out of memory" in err
    assert sorted(p.name for p in out.iterdir()) == before  # nothing of the earlier run was deleted
    back = Explanation.load(out)
    assert len(back) == 1 and back.settings["method"] == "hirescam"  # the index lists what this run finished

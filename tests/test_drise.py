"""D-RISE: black-box per-box maps (masks, similarity, known answer, seeds, errors, the entry points)."""
from __future__ import annotations

import json

import pytest
import torch

import dsxai
from dsxai import bench, drise
from dsxai.cli import main
from dsxai.detections import Detections
from dsxai.metrics import pointing_game
from dsxai.pipeline import explain_maps
from dsxai.shapes import make_scenes
from _model_state import assert_unchanged, snapshot

#: small and few: the known answer holds with 8 x 8 cells and 200 masks at 160 px (9/9 boxes when measured)
FAST = {"masks": 200, "grid": 8, "progress": False}


@pytest.fixture(scope="module")
def adapter():
    from dsxai.adapters import resolve

    return resolve("shapes-yolo", imgsz=160)


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(3, seed=3)


def _peak_in_box(maps, boxes):
    """Per map: 1 when its maximum lies inside its own box (the pointing game without tolerance)."""
    return pointing_game(maps, boxes, tolerance=0).tolist()


def test_masks_are_soft_binary_grids_kept_with_probability_p():
    grids, shifts = drise.draw_grids(400, 8, 0.3, seed=1)
    masks = drise.grid_masks(grids, shifts, (40, 56))
    assert masks.shape == (400, 40, 56) and 0 <= masks.min() and masks.max() <= 1
    assert abs(float(masks.mean()) - 0.3) < 0.03  # the share kept is p, not the cell count
    assert len({tuple(s.tolist()) for s in (shifts * 5).long()}) > 10  # the shifts move the grid
    assert not torch.equal(masks[0], masks[1])
    again, _ = drise.draw_grids(400, 8, 0.3, seed=1)
    assert torch.equal(grids, again)


def test_similarity_is_iou_times_same_class_times_score():
    target = Detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.9], [1, 2], (40, 40))
    copies = [
        Detections([[0, 0, 10, 10], [0, 0, 10, 10]], [0.8, 0.5], [1, 2], (40, 40)),  # same box: the label decides
        Detections([[0, 0, 10, 5]], [1.0], [1], (40, 40)),                           # half the box: IoU 0.5
        Detections(torch.zeros(0, 4), [], [], (40, 40)),                              # nothing found
        Detections([[20, 20, 30, 30]], [0.6], [1], (40, 40)),                         # right place, wrong class
    ]
    weights = drise.drise_weights(target, copies)
    expected = torch.tensor([[0.8, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(weights, expected, atol=1e-6)


def test_known_answer_peak_in_own_box(adapter, scenes):
    hits = []
    for scene in scenes:
        dets, maps = explain_maps(adapter, scene.image, method="drise", method_options=FAST)
        assert maps[0].shape == (len(dets[0]), *scene.image.shape[:2])
        hits += _peak_in_box(maps[0], dets[0].boxes)
    assert len(hits) >= 6 and sum(hits) / len(hits) >= 0.9, hits


def test_centred_maps_put_more_of_their_mass_in_the_box_than_the_plain_sum(adapter, scenes):
    """The plain sum is mostly the floor every pixel shares (each is kept by a share p of the masks); centring
    the similarities removes it (measured with 1000 masks at 320 px: 0.12 -> 0.44 of the mass in the box)."""
    from dsxai.boxes import box_masks
    from dsxai.metrics import energy_pointing_game

    shares = {}
    for center in (True, False):
        values = []
        for scene in scenes:
            dets, maps = explain_maps(adapter, scene.image, method="drise",
                                      method_options={**FAST, "center": center})
            values.append(energy_pointing_game(maps[0], box_masks(dets[0].boxes, maps[0].shape[-2:])))
        shares[center] = float(torch.cat(values).mean())
    assert shares[True] > shares[False] + 0.1, shares


def test_same_seed_same_maps_whatever_the_chunking(adapter, scenes):
    image = scenes[0].image
    options = {**FAST, "masks": 20, "seed": 7}
    _, a = explain_maps(adapter, image, method="drise", method_options={**options, "mask_batch": 20})
    _, b = explain_maps(adapter, image, method="drise", method_options={**options, "mask_batch": 6})
    _, c = explain_maps(adapter, image, method="drise", method_options={**options, "seed": 8})
    assert torch.allclose(a[0], b[0], atol=1e-5)
    assert not torch.allclose(a[0], c[0], atol=1e-3)


def test_model_left_unchanged_and_no_gradient_needed(adapter, scenes):
    model = adapter.model
    model.train()
    model.requires_grad_(False)  # a model without gradients (as an exported one) still explains
    try:
        before = snapshot(model)
        dets, maps = explain_maps(adapter, scenes[1].image, method="drise",
                                  method_options={**FAST, "masks": 16})
        assert_unchanged(model, before)
        assert len(dets[0]) and torch.isfinite(maps[0]).all() and not maps[0].requires_grad
    finally:
        model.eval()
        model.requires_grad_(True)


@pytest.mark.parametrize("options, words", [
    ({"masks": 0}, "masks must be a whole number >= 1"),
    ({"p": 0.0}, "p must be a number strictly between 0 and 1"),
    ({"p": 1.5}, "p must be a number strictly between 0 and 1"),
    ({"grid": 2.5}, "grid must be a whole number"),
    ({"mask_batch": -1}, "mask_batch must be a whole number >= 1"),
    ({"seed": -3}, "seed must be a whole number >= 0"),
    ({"masked_conf": 2}, "masked_conf must be a number in [0, 1]"),
    ({"mask": 10}, "unknown D-RISE option(s) mask"),
])
def test_bad_options_are_one_clear_error(adapter, scenes, options, words):
    with pytest.raises(ValueError) as info:
        explain_maps(adapter, scenes[0].image, method="drise", method_options=options)
    assert words in str(info.value)


def test_layers_and_non_box_targets_are_refused(adapter, scenes):
    with pytest.raises(ValueError, match="takes no layers"):
        explain_maps(adapter, scenes[0].image, method="drise", layers=["model.22"])
    with pytest.raises(ValueError, match="takes no layers"):
        dsxai.explain(adapter, scenes[0].image, method="drise", layers="model.22", masks=8)
    with pytest.raises(ValueError, match="D-RISE explains detections' boxes"):
        explain_maps(adapter, scenes[0].image, method="drise", targets="classes")


def test_through_dsxai_explain(adapter, scenes):
    ex = dsxai.explain(adapter, [s.image for s in scenes[:2]], method="drise", masks=12, grid=8, seed=1,
                       progress=False, conf=0.3)
    assert ex.settings["method"] == "drise" and ex.settings["layers"] == []
    assert ex.settings["options"]["masks"] == 12
    for dets, maps, scene in zip(ex.detections, ex.maps, scenes):
        assert len(dets) and maps.shape == (len(dets), *scene.image.shape[:2])
        assert bool((dets.scores >= 0.3).all())  # the user's conf picks what is explained
        assert float(maps.amax((1, 2)).min()) > 0.99 and float(maps.min()) >= 0  # [0, 1] like every method


def test_cli_explain_with_drise(tmp_path, scenes, capsys):
    import cv2

    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scenes[0].image[:, :, ::-1])
    out = tmp_path / "out"
    code = main(["explain", "shapes-yolo", str(image), "--method", "drise", "--masks", "8", "--batch-size", "4",
                 "--seed", "3", "--imgsz", "160", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "layer:" not in printed.out  # a black-box method reads no layer, so none is named
    assert json.loads((out / "scene.json").read_text())["settings"]["method"] == "drise"
    assert (out / "scene_det0.png").is_file()
    for argv, words in ((["--method", "drise", "--masks", "0"], "--masks must be a whole number >= 1"),
                        (["--method", "drise", "--layers", "model.22"], "--layers does not apply to --method drise"),
                        (["--method", "drise", "--sanity"], "--sanity does not apply to --method drise"),
                        (["--masks", "10"], "--masks apply to --method drise only")):
        code = main(["explain", "shapes-yolo", str(image), *argv, "--out", str(tmp_path / "bad")])
        assert code != 0 and words in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_bench_with_drise_on_a_tiny_synthetic_set(tmp_path, monkeypatch):
    monkeypatch.setattr(drise, "DEFAULT_MASKS", 200)  # the benchmark takes D-RISE's defaults; fewer to stay quick
    monkeypatch.setattr(drise, "DEFAULT_GRID", 8)  # and coarser cells, which 200 masks at 160 px need
    ann, images = bench.write_synthetic_coco(tmp_path / "data", scenes=2)
    adapter = bench.load_bench_adapter("shapes-yolo", imgsz=160)
    results = bench.run_benchmark(adapter, ann, images, tmp_path / "out", methods=["drise"], faithfulness=False,
                                  gallery=0, progress=False)
    entry = results["methods"]["drise"]
    assert entry["n_pairs"] >= 2
    chance = results["baselines"]["uniform"]["pointing_game_box"]["mean"]
    assert entry["pointing_game_box"]["mean"] >= 0.9 > chance
    with pytest.raises(bench.BenchError, match="explain_model"):
        bench.run_benchmark(adapter, ann, images, tmp_path / "out2", methods=["drise"], progress=False,
                            explain_model=adapter.model)


@pytest.mark.parametrize("name", ["shapes-fasterrcnn", "shapes-yolo-seg"])
def test_known_answer_on_other_detector_families(name, scenes):
    """D-RISE needs only ``predict``: a torchvision two-stage detector and a YOLO segmenter, same known answer."""
    from dsxai.adapters import resolve

    adapter = resolve(name)
    ex = dsxai.explain(adapter, scenes[0].image, method="drise", seed=1, conf=0.5, **FAST)
    dets, maps = ex.detections[0], ex.maps[0]
    assert len(dets) >= 2 and maps.shape == (len(dets), *scenes[0].image.shape[:2])
    hits = _peak_in_box(maps, dets.boxes)
    assert sum(hits) >= 0.9 * len(hits)  # 5/5 (Faster R-CNN) and 4/4 (YOLO-seg) when measured

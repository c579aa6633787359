"""dsxai.explain() and Explanation: maps per detection, figures, pictures, save/load round trip."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

import dsxai
from dsxai import Detections, Explanation
from dsxai.colorbar import colorbar_layout
from dsxai.explanation import DEFAULT_METHOD, map_figures, resolve_classes
from dsxai.shapes import make_scenes

TINY = 1e-6  # conf for random weights


@pytest.fixture(scope="module")
def yolo():
    pytest.importorskip("ultralytics")
    from dsxai.adapters.ultralytics_yolo import UltralyticsAdapter

    torch.manual_seed(0)
    return UltralyticsAdapter("yolov8n.yaml", imgsz=160)  # random weights, no download


@pytest.fixture(scope="module")
def images():
    return [s.image for s in make_scenes(2, seed=2, size=(120, 160))]


@pytest.fixture(scope="module")
def explained(yolo, images):
    return dsxai.explain(yolo, images, conf=TINY, max_dets=3)


def test_explain_returns_one_map_per_detection(explained, images):
    assert isinstance(explained, Explanation) and len(explained) == 2
    assert explained.settings["method"] == DEFAULT_METHOD["detect"] == "layercam"
    assert explained.settings["layers"] == ["model.15", "model.18", "model.21"]
    assert explained.settings["max_dets"] == 3 and explained.settings["dsxai"] == dsxai.__version__
    for dets, maps, img in zip(explained.detections, explained.maps, explained.images):
        assert len(dets) == 3 and maps.shape == (3, 120, 160) and maps.device.type == "cpu"
        assert 0 <= float(maps.min()) and float(maps.max()) <= 1
        assert img.shape == (120, 160, 3) and img.dtype == np.uint8
    assert np.array_equal(explained.images[1], images[1])
    json.dumps(explained.settings)  # settings are plain JSON


def test_render_styles_keep_the_image_size(explained):
    fused = explained.render(0, colorbar=False)
    assert fused.shape == (120, 160, 3) and fused.dtype == np.uint8
    barred = explained.render(0)  # the default adds the colour bar strip below, the picture itself unchanged
    assert barred.shape == (120 + colorbar_layout(160, (120, 160))[4], 160, 3)
    assert np.array_equal(barred[:120], fused)
    assert not np.array_equal(fused, explained.images[0])
    assert not np.array_equal(explained.render(0, colormap="viridis", colorbar=False), fused)
    assert np.array_equal(explained.render(0, alpha=0.0, per_box=True), explained.render(0, alpha=0.0))
    grid = explained.render(1, style="grid", colorbar=False)
    assert grid.shape[0] >= 120 and grid.shape[1] == 3 * (160 + 4) + 4
    with pytest.raises(ValueError, match="needs detections with masks"):
        explained.render(0, style="masks")
    with pytest.raises(ValueError, match="unknown style"):
        explained.render(0, style="pie")
    with pytest.raises(IndexError):
        explained.render(5)


def test_figures_find_the_peak_and_the_energy_in_the_box():
    maps = torch.zeros(2, 40, 50)
    maps[0, 10, 20] = 1.0            # all energy in its box
    maps[0, 12, 22] = 0.5
    maps[1, 30, 5] = 1.0             # peak outside its box
    maps[1, 2, 45] = 0.9             # 0.9 / 1.9 of the energy inside
    masks = torch.zeros(2, 40, 50, dtype=torch.bool)
    masks[0, 10, 20] = True
    masks[1, 0:5, 40:50] = True
    dets = Detections(boxes=torch.tensor([[15., 5, 25, 15], [40, 0, 50, 5]]), scores=torch.tensor([0.9, 0.4]),
                      labels=torch.tensor([1, 2]), image_size=(40, 50), class_names={1: "a", 2: "b"}, masks=masks)
    fig = map_figures(dets, maps)
    assert fig[0]["peak"] == [20, 10] and fig[0]["peak_in_box"] and fig[0]["energy_in_box"] == pytest.approx(1.0)
    assert fig[0]["energy_in_mask"] == pytest.approx(1 / 1.5, abs=1e-5) and fig[0]["peak_in_mask"]
    assert fig[1]["peak"] == [5, 30] and fig[1]["peak_in_box"] is False and fig[1]["peak_in_mask"] is False
    assert fig[1]["energy_in_box"] == pytest.approx(0.9 / 1.9, abs=1e-5)
    assert fig[1]["energy_in_mask"] == pytest.approx(0.9 / 1.9, abs=1e-5) and fig[1]["name"] == "b" and fig[1]["score"] == 0.4
    assert map_figures(Detections.empty((4, 4)), torch.zeros(0, 4, 4)) == []


def test_classes_by_name_or_id():
    names = {0: "person", 1: "car", 2: "dog"}
    assert resolve_classes(["Car", 2, "0"], names) == [1, 2, 0]
    assert resolve_classes("dog", names) == [2]
    assert resolve_classes(None, names) is None
    with pytest.raises(ValueError, match="unknown class 'cat'.*0=person"):
        resolve_classes(["cat"], names)
    with pytest.raises(ValueError, match=r"class id\(s\) \[7\]"):
        resolve_classes([7], names)


def test_classes_filter_the_detections(yolo, images):
    wanted = int(dsxai.explain(yolo, images[:1], conf=TINY, max_dets=1).detections[0].labels[0])
    ex = dsxai.explain(yolo, images[:1], conf=TINY, max_dets=5, classes=[yolo.class_names[wanted]])
    assert len(ex.detections[0]) > 0 and set(ex.detections[0].labels.tolist()) == {wanted}
    assert ex.settings["classes"] == [wanted]


def test_bad_method_and_layer_fail_before_work(yolo, images):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        dsxai.explain(yolo, images, method="nope")
    with pytest.raises(ValueError, match="unknown layer name 'model.99'"):
        dsxai.explain(yolo, images, layers=["model.99"])


def test_method_and_target_options_are_told_apart(yolo, images):
    ex = dsxai.explain(yolo, images[:1], method="hirescam", layers="model.21", conf=TINY, max_dets=2, iou=0.5,
                       hflip=True)
    assert ex.settings["method"] == "hirescam" and ex.settings["layers"] == ["model.21"]
    assert ex.settings["options"] == {"iou": 0.5, "hflip": True} and ex.maps[0].shape == (2, 120, 160)


def test_zero_detections_give_an_empty_explanation(yolo, images, tmp_path):
    ex = dsxai.explain(yolo, images, conf=1.0)
    assert [len(d) for d in ex.detections] == [0, 0] and [tuple(m.shape) for m in ex.maps] == [(0, 120, 160)] * 2
    assert ex.figures(0) == []
    picture = ex.render(0)
    assert picture.shape == (120, 160, 3) and not np.array_equal(picture, images[0])
    ex.save(tmp_path)
    back = Explanation.load(tmp_path)
    assert len(back) == 2 and len(back.detections[1]) == 0 and back.maps[1].shape == (0, 120, 160)


def test_save_and_load_round_trip(explained, tmp_path):
    written = explained.save(tmp_path, stems=["a", "b"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["explanation.json", "a.png", "a.json", "a_maps.npz", "b.png", "b.json", "b_maps.npz",
                            "a_grid.png", "b_grid.png"]
                           + [f"{s}_det{k}.png" for s in "ab" for k in range(3)])
    assert sorted(p.name for p in written) == names
    assert cv2.imread(str(tmp_path / "a_grid.png")).shape[1] == 3 * (160 + 4) + 4  # three panels side by side
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["detections"]["boxes"] == explained.detections[0].to_dict()["boxes"]
    assert record["figures"] == explained.figures(0) and record["settings"]["method"] == "layercam"
    back = Explanation.load(tmp_path)
    assert len(back) == 2 and back.settings == json.loads(json.dumps(explained.settings))
    for i in range(2):
        assert torch.allclose(back.maps[i], explained.maps[i], atol=1e-3)  # float16 on disk
        assert torch.equal(back.detections[i].labels, explained.detections[i].labels)
        assert torch.allclose(back.detections[i].boxes, explained.detections[i].boxes)
        assert back.detections[i].class_names == explained.detections[i].class_names
        assert np.array_equal(back.images[i], explained.images[i])
    assert np.abs(back.render(1).astype(int) - explained.render(1)).max() <= 3  # float16 maps: tiny colour steps
    # without the images on disk: figures work, pictures need them given back
    explained.save(tmp_path / "lean", images=False)
    lean = Explanation.load(tmp_path / "lean")
    assert lean.images == [] and lean.figures(0)[0]["peak"] == explained.figures(0)[0]["peak"]
    with pytest.raises(ValueError, match="holds no images"):
        lean.render(0)
    given = Explanation.load(tmp_path / "lean", images=explained.images)
    assert given.render(0, colorbar=False).shape == (120, 160, 3)
    with pytest.raises(FileNotFoundError, match="no saved explanation"):
        Explanation.load(tmp_path / "nothing")


def test_masks_round_trip(tmp_path):
    h, w = 30, 37  # width not a multiple of 8: packed bits must unpack to the right size
    masks = torch.rand(2, h, w) > 0.5
    dets = Detections(boxes=torch.tensor([[0., 0, 10, 10], [5, 5, 37, 30]]), scores=torch.tensor([1.0, 0.5]),
                      labels=torch.tensor([1, 2]), image_size=(h, w), class_names={1: "x", 2: "y"}, masks=masks)
    ex = Explanation([dets], [torch.rand(2, h, w)], [np.zeros((h, w, 3), np.uint8)], {"method": "test"})
    assert ex.render(0, style="masks", colorbar=False).shape == (h, w, 3)
    ex.save(tmp_path)
    back = Explanation.load(tmp_path)
    assert torch.equal(back.detections[0].masks, masks)
    assert "energy_in_mask" in back.figures(0)[0]


def test_explanation_checks_its_parts():
    dets = Detections.empty((4, 5))
    with pytest.raises(ValueError, match="maps must be"):
        Explanation([dets], [torch.zeros(1, 4, 5)])
    with pytest.raises(ValueError, match="map sets"):
        Explanation([dets], [])


def test_segmenter_max_dets_limits_masks():
    pytest.importorskip("segmentation_models_pytorch")
    from dsxai.adapters.smp_segmentation import SMPAdapter
    from dsxai.zoo import SHAPES_CLASSES, UNET_MEAN, UNET_STD, build_shapes_unet

    torch.manual_seed(0)
    adapter = SMPAdapter(build_shapes_unet().eval(), mean=UNET_MEAN, std=UNET_STD,
                         class_names=("background",) + SHAPES_CLASSES)
    image = make_scenes(1, seed=3, size=(64, 64))[0].image
    ex = dsxai.explain(adapter, image, targets="masks", max_dets=2, min_area=1)
    assert ex.settings["task"] == "segment" and len(ex.detections[0]) == 2
    assert ex.detections[0].masks is not None and ex.maps[0].shape == (2, 64, 64)
    assert ex.render(0, style="masks", colorbar=False).shape == (64, 64, 3)
    assert "energy_in_mask" in ex.figures(0)[0]


def test_shipped_yolo_maps_peak_inside_their_boxes():
    from dsxai.zoo import TEST_SEED

    scenes = make_scenes(4, seed=TEST_SEED)
    ex = dsxai.explain("shapes-yolo", [s.image for s in scenes])  # the weights ship with the package
    figures = [f for i in range(len(ex)) for f in ex.figures(i)]
    assert len(figures) >= 6
    assert np.mean([f["peak_in_box"] for f in figures]) >= 0.8
    assert np.mean([f["energy_in_box"] for f in figures]) >= 0.5


def _small(method: str, n: int = 1, dets_per_image: int = 2) -> Explanation:
    """An explanation without a model: n images of 12 x 16 with random maps."""
    h, w = 12, 16
    dets = [Detections(boxes=torch.tensor([[0., 0, 8, 8]] * dets_per_image), scores=torch.ones(dets_per_image),
                       labels=torch.zeros(dets_per_image, dtype=torch.long), image_size=(h, w),
                       class_names={0: "x"}) for _ in range(n)]
    return Explanation(dets, [torch.rand(dets_per_image, h, w) for _ in range(n)],
                       [np.zeros((h, w, 3), np.uint8)] * n, {"method": method})


@pytest.mark.parametrize("stem", ["../x", "/tmp/x", "a/b", "..", "", "a\x00b"])
def test_save_keeps_every_file_inside_the_folder(tmp_path, stem):
    folder = tmp_path / "out"
    with pytest.raises(ValueError, match="unsafe"):
        _small("a").save(folder, stems=[stem])
    assert not folder.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_rerun_into_the_same_folder_leaves_one_run(tmp_path):
    _small("first", n=2, dets_per_image=3).save(tmp_path, stems=["a", "b"])
    (tmp_path / "mine.txt").write_text("not dsxai's")
    _small("second").save(tmp_path, stems=["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.png", "a_det0.png", "a_det1.png",
                                                          "a_grid.png", "a_maps.npz", "explanation.json", "mine.txt"]
    back = Explanation.load(tmp_path)
    assert len(back) == 1 and back.settings == {"method": "second"} and len(back.detections[0]) == 2


def test_load_reads_only_the_files_of_its_run(tmp_path):
    _small("one").save(tmp_path, stems=["a"])
    _small("stranger").save(tmp_path / "other", stems=["b"])
    for name in ("b.json", "b_maps.npz"):  # a record of another run dropped beside ours is not read
        (tmp_path / name).write_bytes((tmp_path / "other" / name).read_bytes())
    assert len(Explanation.load(tmp_path)) == 1
    index = json.loads((tmp_path / "explanation.json").read_text())
    (tmp_path / "explanation.json").write_text(json.dumps({**index, "stems": ["a", "b"]}))
    with pytest.raises(ValueError, match="not a file of the run"):
        Explanation.load(tmp_path)
    for stems in (["../other/b"], ["/etc/passwd"]):
        (tmp_path / "explanation.json").write_text(json.dumps({**index, "stems": stems}))
        with pytest.raises(ValueError, match="unsafe"):
            Explanation.load(tmp_path)
    record = json.loads((tmp_path / "a.json").read_text())
    (tmp_path / "explanation.json").write_text(json.dumps(index))
    (tmp_path / "a.json").write_text(json.dumps({**record, "maps_file": "../other/b_maps.npz"}))
    with pytest.raises(ValueError, match="unsafe"):
        Explanation.load(tmp_path)
    (tmp_path / "explanation.json").write_text('{"format": "dsxai.explanation/1", "st')
    with pytest.raises(ValueError, match="explanation.json is not valid JSON"):
        Explanation.load(tmp_path)


def test_older_folders_without_a_file_list_still_load(tmp_path):
    _small("old", n=2).save(tmp_path, stems=["a", "b"])
    index = json.loads((tmp_path / "explanation.json").read_text())
    del index["files"]
    (tmp_path / "explanation.json").write_text(json.dumps(index))
    assert len(Explanation.load(tmp_path)) == 2
    (tmp_path / "explanation.json").unlink()  # the CLI's folders before the index
    assert len(Explanation.load(tmp_path)) == 2


def test_explain_maps_always_returns_detections(yolo, images):
    """Class targets still name what each map explains; a target that keeps no detections is an error."""
    from dsxai.pipeline import explain_maps

    dets, maps = explain_maps(yolo, images, method="hirescam", targets="classes", conf=TINY, classes=[0, 5])
    assert [len(d) for d in dets] == [2, 2] and [m.shape[0] for m in maps] == [2, 2]
    assert dets[0].labels.tolist() == [0, 5]
    real_target = yolo.target

    def bare_target(batch, kind=None, **options):
        target = real_target(batch, kind, **options)
        return lambda output: target(output)  # scores, but no .detections

    yolo.target = bare_target
    try:
        with pytest.raises(ValueError, match="keep no detections"):
            explain_maps(yolo, images, method="hirescam", conf=TINY)
    finally:
        del yolo.target


def test_method_and_layers_are_resolved_once_per_call(yolo, images, monkeypatch):
    import dsxai.pipeline as pipeline

    real, built = pipeline.get_method, []
    monkeypatch.setattr(pipeline, "get_method", lambda name: built.append(name) or real(name))
    ex = dsxai.explain(yolo, images, method="HiResCAM", batch_size=1, conf=TINY, max_dets=2)
    assert built == ["HiResCAM"] and len(ex) == 2 and ex.settings["method"] == "hirescam"
    by_class = dsxai.explain(yolo, images[:1], method=dsxai.LayerCAM, conf=TINY, max_dets=2)
    assert by_class.settings["method"] == "layercam"

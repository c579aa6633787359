"""Bad input is refused up front, with one message for Python and the CLI: options, images, COCO files."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from dsxai import imaging, validation
from dsxai.cli import main

# ----------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("value", [-1, -1.0, 1.5, math.nan, math.inf, "0.5", True, None])
def test_conf_outside_unit_interval_is_refused(value):
    with pytest.raises(ValueError, match=r"conf must be a number in \[0, 1\]"):
        validation.check_conf(value)


def test_checks_return_the_canonical_value():
    assert validation.check_conf(0) == 0.0 and validation.check_conf(1) == 1.0
    assert validation.check_positive_int("limit", 3) == 3 and validation.check_positive_int("limit", 3.0) == 3
    assert validation.check_steps(2) == 2
    assert validation.check_non_negative("ring_px", 0) == 0.0
    assert validation.check_imgsz(640) == 640 and validation.check_imgsz((320, 640)) == (320, 640)


@pytest.mark.parametrize("check, args, message", [
    (validation.check_max_dets, (0,), "max_dets must be a whole number >= 1, got 0"),
    (validation.check_positive_int, ("limit", -2), "limit must be a whole number >= 1, got -2"),
    (validation.check_positive_int, ("scenes", 2.5), "scenes must be a whole number >= 1"),
    (validation.check_steps, (1,), "steps must be a whole number >= 2"),
    (validation.check_steps, (0,), "steps must be a whole number >= 2 .*got 0"),
    (validation.check_non_negative, ("ring_px", math.nan), "ring_px must be a finite number >= 0, got nan"),
    (validation.check_non_negative, ("min_area", -1), "min_area must be a finite number >= 0, got -1.0"),
    (validation.check_imgsz, (100000,), r"imgsz must be in \[32, 8192\] pixels, got 100000"),
    (validation.check_imgsz, ((640, 8),), r"imgsz must be in \[32, 8192\] pixels, got 8"),
    (validation.check_max_pixels, (0,), "max_pixels must be a whole number >= 1"),
])
def test_each_check_names_the_option_and_the_range(check, args, message):
    with pytest.raises(ValueError, match=message):
        check(*args)


@pytest.mark.parametrize("kwargs, message", [
    ({"conf": -1}, r"conf must be a number in \[0, 1\], got -1.0"),
    ({"conf": math.nan}, r"conf must be a number in \[0, 1\], got nan"),
    ({"max_dets": 0}, "max_dets must be a whole number >= 1"),
    ({"adapter_options": {"imgsz": 100000}}, r"imgsz must be in \[32, 8192\]"),
    ({"min_area": -5}, "min_area must be a finite number >= 0"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
])
def test_explain_refuses_bad_options_before_loading_the_model(tmp_path, kwargs, message):
    from dsxai import explain

    with pytest.raises(ValueError, match=message):  # the checkpoint does not exist: checked first anyway
        explain(tmp_path / "missing.pt", np.zeros((8, 8, 3), np.uint8), **kwargs)


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    return code, err


@pytest.mark.parametrize("argv, message", [
    (["--conf", "-1"], r"conf must be a number in [0, 1], got -1.0"),
    (["--conf", "nan"], r"conf must be a number in [0, 1], got nan"),
    (["--conf", "1.5"], r"conf must be a number in [0, 1], got 1.5"),
    (["--max-dets", "0"], "max_dets must be a whole number >= 1"),
    (["--imgsz", "100000"], "imgsz must be in [32, 8192] pixels, got 100000"),
    (["--max-pixels", "0"], "max_pixels must be a whole number >= 1"),
])
def test_cli_explain_refuses_bad_options_and_writes_nothing(tmp_path, capsys, argv, message):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    out = tmp_path / "out"
    code, err = _cli(capsys, "explain", "shapes-yolo", image, *argv, "--out", out)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--limit", "-2"], "limit must be a whole number >= 1, got -2"),
    (["--steps", "0"], "steps must be a whole number >= 2 (a curve needs two points), got 0"),
    (["--steps", "1"], "steps must be a whole number >= 2"),
    (["--scenes", "0"], "scenes must be a whole number >= 1, got 0"),
    (["--conf", "-1"], "conf must be a number in [0, 1], got -1.0"),
    (["--imgsz", "100000"], "imgsz must be in [32, 8192] pixels"),
])
def test_cli_bench_refuses_bad_options_before_writing_its_scenes(tmp_path, capsys, argv, message):
    pytest.importorskip("pycocotools")
    out = tmp_path / "run"
    code, err = _cli(capsys, "bench", "--synthetic", "--no-progress", "--out", out, *argv)
    assert code == 2 and message in err, err
    assert not (out / "synthetic").exists() and not (out / "results.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--ring-px", "nan"], "ring_px must be a finite number >= 0, got nan"),
    (["--ring-px", "-1"], "ring_px must be a finite number >= 0"),
    (["--min-area", "-1"], "min_area must be a finite number >= 0"),
    (["--min-area", "inf"], "min_area must be a finite number >= 0, got inf"),
    (["--conf", "2"], r"conf must be a number in [0, 1], got 2.0"),
    (["--max-outside", "nan"], r"max_outside must be a number in [0, 1], got nan"),
])
def test_cli_audit_refuses_bad_options_and_writes_nothing(tmp_path, capsys, argv, message):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    out = tmp_path / "out"
    code, err = _cli(capsys, "audit", "shapes-unet", "--images", image, "--out", out, *argv)
    assert code == 2 and message in err, err
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- images


def _jpeg(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(array, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


def _marked(h: int = 40, w: int = 64) -> np.ndarray:
    """An image whose top-left block is white: any rotation or flip moves it."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:10, :16] = 255
    return image


def test_truncated_jpeg_is_refused(tmp_path):
    data = _jpeg(_marked())
    whole, cut = tmp_path / "whole.jpg", tmp_path / "cut.jpg"
    whole.write_bytes(data + b"\x00" * 16)  # bytes after the end marker are harmless
    cut.write_bytes(data[:len(data) // 2])
    assert imaging.load_image(whole).shape == (40, 64, 3)
    with pytest.raises(ValueError, match="cut.jpg is truncated or damaged"):
        imaging.load_image(cut)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pil_does(tmp_path, orientation):
    PIL = pytest.importorskip("PIL")
    from PIL import Image, ImageOps

    source = Image.fromarray(_marked())
    exif = source.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    source.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    loaded = imaging.load_image(path)
    assert imaging.read_orientation(path) == orientation and PIL
    assert loaded.shape == expected.shape == ((40, 64, 3) if orientation < 5 else (64, 40, 3))
    assert np.abs(loaded.astype(int) - expected.astype(int)).max() <= 2  # same decoder, maybe other IDCT


def test_pixel_limit_is_documented_and_can_be_raised(tmp_path):
    big = np.zeros((7000, 7000, 3), np.uint8)  # 49 megapixels, above MAX_PIXELS
    assert 7000 * 7000 > imaging.MAX_PIXELS
    with pytest.raises(ValueError, match=r"7000x7000 = 49.0 megapixels, above the limit of 40.*max_pixels="):
        imaging.load_image(big)
    assert imaging.load_image(big, max_pixels=50_000_000).shape == big.shape
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="small.png is 40x30"):
        imaging.load_images([small], max_pixels=1000)


def test_permission_denied_is_named(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads any file: deny as the OS would
        def denied(self):
            raise PermissionError(13, "Permission denied", str(self))
        monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(PermissionError, match="locked.png: permission denied"):
        imaging.load_image(path)


# ----------------------------------------------------------------------------------------------- no evidence


class _Pooled(nn.Module):
    """A conv stem, a layer after global pooling (1x1) and a branch the output never uses (no gradient)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.unused = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        self.unused(x)
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.mark.parametrize("layer, reason", [("pool", "1x1"), ("unused", "every map is zero")])
def test_layer_without_evidence_warns_once(layer, reason):
    from dsxai.methods import get_method

    torch.manual_seed(0)
    model = _Pooled().eval()
    cam = get_method("gradcam")(model, [layer])
    x = torch.rand(2, 3, 16, 16)
    with pytest.warns(UserWarning, match=f"layer '{layer}' gives no evidence: .*{reason}.*dsxai layers MODEL"):
        maps = cam(x)
    assert float(maps.abs().max()) == 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cam(x)  # the same model and layer: warned once already
        get_method("gradcam")(model, ["conv"])(x)  # a layer with evidence: no warning


def test_a_blank_layer_beside_one_with_evidence_is_not_warned_about():
    """A pyramid level without detections on this image is all zero by design; the fused map still shows
    the other layer's evidence. A 1x1 layer in the set is still reported."""
    import warnings

    from dsxai.methods import get_method

    torch.manual_seed(0)
    model = _Pooled().eval()
    x = torch.rand(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = get_method("gradcam")(model, ["conv", "unused"])(x)
    assert float(maps.abs().max()) > 0
    with pytest.warns(UserWarning, match="layer 'pool' gives no evidence: .*1x1"):
        get_method("gradcam")(_Pooled().eval(), ["conv", "pool"])(x)


def test_figures_flag_an_all_zero_map():
    from dsxai import Detections
    from dsxai.explanation import map_figures

    dets = Detections(boxes=torch.tensor([[0.0, 0, 4, 4], [2.0, 2, 8, 8]]), scores=torch.tensor([0.9, 0.8]),
                      labels=torch.tensor([0, 1]), image_size=(8, 8), class_names={0: "a", 1: "b"})
    maps = torch.zeros(2, 8, 8)
    maps[1, 5, 5] = 1
    figures = map_figures(dets, maps)
    assert figures[0]["no_evidence"] is True and figures[0]["peak_in_box"] is True  # the peak of nothing
    assert figures[1]["no_evidence"] is False and figures[1]["energy_in_box"] == 1.0


# ----------------------------------------------------------------------------------------------- COCO files


def _coco(segmentation=None) -> dict:
    return {"images": [{"id": 1, "width": 10, "height": 10, "file_name": "a.png"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 0,
                             "segmentation": segmentation or [[0, 0, 4, 0, 4, 4, 0, 4]]}],
            "categories": [{"id": 1, "name": "person"}]}


def test_coco_without_categories_is_refused_naming_the_file(tmp_path):
    from dsxai.groundtruth import read_coco

    data = _coco()
    del data["categories"]
    path = tmp_path / "nocats.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="nocats.json is not a COCO instances file: .*'categories'"):
        read_coco(path)


def test_annotation_without_id_gets_one_and_the_caller_dict_is_kept():
    pytest.importorskip("pycocotools")
    from dsxai.groundtruth import annotation_mask, coco_index, read_coco

    data = _coco()
    data["annotations"].append(dict(data["annotations"][0]))
    del data["annotations"][1]["id"]
    checked, _ = read_coco(data)
    assert [a["id"] for a in checked["annotations"]] == [5, 6] and "id" not in data["annotations"][1]
    coco = coco_index(checked)
    assert annotation_mask(coco, checked["annotations"][1]).sum() == 16
    del data["annotations"][0]["image_id"]
    with pytest.raises(ValueError, match=r"annotations\[0\] lacks 'image_id'"):
        read_coco(data)


def test_a_bad_polygon_is_a_value_error_naming_the_annotation():
    pytest.importorskip("pycocotools")
    from dsxai.groundtruth import annotation_mask, coco_index, read_coco

    data, _ = read_coco(_coco(segmentation=[[1, 2, 3]]))
    with pytest.raises(ValueError, match="annotation 5 of image 1 has a segmentation that cannot be drawn"):
        annotation_mask(coco_index(data), data["annotations"][0])


def test_categories_are_not_matched_by_id_when_the_names_differ():
    from dsxai.groundtruth import ignored_categories, map_classes

    coco = {1: "person", 2: "bicycle", 3: "car"}
    with pytest.raises(ValueError, match="no model class maps .*class map"):
        map_classes({1: "disc", 2: "square", 3: "triangle"}, coco)
    assert map_classes({1: "disc", 2: "square"}, coco, {"disc": "person", "2": "car"}) == {1: 1, 2: 3}
    data = {"annotations": [{"category_id": c} for c in (1, 2, 3, 3)],
            "categories": [{"id": i, "name": n} for i, n in coco.items()]}
    assert ignored_categories(data, {1}) == ["bicycle", "car"]  # every one, not the first few


def test_explain_records_the_orientation_it_applied(tmp_path, capsys):
    pytest.importorskip("ultralytics")
    from PIL import Image

    from dsxai.shapes import make_scenes

    scene = make_scenes(1, seed=3, size=(96, 128))[0]
    source = Image.fromarray(scene.image)
    exif = source.getexif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: 128 high, 96 wide
    path = tmp_path / "turned.jpg"
    source.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    out = tmp_path / "out"
    code = main(["explain", "yolov8n.yaml", "--imgsz", "160", str(path), "--conf", "1e-6", "--max-dets", "1",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "turned.json").read_text())
    assert record["settings"]["exif_orientation"] == [6]
    assert record["detections"]["image_size"] == [128, 96]
    from dsxai import explain

    ex = explain("yolov8n.yaml", [path], conf=1e-6, max_dets=1, adapter_options={"imgsz": 160})
    assert ex.settings["exif_orientation"] == [6] and ex.images[0].shape == (128, 96, 3)


def test_the_cli_names_flags_where_the_library_names_options():
    from dsxai.commands import in_flag_words

    said = "too big; raise the limit (max_pixels=); pass trust=True; pass arch=, one of x"
    assert in_flag_words(said) == "too big; raise the limit (--max-pixels); pass --trust-checkpoint; pass --arch, one of x"

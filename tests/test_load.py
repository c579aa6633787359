"""``dsxai.adapters.load`` picks the right adapter and fails clearly; ``dsxai layers`` lists layers."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("YOLO_OFFLINE", "1")

from dsxai.adapters import load  # noqa: E402
from dsxai.cli import main  # noqa: E402
from conftest import SHARED_DATA  # noqa: E402
from dsxai.pipeline import explain_maps

SHARED = SHARED_DATA / "weights"


@pytest.fixture(scope="module")
def small_fasterrcnn():
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    return fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=5).eval()


def test_adapter_is_returned_as_is(small_fasterrcnn):
    adapter = load(small_fasterrcnn)
    assert type(adapter).__name__ == "TorchvisionDetectionAdapter"
    assert load(adapter) is adapter
    with pytest.raises(ValueError, match="already an Adapter"):
        load(adapter, imgsz=320)


def test_objects_of_each_family():
    pytest.importorskip("ultralytics")
    smp = pytest.importorskip("segmentation_models_pytorch")
    from ultralytics import YOLO

    yolo = YOLO("yolov8n.yaml")
    adapter = load(yolo, imgsz=160)
    assert type(adapter).__name__ == "UltralyticsAdapter" and adapter.model is yolo.model
    unet = smp.Unet("resnet18", encoder_weights=None, classes=3)
    assert type(load(unet)).__name__ == "SMPAdapter"
    assert type(load("yolov8n-seg.yaml", imgsz=160)).__name__ == "UltralyticsAdapter"


def test_unknown_object_says_what_to_use():
    with pytest.raises(TypeError, match="SegmenterAdapter"):
        load(torch.nn.Conv2d(3, 3, 1))


def test_torchvision_state_dict_needs_arch(tmp_path, small_fasterrcnn):
    path = tmp_path / "frcnn.pth"
    torch.save(small_fasterrcnn.state_dict(), path)
    with pytest.raises(ValueError, match="bare state dict.*arch="):
        load(path)
    adapter = load(path, arch="fasterrcnn_mobilenet_v3_large_320_fpn")
    for (name, a), b in zip(adapter.detector.state_dict().items(), small_fasterrcnn.state_dict().values()):
        assert torch.equal(a, b), name
    assert adapter.model.num_classes == 5
    with pytest.raises(ValueError, match="does not fit arch"):
        load(path, arch="fasterrcnn_resnet50_fpn")
    with pytest.raises(ValueError, match="unknown arch 'fasterrcnn_resnet9000'"):
        load(path, arch="fasterrcnn_resnet9000")


def test_smp_state_dict(tmp_path):
    smp = pytest.importorskip("segmentation_models_pytorch")
    unet = smp.Unet("resnet18", encoder_weights=None, classes=4)
    path = tmp_path / "unet.pt"
    torch.save({"state_dict": unet.state_dict()}, path)
    adapter = load(path, arch="smp:Unet:resnet18")
    assert type(adapter).__name__ == "SMPAdapter"
    out = adapter.model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 4, 64, 64)
    with pytest.raises(ValueError, match="smp:<Architecture>:<encoder>"):
        load(path, arch="smp:Unet")


def test_missing_corrupt_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found.*Ultralytics"):
        load(tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="damaged or not a PyTorch checkpoint"):
        load(tmp_path / "garbage.pt")
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load(tmp_path / "other.pt")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x01")
    with pytest.raises(ValueError, match="onnx2torch"):
        load(tmp_path / "model.onnx")
    with pytest.raises(ValueError, match="is a folder"):
        load(tmp_path)


def test_truncated_ultralytics_checkpoint(tmp_path):
    pytest.importorskip("ultralytics")
    from dsxai import zoo

    try:
        data = zoo.shapes_yolov8_path().read_bytes()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert type(load(zoo.shapes_yolov8_path(), imgsz=256)).__name__ == "UltralyticsAdapter"
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged"):
        load(tmp_path / "cut.pt")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/weights is absent")
def test_real_checkpoints_by_path():
    pytest.importorskip("ultralytics")
    yolov8 = load(SHARED / "yolov8s_fall_ultralytics" / "best.pt")
    assert type(yolov8).__name__ == "UltralyticsAdapter"
    yolov5_adapter = load(SHARED / "yolov5n_coco" / "yolov5n.pt")  # no yolov5 package needed
    assert type(yolov5_adapter).__name__ == "YOLOv5Adapter" and len(yolov5_adapter.class_names) == 80


def test_layers_command(capsys):
    pytest.importorskip("ultralytics")
    assert main(["layers", "yolov8n.yaml", "--imgsz", "128"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "(default)" in line]
    assert [line.split()[0] for line in lines] == ["model.15", "model.18", "model.21"]
    assert "[1, 64, 16, 16]" in out  # P3 of YOLOv8n at 128 px: 64 channels, stride 8


def test_layers_command_errors(tmp_path, capsys):
    assert main(["layers", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and len(err.strip().splitlines()) == 1
    path = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(2)}, path)
    assert main(["layers", str(path)]) == 2
    assert "--arch" in capsys.readouterr().err


def _tiny_yolov5(path: Path) -> nn.Module:
    """A small YOLOv5-layout model saved so that its pickle names ``models.common`` / ``models.yolo``, as an
    original YOLOv5 checkpoint does (legacy format: its GLOBAL opcodes are plain text lines)."""
    from dsxai.adapters import yolov5_modules as v5

    torch.manual_seed(0)
    layers = [v5.Conv(3, 8, 3, 2), v5.Conv(8, 16, 3, 2), v5.Conv(16, 16, 3, 2), v5.C3(16, 16),
              v5.Conv(16, 32, 3, 2), v5.SPPF(32, 32),
              v5.Detect(3, ((10, 13, 16, 30), (30, 61, 62, 45)), (16, 32))]
    for i, m in enumerate(layers):
        m.i, m.f = i, ([3, 5] if i == 6 else -1)
    net = v5.Model(layers, save=[3, 5], names=["disc", "square", "ring"]).eval()
    head = net.model[-1]
    head.stride = torch.tensor([8.0, 16.0])
    head.anchors /= head.stride.view(-1, 1, 1)
    torch.save({"model": net, "epoch": -1}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    for name in ("Model", "Detect"):
        data = data.replace(f"cdsxai.adapters.yolov5_modules\n{name}\n".encode(), f"cmodels.yolo\n{name}\n".encode())
    data = data.replace(b"cdsxai.adapters.yolov5_modules\n", b"cmodels.common\n")
    assert b"dsxai" not in data
    path.write_bytes(data)
    return net


def test_yolov5_layout_checkpoint_without_the_yolov5_package(tmp_path):
    """A pickle naming models.yolo.Model / models.common.C3 loads onto dsxai's classes, with the same output."""
    pytest.importorskip("ultralytics")
    from dsxai.adapters.checkpoint import checkpoint_family

    path = tmp_path / "tiny_yolov5.pt"
    net = _tiny_yolov5(path)
    assert checkpoint_family(path) == "yolov5"
    adapter = load(path, imgsz=64)
    assert type(adapter).__name__ == "YOLOv5Adapter" and adapter.default_layers == ["model.3", "model.5"]
    assert adapter.class_names == {0: "disc", 1: "square", 2: "ring"}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref, got = net(x), adapter.model(x)
    assert ref[0].shape == (1, 2 * (8 * 8 + 4 * 4), 8) and torch.allclose(ref[0], got[0], atol=1e-6)
    dets, maps = explain_maps(adapter, np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8),
                                 method="gradcam", conf=0.0, max_dets=3)
    assert len(dets[0]) == 3 and maps[0].shape == (3, 64, 64)

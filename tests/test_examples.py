"""The examples run as a user would run them: as scripts, writing pictures to --out."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from dsxai.colorbar import colorbar_layout
from dsxai.shapes import make_scenes
from dsxai.zoo import WEIGHTS_DIR

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHIPPED = {"explain_yolo.py": "shapes_yolov8.pt", "explain_fasterrcnn.py": "shapes_fasterrcnn.pt",
           "segment_unet.py": "shapes_unet.pt"}


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=240, env=env)


def _with_strip(size: list[int] | tuple[int, int], detections: bool) -> tuple[int, int]:
    """A picture's (h, w): the image, plus the colour bar strip below it when there is a map to show."""
    h, w = size
    return (h + colorbar_layout(w, (h, w))[4] if detections else h, w)


@pytest.mark.parametrize("script", sorted(SHIPPED))
def test_example_runs_on_the_shipped_model(script, tmp_path):
    assert (WEIGHTS_DIR / SHIPPED[script]).is_file(), "the shapes models ship with the package"
    out = tmp_path / "out"
    result = _run(script, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote pictures and JSON to {out}" in result.stdout
    records = sorted(out.glob("scene*.json"))
    assert len(records) >= 2
    for record in records:
        data = json.loads(record.read_text())
        picture = cv2.imread(str(out / data["pictures"]["fused"]))
        assert picture is not None and picture.shape[:2] == _with_strip(data["detections"]["image_size"],
                                                                         bool(data["figures"]))
    assert sum(len(json.loads(r.read_text())["figures"]) for r in records) >= 1  # a trained model finds shapes


def test_yolo_example_takes_weights_and_images(tmp_path):
    pytest.importorskip("ultralytics")
    image = tmp_path / "street.png"
    cv2.imwrite(str(image), make_scenes(1, seed=4, size=(96, 128))[0].image)
    out = tmp_path / "out"
    result = _run("explain_yolo.py", "--weights", "yolov8n.yaml", "--image", str(image), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "street.png").is_file() and (out / "street.json").is_file()
    shapes = {_with_strip((96, 128), False), _with_strip((96, 128), True)}  # random weights: maybe no detections
    assert cv2.imread(str(out / "street.png")).shape[:2] in shapes
    assert "street:" in result.stdout


def test_unet_example_takes_a_state_dict(tmp_path):
    smp = pytest.importorskip("segmentation_models_pytorch")
    import torch

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=3)
    weights = tmp_path / "unet.pth"
    torch.save(model.state_dict(), weights)
    image = tmp_path / "road.png"
    cv2.imwrite(str(image), make_scenes(1, seed=4, size=(64, 96))[0].image)
    out = tmp_path / "out"
    result = _run("segment_unet.py", "--weights", str(weights), "--arch", "smp:Unet:resnet18", "--image", str(image),
                  "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "road.png").is_file() and (out / "road_masks.png").is_file()
    shapes = {_with_strip((64, 96), False), _with_strip((64, 96), True)}  # random weights: maybe no masks
    assert cv2.imread(str(out / "road_masks.png")).shape[:2] in shapes

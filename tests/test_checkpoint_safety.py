"""Loading a checkpoint never runs code from it: every loader path refuses a crafted pickle, names the
class it asked for, and leaves no trace of the payload; ``trust=True`` / ``--trust-checkpoint`` opts in."""
from __future__ import annotations

import fractions
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dsxai.adapters import UnsafeCheckpointError, load
from dsxai.adapters.checkpoint import checkpoint_family, load_checkpoint
from dsxai.cli import main


class Payload:
    """Unpickling this runs ``exec``, which writes ``marker``: the file exists only if the payload ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


class CallsModelClass:
    """Unpickling this calls an allow-listed model class (REDUCE) instead of rebuilding an instance."""

    def __reduce__(self):
        return nn.Conv2d, (1, 1, 1)


def _malicious(path: Path, marker: Path, bait: str, legacy: bool = False) -> Path:
    """A checkpoint whose pickle mentions ``bait`` (so the family sniffing picks a loader) and runs the payload."""
    obj = OrderedDict([("model.0.weight", torch.zeros(2, 2)), (bait, bait), ("payload", Payload(marker))])
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    assert bait.encode() in path.read_bytes()
    return path


CASES = {  # name: (bait string, the loader family it routes to)
    "ultralytics": ("ultralytics.nn.tasks", "ultralytics"),
    "yolov5": ("models.yolo", "yolov5"),
    "state_dict": ("state_dict", "state_dict"),
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("case", list(CASES))
def test_load_refuses_payload_and_names_the_class(case, legacy, tmp_path):
    bait, family = CASES[case]
    marker = tmp_path / "marker"
    path = _malicious(tmp_path / "evil.pt", marker, bait, legacy)
    assert checkpoint_family(path) == family
    with pytest.raises(UnsafeCheckpointError) as info:
        load(path)
    message = str(info.value)
    assert "builtins.exec" in message and "trust=True" in message and "\n" not in message
    assert "--" not in message  # Python callers read Python words; the CLI names its flag (below)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        load_checkpoint(path, family)
    assert not marker.exists()


def test_state_dict_with_arch_refuses_payload(tmp_path):
    marker = tmp_path / "marker"
    path = _malicious(tmp_path / "evil.pth", marker, "state_dict")
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        load(path, arch="fasterrcnn_resnet50_fpn")
    assert not marker.exists()


def test_plain_pickle_without_family_words_is_refused(tmp_path):
    """A bare pickle (no torch record, no family name) is read with the state-dict list and refused."""
    marker = tmp_path / "marker"
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    assert checkpoint_family(path) == "unknown"
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        load(path)
    assert not marker.exists()


def test_calling_an_allowed_model_class_is_refused(tmp_path):
    """Model classes may be rebuilt (__new__ + state), never called: their __init__ can read files."""
    path = tmp_path / "call.pt"
    torch.save({"ultralytics.nn": CallsModelClass()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"calls torch\.nn\.modules\.conv\.Conv2d"):
        load_checkpoint(path, "ultralytics")
    with pytest.warns(UserWarning, match="full pickle"):
        assert isinstance(load_checkpoint(path, "ultralytics", trust=True)["ultralytics.nn"], nn.Conv2d)


def test_zoo_name_with_replaced_weights_is_refused(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ultralytics")
    import cv2

    from dsxai import zoo

    marker = tmp_path / "marker"
    _malicious(tmp_path / "shapes_yolov8.pt", marker, "ultralytics.nn.tasks")
    _malicious(tmp_path / "shapes_unet.pt", marker, "state_dict")
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    for name in ("shapes-yolo", "shapes-unet"):
        if name == "shapes-unet":
            pytest.importorskip("segmentation_models_pytorch")
        with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
            zoo.load_adapter(name)
        assert not marker.exists()
    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((32, 32, 3), np.uint8))
    assert main(["explain", "shapes-yolo", str(tmp_path / "img.png"), "--out", str(tmp_path / "o")]) == 2
    assert "builtins.exec" in capsys.readouterr().err and not marker.exists()


@pytest.mark.parametrize("command", ["explain", "layers", "audit"])
def test_cli_refuses_payload_in_one_line(command, tmp_path, capsys):
    pytest.importorskip("ultralytics")
    import cv2

    marker = tmp_path / "marker"
    path = _malicious(tmp_path / "evil.pt", marker, "ultralytics.nn.tasks")
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    argv = {"explain": ["explain", str(path), str(image), "--out", str(tmp_path / "out")],
            "layers": ["layers", str(path)],
            "audit": ["audit", str(path), "--images", str(image), "--out", str(tmp_path / "out")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "builtins.exec" in err and "--trust-checkpoint" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_bench_refuses_payload(tmp_path):
    pytest.importorskip("ultralytics")
    from dsxai.bench import load_bench_adapter

    marker = tmp_path / "marker"
    path = _malicious(tmp_path / "evil.pt", marker, "models.yolo")
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        load_bench_adapter(path)
    assert not marker.exists()


@pytest.fixture()
def fraction_checkpoint(tmp_path) -> Path:
    """A benign Ultralytics checkpoint holding one class outside the allow-list (fractions.Fraction)."""
    pytest.importorskip("ultralytics")
    from dsxai import zoo

    try:
        ckpt = load_checkpoint(zoo.shapes_yolov8_path(), "ultralytics")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    ckpt["note"] = fractions.Fraction(1, 3)
    path = tmp_path / "extra.pt"
    torch.save(ckpt, path)
    return path


def test_trust_loads_a_benign_full_pickle_with_a_warning(fraction_checkpoint):
    with pytest.raises(UnsafeCheckpointError, match=r"fractions\.Fraction"):
        load(fraction_checkpoint, imgsz=256)
    with pytest.warns(UserWarning, match=r"full pickle \(trust=True\)"):
        adapter = load(fraction_checkpoint, imgsz=256, trust=True)
    assert type(adapter).__name__ == "UltralyticsAdapter" and len(adapter.class_names) == 4


def test_trust_checkpoint_flag(fraction_checkpoint, capsys):
    assert main(["layers", str(fraction_checkpoint), "--imgsz", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fractions.Fraction" in err
    assert main(["layers", str(fraction_checkpoint), "--imgsz", "64", "--trust-checkpoint"]) == 0
    captured = capsys.readouterr()
    assert "(default)" in captured.out
    warned = [line for line in captured.err.strip().splitlines() if "full pickle" in line]
    assert len(warned) == 1 and "--trust-checkpoint" in warned[0]


@pytest.mark.parametrize("command", ["layers", "explain"])
def test_text_file_named_yaml_is_one_line(command, tmp_path, capsys):
    pytest.importorskip("ultralytics")
    config = tmp_path / "x.yaml"
    config.write_text("this is a note, not a model config\n")
    argv = ["layers", str(config)] if command == "layers" else \
        ["explain", str(config), str(config), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not an Ultralytics model config" in err

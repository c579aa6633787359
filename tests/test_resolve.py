"""``dsxai.adapters.resolve``: one resolver for names, paths, objects and adapters, used by every front end."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import pytest

import dsxai
from dsxai.adapters import register, registered_names, resolve, unregister
from dsxai.cli import main
from dsxai.shapes import CATEGORIES, make_scenes

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "dsxai" / "zoo" / "weights"
ZOO = {  # name -> (adapter class, checkpoint, family package)
    "shapes-yolo": ("UltralyticsAdapter", "shapes_yolov8.pt", "ultralytics"),
    "shapes-yolov8": ("UltralyticsAdapter", "shapes_yolov8.pt", "ultralytics"),
    "shapes-yolo-seg": ("UltralyticsAdapter", "shapes_yolov8-seg.pt", "ultralytics"),
    "shapes-yolov8-seg": ("UltralyticsAdapter", "shapes_yolov8-seg.pt", "ultralytics"),
    "shapes-fasterrcnn": ("TorchvisionDetectionAdapter", "shapes_fasterrcnn.pt", "torchvision"),
    "shapes-unet": ("SMPAdapter", "shapes_unet.pt", "segmentation_models_pytorch"),
}


def _needs(name: str) -> None:
    _, weights, package = ZOO[name]
    pytest.importorskip(package)
    if not (WEIGHTS / weights).is_file():
        pytest.skip(f"{WEIGHTS / weights} is absent (see dsxai/zoo/__init__.py to train it)")


@pytest.fixture()
def scene_png(tmp_path) -> Path:
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), cv2.cvtColor(make_scenes(1, seed=2)[0].image, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture()
def named(request):
    """Register ``name -> factory`` for one test (forgotten afterwards)."""
    names = []

    def add(name, factory):
        register(name, factory)
        names.append(name)

    yield add
    for name in names:
        unregister(name)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_name_resolves(name):
    _needs(name)
    assert name in registered_names()
    adapter = resolve(name.upper().replace("-", "_"))  # spelling: case and _ do not matter
    assert type(adapter).__name__ == ZOO[name][0]
    assert set(CATEGORIES) <= set(adapter.class_names.values())


def test_explain_takes_a_zoo_name():
    _needs("shapes-yolo")
    scene = make_scenes(1, seed=2)[0]
    ex = dsxai.explain("shapes-yolo", [scene.image], method="layercam", layers="model.15")
    dets = ex.detections[0]
    assert len(dets) >= 1 and ex.settings["adapter"] == "UltralyticsAdapter"
    assert {dets.class_names[int(c)] for c in dets.labels} <= set(CATEGORIES)
    assert ex.maps[0].shape == (len(dets), *scene.image.shape[:2])


def test_layers_command_takes_a_zoo_name(capsys):
    _needs("shapes-unet")
    assert main(["layers", "shapes-unet", "--imgsz", "64"]) == 0
    out = capsys.readouterr().out
    assert "segmentation_head" in out and "[1, 5, 64, 64]" in out
    assert any(line.rstrip().endswith("(default)") for line in out.splitlines())


def test_audit_and_bench_take_zoo_and_registered_names(named, tmp_path, scene_png, capsys):
    _needs("shapes-unet")
    _needs("shapes-yolo")
    pytest.importorskip("pycocotools")
    from dsxai import zoo

    named("my-unet", lambda **kw: zoo.load_adapter("shapes-unet", **kw))
    named("my-yolo", lambda **kw: zoo.load_adapter("shapes-yolo", **kw))
    for model in ("shapes_unet", "my-unet"):
        result = dsxai.audit(model, [scene_png], progress=False, thumbnails="none")
        assert result.summary["masks"] >= 1 and result.settings["adapter"] == "SMPAdapter"
    argv = ["bench", "my-yolo", "--synthetic", "--scenes", "2", "--methods", "layercam", "--no-faithfulness",
            "--gallery", "0", "--no-progress", "--out", str(tmp_path / "bench")]
    assert main(argv) == 0, capsys.readouterr().err
    assert "pairs" in capsys.readouterr().out and (tmp_path / "bench" / "results.json").is_file()
    from dsxai.bench import load_bench_adapter

    assert type(load_bench_adapter("shapes-yolov8")).__name__ == "UltralyticsAdapter"


def test_unknown_name_fails_in_one_line_listing_the_names(scene_png, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown model 'shapes-nope'") as info:
        resolve("shapes-nope")
    message = str(info.value)
    assert "\n" not in message and "path" in message
    assert all(name in message for name in ZOO)
    code = main(["explain", "shapes-nope", str(scene_png), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "shapes-unet" in err and "checkpoint path" in err
    assert not (tmp_path / "out").exists()


def test_an_adapter_passes_through_and_refuses_build_options():
    torch = pytest.importorskip("torch")
    from dsxai.adapters.generic import SegmenterAdapter

    adapter = SegmenterAdapter(torch.nn.Conv2d(3, 2, 1))
    assert resolve(adapter) is adapter
    with pytest.raises(ValueError, match="already an Adapter"):
        resolve(adapter, imgsz=320)
    with pytest.raises(ValueError, match="already an Adapter"):
        resolve(adapter, arch="fasterrcnn_resnet50_fpn")


def test_register_adds_a_name_that_resolve_and_the_cli_accept(named, capsys):
    torch = pytest.importorskip("torch")
    from dsxai.adapters.generic import SegmenterAdapter

    calls = []

    def factory(*, device=None, trust=False):
        calls.append((device, trust))
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
        return SegmenterAdapter(net, layers=["0"])

    named("my-net", factory)
    assert "my-net" in registered_names()
    assert isinstance(resolve("My_Net", trust=True), SegmenterAdapter) and calls == [(None, True)]
    assert main(["layers", "my-net", "--imgsz", "32"]) == 0  # imgsz is not the factory's: built without it
    out = capsys.readouterr().out
    assert "[1, 4, 32, 32]  (default)" in out and len(calls) >= 2
    with pytest.raises(TypeError, match="option 'imgsz' does not apply to 'my-net'"):
        resolve("my-net", imgsz=64)
    with pytest.raises(ValueError, match="arch applies to state-dict checkpoints"):
        resolve("my-net", arch="fasterrcnn_resnet50_fpn")
    with pytest.raises(ValueError, match="already registered"):
        register("MY_NET", factory=lambda **kw: None)
    with pytest.raises(ValueError, match="no path separator and no file suffix"):
        register("net.pt", factory)


def test_zoo_errors_keep_their_wording(tmp_path, monkeypatch, scene_png, capsys):
    _needs("shapes-unet")
    import dsxai.zoo as zoo

    assert main(["explain", "shapes-unet", str(scene_png), "--imgsz", "320", "--out", str(tmp_path / "o")]) == 2
    assert "--imgsz applies to YOLO models only" in capsys.readouterr().err
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="re-train it with: python -m dsxai.zoo.training.unet") as info:
        resolve("shapes-unet")
    assert "\n" not in str(info.value)


def test_importing_the_adapters_does_not_import_the_zoo():
    code = (
        "import sys, dsxai, dsxai.adapters as a\n"
        "assert 'dsxai.zoo' not in sys.modules, 'imported early'\n"
        "a.resolve  # the resolver is there before the zoo\n"
        "names = a.registered_names()\n"
        "assert 'dsxai.zoo' in sys.modules and 'shapes-unet' in names, names\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_a_checkpoint_path_does_not_import_the_zoo(tmp_path):
    code = (
        "import sys, dsxai.adapters as a\n"
        f"try:\n    a.resolve({str(tmp_path / 'missing.pt')!r})\n"
        "except FileNotFoundError as exc:\n    assert 'checkpoint not found' in str(exc)\n"
        "assert 'dsxai.zoo' not in sys.modules\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]

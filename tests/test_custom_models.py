"""Custom models: --adapter factories, .onnx models with --task/--decode, fixed-batch networks, the README example."""
from __future__ import annotations

import json
import logging
import re
import shlex
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from torch import nn

import dsxai
from dsxai.adapters import load
from dsxai.adapters.factory import adapter_from_factory, import_callable
from dsxai.adapters.generic import DetectorAdapter, SegmenterAdapter
from dsxai.cli import main
from dsxai.shapes import make_scene

ROOT = Path(__file__).resolve().parents[1]
SINET = SHARED_DATA / "weights/sinet_portrait_seg/SINet.onnx"
FASTESTDET = SHARED_DATA / "weights/fastestdet_coco/FastestDet.onnx"


class FixedBatchSegmenter(nn.Module):
    """Bright pixels are class 1; a Reshape with the batch written as 1 (as batch-1 exports bake it in)."""

    def __init__(self, side: int = 32):
        super().__init__()
        self.side = side
        self.features = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.ReLU()
        self.classifier = nn.Conv2d(16, 2, 1)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[:, :, 1, 1] = 1.0
            self.features.bias.fill_(-1.5)  # fires where the channel sum passes 1.5 (bright)
            self.classifier.weight.zero_()
            self.classifier.weight[1] = 2.0
            self.classifier.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x):
        f = self.features(x).reshape(1, 16, -1).reshape(1, 16, self.side, self.side)  # fails for any batch but 1
        return self.classifier(self.act(f))


def square_image(x0: int, y0: int, size: int = 64) -> np.ndarray:
    image = np.full((size, size, 3), 20, np.uint8)
    image[y0:y0 + 20, x0:x0 + 20] = 240
    return image


def test_fixed_batch_module_is_found_and_run_one_image_at_a_time(caplog):
    net = FixedBatchSegmenter().eval()
    with pytest.raises(RuntimeError):
        net(torch.zeros(2, 3, 32, 32))  # the failure the adapter must avoid
    adapter = SegmenterAdapter(net, size=(32, 32), class_names=["background", "bright"])
    images = [square_image(4, 6), square_image(36, 30), square_image(20, 40)]
    with caplog.at_level(logging.WARNING, logger="dsxai"):
        batched = dsxai.explain(adapter, images, batch_size=4)
        again = dsxai.explain(adapter, images[:2], batch_size=4)
    assert adapter.max_batch == 1
    lines = [r.getMessage() for r in caplog.records if "one at a time" in r.getMessage()]
    assert len(lines) == 1, lines  # the probe runs once per adapter, and says so once
    assert [d.names for d in batched.detections] == [["bright"]] * 3
    for k, image in enumerate(images):
        alone = dsxai.explain(adapter, image)
        assert torch.equal(alone.detections[0].masks, batched.detections[k].masks)
        assert torch.allclose(alone.maps[0], batched.maps[k], atol=1e-6)
        box = batched.detections[k].boxes[0]
        assert box[2] - box[0] >= 15 and box[3] - box[1] >= 15  # the square, not the background
    assert torch.allclose(again.maps[1], batched.maps[1], atol=1e-6)
    assert len(adapter.predict(images)) == 3  # predict splits too (perturbation workflows call it)


def test_batchable_module_keeps_batches_and_max_batch_is_checked():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    assert SegmenterAdapter(net, size=(32, 32)).max_batch is None
    assert SegmenterAdapter(net, size=(32, 32), max_batch=3).max_batch == 3
    with pytest.raises(ValueError, match="max_batch must be None, 'auto' or an int >= 1"):
        SegmenterAdapter(net, size=(32, 32), max_batch=0)


class FixedDetector(nn.Module):
    """One candidate per 4x4 cell, a fixed box; a Reshape with the batch written as 1."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=4, padding=1)

    def forward(self, x):
        return self.conv(x).reshape(1, 6, 64)  # [1, 6, cells]: only one image fits


def fixed_decode(output, batch):
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).expand(output.shape[-1], 4)
    return [(boxes, output[i, 4].sigmoid(), torch.zeros(output.shape[-1])) for i in range(len(output))]


def fixed_detector() -> DetectorAdapter:
    torch.manual_seed(0)
    return DetectorAdapter(FixedDetector().eval(), fixed_decode, size=(32, 32), conf=0.0, max_dets=1)


def test_fixed_batch_detector_predicts_many_images():
    adapter = fixed_detector()
    dets = adapter.predict([square_image(0, 0), square_image(30, 30)])
    assert adapter.max_batch == 1 and [len(d) for d in dets] == [1, 1]


def test_drise_runs_its_masked_copies_one_at_a_time_on_a_fixed_batch_model():
    from dsxai.pipeline import explain_maps

    adapter = fixed_detector()
    dets, maps = explain_maps(adapter, square_image(0, 0), method="drise",
                              method_options={"masks": 6, "grid": 4, "mask_batch": 4, "progress": False})
    assert len(dets[0]) == 1 and maps[0].shape == (1, 64, 64) and torch.isfinite(maps[0]).all()


def export_fixed_batch_onnx(path: Path) -> Path:
    pytest.importorskip("onnx2torch")
    with pytest.warns(DeprecationWarning):  # the legacy exporter: no onnxscript needed
        torch.onnx.export(FixedBatchSegmenter().eval(), torch.zeros(1, 3, 32, 32), str(path), dynamo=False,
                          opset_version=13)
    return path


def test_onnx_with_fixed_batch_runs_through_explain_and_the_cli(tmp_path, capsys, caplog):
    model = export_fixed_batch_onnx(tmp_path / "fixed.onnx")
    adapter = load(model, task="segment", class_names=["background", "bright"])
    assert adapter.max_batch == 1 and adapter.preprocess(square_image(0, 0)).tensor.shape[-2:] == (32, 32)
    ex = dsxai.explain(adapter, [square_image(4, 6), square_image(36, 30)])  # batch_size 4 by default
    assert [d.names for d in ex.detections] == [["bright"], ["bright"]]
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"im{k}.png")
        cv2.imwrite(str(paths[-1]), square_image(10 + 20 * k, 12))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dsxai"):  # on the console: logging's last-resort handler
        code = main(["explain", str(model), *map(str, paths), "--task", "segment", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    said = [r.getMessage() for r in caplog.records if "one at a time" in r.getMessage()]
    assert len(said) == 1 and "fixed.onnx has a fixed batch of 1 (its ONNX input is 1x3x32x32)" in said[0], said
    assert re.search(r"^layer: act/Relu \[1, 16, 32, 32\] .*nearby alternatives: .*--layers NAME", out, re.M), out
    assert "explained 2 detection(s) in 2 image(s)" in out


def test_onnx_input_flags_make_the_input_the_export_expects(tmp_path, capsys):
    import argparse

    from dsxai.commands.models import custom_adapter

    model = export_fixed_batch_onnx(tmp_path / "fixed.onnx")
    names = tmp_path / "names.txt"
    names.write_text("background\nbright\n")
    args = argparse.Namespace(model=str(model), adapter=None, task="segment", decode=None, device=None,
                              mean="0.1,0.2,0.3", std="0.5,0.25,2", bgr=True, class_names=str(names))
    adapter = custom_adapter(args)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    bgr = torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
    expected = (bgr - torch.tensor([0.1, 0.2, 0.3])[:, None, None]) / torch.tensor([0.5, 0.25, 2])[:, None, None]
    got = adapter.preprocess(image).tensor[0]
    assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max()))  # float32 of values up to 2
    assert adapter.class_names == {0: "background", 1: "bright"}
    image_path = tmp_path / "im.png"
    cv2.imwrite(str(image_path), square_image(10, 12))
    code = main(["explain", str(model), str(image_path), "--task", "segment", "--class-names", "bg,light",
                 "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert [f["name"] for f in json.loads((tmp_path / "out/im.json").read_text())["figures"]] == ["light"]


@pytest.mark.parametrize("flags, message", [
    (["--mean", "0.5,0.5"], "--mean needs three numbers, one per channel"),
    (["--mean", "a,b,c"], "--mean needs three numbers, one per channel"),
    (["--std", "1,0,1"], "--std values must not be 0"),
    (["--class-names", "a,,b"], "--class-names needs names in id order"),
])
def test_onnx_input_flag_errors_are_one_line(tmp_path, capsys, flags, message):
    model = tmp_path / "net.onnx"
    model.write_bytes(b"\x08\x01")  # never read: the flags fail first
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), square_image(0, 0))
    code = main(["explain", str(model), str(image), "--task", "segment", "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


FACTORIES = textwrap.dedent('''
    import torch
    from torch import nn
    import dsxai.adapters
    from dsxai.adapters.generic import SegmenterAdapter

    def segmenter(model):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 1)).eval()
        return SegmenterAdapter(net, size=(64, 64), class_names=["background", "from " + model])

    def zoo(model):
        return dsxai.adapters.resolve(model)

    def broken(model):
        raise KeyError("no weights for " + model)

    def not_an_adapter(model):
        return nn.Identity()

    VALUE = 3
''')


@pytest.fixture
def factories(tmp_path):
    (tmp_path / "factories.py").write_text(FACTORIES)
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), cv2.cvtColor(make_scene(seed=3).image, cv2.COLOR_RGB2BGR))
    return tmp_path / "factories.py", image


def test_adapter_factory_for_explain_and_layers(factories, tmp_path, capsys):
    file, image = factories
    code = main(["explain", "mynet", str(image), "--adapter", f"{file}:segmenter", "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert code == 0, err
    names = {f["name"] for f in json.loads((tmp_path / "o/scene.json").read_text())["figures"]}
    assert names == {"from mynet"}, names  # MODEL reached the factory
    assert out.startswith("layer: 1 [1, 16, 64, 64]") and "0 [1, 16, 64, 64]" in out, out
    code = main(["layers", "mynet", "--adapter", f"{file}:segmenter"])
    out, _ = capsys.readouterr()
    assert code == 0 and re.search(r"^1 +ReLU +\[1, 16, \d+, \d+\]  \(default\)$", out, re.M), out


def test_adapter_factory_for_audit_and_bench(factories, tmp_path, capsys):
    file, image = factories
    code = main(["audit", "mynet", "--images", str(image), "--adapter", f"{file}:segmenter",
                 "--out", str(tmp_path / "audit"), "--min-area", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads((tmp_path / "audit/audit.json").read_text())
    assert "from mynet" in json.dumps(rows) and "report:" in out
    code = main(["bench", "shapes-yolo", "--adapter", f"{file}:zoo", "--synthetic", "--scenes", "2", "--limit", "1",
                 "--methods", "gradcam", "--gallery", "0", "--no-progress", "--out", str(tmp_path / "bench")])
    out, err = capsys.readouterr()
    assert code == 0, err
    results = json.loads((tmp_path / "bench/results.json").read_text())
    assert results["counts"]["images_ok"] == 1 and results["counts"]["matched"] >= 1


@pytest.mark.parametrize("flags, message", [
    (["--adapter", "no_such_module_xyz:build"], "no module named 'no_such_module_xyz'"),
    (["--adapter", "{file}:missing"], "has no 'missing' (it defines: "),
    (["--adapter", "{file}:VALUE"], "is a int, not a function"),
    (["--adapter", "{file}"], "must be written module:function"),
    (["--adapter", "{file}:broken"], "adapter factory '{file}:broken' failed on 'mynet' (KeyError: 'no weights for mynet')"),
    (["--adapter", "{file}:not_an_adapter"], "returned a Identity; it must return a dsxai.adapter.Adapter"),
    (["--adapter", "{file}:segmenter", "--task", "segment"], "--adapter builds the whole adapter: drop --task"),
    (["--decode", "{file}:broken"], "--decode applies to detectors only: add --task detect"),
    (["--task", "segment"], "--task/--decode apply to .onnx models; mynet is not one"),
    (["--adapter", "{file}:segmenter", "--imgsz", "320"], "--imgsz applies to YOLO models only; mynet takes"),
    (["--mean", "0.5,0.5,0.5", "--bgr"], "--mean, --bgr apply to .onnx models"),
    (["--adapter", "{file}:segmenter", "--class-names", "a,b"], "--class-names apply to .onnx models"),
])
def test_custom_model_errors_are_one_line(factories, tmp_path, capsys, flags, message):
    file, image = factories
    flags = [f.replace("{file}", str(file)) for f in flags]
    code = main(["explain", "mynet", str(image), "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message.replace("{file}", str(file)) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_onnx_flags_and_missing_onnx2torch(tmp_path, capsys, monkeypatch):
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), make_scene(seed=3).image)
    model = tmp_path / "net.onnx"
    model.write_bytes(b"\x08\x01")
    for flags, message in [([], "is an ONNX model: add --task segment (output: per-class logits [B, C, h, w]) or "
                                "--task detect --decode module:function"),
                           (["--task", "detect"], "--task detect needs --decode module:function")]:
        assert main(["explain", str(model), str(image), "--out", str(tmp_path / "o"), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setitem(__import__("sys").modules, "onnx2torch", None)  # as if not installed
    assert main(["explain", str(model), str(image), "--out", str(tmp_path / "o"), "--task", "segment"]) == 2
    err = capsys.readouterr().err
    assert "needs onnx2torch, which is not installed: pip install 'dsxai[onnx]'" in err
    assert len(err.strip().splitlines()) == 1, err
    with pytest.raises(ValueError, match="task='segment'.*task='detect'"):
        load(model)  # the Python wording names keywords, not flags


def test_import_callable_reads_modules_from_sys_path_and_files(tmp_path, monkeypatch):
    (tmp_path / "pkg_custom_xyz").mkdir()
    (tmp_path / "pkg_custom_xyz/__init__.py").write_text("def f(model):\n    return model * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_callable("pkg_custom_xyz:f")("a") == "aa"
    (tmp_path / "one.py").write_text("def g(model):\n    return model + '!'\n")
    assert import_callable(f"{tmp_path / 'one.py'}:g")("b") == "b!"
    with pytest.raises(TypeError, match="returned a str"):
        adapter_from_factory(f"{tmp_path / 'one.py'}:g", "x")


# --------------------------------------------------------------------------------------------------
# real ONNX models from shared data
# --------------------------------------------------------------------------------------------------
def coco_image(stem: str) -> Path:
    path = SHARED_DATA / f"coco_subset/images/val2017/{stem}.jpg"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore:For linear and cubic interpolation:UserWarning")
def test_sinet_onnx_explains_a_batch_of_images_in_python():
    if not SINET.is_file():
        pytest.skip(f"{SINET} is absent")
    pytest.importorskip("onnx2torch")
    mean = tuple(np.array([102.890434, 111.25247, 126.91212]) / 255)
    std = tuple(np.array([62.93292, 62.82138, 66.355705]) / 255)
    adapter = load(SINET, task="segment", bgr=True, mean=mean, std=std, class_names=["background", "person"])
    assert adapter.max_batch == 1  # the ONNX input is 1x3x320x320
    images = [coco_image("000000020992")] * 3
    ex = dsxai.explain(adapter, images, per="class")  # batch_size=4: the conversion alone dies at 2 images
    assert [d.names for d in ex.detections] == [["person"]] * 3
    assert torch.allclose(ex.maps[0], ex.maps[2], atol=1e-5)
    mask = ex.detections[0].masks[0]
    assert (ex.maps[0][0] * mask).sum() / ex.maps[0][0].sum() > mask.float().mean()  # better than chance


@pytest.mark.shared_data
def test_fastestdet_onnx_from_the_command_line(tmp_path, capsys):
    if not FASTESTDET.is_file():
        pytest.skip(f"{FASTESTDET} is absent")
    pytest.importorskip("onnx2torch")
    ultralytics = pytest.importorskip("ultralytics")
    assets = Path(ultralytics.__file__).parent / "assets"
    decode = tmp_path / "fastestdet.py"
    decode.write_text(textwrap.dedent('''
        import torch

        def decode(output, batch):
            b, _, gh, gw = output.shape
            height, width = batch.tensor.shape[-2:]
            obj, cls = output[:, 0].clamp_min(1e-9), output[:, 5:].clamp_min(1e-9)
            rows = torch.arange(gh).view(gh, 1).expand(gh, gw)
            cols = torch.arange(gw).view(1, gw).expand(gh, gw)
            cx = (cols + torch.tanh(output[:, 1])) / gw * width
            cy = (rows + torch.tanh(output[:, 2])) / gh * height
            w, h = torch.sigmoid(output[:, 3]) * width, torch.sigmoid(output[:, 4]) * height
            boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).reshape(b, -1, 4)
            class_scores = (obj[:, None] ** 0.6 * cls ** 0.4).flatten(2).transpose(1, 2)
            scores, labels = class_scores.max(-1)
            return [{"boxes": boxes[i], "scores": scores[i], "labels": labels[i],
                     "class_scores": class_scores[i]} for i in range(b)]
    '''))
    code = main(["explain", str(FASTESTDET), str(assets / "bus.jpg"), str(assets / "zidane.jpg"), "--task", "detect",
                 "--decode", f"{decode}:decode", "--conf", "0.65", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "layer: Relu_259 [1, 96, 22, 22]" in out, (out, err)
    # RGB / 255 here (FastestDet was trained on BGR: --bgr says so), and still the people of both pictures
    for stem, people in (("bus", 3), ("zidane", 1)):
        labels = json.loads((tmp_path / f"out/{stem}.json").read_text())["detections"]["labels"]
        assert labels.count(0) >= people, (stem, labels)
        assert len(list((tmp_path / "out").glob(f"{stem}_det*.png"))) == len(labels)


# --------------------------------------------------------------------------------------------------
# the README example runs as written
# --------------------------------------------------------------------------------------------------
def readme_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Custom models from the command line", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(python|bash)\n(.*?)```", section, re.S)


def shell_lines(block: str) -> list[str]:
    """The commands of a bash block, continuation lines joined."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_custom_model_example_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = readme_blocks()
    assert [kind for kind, _ in blocks] == ["python", "python", "bash", "bash"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_models.py").write_text(blocks[0][1])
    exec(compile(blocks[1][1], "README-example", "exec"), {"__name__": "readme"})
    assert re.search(r"^5 boxes; \d+ masks$", capsys.readouterr().out, re.M)
    commands = shell_lines(blocks[2][1])
    sinet = SINET.is_file() and __import__("importlib").util.find_spec("onnx2torch") is not None
    if sinet:
        (tmp_path / "weights").mkdir()
        (tmp_path / "weights/SINet.onnx").symlink_to(SINET)
        commands += shell_lines(blocks[3][1])
    for line in commands:
        argv = shlex.split(line)
        assert argv[0] == "dsxai"
        assert main(argv[1:]) == 0, (line, capsys.readouterr().err)
    assert len(list((tmp_path / "out/custom-detector").glob("scene_det*.png"))) == 5
    assert (tmp_path / "out/custom-audit/report.html").is_file()
    if sinet:  # --class-names reached the converted model's adapter
        figures = json.loads((tmp_path / "out/sinet/scene.json").read_text())["figures"]
        assert figures and {f["name"] for f in figures} == {"person"}, figures

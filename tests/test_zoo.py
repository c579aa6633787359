"""The shipped shapes-world models load and reach their quality targets on held-out scenes.

Targets (held-out scenes ``make_scenes(N_EVAL, TEST_SEED)``, disjoint from the training/validation seeds):
detectors COCO mAP@0.5 >= 0.9 (pycocotools COCOeval; YOLOv8-seg also for its masks), U-Net mIoU >= 0.9 over
all 5 classes (background included) and over the 4 object classes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # before any ultralytics import: no network checks

torch = pytest.importorskip("torch")
pytest.importorskip("pycocotools")

from dsxai import shapes, zoo  # noqa: E402

# pycocotools 2.0.x calls np.array(copy=False) on numpy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

N_EVAL = 80
MAP50_TARGET = 0.9
MIOU_TARGET = 0.9


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(min(2, old))
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def held_out() -> list[shapes.Scene]:
    return shapes.make_scenes(N_EVAL, zoo.TEST_SEED)


def test_seeds_are_disjoint():
    assert len({zoo.TRAIN_SEED, zoo.VAL_SEED, zoo.TEST_SEED}) == 3
    a = shapes.make_scenes(3, zoo.TRAIN_SEED)
    b = shapes.make_scenes(3, zoo.TEST_SEED)
    assert not any(np.array_equal(x.image, y.image) for x in a for y in b)


def test_checkpoints_exist_and_are_small():
    files = [zoo.shapes_yolov8_path(), zoo.shapes_yolov8_seg_path(), zoo.weights_path("shapes_fasterrcnn.pt")]
    files.append(zoo.weights_path("shapes_unet.pt"))
    total = sum(f.stat().st_size for f in files)
    assert total <= 10 * 1024 * 1024, f"shipped checkpoints take {total / 1e6:.1f} MB"


def test_missing_checkpoint_error(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m dsxai.zoo.training.unet"):
        zoo.load_shapes_unet()
    with pytest.raises(FileNotFoundError, match="python -m dsxai.zoo.training.fasterrcnn"):
        zoo.load_shapes_fasterrcnn()
    with pytest.raises(FileNotFoundError, match="training.yolo --task segment"):
        zoo.shapes_yolov8_seg_path()


# ----------------------------------------------------------------------------------------------- YOLO


@pytest.fixture(scope="module")
def ultralytics_yolo():
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO

    return YOLO


def test_yolo_detector_map(ultralytics_yolo, held_out):
    model = ultralytics_yolo(str(zoo.shapes_yolov8_path()))
    assert model.task == "detect"
    assert dict(model.names) == dict(enumerate(zoo.SHAPES_CLASSES))
    assert all(p.dtype == torch.float32 for p in model.model.parameters())  # Ultralytics loads fp16 as fp32
    preds = zoo.predict_yolo(model, held_out)
    m = zoo.coco_evaluate(held_out, preds)
    assert m["map50"] >= MAP50_TARGET, m


def test_yolo_seg_map(ultralytics_yolo, held_out):
    model = ultralytics_yolo(str(zoo.shapes_yolov8_seg_path()))
    assert model.task == "segment"
    assert dict(model.names) == dict(enumerate(zoo.SHAPES_CLASSES))
    preds = zoo.predict_yolo(model, held_out, masks=True)
    assert all(p["masks"].shape[1:] == s.size for p, s in zip(preds, held_out))
    box = zoo.coco_evaluate(held_out, preds)
    seg = zoo.coco_evaluate(held_out, preds, iou_type="segm")
    assert box["map50"] >= MAP50_TARGET, box
    assert seg["map50"] >= MAP50_TARGET, seg


# ----------------------------------------------------------------------------------------------- Faster R-CNN


@pytest.fixture(scope="module")
def fasterrcnn():
    return zoo.load_shapes_fasterrcnn(score_thresh=0.001)  # mAP needs the low-score tail


def test_fasterrcnn_loads_float32_eval(fasterrcnn):
    assert not fasterrcnn.training
    assert all(p.dtype == torch.float32 for p in fasterrcnn.state_dict().values() if p.is_floating_point())


def test_fasterrcnn_map(fasterrcnn, held_out):
    m = zoo.coco_evaluate(held_out, zoo.predict_torchvision(fasterrcnn, held_out))
    assert m["map50"] >= MAP50_TARGET, m


def test_fasterrcnn_does_not_rely_on_colour(fasterrcnn, held_out):
    # object colours are random, so swapping colour channels must not break the detector
    subset = held_out[:40]
    swapped = [shapes.Scene(s.image[..., ::-1].copy(), s.boxes, s.labels, s.masks, s.semantic) for s in subset]
    m = zoo.coco_evaluate(swapped, zoo.predict_torchvision(fasterrcnn, swapped))
    assert m["map50"] >= MAP50_TARGET - 0.05, m


# ----------------------------------------------------------------------------------------------- U-Net


def test_unet_miou(held_out):
    pytest.importorskip("segmentation_models_pytorch")
    from dsxai.zoo.training.unet import evaluate

    model = zoo.load_shapes_unet(path=zoo.weights_path("shapes_unet.pt"))
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        out = model(zoo.unet_preprocess(held_out[0].image))
    assert out.shape == (1, len(zoo.SHAPES_CLASSES) + 1, 256, 256)
    m = evaluate(model, held_out)
    assert m["miou"] >= MIOU_TARGET, m
    assert m["miou_objects"] >= MIOU_TARGET, m


def test_unet_preprocess_equivalent_inputs(held_out):
    imgs = np.stack([s.image for s in held_out[:2]])
    a = zoo.unet_preprocess(imgs)
    b = zoo.unet_preprocess(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)
    assert a.shape == (2, 3, 256, 256) and torch.allclose(a, b)
    mean = torch.tensor(zoo.UNET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(zoo.UNET_STD).view(1, 3, 1, 1)
    assert torch.allclose(a * std + mean, torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255, atol=1e-6)


# ----------------------------------------------------------------------------------------------- reproducibility


def _train_twice(train_fn, **kw):
    a = train_fn(**kw).state_dict()
    b = train_fn(**kw).state_dict()
    return a, b


@pytest.mark.parametrize("module", ["fasterrcnn", "unet"])
def test_training_is_reproducible(module):
    import importlib

    if module == "unet":
        pytest.importorskip("segmentation_models_pytorch")
    train = importlib.import_module(f"dsxai.zoo.training.{module}").train
    kw = dict(steps=2, batch=2, warmup=1, log_every=0, threads=min(2, torch.get_num_threads()))
    if module == "unet":  # one process here; the data-parallel run has its own test
        kw.update(finetune_steps=1, decay_steps=None, procs=1)  # the warm restart's schedule runs too
    a, b = _train_twice(train, **kw)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = train(seed=7, **kw).state_dict()  # neither module's default seed
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_unet_training_scene_density_reaches_the_generator(monkeypatch, capsys, tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from dsxai.zoo.training import unet as train_unet

    seen = []
    real = shapes.make_scenes

    def spy(*args, **kwargs):
        scenes = real(*args, **kwargs)
        seen.append((kwargs.get("n_objects"), kwargs.get("overlap_prob"), sum(len(s.labels) for s in scenes)))
        return scenes

    monkeypatch.setattr(shapes, "make_scenes", spy)
    kw = dict(steps=1, batch=4, warmup=1, log_every=0, finetune_steps=0, threads=1, procs=1, decay_steps=None)
    train_unet.train(**kw)
    train_unet.train(n_objects=(1, 5), overlap_prob=0.25, **kw)
    assert [s[:2] for s in seen] == [((4, 8), 0.4), ((1, 5), 0.25)]  # dense scenes by default, then as asked
    assert seen[0][2] > seen[1][2]  # denser scenes hold more objects
    seen.clear()
    train_unet.train(n_objects=(4, 8), overlap_prob=0.4, dense_steps=1, **{**kw, "steps": 2, "finetune_steps": 1})
    assert [s[:2] for s in seen] == [((4, 8), 0.4), (None, None), (None, None)]  # then make_scene's defaults
    # a one-step run, so a missing check fails fast (make_scene rejects 5..2) instead of training for minutes
    with pytest.raises(SystemExit):
        train_unet.main(["--objects", "5", "2", "--steps", "1", "--finetune-steps", "0", "--batch", "1",
                         "--out", str(tmp_path)])
    assert "--objects MIN MAX needs 1 <= MIN <= MAX" in capsys.readouterr().err


def test_unet_consistency_loss_penalises_split_objects_only():
    pytest.importorskip("segmentation_models_pytorch")
    from dsxai.zoo.training.losses import consistency_loss

    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 2  # one square object on background
    agree = torch.zeros(1, 5, 8, 8)
    agree[:, 2, 2:6, 2:6] = 4.0  # the whole object read as one class...
    agree[:, 3, :2, :4] += 3.0  # ...while the background may vary freely
    assert float(consistency_loss(agree, target)) == pytest.approx(0.0, abs=1e-6)
    split = agree.clone()
    split[:, 3, 2:6, 2:4] = 8.0  # the left half of the object now reads as another class
    split.requires_grad_(True)
    loss = consistency_loss(split, target)
    assert float(loss) > 0.1
    loss.backward()
    assert torch.isfinite(split.grad).all() and split.grad[..., 2:6, 2:6].abs().sum() > 0
    assert split.grad[..., 7, :].abs().sum() == 0  # background pairs do not pull

    from dsxai.zoo.training import unet as train_unet

    kw = dict(steps=1, finetune_steps=0, batch=2, warmup=1, log_every=0, threads=1, procs=1, decay_steps=None)
    plain = train_unet.train(consistency_weight=0.0, **kw).state_dict()
    pulled = train_unet.train(consistency_weight=1.0, **kw).state_dict()
    assert any(not torch.equal(plain[k], pulled[k]) for k in plain if plain[k].is_floating_point())  # it trains
    with pytest.raises(ValueError, match="consistency_weight is a loss weight >= 0"):
        train_unet.train(consistency_weight=-1.0, **kw)


def test_unet_coarse_class_losses_score_each_cells_class_shares():
    pytest.importorskip("segmentation_models_pytorch")
    from dsxai.zoo.training.losses import coarse_class_losses

    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 2  # the top-left 2x2 cell is all square
    target[0, 2:, 2:3] = 3  # the bottom-right one half triangle, half background
    torch.manual_seed(0)
    features = [torch.randn(1, 6, 2, 2), torch.randn(1, 7, 1, 1)]  # a stride-2 and a stride-4 stage
    heads = [torch.nn.Conv2d(6, 5, 1), torch.nn.Conv2d(7, 5, 1)]
    fine, coarse = coarse_class_losses(heads, features, target)
    share = torch.zeros(1, 5, 2, 2)
    share[0, 2, 0, 0] = share[0, 0, 0, 1] = share[0, 0, 1, 0] = 1.0
    share[0, 3, 1, 1] = share[0, 0, 1, 1] = 0.5
    assert float(fine) == pytest.approx(float(-(share * heads[0](features[0]).log_softmax(1)).sum(1).mean()))
    whole = torch.tensor([10 / 16, 0, 4 / 16, 2 / 16, 0]).view(1, 5, 1, 1)  # the whole image is one cell
    assert float(coarse) == pytest.approx(float(-(whole * heads[1](features[1]).log_softmax(1)).sum()))


def test_unet_deep_supervision_trains_the_encoder_and_leaves_no_trace():
    pytest.importorskip("segmentation_models_pytorch")
    from dsxai.zoo import build_shapes_unet
    from dsxai.zoo.training import unet as train_unet

    kw = dict(steps=2, finetune_steps=0, batch=2, warmup=1, log_every=0, threads=1, procs=1, decay_steps=None,
              half_res_steps=0, image_size=64)
    plain = train_unet.train(deep_supervision=0.0, **kw)
    deep = train_unet.train(deep_supervision=1.0, **kw)
    assert not hasattr(deep, "coarse_heads") and not deep.encoder._forward_hooks  # heads and hook are gone
    assert deep.state_dict().keys() == build_shapes_unet().state_dict().keys()  # loads as the shipped model
    plain, deep = plain.state_dict(), deep.state_dict()
    changed = [k for k in plain if plain[k].is_floating_point() and not torch.equal(plain[k], deep[k])]
    assert any(k.startswith("encoder.") for k in changed)
    with pytest.raises(ValueError, match="deep_supervision is a loss weight >= 0"):
        train_unet.train(deep_supervision=-1.0, **kw)


def test_unet_half_res_steps_train_on_zoomed_out_scenes(monkeypatch, capsys, tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from dsxai import zoo
    from dsxai.zoo.training import unet as train_unet

    sizes, build = [], zoo.build_shapes_unet

    def spy(**kwargs):
        model = build(**kwargs)
        model.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
        return model

    monkeypatch.setattr(zoo, "build_shapes_unet", spy)
    kw = dict(steps=3, finetune_steps=0, batch=1, warmup=1, log_every=0, threads=1, procs=1, decay_steps=None)
    train_unet.train(half_res_steps=2, **kw)
    assert sizes == [(64, 64), (64, 64), (128, 128)]
    with pytest.raises(ValueError, match="half_res_steps must be >= 0, and > 0 only for scenes"):
        train_unet.train(half_res_steps=1, image_size=96, **kw)
    with pytest.raises(SystemExit):
        train_unet.main(["--half-res-steps", "1", "--image-size", "96", "--steps", "1", "--decay-steps", "0",
                         "--out", str(tmp_path)])
    assert "--half-res-steps must be >= 0, and > 0 only with --image-size" in capsys.readouterr().err


def test_unet_decay_schedule_holds_the_rate_then_decays(capsys, tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from dsxai.zoo.training import unet as train_unet

    train_unet.train(steps=3, finetune_steps=1, batch=1, warmup=1, lr=1e-2, log_every=1, threads=1, procs=1,
                     decay_steps=2, consistency_weight=1.0)
    rates = [float(line.split("lr=")[1].split()[0]) for line in capsys.readouterr().out.splitlines() if "lr=" in line]
    assert rates[0] == pytest.approx(1e-3)  # warm-up from lr / 10
    assert rates[1] == rates[2] == pytest.approx(1e-2)  # held, then the cosine decay starts at lr
    assert rates[3] == pytest.approx(1e-2 * (0.001 + 0.999 * 0.5), rel=1e-2)  # halfway through the decay
    for bad in (0, 3):  # 3 steps, 1 of them warm-up: at most 2 can decay
        with pytest.raises(ValueError, match="decay_steps must be between 1 and steps"):
            train_unet.train(steps=3, finetune_steps=0, warmup=1, decay_steps=bad, procs=1)
    with pytest.raises(SystemExit):
        train_unet.main(["--steps", "3", "--finetune-steps", "0", "--warmup", "1", "--decay-steps", "5",
                         "--out", str(tmp_path)])
    assert "--decay-steps must be between 1 and" in capsys.readouterr().err


def test_unet_data_parallel_training_is_reproducible_and_checked(capfd, tmp_path):
    """Data-parallel training (2 processes, gloo) must still be a pure function of its arguments, and it is not
    the single-process run of the same scenes."""
    pytest.importorskip("segmentation_models_pytorch")
    from dsxai.zoo.training import unet as train_unet

    kw = dict(steps=2, finetune_steps=0, batch=4, warmup=1, decay_steps=1, log_every=1, threads=1, procs=2,
              n_objects=(4, 8), overlap_prob=0.4, consistency_weight=1.0)
    a = train_unet.train(**kw)
    assert a.training and a.classification_head is None
    assert len(capfd.readouterr().out.splitlines()) == 2  # rank 0 logs, rank 1 does not
    a, b = a.state_dict(), train_unet.train(**kw).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    one = train_unet.train(**{**kw, "procs": 1}).state_dict()  # the same scenes, not split: another run
    assert any(not torch.equal(a[k], one[k]) for k in a if a[k].is_floating_point())
    # train() checks that the processes ended with equal weights (their BatchNorm statistics may differ)
    stats = {**a, "decoder.blocks.0.conv1.1.running_mean": a["decoder.blocks.0.conv1.1.running_mean"] + 1}
    assert torch.equal(train_unet._model_from_ranks([a, stats]).state_dict()["decoder.blocks.0.conv1.0.weight"],
                       a["decoder.blocks.0.conv1.0.weight"])
    apart = {**a, "segmentation_head.0.bias": a["segmentation_head.0.bias"] + 1e-3}
    with pytest.raises(RuntimeError, match="weights of process 1 differ from process 0's"):
        train_unet._model_from_ranks([a, apart])
    with pytest.raises(ValueError, match="procs must be >= 1 and divide the batch"):
        train_unet.train(**{**kw, "procs": 3})
    with pytest.raises(SystemExit):
        train_unet.main(["--procs", "3", "--steps", "1", "--finetune-steps", "0", "--decay-steps", "0",
                         "--out", str(tmp_path)])
    assert "--procs must be >= 1 and divide --batch (16)" in capfd.readouterr().err


def _parent_pid(pid: int) -> int | None:
    """The parent of a live process (None once it has ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return None if fields["State"].strip().startswith("Z") else int(fields["PPid"])


def _is_spawned(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_unet_data_parallel_workers_do_not_outlive_a_parent_killed_at_start():
    """Killed while its workers still import torch, train() must not leave them training on for minutes.
    (torch's spawn makes Linux signal running workers when their parent dies, not workers still starting.)"""
    pytest.importorskip("segmentation_models_pytorch")
    import signal
    import subprocess
    import time

    code = ("from dsxai.zoo.training.unet import train; train(steps=100000, finetune_steps=0, batch=2, warmup=1, "
            "decay_steps=None, log_every=1, threads=1, procs=2, image_size=64, half_res_steps=0)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 120
        while len(workers) < 2 and time.time() < deadline and proc.poll() is None:
            workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                       and _parent_pid(int(p.name)) == proc.pid and _is_spawned(int(p.name))]
            time.sleep(0.05)
        assert len(workers) == 2, "train(procs=2) started no workers"
        time.sleep(0.5)  # they have their arguments and are importing torch
        proc.kill()
        proc.wait()
        deadline = time.time() + 60
        while time.time() < deadline and any(_parent_pid(w) is not None for w in workers):
            time.sleep(0.2)
        assert [w for w in workers if _parent_pid(w) is not None] == [], "workers outlived train()'s process"
        assert proc.stdout.read() == b""  # no step was trained
    finally:
        proc.kill()
        for w in workers:
            if _parent_pid(w) is not None:
                os.kill(w, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------- training package


def test_library_imports_no_training_code():
    """Importing dsxai and the zoo and resolving every zoo model loads no module of dsxai.zoo.training (the
    check itself sees one once it is imported)."""
    import subprocess

    code = ("import sys, dsxai, dsxai.zoo, dsxai.zoo.biased\n"
            "from dsxai.adapters import resolve\n"
            "for name in dsxai.zoo.ZOO_MODELS:\n"
            "    resolve(name)\n"
            "seen = lambda: sorted(m for m in sys.modules if m.startswith('dsxai.zoo.training'))\n"
            "print(seen())\n"
            "import dsxai.zoo.training.unet\n"
            "print(seen())\n")
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    before, after = run.stdout.strip().splitlines()[-2:]
    assert before == "[]"
    assert "'dsxai.zoo.training.unet'" in after and "'dsxai.zoo.training.losses'" in after


@pytest.mark.parametrize("module", ["yolo", "fasterrcnn", "unet"])
def test_training_scripts_run_as_modules(module):
    import subprocess

    run = subprocess.run([sys.executable, "-m", f"dsxai.zoo.training.{module}", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"python -m dsxai.zoo.training.{module} " in run.stdout and "--out" in run.stdout


def test_training_main_saves_a_checkpoint_the_zoo_loads(tmp_path, capsys):
    """A one-step run of each script's command line writes the checkpoint (and nothing else) that the zoo's
    loader reads strictly, with the run's settings in its meta."""
    pytest.importorskip("segmentation_models_pytorch")
    from dsxai.zoo.training import fasterrcnn, unet

    out = tmp_path / "weights"
    assert fasterrcnn.main(["--steps", "1", "--batch", "1", "--threads", "1", "--out", str(out)]) == 0
    assert unet.main(["--steps", "1", "--batch", "1", "--procs", "1", "--threads", "1", "--image-size", "64",
                      "--half-res-steps", "0", "--decay-steps", "0", "--warmup", "1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["shapes_fasterrcnn.pt", "shapes_unet.pt"]
    assert not zoo.load_shapes_fasterrcnn(path=out / "shapes_fasterrcnn.pt").training
    meta = zoo.load_state_dict_fp32(zoo.build_shapes_unet(), out / "shapes_unet.pt")  # strict: no training heads
    assert meta["steps"] == 1 and meta["image_size"] == 64 and meta["train_seconds"] >= 0
    assert zoo.load_state_dict_fp32(zoo.build_shapes_fasterrcnn(), out / "shapes_fasterrcnn.pt")["batch"] == 1
    printed = capsys.readouterr().out
    assert "trained 1 steps in" in printed and "trained 1+0 steps in" in printed


def test_cue_model_is_trained_once_then_read_from_the_cache(tmp_path, monkeypatch):
    pytest.importorskip("segmentation_models_pytorch")
    from dsxai.zoo import biased
    from dsxai.zoo.training import cue

    first = biased.load_or_train("fair", tmp_path, steps=2, batch=2)
    again = cue.train_cue_unet("fair", steps=2, batch=2)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())  # deterministic
    assert [p.suffix for p in tmp_path.iterdir()] == [".pt"]  # one file, no temporary left
    with pytest.raises(ValueError, match="train on world 'biased' or 'fair'"):
        biased.load_or_train("moved", tmp_path / "other", steps=1)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the cache holds the model")

    monkeypatch.setattr(cue, "train_cue_unet", no_training)
    cached = biased.load_or_train("fair", tmp_path, steps=2, batch=2)
    assert all(torch.equal(v, cached.state_dict()[k]) for k, v in first.state_dict().items())

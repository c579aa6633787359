"""Train the shapes-world YOLOv8 detector and/or YOLOv8-seg model with Ultralytics' own trainer, offline.

    python -m dsxai.zoo.training.yolo --out dsxai/zoo/weights                 # both models
    python -m dsxai.zoo.training.yolo --task detect --out dsxai/zoo/weights   # shapes_yolov8.pt only
    python -m dsxai.zoo.training.yolo --task segment --out dsxai/zoo/weights  # shapes_yolov8-seg.pt only

Everything Ultralytics writes (datasets, runs/, settings) goes to a temporary work dir (``--workdir`` to keep it);
only the final stripped checkpoint (fp16, a normal Ultralytics ``.pt``) is copied to ``--out``.

Offline: ``YOLO_OFFLINE=1`` and a private ``YOLO_CONFIG_DIR`` are set before Ultralytics is imported,
``pretrained=False`` (no weight download), ``amp=False`` (no ``check_amp`` and its yolo26n.pt download),
``plots=False`` and the dataset check's ``check_font('Arial.ttf')`` is replaced by a no-op (it would try to
download the font even with plots off). A socket guard refuses any network connection during training and the
script fails if anything tried one.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from dsxai.runs import write_atomic
from dsxai.zoo.training.common import WEIGHTS_OUT, ZOO_DIR

CONFIGS = {"detect": ZOO_DIR / "shapes_yolov8.yaml", "segment": ZOO_DIR / "shapes_yolov8-seg.yaml"}
FILENAMES = {"detect": "shapes_yolov8.pt", "segment": "shapes_yolov8-seg.pt"}

# Hyper-parameters of the shipped checkpoints. nbs=batch (set below) makes every batch an optimizer step
# (Ultralytics' default nbs=64 would accumulate 4 batches of 16, i.e. 4x fewer updates in a short run).
HYP = dict(optimizer="AdamW", lr0=0.003, lrf=0.05, cos_lr=False, warmup_epochs=0.5, close_mosaic=2, mosaic=1.0,
           scale=0.3, translate=0.1, fliplr=0.5, flipud=0.5, degrees=0.0, hsv_h=0.015, hsv_s=0.5, hsv_v=0.3,
           val=True)
DEFAULTS = {
    "detect": dict(n_train=800, n_val=64, epochs=8),
    "segment": dict(n_train=800, n_val=64, epochs=3),  # initialised from the trained detector (see --init)
}


@contextlib.contextmanager
def network_guard(attempts: list):
    """Refuse (and record) every outgoing connection / DNS lookup inside the block."""
    orig_connect, orig_gai, orig_cc = socket.socket.connect, socket.getaddrinfo, socket.create_connection

    def connect(self, address, *a, **k):
        if self.family == getattr(socket, "AF_UNIX", None):
            return orig_connect(self, address, *a, **k)
        attempts.append(("connect", repr(address)))
        raise OSError("dsxai.zoo.training.yolo: network access is disabled during training")

    def getaddrinfo(host, *a, **k):
        attempts.append(("getaddrinfo", repr(host)))
        raise socket.gaierror("dsxai.zoo.training.yolo: network access is disabled during training")

    def create_connection(address, *a, **k):
        attempts.append(("create_connection", repr(address)))
        raise OSError("dsxai.zoo.training.yolo: network access is disabled during training")

    socket.socket.connect, socket.getaddrinfo, socket.create_connection = connect, getaddrinfo, create_connection
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.getaddrinfo, socket.create_connection = orig_connect, orig_gai, orig_cc


def _prepare_env(workdir: Path, threads: int) -> None:
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(workdir / "config"))  # keep ~/.config/Ultralytics untouched
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    for k in ("WANDB_MODE", "COMET_MODE"):
        os.environ.setdefault(k, "disabled")


def train_one(task: str, out: Path, workdir: Path, *, n_train: int, n_val: int, epochs: int, imgsz: int = 256,
              batch: int = 16, seed: int = 0, threads: int = 2, verbose: bool = False,
              hyp: dict | None = None, cfg: str | Path | None = None, init: str | Path | None = None) -> Path:
    """Train one model; return the path of the copied checkpoint.

    ``init``: a local Ultralytics checkpoint whose matching weights initialise the model (Ultralytics'
    ``pretrained=<path>``, no download); None = random init.
    """
    if init is not None and not Path(init).is_file():
        raise FileNotFoundError(f"--init checkpoint {init} not found (train the detector first: --task detect)")
    _prepare_env(workdir, threads)
    import torch

    from dsxai import shapes
    from dsxai.zoo import TRAIN_SEED, VAL_SEED

    torch.set_num_threads(threads)
    data_dir = workdir / f"data_{task}"
    t0 = time.time()
    train_scenes = shapes.make_scenes(n_train, TRAIN_SEED, size=imgsz)
    val_scenes = shapes.make_scenes(n_val, VAL_SEED, size=imgsz)
    data_yaml = shapes.write_yolo(train_scenes, data_dir, val_scenes=val_scenes, task=task)
    print(f"[{task}] wrote {n_train}+{n_val} scenes in {time.time() - t0:.1f}s -> {data_yaml}", flush=True)

    attempts: list = []
    with network_guard(attempts):
        from dsxai.adapters.ultralytics_yolo import offline_yolo

        model = offline_yolo(str(cfg or CONFIGS[task]), task)  # settings go to the private YOLO_CONFIG_DIR
        torch.set_num_threads(threads)  # importing ultralytics may have changed OMP settings
        t1 = time.time()
        kw = dict(HYP)
        kw.update(hyp or {})
        model.train(
            data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, nbs=batch, device="cpu", workers=0,
            project=str(workdir / "runs"), name=task, exist_ok=True, pretrained=str(init) if init else False,
            amp=False, plots=False,
            seed=seed, deterministic=True, cache="disk", patience=1000, verbose=verbose, save=True, **kw,
        )
        train_s = time.time() - t1
    if attempts:
        raise RuntimeError(f"Ultralytics tried to reach the network during training: {attempts}")

    last = workdir / "runs" / task / "weights" / "last.pt"
    out.mkdir(parents=True, exist_ok=True)
    dst = out / FILENAMES[task]
    _slim_checkpoint(last, dst)
    print(f"[{task}] trained {epochs} epochs in {train_s:.0f}s; saved {dst} ({dst.stat().st_size / 1e6:.2f} MB)",
          flush=True)
    return dst


def _slim_checkpoint(src: Path, dst: Path) -> None:
    """Re-save a stripped Ultralytics checkpoint without machine-specific extras (paths, git info, results)."""
    import torch

    # full pickle is acceptable here: src is the last.pt this process's own training run just wrote
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    keep = {k: ckpt[k] for k in ("model", "date", "version", "license", "docs", "epoch") if k in ckpt}
    args = dict(ckpt.get("train_args") or {})
    for k in ("data", "project", "save_dir", "name"):
        args.pop(k, None)
    keep["train_args"] = args
    keep["model"].args = {k: v for k, v in dict(getattr(keep["model"], "args", {}) or {}).items()
                          if k not in ("data", "project", "save_dir", "name")}
    keep.update(optimizer=None, ema=None, updates=None, best_fitness=None, train_metrics={}, train_results={})
    buffer = io.BytesIO()
    torch.save(keep, buffer)
    write_atomic(dst, buffer.getvalue())  # a shipped checkpoint is replaced whole or not at all


def _parse_hyp(items: list[str]) -> dict:
    import yaml

    out = {}
    for it in items:
        k, _, v = it.partition("=")
        out[k] = yaml.safe_load(v)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("detect", "segment", "both"), default="both")
    p.add_argument("--out", type=Path, default=WEIGHTS_OUT)
    p.add_argument("--workdir", type=Path, default=None, help="keep Ultralytics' runs and datasets here")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--cfg", default=None, help="model yaml (default: the shipped one for the task)")
    p.add_argument("--init", default="auto",
                   help="segment only: checkpoint to initialise from; 'auto' = the detector in --out "
                        "(trained first with --task both), 'none' = random init (needs more epochs)")
    p.add_argument("--hyp", nargs="*", default=[], metavar="KEY=VALUE", help="extra Ultralytics train args")
    a = p.parse_args(argv)

    tasks = ["detect", "segment"] if a.task == "both" else [a.task]
    tmp = None
    if a.workdir is None:
        tmp = tempfile.mkdtemp(prefix="dsxai_yolo_")
        workdir = Path(tmp)
    else:
        workdir = a.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        for task in tasks:
            d = DEFAULTS[task]
            init = None
            if task == "segment" and a.init != "none":
                init = a.out.resolve() / FILENAMES["detect"] if a.init == "auto" else Path(a.init)
            train_one(task, a.out.resolve(), workdir,
                      n_train=a.n_train or d["n_train"], n_val=a.n_val or d["n_val"], epochs=a.epochs or d["epochs"],
                      imgsz=a.imgsz, batch=a.batch, seed=a.seed, threads=a.threads, verbose=a.verbose,
                      hyp=_parse_hyp(a.hyp), cfg=a.cfg, init=init)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

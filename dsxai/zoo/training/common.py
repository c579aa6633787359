"""What the zoo's training scripts share: where checkpoints go, the AdamW set-up, the warm-up, the command
line's common options, and "train, time, save, report"."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Iterable

ZOO_DIR = Path(__file__).resolve().parents[1]
#: where the shipped checkpoints live, the default ``--out``
WEIGHTS_OUT = ZOO_DIR / "weights"


def adamw(params: Iterable, lr: float, weight_decay: float, fused: bool = False):
    """AdamW with weight decay on the weights (``ndim > 1``) and none on biases and norms.

    ``fused=True`` asks for the fused kernel (one kernel instead of ~10 small ops per tensor) and falls back to
    the plain one where this torch fuses on CUDA only."""
    import torch

    params = list(params)
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if fused:
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except (RuntimeError, TypeError):  # torch < 2.4 fuses on CUDA only
            pass
    return torch.optim.AdamW(groups, lr=lr)


def warmup_lr(lr: float, step: int, warmup: int) -> float:
    """The learning rate of warm-up step ``step < warmup``: linear from ``lr / 10`` towards ``lr``."""
    return lr * (0.1 + 0.9 * step / warmup)


def script_parser(doc: str | None, defaults: dict[str, Any]) -> argparse.ArgumentParser:
    """The options every training script takes: ``--out --steps --batch --lr --seed --threads --eval``
    (defaults from ``defaults``), with the module doc as its description."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS_OUT, help="folder the checkpoint is written to")
    p.add_argument("--steps", type=int, default=defaults["steps"])
    p.add_argument("--batch", type=int, default=defaults["batch"])
    p.add_argument("--lr", type=float, default=defaults["lr"])
    p.add_argument("--seed", type=int, default=defaults["seed"])
    p.add_argument("--threads", type=int, default=defaults["threads"], help="intra-op threads per process")
    p.add_argument("--eval", type=int, default=0, help="evaluate on this many held-out scenes (TEST_SEED)")
    return p


def train_and_save(train: Callable[[], Any], out: Path, filename: str, meta: dict[str, Any], what: str) -> Path:
    """Run ``train()``, save the model it returns as ``out / filename`` (fp16 state dict, ``meta`` plus
    ``train_seconds``) and print what was trained; return the checkpoint's path."""
    from dsxai.zoo import save_state_dict_fp16

    t0 = time.time()
    model = train()
    seconds = time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    dst = out / filename
    save_state_dict_fp16(model, dst, meta={**meta, "train_seconds": round(seconds, 1)})
    print(f"trained {what} in {seconds:.0f}s; saved {dst} ({dst.stat().st_size / 1e6:.2f} MB)", flush=True)
    return dst

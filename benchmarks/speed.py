"""Speed of per-box / per-mask CAMs: dsxai's one batched call against pytorch-grad-cam's call per target.

Models (random init under a fixed seed, eval mode, one image):
  fasterrcnn  torchvision Faster R-CNN R50-FPN   800 px on CUDA, 320 on CPU   10 boxes
  yolov8n     Ultralytics YOLOv8n from yolov8n.yaml 640 px on CUDA, 320 on CPU  10 boxes
  unet        smp Unet-resnet34 (5 classes)       512 px on CUDA, 256 on CPU   10 masks
Random-init detectors give arbitrary detections, so the targets are the 10 best-scoring candidates that
survive NMS (``conf=0, max_dets=10``); the U-Net gets 10 random blobs as user masks (``reduce="sum"``, which
is pytorch-grad-cam's SemanticSegmentationTarget). The reference targets are built from the same detections.

What is compared (same layers on both sides; see LAYERS):
* gradcam, hirescam, layercam, gradcam++: dsxai = one forward + one batched backward for all targets;
  pytorch-grad-cam = one call (forward + backward) per target, with FasterRCNNBoxScoreTarget for Faster
  R-CNN and equivalent callables for YOLO (class probability at the detection's anchor) and U-Net.
* eigencam (gradient-free, class-agnostic): one call on each side.
* scorecam, ablationcam: both use the same ``--perturb-batch`` masked images per forward on a layer with few
  channels (C = 64 / 64 / 16), so each side runs ceil(C / batch) forwards of ``batch`` images per call. dsxai
  scores all targets of an image on those forwards (one call); pytorch-grad-cam needs one call per target,
  i.e. T times the masked forwards. On CPU its per-target time is measured on ``--ref-perturb-targets``
  targets and scaled to T (its calls are independent and cost the same); the JSON says so
  (``reference_targets_timed``).
* floors: a no-grad forward (for eigencam) and one forward + one backward of the summed target scores to the
  explained layers' outputs (for the gradient methods); dsxai's cost is reported as a multiple of them.
* CUDA only: peak GPU memory of each dsxai call and of the floor, and a 100-target run (chunk_size 32) against
  the single backward's peak.

Times are medians of ``--repeats`` runs (more for calls under ``--min-seconds / repeats``: at least 1 s of runs)
after one warm-up, with ``torch.cuda.synchronize()`` on CUDA.
Prints a table and writes ``benchmarks/results/speed-<device>.json`` (``--quick``: ``speed-<device>-quick.json``).

    python benchmarks/speed.py [--device cuda] [--models fasterrcnn,yolov8n,unet] [--methods gradcam,eigencam]
                               [--repeats 5] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

import dsxai
from dsxai.layers import tensor_leaves

ROOT = Path(__file__).resolve().parent
GRADIENT_METHODS = ["gradcam", "hirescam", "layercam", "gradcam++"]
METHODS = GRADIENT_METHODS + ["eigencam", "scorecam", "ablationcam"]
# options of the core, timed against our default path (no reference): METHOD:VARIANT. eigencam:svd is the
# reference factorisation behind EigenCAM's default Gram solver (its max diff shows they agree)
FAST_PATHS = {"eigencam:svd": {"solver": "svd"}, "eigencam:lowrank": {"solver": "lowrank"},
              "gradcam:bf16": {"autocast": "bf16"}, "gradcam:fp16": {"autocast": "fp16"}}
MODELS = ["fasterrcnn", "yolov8n", "unet"]
SIZES = {"cuda": {"fasterrcnn": 800, "yolov8n": 640, "unet": 512},
         "cpu": {"fasterrcnn": 320, "yolov8n": 320, "unet": 256},
         "quick": {"fasterrcnn": 160, "yolov8n": 160, "unet": 128}}
# layers per model and method family: "gradient", "eigen", "perturb"
LAYERS = {
    "fasterrcnn": {"gradient": ["backbone.body.layer4"], "eigen": ["backbone.body.layer4"],
                   "perturb": ["backbone.body.maxpool"]},            # 64 channels, post-ReLU
    "yolov8n": {"gradient": ["model.15", "model.18", "model.21"], "eigen": ["model.15", "model.18", "model.21"],
                "perturb": ["model.15"]},                            # P3, 64 channels
    # pytorch-grad-cam's EigenCAM takes a full_matrices SVD ([hw, hw] U): the full-resolution decoder output
    # is out of its reach, so both sides use the 1/8 decoder block for EigenCAM
    "unet": {"gradient": ["decoder"], "eigen": ["decoder.blocks.1"], "perturb": ["decoder"]},  # decoder: 16 ch
}
# models whose reference targets score exactly what ours do (Faster R-CNN's FasterRCNNBoxScoreTarget is
# IoU + score of the matched output box, ours the proposal's class probability: maps differ). The check is a
# correlation, not a difference: random-init scores are ~1e-4, and pytorch-grad-cam's min-max scaling divides
# by max + 1e-7, which shrinks such faint maps towards 0 while ours scales them to [0, 1]. With one layer
# (U-Net) that is a pure rescaling (correlation 1.0); with several (YOLO's three levels) each level is scaled
# before fusion, so pytorch-grad-cam weighs the fainter levels down and the correlation drops (~0.8-0.96).
SAME_TARGETS = ("yolov8n", "unet")
REFERENCE = {"gradcam": "GradCAM", "hirescam": "HiResCAM", "layercam": "LayerCAM", "gradcam++": "GradCAMPlusPlus",
             "eigencam": "EigenCAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}


# ------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MIN_SECONDS = 1.0  # --min-seconds


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1,
          min_seconds: float | None = None) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs (seconds).

    Calls faster than ``min_seconds / repeats`` run more often, until ``min_seconds`` of runs (at most 200): a
    median of 5 runs of a 40 ms call swings by 10-20% on a shared CPU."""
    return timed_together([fn], device, repeats, warmup, min_seconds)[0]


def timed_together(fns: list[Callable[[], Any]], device: torch.device, repeats: int, warmup: int = 1,
                   min_seconds: float | None = None, max_runs: int = 200) -> list[float]:
    """Median wall times of several calls timed in turn (a, b, a, b, ...), in seconds (see :func:`timed`).

    A ratio of two such medians holds while the machine's speed drifts (other load, clocks), which timings taken
    a minute apart fold into it: a method's cost as a multiple of a forward is measured this way."""
    min_seconds = MIN_SECONDS if min_seconds is None else min_seconds
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    while len(times[0]) < max(1, repeats) or (sum(map(sum, times)) < min_seconds and len(times[0]) < max_runs):
        for fn, spent in zip(fns, times):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def peak_memory(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak GPU memory allocated during ``fn`` above what was allocated before (MiB); None off CUDA."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


@contextlib.contextmanager
def quiet():
    """Silence the reference's tqdm bars and Ultralytics' model summary."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield


# ------------------------------------------------------------------- cases
@dataclass
class Case:
    """One model set up for both libraries."""

    name: str
    size: int
    adapter: Any
    batch: Any
    make_target: Callable[[int], Any]          # n -> a fresh dsxai target for n boxes / masks
    ref_model: nn.Module                       # the module pytorch-grad-cam runs
    ref_input: Tensor
    ref_targets: Callable[[Any, int], list]    # (detections, n) -> one pytorch-grad-cam target per box / mask
    ref_ablation_layer: Callable[[nn.Module], nn.Module] = None
    info: dict = field(default_factory=dict)

    def module(self, name: str) -> nn.Module:
        return self.adapter.model.get_submodule(name)


class _FirstOutput(nn.Module):
    """An Ultralytics model whose forward returns only ``y`` ``[B, 4 + nc, A]``: pytorch-grad-cam iterates
    the output over the batch (``for o in model(batch)``), which the ``(y, raw)`` tuple breaks."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, (tuple, list)) else out


class YOLOAnchorScore:
    """pytorch-grad-cam target: the class probability of one detection at its anchor (``y[4 + label, anchor]``)."""

    def __init__(self, anchor: int, label: int):
        self.anchor, self.label = anchor, label

    def __call__(self, output: Tensor) -> Tensor:
        return output[4 + self.label, self.anchor]


def _image(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def build_fasterrcnn(size: int, device: torch.device, seed: int) -> Case:
    import torchvision
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    from dsxai.adapters.torchvision_detection import TorchvisionDetectionAdapter

    torch.manual_seed(seed)
    # box_score_thresh=0: a random-init R-CNN scores ~1/91 per class; the reference target needs the raw
    # model's own detections to match our boxes
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=size, max_size=size, box_score_thresh=0.0,
    ).eval().to(device)
    adapter = TorchvisionDetectionAdapter(model)
    image = _image(size, seed)
    batch = adapter.preprocess(image)
    ref_input = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).to(device)

    def ref_targets(detections, n):
        d = detections[0]
        return [FasterRCNNBoxScoreTarget(labels=[int(d.labels[i])], bounding_boxes=[d.boxes[i].numpy()])
                for i in range(n)]

    return Case("fasterrcnn", size, adapter, batch, lambda n: adapter.box_target(batch, conf=0.0, max_dets=n),
                model, ref_input, ref_targets,
                info={"description": "torchvision fasterrcnn_resnet50_fpn, random init", "input": f"{size}x{size}"})


def build_yolov8n(size: int, device: torch.device, seed: int) -> Case:
    from pytorch_grad_cam.ablation_layer import AblationLayer

    from dsxai.adapters.ultralytics_yolo import UltralyticsAdapter

    torch.manual_seed(seed)
    with quiet():
        adapter = UltralyticsAdapter("yolov8n.yaml", imgsz=size, device=device)
    adapter.model.eval()
    image = _image(size, seed)
    batch = adapter.preprocess(image)

    def ref_targets(detections, n):
        d = detections[0]
        return [YOLOAnchorScore(int(d.meta["anchor"][i]), int(d.labels[i])) for i in range(n)]

    def ablation_layer(original: nn.Module) -> nn.Module:
        layer = AblationLayer()  # Ultralytics' forward reads each layer's .f (inputs) and .i (index)
        layer.f, layer.i, layer.type = original.f, original.i, getattr(original, "type", "AblationLayer")
        return layer

    return Case("yolov8n", size, adapter, batch, lambda n: adapter.box_target(batch, conf=0.0, max_dets=n),
                _FirstOutput(adapter.model), batch.tensor, ref_targets, ablation_layer,
                info={"description": "Ultralytics YOLOv8n from yolov8n.yaml, random init",
                      "input": "x".join(map(str, batch.tensor.shape[-2:]))})


def _blobs(size: int, n: int, seed: int) -> np.ndarray:
    """``n`` random discs (radius size/16 .. size/8) as [n, size, size] bool masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = []
    for _ in range(n):
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        r = rng.uniform(size / 16, size / 8)
        masks.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    return np.stack(masks)


def build_unet(size: int, device: torch.device, seed: int) -> Case:
    import segmentation_models_pytorch as smp
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    from dsxai.adapters.smp_segmentation import SMPAdapter

    torch.manual_seed(seed)
    model = smp.Unet("resnet34", encoder_weights=None, classes=5).eval().to(device)
    adapter = SMPAdapter(model)
    image = _image(size, seed)
    batch = adapter.preprocess(image)

    def make_target(n):
        masks = _blobs(size, n, seed)
        labels = [int(c) for c in np.random.default_rng(seed + 1).integers(1, 5, n)]
        return adapter.mask_target(batch, masks=[masks], classes=[labels], reduce="sum")

    def ref_targets(detections, n):
        d = detections[0]
        return [SemanticSegmentationTarget(int(d.labels[i]), d.masks[i].numpy().astype(np.float32))
                for i in range(n)]

    return Case("unet", size, adapter, batch, make_target, model, batch.tensor, ref_targets,
                info={"description": "smp Unet resnet34, encoder_weights=None, 5 classes", "input": f"{size}x{size}"})


BUILDERS = {"fasterrcnn": build_fasterrcnn, "yolov8n": build_yolov8n, "unet": build_unet}


# ------------------------------------------------------------------ floors
def forward_floor(case: Case) -> Callable[[], Any]:
    def run():
        with torch.no_grad():
            return case.adapter.model(case.batch.tensor)
    return run


def backward_floor(case: Case, layers: list[str], n: int) -> Callable[[], Any]:
    """One forward and ONE backward of the summed scores of ``n`` targets to the layers' outputs."""
    modules = [case.module(name) for name in layers]
    model = case.adapter.model

    def run():
        captured: list[Tensor] = []
        handles = [m.register_forward_hook(lambda _m, _i, out: captured.extend(tensor_leaves(out))) for m in modules]
        try:
            x = case.batch.tensor.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                output = model(x)
        finally:
            for h in handles:
                h.remove()
        scores = case.make_target(n)(output)
        total = torch.cat([s.reshape(-1) for s in scores]).sum() if isinstance(scores, list) else scores.sum()
        torch.autograd.grad(total, captured, allow_unused=True)
    return run


# ---------------------------------------------------------------- one model
def ours_call(case: Case, method: str, layers: list[str], n: int, options: dict) -> tuple[Callable, Any]:
    cam = dsxai.get_method(method)(case.adapter.model, layers, **options)

    def run():
        target = case.make_target(n)
        result = cam.explain(case.batch.tensor, target)
        run.detections = target.detections
        return result
    return run, cam


def reference_call(case: Case, method: str, layers: list[str], targets: list, options: dict):
    import pytorch_grad_cam

    cls = getattr(pytorch_grad_cam, REFERENCE[method])
    modules = [case.module(name) for name in layers]
    kwargs = {}
    if method == "ablationcam":
        kwargs["batch_size"] = options["batch_size"]
        if case.ref_ablation_layer is not None:
            kwargs["ablation_layer"] = case.ref_ablation_layer(modules[0])
    cam = cls(model=case.ref_model, target_layers=modules, **kwargs)
    if method == "scorecam":
        cam.batch_size = options["batch_size"]

    def run_one(target):
        with quiet():
            return cam(input_tensor=case.ref_input, targets=[target])

    if method == "eigencam":  # class-agnostic: one call per image (the target is ignored)
        def run():
            return run_one(targets[0])
    else:
        def run():
            run.last = [run_one(t) for t in targets]
            return run.last
    return run, cam


def bench_model(case: Case, methods: list[str], args, device: torch.device) -> dict:
    n = args.targets
    out: dict[str, Any] = {"model": case.name, **case.info, "targets": n, "methods": {}}
    out["forward_s"] = timed(forward_floor(case), device, args.repeats)
    exact_maps: dict[str, Tensor] = {}
    for method in methods:
        try:
            measure_method(case, method, n, args, device, out, exact_maps)
        except Exception as exc:  # one failing method must not lose the others' figures
            out["methods"][method] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
            print(f"  {case.name:10s} {method:12s} FAILED: {out['methods'][method]['error']}", file=sys.stderr,
                  flush=True)
    if device.type == "cuda" or args.quick:
        out["chunked"] = chunked_memory(case, args, device)
    return out


def measure_method(case: Case, method: str, n: int, args, device: torch.device, out: dict,
                   exact_maps: dict[str, Tensor]) -> None:
    """Time one method (or fast path) on ``case`` into ``out["methods"][method]``."""
    base, _, variant = method.partition(":")
    if variant:
        out["methods"][method] = fast_path(case, method, base, n, args, device, exact_maps)
        return
    family = "eigen" if method == "eigencam" else "perturb" if method in ("scorecam", "ablationcam") else "gradient"
    layers = LAYERS[case.name][family]
    options = {"batch_size": args.perturb_batch} if family == "perturb" else {}
    row: dict[str, Any] = {"layers": layers}
    ours, _ = ours_call(case, method, layers, n, options)
    notes = _Notes()
    engine_log = logging.getLogger("dsxai")
    level = engine_log.level
    engine_log.addHandler(notes)
    engine_log.setLevel(logging.INFO)
    floor_fn = (backward_floor(case, layers, n) if family == "gradient" else forward_floor(case))
    try:  # ours and its floor in turn: their ratio is immune to the machine's drift
        row["dsxai_s"], row["floor_s"] = timed_together([ours, floor_fn], device, args.repeats)
    finally:
        engine_log.removeHandler(notes)
        engine_log.setLevel(level)
    if notes.lines:
        row["engine_notes"] = sorted(set(notes.lines))
    result = ours()
    maps = result.maps[0]
    if maps.shape[0] != n:
        raise RuntimeError(f"{case.name} {method}: got {maps.shape[0]} maps for {n} targets")
    exact_maps[method] = maps
    row["dsxai_peak_mib"] = peak_memory(ours, device)
    if family == "gradient":
        key = ",".join(layers)
        if key not in out.setdefault("forward_backward_s", {}):  # the per-model summary: the first row's floor
            out["forward_backward_s"][key] = row["floor_s"]
            out.setdefault("forward_backward_peak_mib", {})[key] = peak_memory(backward_floor(case, layers, n),
                                                                             device)
        row["floor"] = "forward+backward"
    else:
        row["floor"] = "forward"
    if family == "perturb":
        channels = _channels(case, layers[0])
        row["channels"] = channels
        row["masked_forwards_per_call"] = math.ceil(channels / args.perturb_batch)
        row["masked_images_per_forward"] = args.perturb_batch
    row["dsxai_over_floor"] = row["dsxai_s"] / row["floor_s"]
    if not args.skip_reference:
        timed_targets = n
        if family == "perturb" and args.ref_perturb_targets:
            timed_targets = min(n, args.ref_perturb_targets)
        targets = case.ref_targets(ours.detections, timed_targets)
        theirs, cam = reference_call(case, method, layers, targets, options)
        repeats = args.repeats if family != "perturb" else max(1, args.repeats // 2)
        seconds = timed(theirs, device, repeats)
        cam.activations_and_grads.release()
        case.ref_model.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward fills .grad
        row["reference_targets_timed"] = 1 if family == "eigen" else timed_targets
        row["grad_cam_s"] = seconds if family == "eigen" else seconds * n / timed_targets
        if family == "gradient" and case.name in SAME_TARGETS:  # sanity: both computed the same maps
            theirs_maps = torch.from_numpy(np.concatenate(theirs.last))
            row["min_corr_vs_reference"] = _min_correlation(maps.cpu(), theirs_maps)
        row["speedup"] = row["grad_cam_s"] / row["dsxai_s"]
    out["methods"][method] = row
    print(f"  {case.name:10s} {method:12s} dsxai {row['dsxai_s'] * 1e3:9.1f} ms"
          + (f"  pytorch-grad-cam {row['grad_cam_s'] * 1e3:10.1f} ms" if "grad_cam_s" in row else ""),
          file=sys.stderr, flush=True)


def fast_path(case: Case, method: str, base: str, n: int, args, device: torch.device,
              exact_maps: dict[str, Tensor]) -> dict:
    """An option of the core (EigenCAM solver, autocast) against our default path: time and max abs map
    difference. The option, the default and the floor are timed in turn, so their ratios share one moment."""
    family = "eigen" if base == "eigencam" else "gradient"
    layers = LAYERS[case.name][family]
    ours, _ = ours_call(case, base, layers, n, dict(FAST_PATHS[method]))
    exact, _ = ours_call(case, base, layers, n, {})
    floor_fn = forward_floor(case) if family == "eigen" else backward_floor(case, layers, n)
    row: dict[str, Any] = {"layers": layers, "options": FAST_PATHS[method]}
    row["dsxai_s"], row["exact_s"], row["floor_s"] = timed_together([ours, exact, floor_fn], device, args.repeats)
    result = ours()
    row["dsxai_peak_mib"] = peak_memory(ours, device)
    if base not in exact_maps:
        exact_maps[base] = exact().maps[0]
    row["max_abs_diff_vs_exact"] = float((result.maps[0] - exact_maps[base]).abs().max())
    row["floor"] = "forward" if family == "eigen" else "forward+backward"
    row["dsxai_over_floor"] = row["dsxai_s"] / row["floor_s"]
    row["speedup_vs_exact"] = row["exact_s"] / row["dsxai_s"]
    print(f"  {case.name:10s} {method:16s} dsxai {row['dsxai_s'] * 1e3:9.1f} ms  max |diff| vs exact "
          f"{row['max_abs_diff_vs_exact']:.2e}", file=sys.stderr, flush=True)
    return row


def _min_correlation(a: Tensor, b: Tensor) -> float:
    """Smallest Pearson correlation between matching maps of ``[T, H, W]`` stacks."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)).min())


class _Notes(logging.Handler):
    """Collects the engine's log lines (e.g. "batched backward unavailable ... computing gradients in a loop")."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage().splitlines()[0][:300])


def _channels(case: Case, layer: str) -> int:
    captured = []
    handle = case.module(layer).register_forward_hook(lambda _m, _i, o: captured.extend(tensor_leaves(o)))
    try:
        forward_floor(case)()
    finally:
        handle.remove()
    return int(captured[0].shape[1])


def chunked_memory(case: Case, args, device: torch.device) -> dict:
    """GradCAM on ``--chunk-targets`` targets in chunks of ``--chunk-size``: time and peak memory against one
    forward + backward of the same targets' summed score."""
    n, chunk = args.chunk_targets, args.chunk_size
    layers = LAYERS[case.name]["gradient"]
    ours, _ = ours_call(case, "gradcam", layers, n, {"chunk_size": chunk})
    floor = backward_floor(case, layers, n)
    result = {"targets": n, "chunk_size": chunk, "dsxai_s": timed(ours, device, 1), "dsxai_peak_mib":
              peak_memory(ours, device), "single_backward_peak_mib": peak_memory(floor, device),
              "single_backward_s": timed(floor, device, 1)}
    maps = ours().maps
    result["maps"] = int(maps[0].shape[0])
    return result


# -------------------------------------------------------------------- main
def _fmt(value: float | None, unit: str = "ms") -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.1f}" if unit == "ms" else f"{value:.1f}"


def table(results: dict) -> str:
    lines = ["| model | size | method | layers | dsxai ms | pytorch-grad-cam ms | speed-up | dsxai / floor | "
             "dsxai peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for model in results["models"]:
        for method, row in model["methods"].items():
            if "error" in row:
                lines.append(f"| {model['model']} | {model['input']} | {method} | FAILED: {row['error']} "
                             "| | | | | |")
                continue
            speedup = f"{row['speedup']:.1f}x" if "speedup" in row else "-"
            if "speedup_vs_exact" in row:
                speedup = f"{row['speedup_vs_exact']:.2f}x vs exact (max diff {row['max_abs_diff_vs_exact']:.1e})"
            lines.append(
                f"| {model['model']} | {model['input']} | {method} | {','.join(row['layers'])} | "
                f"{_fmt(row['dsxai_s'])} | {_fmt(row.get('grad_cam_s'))} | "
                f"{speedup} | "
                f"{row['dsxai_over_floor']:.2f}x {row['floor']} | {_fmt(row['dsxai_peak_mib'], 'mib')} |")
    lines.append("")
    for model in results["models"]:
        floors = ", ".join(f"{k}: {_fmt(v)} ms" for k, v in model.get("forward_backward_s", {}).items())
        lines.append(f"- {model['model']}: forward {_fmt(model['forward_s'])} ms; forward+backward {floors}")
        for method, row in model["methods"].items():
            for note in row.get("engine_notes", []):
                lines.append(f"  {method}: engine: {note}")
        if "chunked" in model:
            c = model["chunked"]
            lines.append(f"  {c['targets']} targets in chunks of {c['chunk_size']}: {_fmt(c['dsxai_s'])} ms, peak "
                         f"{_fmt(c['dsxai_peak_mib'], 'mib')} MiB vs one backward {_fmt(c['single_backward_s'])} ms, "
                         f"peak {_fmt(c['single_backward_peak_mib'], 'mib')} MiB")
    return "\n".join(lines)


def merge_results(old: dict, new: dict) -> dict:
    """``new``'s rows replace ``old``'s for the same model, input and method; the rest of ``old`` stays."""
    if (old.get("device"), old.get("machine")) != (new.get("device"), new.get("machine")):
        raise SystemExit(f"--update: the JSON holds {old.get('device')} / {old.get('machine')} results, this run is "
                         f"{new.get('device')} / {new.get('machine')}; write to another --out")
    merged = {**old, **{k: v for k, v in new.items() if k != "models"}, "models": list(old["models"])}
    for model in new["models"]:
        same = [i for i, m in enumerate(merged["models"])
                if (m["model"], m.get("input")) == (model["model"], model.get("input"))]
        if not same:
            merged["models"].append(model)
            continue
        previous = merged["models"][same[0]]
        methods = {**previous["methods"], **model["methods"]}
        for key in ("forward_backward_s", "forward_backward_peak_mib"):
            if key in previous or key in model:
                model[key] = {**previous.get(key, {}), **model.get(key, {})}
        merged["models"][same[0]] = {**previous, **model, "methods": methods}
    merged["updated"] = sorted({*old.get("updated", []), *(f"{m['model']}:{k}" for m in new["models"]
                                                          for k in m["methods"])})
    return merged


def main(argv: list[str] | None = None) -> int:
    global MIN_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {MODELS}")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated, from {METHODS + list(FAST_PATHS)} (default: all; gradcam:fp16 "
                             "only on CUDA, CPU fp16 is emulated)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median), after a warm-up")
    parser.add_argument("--targets", type=int, default=10, help="boxes / masks per image")
    parser.add_argument("--size", action="append", default=[], metavar="MODEL=PX",
                        help="input size of a model, e.g. --size fasterrcnn=640 (repeatable)")
    parser.add_argument("--perturb-batch", type=int, default=32,
                        help="masked images per forward for scorecam / ablationcam, both libraries")
    parser.add_argument("--ref-perturb-targets", type=int, default=None,
                        help="targets timed for pytorch-grad-cam's scorecam / ablationcam, scaled to --targets "
                             "(default: all on CUDA, 2 on CPU)")
    parser.add_argument("--chunk-targets", type=int, default=100)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--skip-reference", action="store_true", help="do not time pytorch-grad-cam")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny inputs, 3 targets, 1 repeat, small chunked run")
    parser.add_argument("--min-seconds", type=float, default=1.0,
                        help="fast calls run more than --repeats times, until this many seconds of runs (at most "
                             "200 runs; --quick: 0)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument("--update", action="store_true",
                        help="merge into the JSON already at the output path: re-measured methods replace the old "
                             "rows, other rows stay (the table is printed for the merged results)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.methods is None:
        args.methods = ",".join(METHODS + [m for m in FAST_PATHS if device.type == "cuda" or m != "gradcam:fp16"])
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    for name, known, what in ((models, MODELS, "model"), (methods, METHODS + list(FAST_PATHS), "method")):
        unknown = sorted(set(name) - set(known))
        if unknown:
            parser.error(f"unknown {what}(s) {unknown}; choose from {known}")
    sizes = dict(SIZES["quick" if args.quick else ("cuda" if device.type == "cuda" else "cpu")])
    for item in args.size:
        key, _, value = item.partition("=")
        if key not in MODELS or not value.isdigit():
            parser.error(f"--size takes MODEL=PX with MODEL in {MODELS}, got {item!r}")
        sizes[key] = int(value)
    if args.min_seconds < 0:
        parser.error(f"--min-seconds must be >= 0, got {args.min_seconds}")
    MIN_SECONDS = 0.0 if args.quick else args.min_seconds
    if args.quick:
        args.repeats, args.targets = 1, min(args.targets, 3)
        args.perturb_batch = min(args.perturb_batch, 32)
        args.chunk_targets, args.chunk_size = 7, 3
    if args.ref_perturb_targets is None:
        args.ref_perturb_targets = None if device.type == "cuda" else 2
    if args.quick:
        args.ref_perturb_targets = 1

    results = {
        "device": str(device),
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else
        (platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "repeats": args.repeats, "min_seconds": MIN_SECONDS, "targets": args.targets,
        "perturb_batch": args.perturb_batch,
        "quick": args.quick, "models": [],
    }
    try:
        import pytorch_grad_cam
        results["pytorch_grad_cam"] = getattr(pytorch_grad_cam, "__version__", "installed")
    except ImportError:
        if not args.skip_reference:
            parser.error("pytorch-grad-cam is not installed: pip install grad-cam, or pass --skip-reference")
    for name in models:
        print(f"{name} at {sizes[name]} px on {device} ...", file=sys.stderr, flush=True)
        case = BUILDERS[name](sizes[name], device, args.seed)
        results["models"].append(bench_model(case, methods, args, device))
        del case
        if device.type == "cuda":
            torch.cuda.empty_cache()

    tag = device.type + ("-quick" if args.quick else "")
    path = args.out or ROOT / "results" / f"speed-{tag}.json"
    if args.update and path.exists():
        results = merge_results(json.loads(path.read_text()), results)
    text = table(results)
    print(f"{results['machine']} ({device}), torch {results['torch']}, {results['threads']} threads, "
          f"medians of {args.repeats}")
    print(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

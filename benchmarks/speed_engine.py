"""Per-box GradCAM on Faster R-CNN: dsxai's one batched call against pytorch-grad-cam's call per box.

torchvision Faster R-CNN R50-FPN, random init, eval; 800x800 on GPU, 320x320 on CPU;
GradCAM on ``backbone.body.layer4`` for the 10 top detections.
- dsxai: one forward, one batched backward; the target returns the 10 detection scores. Timed two ways:
  the torchvision adapter's per-box target (``box_target``: the kept proposals' class probabilities,
  recomputed for those proposals only so that each box's backward skips the other ~1000 proposals), and a
  plain callable reading ``scores`` from the torchvision model's own output (every box's backward runs
  RoIAlign and the box head over all proposals). Both are one call; the first is what ``dsxai.explain`` does.
- pytorch-grad-cam: one call per box with its FasterRCNNBoxScoreTarget (forward + backward each).
Prints both times, the no-grad forward time and the ratio; medians over --repeats after a warm-up.

    python benchmarks/speed_engine.py [--device cuda] [--size 800] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision

import dsxai
from dsxai.adapters.torchvision_detection import TorchvisionDetectionAdapter

LAYER = "backbone.body.layer4"


def timed(fn, device, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=None, help="input side (default 800 on GPU, 320 on CPU)")
    parser.add_argument("--boxes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-reference", action="store_true", help="do not time pytorch-grad-cam")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = args.size or (800 if device.type == "cuda" else 320)
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=size, max_size=size, box_score_thresh=0.0,
    ).eval().to(device)
    # one image that both sides see identically: torchvision's transform normalises it and, at min_size =
    # max_size = size, neither resizes nor pads it (size is a multiple of 32)
    image = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = image.permute(2, 0, 1)[None].float().div(255).to(device)
    k = args.boxes
    adapter = TorchvisionDetectionAdapter(model)
    batch = adapter.preprocess(image.numpy())
    assert tuple(batch.tensor.shape[-2:]) == (size, size)

    def forward():
        with torch.no_grad():
            return model(x)

    detections = forward()[0]
    assert len(detections["boxes"]) >= k, "random weights gave too few detections"
    cam = dsxai.GradCAM(adapter.model, [LAYER], chunk_size=k)
    plain_cam = dsxai.GradCAM(model, [LAYER], chunk_size=k)

    def ours():
        return cam(batch.tensor, adapter.box_target(batch, conf=0.0, max_dets=k))

    def ours_plain_target():
        return plain_cam(x, lambda out: [o["scores"][:k] for o in out])

    figures = {"device": str(device), "size": size, "boxes": k, "torch": torch.__version__,
               "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
               or platform.machine(), "threads": torch.get_num_threads()}
    figures["forward_s"] = timed(forward, device, args.repeats)
    figures["dsxai_s"] = timed(ours, device, args.repeats)
    figures["dsxai_plain_target_s"] = timed(ours_plain_target, device, args.repeats)
    maps = ours()
    assert maps[0].shape == (k, size, size)
    assert torch.allclose(adapter.predict(image.numpy(), conf=0.0, max_dets=k)[0].scores, detections["scores"][:k].cpu(),
                          atol=1e-5), "the adapter's detections differ from torchvision's"
    if not args.skip_reference:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

        boxes = detections["boxes"][:k].cpu().numpy()
        labels = detections["labels"][:k].cpu().numpy()
        reference = GradCAM(model=model, target_layers=[model.backbone.body.layer4])

        def theirs():
            for box, label in zip(boxes, labels):
                reference(x, targets=[FasterRCNNBoxScoreTarget(labels=[label], bounding_boxes=[box])])

        figures["grad_cam_s"] = timed(theirs, device, max(1, args.repeats // 2))
        reference.activations_and_grads.release()
        figures["speedup"] = figures["grad_cam_s"] / figures["dsxai_s"]
        figures["speedup_plain_target"] = figures["grad_cam_s"] / figures["dsxai_plain_target_s"]
    figures["dsxai_over_forward"] = figures["dsxai_s"] / figures["forward_s"]

    print(f"Faster R-CNN R50-FPN, {size}x{size}, {k} boxes, GradCAM on {LAYER}, {figures['machine']} ({device})")
    print(f"  no-grad forward           {figures['forward_s'] * 1e3:9.1f} ms")
    print(f"  dsxai, one batched call   {figures['dsxai_s'] * 1e3:9.1f} ms  "
          f"({figures['dsxai_over_forward']:.2f}x a forward; adapter's box_target)")
    print(f"    same, plain target      {figures['dsxai_plain_target_s'] * 1e3:9.1f} ms  "
          f"(scores read from the torchvision model's output)")
    if "grad_cam_s" in figures:
        print(f"  pytorch-grad-cam, per box {figures['grad_cam_s'] * 1e3:9.1f} ms  "
              f"({figures['grad_cam_s'] / k * 1e3:.1f} ms per box)")
        print(f"  speed-up                  {figures['speedup']:9.1f}x  "
              f"(plain target: {figures['speedup_plain_target']:.1f}x)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

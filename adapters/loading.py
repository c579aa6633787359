"""Checkpoint files and model objects -> adapters: the one place dsxai loads a model.

:func:`load` turns an object or a path into an adapter; the readers below turn a
file into a network: Ultralytics ``.pt`` / ``.yaml`` (:func:`load_ultralytics`),
original YOLOv5 ``.pt`` (:func:`load_yolov5`) and bare state dicts with an
``arch`` (:func:`read_state_dict`, :func:`model_from_state_dict`). Every ``.pt``
is read by the allow-listed unpickler of :mod:`dsxai.adapters.checkpoint`, never
by a family's own loader (which may download, pip-install or run pickled code).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsxai.adapter import Adapter

from .checkpoint import UnsafeCheckpointError, checkpoint_family, load_checkpoint

__all__ = ["TORCHVISION_ARCHS", "load", "read_checkpoint", "read_state_dict", "model_from_state_dict",
           "load_ultralytics", "load_yolov5"]

#: ``arch`` values for torchvision detection state dicts (``torchvision.models.get_model`` names)
TORCHVISION_ARCHS = (
    "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "keypointrcnn_resnet50_fpn",
)

_PATH_HELP = (
    "an Ultralytics YOLO .pt checkpoint or model .yaml, an original YOLOv5 .pt, or a torchvision/smp "
    "state-dict checkpoint with arch= (e.g. arch='fasterrcnn_resnet50_fpn' or arch='smp:Unet:resnet34')"
)
_MODULE_HELP = (
    "an ultralytics.YOLO object, an Ultralytics/YOLOv5 DetectionModel, a torchvision detection model "
    "(FasterRCNN, MaskRCNN, RetinaNet, FCOS), a segmentation_models_pytorch model, or a dsxai Adapter; "
    "for any other network use dsxai.adapters.generic.SegmenterAdapter (images -> [B,C,H,W] logits) or "
    "DetectorAdapter (with your decode function)"
)
_ULTRALYTICS_EXPECTED = ("an Ultralytics YOLO checkpoint (.pt saved by ultralytics, e.g. best.pt from "
                         "training) or a model .yaml")
_YOLOV5_EXPECTED = "an original YOLOv5 checkpoint (.pt from github.com/ultralytics/yolov5, e.g. yolov5n.pt)"


def read_checkpoint(path: Path, family: str, trust: bool, expected: str) -> Any:
    """:func:`~dsxai.adapters.checkpoint.load_checkpoint`, its errors naming what was ``expected``
    (a refusal passes through unchanged: it already says what to do)."""
    try:
        return load_checkpoint(path, family, trust=trust)
    except UnsafeCheckpointError:
        raise
    except ValueError as exc:
        raise ValueError(f"{exc}; expected {expected}") from None


def load(model: Any, arch: str | None = None, *, device: Any = None, trust: bool = False,
         **options: Any) -> Adapter:
    """The adapter for ``model``: an object or a checkpoint path (no names: use :func:`resolve`).

    Args:
        model: a :class:`~dsxai.adapter.Adapter` (returned as is); an ``ultralytics.YOLO``
            object or Ultralytics module; a torchvision detection model; an smp model; a
            YOLOv5 ``DetectionModel``; or a path: Ultralytics ``.pt``/``.yaml``, original
            YOLOv5 ``.pt``, a state dict with ``arch``, or an ``.onnx`` model with ``task=``
            (and ``decode=`` for detectors; see :func:`dsxai.adapters.onnx_models.load_onnx`).
        arch: for state-dict checkpoints: a torchvision detection builder name
            (:data:`TORCHVISION_ARCHS`) or ``"smp:<Architecture>:<encoder>"`` such as
            ``"smp:Unet:resnet34"``; the class count is read from the state dict.
        device: where to put a model loaded from a path.
        trust: unpickle a checkpoint with full pickle, which can run code from the file (warns).
            By default only allow-listed classes are rebuilt (:mod:`dsxai.adapters.checkpoint`).
        options: passed to the adapter (e.g. ``imgsz`` for YOLO, ``class_names``,
            ``mean``/``std`` for smp).

    Raises:
        FileNotFoundError: the path does not exist.
        UnsafeCheckpointError: (a ValueError) the checkpoint's pickle names a class outside the
            allow-list; nothing from it was run.
        ValueError: the file is damaged or not a checkpoint this function knows, or
            ``arch`` does not fit it; the message says what was expected.
        TypeError: an object of an unknown kind.
    """
    if isinstance(model, Adapter):
        if options or arch:
            raise ValueError("model is already an Adapter; options and arch apply only when dsxai builds one")
        return model
    if isinstance(model, (str, Path)):
        return _load_path(Path(model), arch, device, trust, options)
    return _load_object(model, options)


def _family(model: Any) -> str | None:
    module = type(model).__module__
    if module.startswith("ultralytics."):
        return "ultralytics"
    if module.startswith(("yolov5.", "models.", "dsxai.adapters.yolov5_modules")) and hasattr(model, "model"):
        return "yolov5"
    if module.startswith("torchvision.models.detection"):
        return "torchvision"
    if module.startswith("segmentation_models_pytorch"):
        return "smp"
    for cls in type(model).__mro__:  # subclasses defined elsewhere
        if cls.__module__.startswith("segmentation_models_pytorch"):
            return "smp"
        if cls.__module__.startswith("torchvision.models.detection"):
            return "torchvision"
        if cls.__module__.startswith("ultralytics."):
            return "ultralytics"
    return None


def _load_object(model: Any, options: dict[str, Any]) -> Adapter:
    family = _family(model)
    if family == "ultralytics":
        from .ultralytics_yolo import UltralyticsAdapter

        return UltralyticsAdapter(model, **options)
    if family == "yolov5":
        from .yolov5 import YOLOv5Adapter

        return YOLOv5Adapter(model, **options)
    if family == "torchvision":
        from .torchvision_detection import TorchvisionDetectionAdapter

        return TorchvisionDetectionAdapter(model, **options)
    if family == "smp":
        from .smp_segmentation import SMPAdapter

        return SMPAdapter(model, **options)
    kind = type(model).__name__ if isinstance(model, nn.Module) else f"a {type(model).__name__}"
    raise TypeError(f"dsxai.adapters.load does not know {kind}; expected {_MODULE_HELP}")


def _load_path(path: Path, arch: str | None, device: Any, trust: bool, options: dict[str, Any]) -> Adapter:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        from .ultralytics_yolo import UltralyticsAdapter

        return UltralyticsAdapter(path, device=device, **options)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}; expected {_PATH_HELP}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the checkpoint file inside it ({_PATH_HELP})")
    if suffix == ".onnx":  # converted by onnx2torch: task= and decode= say how to read its output
        from .onnx_models import load_onnx

        if arch is not None:
            raise ValueError(f"arch applies to state-dict checkpoints, not to the ONNX model {path} (drop arch)")
        return load_onnx(path, device=device, **options)
    if arch is not None:
        return _load_state_dict(path, arch, device, trust, options)
    try:
        kind = checkpoint_family(path)
    except ValueError as exc:
        raise ValueError(f"{exc}; expected {_PATH_HELP}") from None
    if kind == "yolov5":
        from .yolov5 import YOLOv5Adapter

        return YOLOv5Adapter(path, device=device, trust=trust, **options)
    if kind == "ultralytics":
        from .ultralytics_yolo import UltralyticsAdapter

        return UltralyticsAdapter(path, device=device, trust=trust, **options)
    read_state_dict(path, trust)  # an unknown pickle is read as a state dict: refused names are named
    raise ValueError(
        f"{path} holds a bare state dict (weights without the architecture); pass arch=, one of "
        f"{', '.join(TORCHVISION_ARCHS[:4])}, ... or 'smp:<Architecture>:<encoder>'"
    )


def read_state_dict(path: Path, trust: bool = False) -> dict:
    """The state dict a checkpoint holds (also under ``state_dict`` / ``model_state_dict`` / ``model``),
    without a ``module.`` prefix (DataParallel)."""
    ckpt = read_checkpoint(path, "state_dict", trust, _PATH_HELP)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if isinstance(ckpt, nn.Module):
        ckpt = ckpt.state_dict()
    if not isinstance(ckpt, dict) or not ckpt:
        raise ValueError(f"{path} holds no state dict; expected {_PATH_HELP}")
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def _classes_from(state: dict, suffixes: tuple[str, ...]) -> int | None:
    for key, value in state.items():
        if key.endswith(suffixes):
            return int(value.shape[0])
    return None


def _smp_network(arch: str, state: dict) -> nn.Module:
    """An untrained smp model of ``arch`` ('smp:<Architecture>:<encoder>') sized for ``state``."""
    from .smp_segmentation import import_smp

    parts = arch.split(":")
    if len(parts) != 3:
        raise ValueError(f"arch {arch!r}: write smp architectures as 'smp:<Architecture>:<encoder>', "
                         "e.g. 'smp:Unet:resnet34'")
    smp = import_smp()
    classes = _classes_from(state, ("segmentation_head.0.weight",)) or 1
    try:
        return smp.create_model(parts[1], encoder_name=parts[2], encoder_weights=None, classes=classes)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"arch {arch!r}: {exc}") from None


def _torchvision_network(arch: str, state: dict) -> nn.Module:
    """An untrained torchvision detector of ``arch`` with the class count of ``state``."""
    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(TORCHVISION_ARCHS)} "
                         "or 'smp:<Architecture>:<encoder>'")
    from torchvision.models import get_model

    classes = _classes_from(state, ("box_predictor.cls_score.weight", "classification_head.cls_logits.weight"))
    if "classification_head.cls_logits.weight" in state:  # RetinaNet/FCOS: anchors x classes rows
        classes = None
    kwargs = {"num_classes": classes} if classes else {}
    return get_model(arch, weights=None, weights_backbone=None, **kwargs)


def model_from_state_dict(path: Path, arch: str, trust: bool = False) -> nn.Module:
    """The eval-mode network of ``arch`` (a :data:`TORCHVISION_ARCHS` name or 'smp:<Architecture>:<encoder>')
    with the weights of the state dict at ``path``; a mismatch is a ValueError naming the first bad key."""
    state = read_state_dict(path, trust)
    net = _smp_network(arch, state) if arch.startswith("smp:") else _torchvision_network(arch, state)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ValueError(f"{path} does not fit arch {arch!r} ({detail}); check the architecture name") from None
    return net.eval()


def _load_state_dict(path: Path, arch: str, device: Any, trust: bool, options: dict[str, Any]) -> Adapter:
    net = model_from_state_dict(path, arch, trust)
    if device is not None:
        net.to(device)
    if arch.startswith("smp:"):
        from .smp_segmentation import SMPAdapter

        return SMPAdapter(net, **options)
    from .torchvision_detection import TorchvisionDetectionAdapter

    return TorchvisionDetectionAdapter(net, **options)


def _check_pt_file(path: Path, expected: str) -> None:
    """A missing file or another suffix is named before anything is read."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected {expected})")
    if path.suffix.lower() != ".pt":
        raise ValueError(f"{path} has suffix {path.suffix!r}; expected {expected}")


def load_ultralytics(path: Path, trust: bool = False) -> nn.Module:
    """Load an Ultralytics checkpoint without Ultralytics' loader.

    ``YOLO(path)`` / ``load_checkpoint`` may go to the network (a missing file or a
    name like ``yolov5n.pt`` is downloaded, a module the pickle names is
    pip-installed) and unpickles with no allow-list. This loader reads the local
    file only, through the allow-listed unpickler of
    :mod:`dsxai.adapters.checkpoint` (full pickle only with ``trust=True``), and
    sets the model up as ``load_checkpoint`` does (float32, eval mode,
    ``args``/``task``/``stride``).
    """
    expected = _ULTRALYTICS_EXPECTED
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return _ultralytics_yaml(path, expected)
    _check_pt_file(path, expected)
    ckpt = read_checkpoint(path, "ultralytics", trust, expected)
    if isinstance(ckpt, nn.Module) and not isinstance(ckpt, torch.jit.ScriptModule):
        ckpt = {"model": getattr(ckpt, "model", ckpt)}
    candidate = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(candidate, nn.Module) or isinstance(candidate, torch.jit.ScriptModule):
        found = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} holds no Ultralytics model (found {found}); expected {expected}")
    return _setup_ultralytics(candidate, ckpt, path)


def _ultralytics_yaml(path: Path, expected: str) -> nn.Module:
    """A model with random weights from an Ultralytics model ``.yaml`` (a bare name: Ultralytics' own)."""
    from ultralytics import YOLO

    if path.is_file():
        import yaml

        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise ValueError(f"{path} is not valid YAML{at}; expected {expected}") from None
        if not (isinstance(config, dict) and isinstance(config.get("backbone"), list)
                and isinstance(config.get("head"), list)):
            raise ValueError(f"{path} is not an Ultralytics model config (a YAML mapping with 'backbone' and "
                             f"'head' layer lists, like yolov8n.yaml); expected {expected}")
    elif path.name != str(path):
        raise FileNotFoundError(f"model file not found: {path} (expected {expected})")
    try:
        return YOLO(str(path)).model
    except FileNotFoundError:
        raise FileNotFoundError(f"model file not found: {path} (expected {expected})") from None
    except Exception as exc:  # noqa: BLE001 - Ultralytics' parse errors are deep tracebacks
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"cannot build a model from {path} ({type(exc).__name__}: {first}); "
                         f"expected {expected}") from None


def _setup_ultralytics(model: nn.Module, ckpt: dict, path: Path) -> nn.Module:
    """What ``ultralytics.nn.tasks.load_checkpoint`` does to a freshly unpickled model."""
    from ultralytics.nn.tasks import guess_model_task
    from ultralytics.utils import DEFAULT_CFG_DICT

    model = model.float()
    model.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}
    model.pt_path = str(path)
    model.task = getattr(model, "task", None) or guess_model_task(model)
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    model.eval()
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = True
        elif isinstance(module, nn.Upsample) and not hasattr(module, "recompute_scale_factor"):
            module.recompute_scale_factor = None
    return model


def load_yolov5(path: str | Path, device: str | torch.device | None = None, trust: bool = False) -> nn.Module:
    """The float32, eval-mode ``DetectionModel`` of an original YOLOv5 checkpoint (EMA weights when present).

    Loaded with the YOLOv5 allow-list of :func:`~dsxai.adapters.checkpoint.load_checkpoint`; ``trust=True``
    allows full pickle loading (the file may run code).

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle names something outside the allow-list (nothing was run).
        ValueError: not a YOLOv5 checkpoint, or damaged.
    """
    path = Path(path)
    _check_pt_file(path, _YOLOV5_EXPECTED)
    try:
        if checkpoint_family(path) == "ultralytics":
            raise ValueError(f"{path} is an Ultralytics YOLOv8/11 checkpoint; use UltralyticsAdapter "
                             "(or dsxai.adapters.load)")
    except ValueError as exc:
        raise ValueError(f"{exc}; expected {_YOLOV5_EXPECTED}") from None
    ckpt = read_checkpoint(path, "yolov5", trust, _YOLOV5_EXPECTED)
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else ckpt
    if not isinstance(model, nn.Module):
        keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} holds no model (found {keys}); expected {_YOLOV5_EXPECTED}")
    model = model.float().eval()
    for module in model.modules():  # attributes newer torch versions expect on modules pickled by older ones
        if isinstance(module, nn.Upsample) and not hasattr(module, "recompute_scale_factor"):
            module.recompute_scale_factor = None
    return model.to(device) if device is not None else model

"""Model adapters: one module per model family (installed as ``dsxai.adapters``).

Each family's library is imported lazily, so ``import dsxai.adapters`` needs only
the core dependencies. :func:`resolve` is the one entry point: it turns a registered
name (``"shapes-unet"``), a checkpoint path, a model object or an adapter into an
adapter; :func:`load` is its path and object branch, kept public for compatibility.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dsxai.adapter import Adapter

from .checkpoint import UnsafeCheckpointError, checkpoint_family, load_checkpoint
from .registry import UnknownOptionError, register, registered_names, resolve, unregister

__all__ = ["resolve", "register", "unregister", "registered_names", "load", "TORCHVISION_ARCHS",
           "UnsafeCheckpointError", "UnknownOptionError"]

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


def load(model: Any, arch: str | None = None, *, device: Any = None, trust: bool = False,
         **options: Any) -> Adapter:
    """The adapter for ``model``: an object or a checkpoint path (no names: use :func:`resolve`).

    Args:
        model: a :class:`~dsxai.adapter.Adapter` (returned as is); an ``ultralytics.YOLO``
            object or Ultralytics module; a torchvision detection model; an smp model; a
            YOLOv5 ``DetectionModel``; or a path: Ultralytics ``.pt``/``.yaml``, original
            YOLOv5 ``.pt``, or a state dict with ``arch``.
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
    if suffix == ".onnx":
        raise ValueError(
            f"{path} is an ONNX file, which has no gradients here; convert it with onnx2torch "
            "(onnx2torch.convert) and wrap the module in dsxai.adapters.generic.DetectorAdapter or SegmenterAdapter"
        )
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
    _read_state_dict(path, trust)  # an unknown pickle is read as a state dict: refused names are named
    raise ValueError(
        f"{path} holds a bare state dict (weights without the architecture); pass arch=, one of "
        f"{', '.join(TORCHVISION_ARCHS[:4])}, ... or 'smp:<Architecture>:<encoder>' (CLI: --arch)"
    )


def _read_state_dict(path: Path, trust: bool = False) -> dict:
    """The state dict a checkpoint holds (also under ``state_dict`` / ``model_state_dict`` / ``model``)."""
    try:
        ckpt = load_checkpoint(path, "state_dict", trust=trust)
    except UnsafeCheckpointError:
        raise
    except ValueError as exc:
        raise ValueError(f"{exc}; expected {_PATH_HELP}") from None
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


def _load_state_dict(path: Path, arch: str, device: Any, trust: bool, options: dict[str, Any]) -> Adapter:
    state = _read_state_dict(path, trust)
    if arch.startswith("smp:"):
        parts = arch.split(":")
        if len(parts) != 3:
            raise ValueError(f"arch {arch!r}: write smp architectures as 'smp:<Architecture>:<encoder>', "
                             "e.g. 'smp:Unet:resnet34'")
        from .smp_segmentation import SMPAdapter, import_smp

        smp = import_smp()
        classes = _classes_from(state, ("segmentation_head.0.weight",)) or 1
        try:
            net = smp.create_model(parts[1], encoder_name=parts[2], encoder_weights=None, classes=classes)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"arch {arch!r}: {exc}") from None
        build = SMPAdapter
    else:
        if arch not in TORCHVISION_ARCHS:
            raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(TORCHVISION_ARCHS)} "
                             "or 'smp:<Architecture>:<encoder>'")
        from torchvision.models import get_model

        from .torchvision_detection import TorchvisionDetectionAdapter

        classes = _classes_from(state, ("box_predictor.cls_score.weight", "classification_head.cls_logits.weight"))
        if "classification_head.cls_logits.weight" in state:  # RetinaNet/FCOS: anchors x classes rows
            classes = None
        kwargs = {"num_classes": classes} if classes else {}
        net = get_model(arch, weights=None, weights_backbone=None, **kwargs)
        build = TorchvisionDetectionAdapter
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ValueError(f"{path} does not fit arch {arch!r} ({detail}); check the architecture name") from None
    net.eval()
    if device is not None:
        net.to(device)
    return build(net, **options)

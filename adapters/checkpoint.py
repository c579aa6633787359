"""Checkpoint loading that never runs code from the file.

A PyTorch ``.pt`` is a pickle, and unpickling calls whatever callable the file
names. Every checkpoint dsxai reads goes through :func:`load_checkpoint`, whose
unpickler resolves only the names on one allow-list per family: tensor rebuild
functions, ``torch.nn`` module classes, plain containers and the model-building
classes of the family (Ultralytics' ``ultralytics.nn`` modules, or dsxai's own
re-implementation of the classic YOLOv5 modules in
:mod:`dsxai.adapters.yolov5_modules`). Any other name is refused with
:class:`UnsafeCheckpointError` before it is imported or called. ``trust=True``
is the explicit opt-in to full pickle loading (with a warning).

:func:`checkpoint_family` tells the family from the module names the pickle
mentions without unpickling anything.
"""
from __future__ import annotations

import importlib
import importlib.util
import pickle
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["FAMILIES", "UnsafeCheckpointError", "checkpoint_family", "load_checkpoint"]

#: the checkpoint families :func:`load_checkpoint` has an allow-list for
FAMILIES = ("ultralytics", "yolov5", "state_dict")

_FAMILY_WORDS = {"ultralytics": "Ultralytics", "yolov5": "YOLOv5", "state_dict": "state-dict"}


class UnsafeCheckpointError(ValueError):
    """A checkpoint's pickle asks for a name outside dsxai's allow-list (nothing from it was run)."""


class _Refused(pickle.UnpicklingError):
    """Raised inside the unpickler; :func:`load_checkpoint` turns it into :class:`UnsafeCheckpointError`."""

    def __init__(self, module: str, name: str, call: bool = False):
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"
        self.call = call


class _WrongFamily(pickle.UnpicklingError):
    """The pickle names classes of another family (e.g. a YOLOv5 file given to the Ultralytics loader)."""


# Harmless to call or to rebuild: tensor and storage reconstruction, containers, dtypes, paths, namespaces.
_COMMON: dict[str, frozenset[str]] = {
    "builtins": frozenset({"set", "frozenset", "slice", "complex", "range", "bytearray", "list", "dict",
                           "tuple", "int", "float", "bool", "str", "bytes"}),
    "collections": frozenset({"OrderedDict"}),
    "_codecs": frozenset({"encode"}),  # protocol-2 pickles store bytes as _codecs.encode(str, 'latin1')
    "torch": frozenset({"Size", "device", "Tensor"}),
    "torch._utils": frozenset({"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
                               "_rebuild_parameter", "_rebuild_parameter_with_state"}),
    "torch.nn.parameter": frozenset({"Parameter"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy": frozenset({"ndarray", "dtype"}),
    "pathlib": frozenset({"PosixPath", "PurePosixPath", "PureWindowsPath"}),
    "types": frozenset({"SimpleNamespace"}),
    "argparse": frozenset({"Namespace"}),
}
# torch's legacy storage classes, named by every checkpoint's tensor records
_STORAGES = frozenset(f"{kind}Storage" for kind in (
    "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool", "ComplexFloat",
    "ComplexDouble", "Untyped"))
_COMPAT_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

# Module-class packages whose nn.Module subclasses a family may rebuild (checked after the import).
_MODULE_PACKAGES: dict[str, tuple[str, ...]] = {
    "ultralytics": ("torch.nn.modules.", "ultralytics.nn.modules.", "ultralytics.nn.tasks"),
    "yolov5": ("torch.nn.modules.",),
    "state_dict": (),
}
# Plain (non-Module) classes an Ultralytics checkpoint may hold: training args and the loss object.
_ULTRALYTICS_CLASS_MODULES = ("ultralytics.utils.loss", "ultralytics.utils.tal")
_ULTRALYTICS_EXTRA = {("ultralytics.utils", "IterableSimpleNamespace")}

# Renames Ultralytics itself applies when loading old checkpoints (ultralytics.nn.tasks.torch_safe_load).
_ULTRALYTICS_RENAMED_MODULES = {
    "ultralytics.yolo.utils": "ultralytics.utils",
    "ultralytics.yolo.v8": "ultralytics.models.yolo",
    "ultralytics.yolo.data": "ultralytics.data",
}
_ULTRALYTICS_RENAMED = {
    ("ultralytics.nn.modules.block", "Silence"): ("torch.nn.modules.linear", "Identity"),  # YOLOv9e
    ("ultralytics.nn.tasks", "YOLOv10DetectionModel"): ("ultralytics.nn.tasks", "DetectionModel"),
    ("ultralytics.utils.loss", "v10DetectLoss"): ("ultralytics.utils.loss", "E2EDetectLoss"),
}
_RENAMED = {("pathlib", "WindowsPath"): ("pathlib", "PosixPath")}

# The YOLOv5 repository's module names, mapped onto dsxai's re-implementation.
_YOLOV5_MODULES = ("models.yolo", "models.common", "models.experimental")


def _rename(family: str, module: str, name: str) -> tuple[str, str]:
    """The name a pickle's global resolves to in this environment (old module paths, removed classes)."""
    module = _COMPAT_MODULES.get(module, module)
    if family == "ultralytics":
        for old, new in _ULTRALYTICS_RENAMED_MODULES.items():
            if module == old or module.startswith(old + "."):
                module = new + module[len(old):]
        module, name = _ULTRALYTICS_RENAMED.get((module, name), (module, name))
    if module.startswith("numpy.core.") and importlib.util.find_spec("numpy._core") is not None:
        module = "numpy._core." + module[len("numpy.core."):]  # numpy 2 renamed numpy.core
    return _RENAMED.get((module, name), (module, name))


def _callable(module: str, name: str) -> bool:
    """Whether the global may be called while unpickling (containers, tensor rebuilds: nothing with effects)."""
    return (name in _COMMON.get(module, ()) or (module == "torch" and name in _STORAGES)
            or (module, name) in _ULTRALYTICS_EXTRA)  # a SimpleNamespace subclass: pickled as a call


def _attribute(module: str, name: str) -> Any:
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _is_module_class(obj: Any) -> bool:
    from torch import nn

    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _allowed(family: str, module: str, name: str) -> Any:
    """The object for an allow-listed global, or None when it is not on the family's list.

    Only allow-listed module names are ever imported: importing is itself running code.
    """
    import torch

    if _callable(module, name):
        return _attribute(module, name)
    if module == "torch" and "." not in name:
        value = getattr(torch, name, None)
        if isinstance(value, (torch.dtype, torch.memory_format, torch.layout)):
            return value
    if family == "yolov5" and module in _YOLOV5_MODULES:
        from . import yolov5_modules

        value = getattr(yolov5_modules, name, None) if "." not in name else None
        return value if _is_module_class(value) and name in yolov5_modules.PICKLE_NAMES else None
    if "." in name:
        return None
    if any(module == p or module.startswith(p) for p in _MODULE_PACKAGES[family]):
        value = _attribute(module, name)
        return value if _is_module_class(value) else None
    if family == "ultralytics" and (module, name) in _ULTRALYTICS_EXTRA:
        return _attribute(module, name)
    if family == "ultralytics" and module in _ULTRALYTICS_CLASS_MODULES:
        value = _attribute(module, name)  # classes defined there (no functions): rebuilt, never called
        return value if isinstance(value, type) and value.__module__ == module else None
    return None


class _SafeUnpickler(pickle._Unpickler):  # the Python unpickler: its opcodes can be overridden
    """Resolves allow-listed names only, and calls none but the harmless ones (``family``/``trust`` per load).

    Model classes are allowed so that their instances can be rebuilt (``__new__`` plus the pickled
    ``__dict__``), never called: their ``__init__`` may read files or download (Ultralytics' ``AutoBackend``,
    ``TorchVision``), so a REDUCE/INST/OBJ that calls one is refused.
    """

    family = "state_dict"
    trust = False
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._callable: set[int] = set()  # ids of resolved globals that are harmless to call

    def find_class(self, module: str, name: str) -> Any:
        module, name = _rename(self.family, module, name)
        if self.family == "ultralytics" and module.split(".")[0] == "models":
            raise _WrongFamily(module)
        try:
            value = _allowed(self.family, module, name)
        except (ImportError, AttributeError):
            value = None
        if value is not None:
            if _callable(module, name):
                self._callable.add(id(value))
            return value
        if self.trust:
            if self.family == "yolov5" and module in _YOLOV5_MODULES:
                raise _Refused(module, name)  # dsxai has no such module; the yolov5 repo is not imported
            value = super().find_class(module, name)
            self._callable.add(id(value))
            return value
        raise _Refused(module, name)

    def _check_call(self, func: Any) -> None:
        if not self.trust and id(func) not in self._callable:
            qualname = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', type(func).__name__)}"
            raise _Refused(*qualname.rsplit(".", 1), call=True)

    def _load_reduce(self) -> None:
        self._check_call(self.stack[-2])
        pickle._Unpickler.load_reduce(self)

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST / OBJ call klass(*args) when args are given
        if args or hasattr(klass, "__getinitargs__") or not isinstance(klass, type):
            self._check_call(klass)
        super()._instantiate(klass, args)

    dispatch[pickle.REDUCE[0]] = _load_reduce


def _pickle_module(family: str, trust: bool) -> types.ModuleType:
    """A stand-in ``pickle`` module for ``torch.load(pickle_module=...)`` using the family's unpickler."""
    unpickler = type("Unpickler", (_SafeUnpickler,), {"family": family, "trust": trust})
    module = types.ModuleType(f"dsxai_{family}_pickle")
    module.Unpickler = unpickler
    module.load = lambda file, **kwargs: unpickler(file, **kwargs).load()
    module.__dict__["dump"] = pickle.dump
    return module


def refusal(path: Path | str, qualname: str, family: str, call: bool = False) -> str:
    """The one-line message for a refused global (``call``: an allowed class the pickle tries to call)."""
    words = _FAMILY_WORDS.get(family, family)
    what = (f"calls {qualname}, which dsxai's allow-list for {words} checkpoints lets it rebuild but not call"
            if call else f"asks for {qualname}, which is not on dsxai's allow-list for {words} checkpoints")
    return (f"refusing to load {path}: its pickle {what}; if you trust this file, pass trust=True")


def load_checkpoint(path: str | Path, family: str, trust: bool = False) -> Any:
    """Unpickle the checkpoint at ``path`` (on the CPU) with the allow-list of ``family``.

    Args:
        path: a torch checkpoint (zip or legacy format).
        family: one of :data:`FAMILIES`.
        trust: full pickle loading (the file may run code); warns. Known names are still mapped.

    Raises:
        UnsafeCheckpointError: the pickle names a global outside the allow-list (nothing was run).
        ValueError: the file is damaged, not a torch checkpoint, or of another family.
        FileNotFoundError: no such file.
    """
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown checkpoint family {family!r}; expected one of {', '.join(FAMILIES)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if trust:
        warnings.warn(f"loading {path} with full pickle (trust=True): a crafted checkpoint can run code",
                      UserWarning, stacklevel=2)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module(family, trust))
    except _Refused as exc:
        raise UnsafeCheckpointError(refusal(path, exc.qualname, family, exc.call)) from None
    except _WrongFamily as exc:
        raise ValueError(f"{path} is an original YOLOv5 checkpoint (its pickle names the module {exc}), which the "
                         "ultralytics package cannot run; load it with dsxai.adapters.load or YOLOv5Adapter") from None
    except ModuleNotFoundError as exc:  # trust=True only: a module the pickle names is not installed
        raise ValueError(f"cannot load {path}: its pickle needs the module {exc.name!r}, which is not "
                         "installed") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a pickle, TorchScript archive, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"cannot load {path} ({type(exc).__name__}: {first}); the file is damaged or not a "
                         "PyTorch checkpoint") from None


def checkpoint_family(path: str | Path) -> str:
    """``"ultralytics"``, ``"yolov5"``, ``"state_dict"`` or ``"unknown"``, from the module names the
    checkpoint's pickle mentions (bytes only: nothing is unpickled).

    Raises:
        ValueError: the file is not a torch checkpoint (a damaged zip, a zip without ``data.pkl``, or
            neither zip nor pickle).
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                pickled = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = archive.read(pickled[0]) if pickled else b""
        except (zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"cannot read {path} ({type(exc).__name__}): the file is damaged or not a "
                             "PyTorch checkpoint") from None
        if not data:
            raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl)")
    else:
        with open(path, "rb") as handle:
            data = handle.read(1 << 22)  # a legacy file starts with its pickle; the tensors follow
        if data[:1] != b"\x80":
            raise ValueError(f"{path} is damaged or not a PyTorch checkpoint (neither a zip nor a pickle)")
    if b"ultralytics.nn" in data:
        return "ultralytics"
    if b"models.yolo" in data or b"models.common" in data:
        return "yolov5"
    if b"collections\nOrderedDict" in data or b"state_dict" in data or b"torch._utils\n_rebuild_tensor" in data:
        return "state_dict"
    return "unknown"

"""A user's adapter factory or decode function named as ``module:function`` (the CLI's ``--adapter``/``--decode``).

Importing the named module runs its code: that is the user's explicit choice (they name their own file),
never something a model file can trigger.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from dsxai.adapter import Adapter

__all__ = ["import_callable", "adapter_from_factory"]


def _split_spec(spec: str, what: str) -> tuple[str, str]:
    """``"pkg.mod:fn"`` or ``"path/to/file.py:fn"`` -> (module part, function name)."""
    module, sep, name = str(spec).rpartition(":")
    if not sep or not module or not name.isidentifier():
        raise ValueError(f"{what} {spec!r} must be written module:function (e.g. mypkg.models:build or "
                         "path/to/file.py:build)")
    return module, name


def _import_file(path: Path, what: str, spec: str) -> Any:
    """The module of a ``.py`` file, imported under a private name (its folder goes first on sys.path, so its
    own sibling imports work as when it is run as a script)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {spec!r}: no such file {path}")
    name = f"dsxai_user_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ImportError(f"{what} {spec!r}: cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ImportError(f"{what} {spec!r}: importing {path} failed ({type(exc).__name__}: {exc})") from None
    return module


def _import_module(module: str, what: str, spec: str) -> Any:
    """A module by dotted name from sys.path (the current folder included, as ``python -m`` does)."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise ImportError(f"{what} {spec!r}: no module named {exc.name!r} (on sys.path or in the current "
                              "folder); give a path like path/to/file.py:function") from None
        raise ImportError(f"{what} {spec!r}: importing {module} failed (no module named {exc.name!r})") from None
    except Exception as exc:
        raise ImportError(f"{what} {spec!r}: importing {module} failed ({type(exc).__name__}: {exc})") from None


def import_callable(spec: str, what: str = "function") -> Callable[..., Any]:
    """The callable named by ``spec``: ``"module:function"`` (from sys.path) or ``"path/to/file.py:function"``.

    This imports, so runs, the named module: only for code the caller chose to run. ``what`` names the
    spec in errors (e.g. ``"adapter factory"``). Raises ValueError for a malformed spec, ImportError when
    the module cannot be imported or lacks the name, TypeError when the name is not callable.
    """
    module_part, name = _split_spec(spec, what)
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        module = _import_file(Path(module_part), what, spec)
    else:
        module = _import_module(module_part, what, spec)
    if not hasattr(module, name):
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ImportError(f"{what} {spec!r}: {module_part} has no {name!r} (it defines: "
                          f"{', '.join(public[:8]) or 'no public callables'})")
    fn = getattr(module, name)
    if not callable(fn):
        raise TypeError(f"{what} {spec!r} is a {type(fn).__name__}, not a function")
    return fn


def adapter_from_factory(spec: str, model: str) -> Adapter:
    """The adapter built by the user's factory ``spec`` (``module:function``) for ``model``.

    A factory has the signature ``factory(model: str) -> dsxai.adapter.Adapter``: it receives the MODEL
    argument of the command as given (a path, a name, anything the factory understands) and returns a
    ready adapter (e.g. :class:`dsxai.adapters.generic.DetectorAdapter`). Its exceptions and a return
    value that is not an Adapter become one-line errors naming the factory.
    """
    factory = import_callable(spec, "adapter factory")
    try:
        adapter = factory(model)
    except Exception as exc:  # noqa: BLE001 - the user's code: any failure is reported as theirs, in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RuntimeError(f"adapter factory {spec!r} failed on {model!r} ({type(exc).__name__}: {first})") from None
    if not isinstance(adapter, Adapter):
        raise TypeError(f"adapter factory {spec!r} returned a {type(adapter).__name__}; it must return a "
                        "dsxai.adapter.Adapter (e.g. dsxai.adapters.generic.DetectorAdapter or SegmenterAdapter)")
    return adapter

"""The one place a model name, path, object or adapter becomes an adapter (:func:`resolve`).

Names map to factories in a registry (:func:`register`). Packages that own names register them when they
are imported; the modules in :data:`PROVIDERS` are imported the first time a name is looked up, so
``dsxai.adapters`` never imports them itself (the zoo imports adapter classes, not the other way round).
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any, Callable

from dsxai.adapter import Adapter

__all__ = ["PROVIDERS", "UnknownOptionError", "normalize_name", "register", "registered_names", "resolve",
           "unregister"]

#: modules that register model names when imported; imported on the first name lookup
PROVIDERS: tuple[str, ...] = ("dsxai.zoo",)

#: a factory builds an adapter: ``factory(device=..., trust=..., **options) -> Adapter``
Factory = Callable[..., Adapter]

_FACTORIES: dict[str, Factory] = {}
_PROVIDERS_LOADED: list[str] = []
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


class UnknownOptionError(TypeError):
    """An adapter option the model's adapter does not take (``option`` names it).

    A TypeError, as the adapter's own call would raise, with a message that names the model.
    """

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


def normalize_name(name: str) -> str:
    """The registry key of ``name``: lower case, ``_`` written as ``-`` (``Shapes_UNet`` -> ``shapes-unet``)."""
    return str(name).strip().lower().replace("_", "-")


def register(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Make ``name`` a model that :func:`resolve` (and every MODEL argument of the CLI) accepts.

    ``factory(device=None, trust=False, **options)`` returns the :class:`~dsxai.adapter.Adapter`.
    Raises ValueError when the name is taken by another factory (``replace=True`` overrides it) or
    looks like a file path, and TypeError when ``factory`` is not callable.
    """
    key = normalize_name(name)
    if not key or not _could_be_name(key) or "\\" in key:
        raise ValueError(f"cannot register {name!r}: a model name has no path separator and no file suffix")
    if not callable(factory):
        raise TypeError(f"cannot register {name!r}: the factory must be callable, got {type(factory).__name__}")
    if not replace and _FACTORIES.get(key, factory) is not factory:
        raise ValueError(f"model name {key!r} is already registered; pass replace=True to override it")
    _FACTORIES[key] = factory


def unregister(name: str) -> None:
    """Forget ``name`` (no error when it was not registered)."""
    _FACTORIES.pop(normalize_name(name), None)


def registered_names() -> tuple[str, ...]:
    """Every registered model name, sorted (the providers' names included)."""
    _load_providers()
    return tuple(sorted(_FACTORIES))


def _load_providers() -> None:
    """Import each provider once; it registers its names on import."""
    for module in PROVIDERS:
        if module not in _PROVIDERS_LOADED:
            _PROVIDERS_LOADED.append(module)  # first, so a provider importing us cannot loop
            importlib.import_module(module)


def _lookup(model: Any) -> Factory | None:
    """The factory registered for ``model`` when it is a name (a str, not a Path), else None.

    Strings with a suffix or a folder cannot be names (:func:`register` refuses them): checkpoint paths
    never import the providers.
    """
    if not isinstance(model, str):
        return None
    key = normalize_name(model)
    if key not in _FACTORIES and _could_be_name(model):
        _load_providers()
    return _FACTORIES.get(key)


def _could_be_name(model: str) -> bool:
    """Whether a string has the form of a model name: no file suffix, no folder."""
    path = Path(model)
    return not path.suffix and len(path.parts) == 1


def resolve(model: Any, *, arch: str | None = None, device: Any = None, trust: bool = False,
            **options: Any) -> Adapter:
    """The adapter for ``model``: every front end (``dsxai.explain``, ``audit``, ``bench``, the CLI) uses this.

    Args:
        model: an :class:`~dsxai.adapter.Adapter` (returned as is, its model moved to ``device`` when
            given); a registered name (:func:`registered_names`, e.g. ``"shapes-yolo"``; ``_`` and case
            do not matter); a checkpoint path or a model object (see :func:`dsxai.adapters.load`).
        arch: architecture of a state-dict checkpoint (``"fasterrcnn_resnet50_fpn"``, ``"smp:Unet:resnet34"``).
        device: where to put the model.
        trust: unpickle a checkpoint with full pickle, which can run code from the file (warns).
        options: passed to the adapter (e.g. ``imgsz`` for YOLO, ``class_names``).

    Raises:
        ValueError: an unknown name (the message lists the registered ones), options or ``arch`` given
            with an Adapter, ``arch`` given with a registered name, or a checkpoint :func:`load` refuses.
        FileNotFoundError: a checkpoint path or a registered model's weights are missing (one line).
        UnknownOptionError: (a TypeError) an option the model's adapter does not take.
        TypeError: an object of an unknown kind.
    """
    if isinstance(model, Adapter):
        return _as_is(model, arch, device, options)
    factory = _lookup(model)
    if factory is not None:
        return _from_factory(model, factory, arch, device, trust, options)
    if isinstance(model, str) and _could_be_name(model) and not Path(model).exists():
        names = ", ".join(registered_names()) or "none"
        raise ValueError(f"unknown model {model!r}: no registered name ({names}) and no such file; "
                         "expected one of those names or a checkpoint path")
    from . import load  # the package imports this module: bind load at call time

    return _with_option_check(model, lambda: load(model, arch=arch, device=device, trust=trust, **options),
                              options)


def _as_is(adapter: Adapter, arch: str | None, device: Any, options: dict[str, Any]) -> Adapter:
    """A ready adapter: nothing to build, so build options are refused rather than ignored."""
    if options or arch:
        raise ValueError("model is already an Adapter; options and arch apply only when dsxai builds the "
                         "adapter (configure yours directly)")
    if device is not None:
        adapter.model.to(device)
    return adapter


def _from_factory(name: str, factory: Factory, arch: str | None, device: Any, trust: bool,
                  options: dict[str, Any]) -> Adapter:
    """Build a registered model; its weights-missing message is kept on one line."""
    if arch is not None:
        raise ValueError(f"arch applies to state-dict checkpoints; {name!r} is a registered model with its own "
                         "architecture (drop arch)")
    try:
        return _with_option_check(name, lambda: factory(device=device, trust=trust, **options), options)
    except FileNotFoundError as exc:
        raise FileNotFoundError(" ".join(str(exc).split())) from None


def _with_option_check(model: Any, build: Callable[[], Adapter], options: dict[str, Any]) -> Adapter:
    """``build()``, with an option the adapter does not take reported as :class:`UnknownOptionError`."""
    try:
        return build()
    except TypeError as exc:
        found = _UNEXPECTED.search(str(exc))
        if found is None or found.group(1) not in options:
            raise
        label = repr(model) if isinstance(model, (str, Path)) else type(model).__name__
        raise UnknownOptionError(f"option {found.group(1)!r} does not apply to {label} ({exc})",
                                 found.group(1)) from None

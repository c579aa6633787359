"""Model adapters: one module per model family (installed as ``dsxai.adapters``).

Each family's library is imported lazily, so ``import dsxai.adapters`` needs only
the core dependencies. :func:`resolve` is the one entry point: it turns a registered
name (``"shapes-unet"``), a checkpoint path, a model object or an adapter into an
adapter; :func:`load` is its path and object branch (:mod:`dsxai.adapters.loading`),
kept public for compatibility.
"""
from __future__ import annotations

from .checkpoint import UnsafeCheckpointError
from .loading import TORCHVISION_ARCHS, load
from .registry import UnknownOptionError, register, registered_names, resolve, unregister

__all__ = ["resolve", "register", "unregister", "registered_names", "load", "TORCHVISION_ARCHS",
           "UnsafeCheckpointError", "UnknownOptionError"]

"""Finding target layers and capturing what they output during one forward pass."""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = ["LayerSpec", "resolve_layers", "capture_outputs", "feature_maps", "preserved_state", "list_layers"]

LayerSpec = str | nn.Module
Reshape = Callable[[Tensor], Tensor]


def resolve_layers(model: nn.Module, layers: LayerSpec | Sequence[LayerSpec] | None) -> list[tuple[str, nn.Module]]:
    """Turn layer names or module objects into ``(name, module)`` pairs of ``model``."""
    if layers is None:
        raise ValueError(
            "no target layers given: pass layers=['name', ...] (module names from model.named_modules(); "
            "`dsxai layers MODEL` lists them with their output shapes)"
        )
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if len(layers) == 0:
        raise ValueError("layers is empty: name at least one layer to explain")
    named = dict(model.named_modules())
    names_by_id = {id(m): n for n, m in named.items()}
    resolved = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in named:
                close = difflib.get_close_matches(layer, [n for n in named if n], n=5, cutoff=0.5)
                hint = f"; close matches: {', '.join(close)}" if close else ""
                raise ValueError(f"unknown layer name {layer!r} in {type(model).__name__}{hint}")
            resolved.append((layer, named[layer]))
        elif isinstance(layer, nn.Module):
            if id(layer) not in names_by_id:
                raise ValueError(f"the module {type(layer).__name__} given as a layer is not part of the model")
            resolved.append((names_by_id[id(layer)] or "<model>", layer))
        else:
            raise TypeError(f"a layer is a module name (str) or an nn.Module, got {type(layer).__name__}")
    return resolved


@contextmanager
def capture_outputs(layers: Sequence[tuple[str, nn.Module]]) -> Iterator[dict[str, list[Any]]]:
    """Record every output of each layer while the context is open; hooks always come off."""
    outputs: dict[str, list[Any]] = {name: [] for name, _ in layers}
    handles = []
    try:
        for name, module in layers:
            handles.append(module.register_forward_hook(_recorder(outputs[name])))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _recorder(store: list) -> Callable:
    def hook(module, inputs, output):
        store.append(output)
    return hook


def tensor_leaves(output: Any) -> list[Tensor]:
    """Tensors inside a layer output (tensor, tuple/list or dict, nested), in order."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for value in output.values() for t in tensor_leaves(value)]
    if isinstance(output, (list, tuple)):
        return [t for value in output for t in tensor_leaves(value)]
    return []


def feature_maps(name: str, leaves: Sequence[Tensor], reshape: Reshape | None) -> list[Tensor]:
    """Bring each captured tensor to ``[B, C, h, w]``, or explain why it cannot be."""
    maps = []
    for leaf in leaves:
        fmap = reshape(leaf) if reshape is not None else leaf
        if not isinstance(fmap, Tensor) or fmap.ndim != 4:
            shape = tuple(fmap.shape) if isinstance(fmap, Tensor) else type(fmap).__name__
            raise ValueError(
                f"layer {name!r} outputs shape {shape}, not [B, C, h, w]; pick a convolutional layer "
                "or pass reshape= to turn its output (e.g. ViT tokens) into [B, C, h, w]"
            )
        maps.append(fmap)
    return maps


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run in eval mode and give the model back exactly as it came (train/eval per module)."""
    modes = [(module, module.training) for module in model.modules()]
    # a model already in eval mode is left untouched: model.eval() walks and re-sets every module, which costs
    # milliseconds on a detector of a few hundred modules (a tenth of YOLOv8n's forward on CPU)
    if any(training for _, training in modes):
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            if module.training != training:
                module.training = training


def list_layers(model: nn.Module, example: Tensor) -> list[tuple[str, str, str]]:
    """``(name, module type, output shape)`` for every module reached by one forward of ``example``."""
    shapes: dict[str, str] = {}
    handles = []

    def describe(output: Any) -> str:
        leaves = tensor_leaves(output)
        return ", ".join(str(list(t.shape)) for t in leaves) if leaves else type(output).__name__

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: shapes.setdefault(name, describe(o)) and None))
    try:
        with preserved_state(model), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(model.named_modules())
    return [(name, type(modules[name]).__name__, shape) for name, shape in shapes.items()]

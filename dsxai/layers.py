"""Finding target layers and capturing what they output during one forward pass."""
from __future__ import annotations

import difflib
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["LayerSpec", "resolve_layers", "capture_outputs", "feature_maps", "preserved_state", "list_layers", "Fired",
           "probe_outputs", "guess_layers", "deepest_encoder_stage", "audit_layers", "layer_stride"]

log = logging.getLogger("dsxai")

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


@dataclass
class Fired:
    """One module call seen by :func:`probe_outputs`."""

    name: str
    module: nn.Module
    inputs: tuple
    output: Any


def probe_outputs(model: nn.Module, example: Tensor, layers: Sequence[LayerSpec] | None = None) -> list[Fired]:
    """One no-grad forward of ``example`` (eval mode, model given back as it came); each call of ``layers``
    (every named module when None) in the order the calls finish. Hooks always come off."""
    named = resolve_layers(model, list(layers)) if layers is not None else \
        [(name, module) for name, module in model.named_modules() if name]
    fired: list[Fired] = []
    handles = [module.register_forward_hook(
        lambda m, i, o, name=name: fired.append(Fired(name, m, i, o))) for name, module in named]
    try:
        with preserved_state(model), torch.no_grad():
            model(example.to(_device_of(model)))
    finally:
        for handle in handles:
            handle.remove()
    return fired


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def list_layers(model: nn.Module, example: Tensor) -> list[tuple[str, str, str]]:
    """``(name, module type, output shape)`` for every module reached by one forward of ``example``."""
    rows: dict[str, tuple[str, str, str]] = {}
    for call in probe_outputs(model, example):
        leaves = tensor_leaves(call.output)
        shape = ", ".join(str(list(t.shape)) for t in leaves) if leaves else type(call.output).__name__
        rows.setdefault(call.name, (call.name, type(call.module).__name__, shape))
    return list(rows.values())


def guess_layers(model: nn.Module, example: Tensor, min_channels: int = 16) -> list[str]:
    """A layer to explain when none is given: the last feature map (in call order) that a later ``Conv2d``
    reads, with ``>= min_channels`` channels, on the input's grid (same aspect ratio, at most 64x coarser).

    That is the input of the head's last convolutional block: late enough to be specific, still a feature
    map rather than a prediction. A heuristic: it logs its pick; pass ``layers=`` to choose another.
    """
    calls = probe_outputs(model, example)
    conv_inputs = {id(t) for c in calls if isinstance(c.module, nn.Conv2d) for t in c.inputs if isinstance(t, Tensor)}
    h, w = example.shape[-2:]
    for call in reversed([c for c in calls if not list(c.module.children())]):
        tensor = call.output
        if not isinstance(tensor, Tensor) or tensor.ndim != 4 or id(tensor) not in conv_inputs \
                or tensor.shape[1] < min_channels:
            continue
        fh, fw = tensor.shape[-2:]
        if fh * 64 < h or fw * 64 < w or abs(fh / fw - h / w) > 0.25 * (h / w) + 1 / fw:
            continue
        log.info("explaining layer %r (output %s); pass layers= to choose another", call.name, list(tensor.shape))
        return [call.name]
    raise ValueError("could not guess a layer to explain (no feature map read by a convolution); pass layers=[...]")


def deepest_encoder_stage(model: nn.Module, example: Tensor) -> str | None:
    """The outermost module of ``model.encoder`` that returns the encoder's last feature map (e.g.
    ``encoder.layer4``), or None when the model has no encoder with 4-D outputs.

    Outermost, not smallest output: the smallest is often a squeeze-excitation gate ``[B, C, 1, 1]``.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        return None
    names = ["encoder." + n for n, _ in encoder.named_modules() if n] + ["encoder"]
    calls = probe_outputs(model, example, names)
    outputs = [c.output for c in calls if c.name == "encoder"]
    output = outputs[0] if outputs else None
    maps = [f for f in (output if isinstance(output, (list, tuple)) else [output]) if isinstance(f, Tensor) and f.ndim == 4]
    fired = [(c.name, c.output) for c in calls if c.name != "encoder" and isinstance(c.output, Tensor) and c.output.ndim == 4]
    if not maps or not fired:
        return None
    deepest = maps[-1]
    # the last module to finish with that very tensor is the outermost one (the stage, not its last op)
    same = [name for name, out in fired if out is deepest] or [name for name, out in fired if out.shape == deepest.shape]
    return same[-1] if same else None


def audit_layers(adapter: Any) -> list[str]:
    """The layers a mask audit explains by default: the deepest encoder stage of an encoder-decoder
    segmenter (context is visible there; at the decoder a per-mask map lies inside its mask by
    construction), else the adapter's ``default_layers``."""
    model = adapter.model
    if getattr(adapter, "task", None) != "segment" or not hasattr(model, "decoder"):
        return list(adapter.default_layers)
    stage = deepest_encoder_stage(model, adapter.preprocess(np.zeros((64, 64, 3), np.uint8)).tensor)
    return [stage] if stage else list(adapter.default_layers)


def layer_stride(adapter: Any, layers: Sequence[LayerSpec], probe: int = 256) -> float:
    """Network-input pixels per cell of the coarsest of ``layers`` (e.g. 32 for a ResNet's ``layer4``), from
    one forward of a blank ``probe`` x ``probe`` image; 0 when no layer gives a ``[B, C, h, w]`` map."""
    example = adapter.preprocess(np.zeros((probe, probe, 3), np.uint8)).tensor
    sizes = []
    for call in probe_outputs(adapter.model, example, layers):
        leaves = [t for t in tensor_leaves(call.output) if t.ndim == 4]
        if leaves:
            sizes.append(tuple(leaves[0].shape[-2:]))
    h, w = example.shape[-2:]
    return max((max(h / sh, w / sw) for sh, sw in sizes if sh and sw), default=0.0)

"""What "the model comes back untouched" means, shared by the adapter tests."""
from __future__ import annotations

import torch


def snapshot(model: torch.nn.Module) -> dict:
    return {
        "modes": {n: m.training for n, m in model.named_modules()},
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    assert {n: m.training for n, m in model.named_modules()} == before["modes"]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before["grad"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before["state"][k]), k
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(p.grad is None for p in model.parameters())

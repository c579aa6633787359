"""The engine: batched gradients, layer outputs of every shape, clear errors, model untouched."""
import logging
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

import dsxai
from dsxai.gradient import GradientCAM


class TinyNet(nn.Module):
    """A small classifier with a branch, a dict-returning block and a token-style block."""

    def __init__(self, classes=6):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.deep = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.unused = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.deep(self.block(self.stem(x)))
        return self.head(x.mean((2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.rand(3, 3, 32, 40)


def looped_gradcam(model, layer, x, classes_per_image):
    """Reference: one forward and one backward per target, by hand."""
    out = []
    for b, classes in enumerate(classes_per_image):
        maps = []
        for c in classes:
            store = {}
            handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
            logits = model(x[b:b + 1])
            handle.remove()
            (grad,) = torch.autograd.grad(logits[0, c], store["a"])
            cam = (grad.mean((2, 3), keepdim=True) * store["a"]).sum(1).relu()
            cam = dsxai.normalize_maps(cam)
            cam = torch.nn.functional.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear")[:, 0]
            maps.append(dsxai.normalize_maps(cam)[0].detach())
        out.append(torch.stack(maps))
    return out


@pytest.mark.parametrize("chunk_size", [1, 2, 100])
def test_batched_gradients_equal_looped_ones(net, images, chunk_size):
    classes = [[0, 1, 2], [3], [4, 5]]  # ragged: 3, 1 and 2 targets
    result = dsxai.GradCAM(net, ["deep"], chunk_size=chunk_size).explain(images, dsxai.ClassTarget(classes))
    assert isinstance(result.maps, list) and [m.shape[0] for m in result.maps] == [3, 1, 2]
    reference = looped_gradcam(net, net.deep, images, classes)
    for mine, ref in zip(result.maps, reference):
        assert mine.shape == ref.shape
        assert (mine - ref).abs().max() <= 1e-5
    assert (result.maps[0][0] - result.maps[0][1]).abs().max() > 1e-3  # targets get their own maps


def test_loop_fallback_is_used_and_logged_once_when_vmap_fails(net, images, monkeypatch, caplog):
    real_grad = torch.autograd.grad

    def no_batching(*args, is_grads_batched=False, **kwargs):
        if is_grads_batched:
            raise RuntimeError("Batching rule not implemented for aten::fancy_op")
        return real_grad(*args, **kwargs)

    classes = [[0, 1], [2, 3], [4, 5]]
    batched = dsxai.GradCAM(net, ["deep"])(images, dsxai.ClassTarget(classes))
    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    cam = dsxai.GradCAM(net, ["deep"], chunk_size=4)
    with caplog.at_level(logging.WARNING, logger="dsxai"):
        looped = cam(images, dsxai.ClassTarget(classes))
        cam(images, dsxai.ClassTarget(classes))
    assert (batched - looped).abs().max() <= 1e-5
    assert sum("loop" in r.message for r in caplog.records) == 1


def test_one_forward_and_one_backward_for_all_targets(net, images):
    forwards, backwards = [], []
    # A hook on the last layer's gradient fires once per backward through the graph (a batched
    # backward is one backward of all its rows), so it counts backwards, not calls of autograd.grad.
    handle_fwd = net.register_forward_hook(lambda *a: forwards.append(1))
    handle_bwd = net.head.register_full_backward_hook(lambda module, grad_in, grad_out: backwards.append(
        tuple(grad_out[0].shape)))
    try:
        dsxai.GradCAM(net, ["deep"], chunk_size=64)(images, dsxai.ClassTarget([[0, 1, 2, 3]] * 3))
        assert len(forwards) == 1
        assert len(backwards) == 1  # all 12 targets in one batched backward
        dsxai.GradCAM(net, ["deep"], chunk_size=5)(images, dsxai.ClassTarget([[0, 1, 2, 3]] * 3))
        assert len(forwards) == 2 and len(backwards) == 1 + 3  # chunks of 5, 5 and 2 targets
    finally:
        handle_fwd.remove()
        handle_bwd.remove()


def test_tensor_target_gives_dense_output_and_ragged_gives_list(net, images):
    dense = dsxai.GradCAM(net, ["deep"])(images, lambda out: out[:, [1, 4]])
    assert isinstance(dense, torch.Tensor) and dense.shape == (3, 2, 32, 40)
    assert dense.dtype == torch.float32 and 0 <= dense.min() and dense.max() <= 1
    ragged = dsxai.GradCAM(net, ["deep"])(images, lambda out: [out[0, :2], out[1, :1], out[2, :0]])
    assert [m.shape for m in ragged] == [(2, 32, 40), (1, 32, 40), (0, 32, 40)]


def test_every_image_of_a_batch_gets_its_own_map(net, images):
    maps = dsxai.GradCAM(net, ["deep"])(images, dsxai.ClassTarget(2))
    single = [dsxai.GradCAM(net, ["deep"])(images[i:i + 1], dsxai.ClassTarget(2))[0] for i in range(3)]
    for b in range(3):
        assert maps[b].std() > 0.01
        assert torch.allclose(maps[b], single[b], atol=1e-5)


class RecordingGradCAM(dsxai.GradCAM):
    def cam_from_gradients(self, activations, gradients):
        cams = super().cam_from_gradients(activations, gradients)
        self.low_res.append(cams)
        return cams


def test_multi_layer_fusion_mean_and_max(net, images):
    target = dsxai.ClassTarget(1)
    for fuse in ("mean", "max"):
        cam = RecordingGradCAM(net, ["block", net.deep], fuse=fuse)
        cam.low_res = []
        fused = cam(images, target)
        block, deep = cam.low_res
        assert block.shape[-2:] == (16, 20) and deep.shape[-2:] == (8, 10)
        up = [torch.nn.functional.interpolate(dsxai.normalize_maps(c.relu())[:, None], size=(32, 40),
                                              mode="bilinear")[:, 0] for c in (block, deep)]
        expected = (up[0] + up[1]) / 2 if fuse == "mean" else torch.maximum(up[0], up[1])
        assert torch.allclose(fused[:, 0], dsxai.normalize_maps(expected), atol=1e-5)
    mean = dsxai.GradCAM(net, ["block", "deep"], fuse="mean")(images, target)
    assert (mean - fused).abs().max() > 1e-3


class DictBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.c4 = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        p3 = torch.relu(self.c3(x))
        p4 = torch.relu(self.c4(p3))
        return OrderedDict(p3=p3, p4=p4), (p3 * 2,)


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = DictBackbone()

    def forward(self, x):
        feats, extra = self.backbone(x)
        return {"scores": feats["p3"].mean((1, 2, 3)) + feats["p4"].amax((1, 2, 3)) + extra[0].mean((1, 2, 3))}


def test_dict_and_tuple_layer_outputs_become_sources(images):
    torch.manual_seed(0)
    model = DictModel().eval()
    result = dsxai.GradCAM(model, ["backbone"]).explain(images, lambda out: out["scores"][:, None])
    assert isinstance(result.maps, list) and [tuple(m.shape) for m in result.maps] == [(1, 32, 40)] * 3
    assert result.dense and result.stacked().amax((-2, -1)).min() > 0.99
    # p3, p4 and the tuple's p3*2 are three sources; the fused map is their mean, each normalised first
    cam = RecordingGradCAM(model, ["backbone"])
    cam.low_res = []
    fused = cam(images, lambda out: out["scores"][:, None])
    assert [tuple(c.shape[-2:]) for c in cam.low_res] == [(16, 20), (8, 10), (16, 20)]
    up = [torch.nn.functional.interpolate(dsxai.normalize_maps(c.relu())[:, None], size=(32, 40),
                                          mode="bilinear")[:, 0] for c in cam.low_res]
    assert torch.allclose(fused[:, 0], dsxai.normalize_maps(sum(up) / 3), atol=1e-5)
    assert torch.allclose(result.stacked(), fused)


def test_reshape_handles_token_outputs():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.mix = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)  # [B, 64, 8]
            t = torch.relu(self.mix(t))
            return self.head(t.mean(1))

    torch.manual_seed(0)
    model = Tokens().eval()
    x = torch.rand(2, 3, 32, 32)
    reshape = lambda t: t.transpose(1, 2).reshape(t.shape[0], t.shape[2], 8, 8)  # noqa: E731
    maps = dsxai.GradCAM(model, ["mix"], reshape=reshape)(x, dsxai.ClassTarget(1))
    assert maps.shape == (2, 1, 32, 32) and maps.std() > 0.01
    with pytest.raises(ValueError, match="reshape="):
        dsxai.GradCAM(model, ["mix"])(x, dsxai.ClassTarget(1))


def test_all_zero_map_stays_zero_not_nan(net, images):
    maps = dsxai.GradCAM(net, ["deep"])(images, lambda out: (out[:, :1] * 0 + out[:, :1].detach()))
    assert torch.isfinite(maps).all() and maps.abs().max() == 0


def test_noise_and_flip_augmentations(net, images):
    plain = dsxai.GradCAM(net, ["deep"])(images, dsxai.ClassTarget(1))
    smooth = dsxai.GradCAM(net, ["deep"], noise_samples=4, noise_sigma=0.2)(images, dsxai.ClassTarget(1))
    again = dsxai.GradCAM(net, ["deep"], noise_samples=4, noise_sigma=0.2)(images, dsxai.ClassTarget(1))
    assert smooth.shape == plain.shape and torch.equal(smooth, again)  # seeded
    assert (smooth - plain).abs().max() > 1e-3
    flipped = dsxai.GradCAM(net, ["deep"], hflip=True)(images, dsxai.ClassTarget(1))
    mirror = dsxai.GradCAM(net, ["deep"])(images.flip(-1), dsxai.ClassTarget(1)).flip(-1)
    assert torch.allclose(flipped, dsxai.normalize_maps(plain + mirror), atol=1e-5)


# ------------------------------------------------------------------ errors

def test_bad_inputs_give_clear_errors(net, images):
    cam = dsxai.GradCAM(net, ["deep"])
    target = dsxai.ClassTarget(0)
    with pytest.raises(ValueError, match="rank 4.*x\\[None\\]"):
        cam(images[0], target)
    with pytest.raises(ValueError, match="floating-point.*uint8"):
        cam((images * 255).to(torch.uint8), target)
    with pytest.raises(ValueError, match="3 channels but the batch has 1"):
        cam(images[:, :1], target)
    with pytest.raises(TypeError, match="torch.Tensor"):
        cam(images.numpy(), target)
    with pytest.raises(ValueError, match="NaN"):
        cam(images * float("nan"), target)


def test_unknown_layer_lists_close_matches(net):
    with pytest.raises(ValueError, match="unknown layer name 'deeep'.*close matches: deep"):
        dsxai.GradCAM(net, ["deeep"])
    with pytest.raises(ValueError, match="not part of the model"):
        dsxai.GradCAM(net, [nn.Conv2d(1, 1, 1)])
    with pytest.raises(ValueError, match="no target layers"):
        dsxai.GradCAM(net, None)


def test_layer_never_reached(net, images):
    with pytest.raises(ValueError, match="'unused' was never reached"):
        dsxai.GradCAM(net, ["unused"])(images, dsxai.ClassTarget(0))


def test_target_with_wrong_shape_or_no_gradient(net, images):
    cam = dsxai.GradCAM(net, ["deep"])
    with pytest.raises(ValueError, match=r"returned shape \(6,\); expected \[B, T\] = \[3, T\]"):
        cam(images, lambda out: out[0])
    with pytest.raises(ValueError, match="list of 2 items; expected 3"):
        cam(images, lambda out: [out[0], out[1]])
    with pytest.raises(ValueError, match="carry no gradient"):
        cam(images, lambda out: out.detach()[:, :1])
    with pytest.raises(ValueError, match="could not read the model output"):
        cam(images, lambda out: out[:, [99]])


def test_nan_activations_are_reported_with_the_layer(net, images):
    with torch.no_grad():
        net.block[0].bias[0] = float("nan")
    with pytest.raises(ValueError, match="'deep' produced NaN"):
        dsxai.GradCAM(net, ["deep"])(images, dsxai.ClassTarget(0))


def test_unknown_method_name():
    with pytest.raises(ValueError, match="unknown method 'gradcan'.*gradcam"):
        dsxai.get_method("gradcan")
    assert dsxai.get_method("Grad-CAM++") is dsxai.GradCAMPlusPlus


# ------------------------------------------------------ model untouched

def snapshot(model):
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.detach().clone() for b in model.buffers()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     for m in model.modules()),
    }


@pytest.mark.parametrize("method", sorted(set(dsxai.METHODS.values()), key=lambda c: c.__name__))
def test_model_comes_back_untouched(method):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    model.train()
    model.layer1.eval()  # mixed modes must survive too
    model.fc.weight.requires_grad_(False)
    before = snapshot(model)
    x = torch.rand(1, 3, 48, 48)
    maps = method(model, ["layer4"], batch_size=256)(x, dsxai.ClassTarget(1))
    assert maps.shape == (1, 1, 48, 48)
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(torch.equal(a, b) for a, b in zip(after["params"], before["params"]))
    assert all(torch.equal(a, b) for a, b in zip(after["buffers"], before["buffers"]))  # BN stats untouched
    assert all(g is None for g in after["grads"])
    assert after["hooks"] == before["hooks"] == 0


def test_hooks_are_removed_when_the_target_fails(net, images):
    def broken(out):
        raise KeyError("boxes")

    with pytest.raises(ValueError):
        dsxai.GradCAM(net, ["deep", "block"])(images, broken)
    assert all(len(m._forward_hooks) == 0 for m in net.modules())


def test_works_inside_no_grad_and_inference_mode(net, images):
    expected = dsxai.GradCAM(net, ["deep"])(images, dsxai.ClassTarget(3))
    with torch.no_grad():
        a = dsxai.GradCAM(net, ["deep"])(images, dsxai.ClassTarget(3))
    with torch.inference_mode():
        b = dsxai.GradCAM(net, ["deep"])(images.clone(), dsxai.ClassTarget(3))
    assert torch.allclose(a, expected) and torch.allclose(b, expected)


def test_perturbation_methods_reject_ragged_plain_callables(net, images):
    with pytest.raises(ValueError, match="on_copies"):
        dsxai.ScoreCAM(net, ["deep"])(images[:1], lambda out: [out[0, :2]])


def test_a_method_is_only_a_weighting(net, images):
    """A new method needs only cam_from_gradients; everything else comes from the base."""
    class GradientOnly(GradientCAM):
        def cam_from_gradients(self, activations, gradients):
            return (gradients * activations).abs().sum(1)

    maps = GradientOnly(net, ["deep"])(images, dsxai.ClassTarget(2))
    assert maps.shape == (3, 1, 32, 40) and maps.max() == pytest.approx(1, abs=1e-5)

    class NoKind(dsxai.BaseCAM):  # the shared base alone says nothing about how maps come about
        def cam_from_gradients(self, activations, gradients):
            return (gradients * activations).sum(1)

    with pytest.raises(NotImplementedError, match="subclasses GradientCAM, ActivationCAM or PerturbationCAM"):
        NoKind(net, ["deep"])(images, dsxai.ClassTarget(2))
    assert all(h == {} for h in (m._forward_hooks for m in net.modules()))  # hooks gone after the error

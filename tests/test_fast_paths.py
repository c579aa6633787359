"""The opt-in fast paths agree with the exact ones.

* EigenCAM's default ``solver="gram"`` and ``"lowrank"`` vs the full SVD (``solver="svd"``): normalised maps
  within 1e-4 on a real network's activations, with the same (deterministic) sign.
* ``autocast=`` (reduced-precision forward, float32 CAM math) vs float32 on CPU, normalised maps of a
  random-init ResNet-18: at the last stage fp16 within 1e-2 max abs, bf16 within 2e-2 max / 5e-3 mean
  (bf16 keeps 8 mantissa bits); at earlier layers the gradients cross more reduced-precision ops and
  maps differ up to ~0.1 max abs, 1e-2 mean. Skipped where CPU autocast to a dtype is unsupported.
"""
import pytest
import torch
import torchvision

import dsxai
from dsxai.methods import first_component

TARGETS = [[3, 7], [11, 5]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=20).eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, 96, 96) * 2 - 1


@pytest.mark.parametrize("solver", [None, "gram", "lowrank"], ids=["default", "gram", "lowrank"])
@pytest.mark.parametrize("layers", [["layer3"], ["layer2", "layer4"]], ids=["one-layer", "two-layers"])
def test_eigencam_fast_solvers_match_full_svd(model, images, solver, layers):
    exact = dsxai.EigenCAM(model, layers, solver="svd")(images)
    options = {} if solver is None else {"solver": solver}
    fast = dsxai.EigenCAM(model, layers, **options)(images)
    assert fast.shape == exact.shape == (2, 1, 96, 96)
    assert exact.std() > 0.05
    assert (fast - exact).abs().max() <= 1e-4


@pytest.mark.parametrize("solver", ["gram", "lowrank"])
@pytest.mark.parametrize("channels, side", [(48, 24), (300, 8)], ids=["hw>C", "hw<C"])  # gram: [C,C] / [hw,hw]
def test_first_component_fast_solvers_keep_the_sign(solver, channels, side):
    torch.manual_seed(2)
    # a dominant spatial pattern shared by all channels plus noise: a well-separated first component
    pattern = torch.randn(3, 1, side, side)
    feats = torch.randn(3, channels, side, side) * 0.3 + torch.randn(3, channels, 1, 1) * pattern
    exact = first_component(feats, feats.mean(1), "svd")
    fast = first_component(feats, feats.mean(1), solver)
    assert (fast - exact).abs().max() <= 1e-3 * exact.abs().max()
    # the sign rule is applied after any solver: negated features (and reference) give the negated map ...
    assert torch.allclose(first_component(-feats, (-feats).mean(1), solver), -fast, atol=1e-3 * exact.abs().max())
    # ... and the sign follows the reference, as for the exact path
    flipped_reference = first_component(feats, -feats.mean(1), solver)
    assert torch.allclose(flipped_reference, -fast, atol=1e-3 * exact.abs().max())


def test_lowrank_solver_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(3)
    feats = torch.randn(2, 32, 16, 16)
    state = torch.get_rng_state()
    first = first_component(feats, feats.mean(1), "lowrank")
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first_component(feats, feats.mean(1), "lowrank"), first)


def test_unknown_solver_and_autocast_are_rejected(model):
    with pytest.raises(ValueError, match="solver"):
        dsxai.EigenCAM(model, ["layer4"], solver="qr")
    with pytest.raises(ValueError, match="autocast"):
        dsxai.GradCAM(model, ["layer4"], autocast="int8")


def _supported(dtype):
    try:
        with torch.autocast("cpu", dtype=dtype):
            torch.nn.functional.conv2d(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 3, 3))
        return True
    except (RuntimeError, ValueError):
        return False


TOLERANCE = {"fp16": (1e-2, 2e-3), "bf16": (2e-2, 5e-3)}  # (max abs, mean abs) of normalised maps
EARLY_TOLERANCE = {"fp16": (0.15, 1e-2), "bf16": (0.15, 2e-2)}  # the same at layer2 and at layer3+4
METHODS = [dsxai.GradCAM, dsxai.HiResCAM, dsxai.LayerCAM, dsxai.GradCAMPlusPlus, dsxai.EigenCAM]


def _compare(method, model, images, precision, layers, targets=TARGETS, **options):
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if not _supported(dtype):
        pytest.skip(f"CPU autocast to {precision} unsupported by this torch build")
    exact = method(model, layers, **options)(images, dsxai.ClassTarget(targets))
    fast = method(model, layers, autocast=precision, **options)(images, dsxai.ClassTarget(targets))
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    assert exact.std() > 0.05
    diff = (fast - exact).abs()
    assert diff.max() > 0  # the reduced precision really ran: not bit-identical to float32
    return diff


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method", METHODS, ids=[m.__name__ for m in METHODS])
def test_autocast_matches_float32_at_the_last_stage(model, images, precision, method):
    diff = _compare(method, model, images, precision, ["layer4"])
    worst, mean = TOLERANCE[precision]
    assert diff.max() <= worst and diff.mean() <= mean


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("layers", [["layer2"], ["layer3", "layer4"]], ids=["layer2", "layer3+4"])
def test_autocast_differs_more_at_earlier_layers(model, images, precision, layers):
    """Gradients of earlier layers pass through more reduced-precision ops: on this random-init ResNet-18 up
    to ~0.13 max abs (bf16 at layer2), on average below 1e-2 except bf16 at layer2, whose mean depends on whether
    the CPU has native bf16 (avx512_bf16): up to 1.35e-2 without it."""
    worst, mean = EARLY_TOLERANCE[precision]
    for method in (dsxai.GradCAM, dsxai.LayerCAM):
        diff = _compare(method, model, images, precision, layers)
        assert diff.max() <= worst and diff.mean() <= mean


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_in_the_perturbation_path(precision):
    torch.manual_seed(4)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 12, 3, stride=2, padding=1),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    x = torch.rand(1, 3, 32, 32)
    diff = _compare(dsxai.ScoreCAM, net, x, precision, ["3"], targets=[[1, 3]], batch_size=12)
    assert diff.max() <= 2e-2 and diff.mean() <= 5e-3


def test_autocast_leaves_the_model_in_float32(model, images):
    dsxai.GradCAM(model, ["layer4"], autocast="bf16")(images, dsxai.ClassTarget(TARGETS))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.is_autocast_enabled("cpu")

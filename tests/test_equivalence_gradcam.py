"""Our maps equal pytorch-grad-cam's where the two definitions agree."""
import numpy as np
import pytest
import torch
import torchvision

import dsxai

gradcam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

CLASSES = [[3, 7], [11, 5]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=20).eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, 128, 128) * 2 - 1


def reference(cls, model, layers, x, classes, **kwargs):
    """pytorch-grad-cam, one call per target: [B, T, H, W]."""
    out = []
    for t in range(len(classes[0])):
        with cls(model=model, target_layers=layers, **kwargs) as cam:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(c[t]) for c in classes])
        out.append(torch.from_numpy(maps))
    return torch.stack(out, 1)


GRADIENT_PAIRS = [
    (dsxai.GradCAM, "GradCAM"),
    (dsxai.GradCAMPlusPlus, "GradCAMPlusPlus"),
    (dsxai.XGradCAM, "XGradCAM"),
    (dsxai.HiResCAM, "HiResCAM"),
    (dsxai.LayerCAM, "LayerCAM"),
]


@pytest.mark.parametrize("ours, theirs", GRADIENT_PAIRS, ids=[p[1] for p in GRADIENT_PAIRS])
@pytest.mark.parametrize("layer_names", [["layer4"], ["layer3", "layer4"]], ids=["one-layer", "two-layers"])
def test_gradient_methods_match_pytorch_grad_cam(model, images, ours, theirs, layer_names):
    mine = ours(model, layer_names)(images, dsxai.ClassTarget(CLASSES))
    ref_layers = [getattr(model, n) for n in layer_names]
    ref = reference(getattr(gradcam, theirs), model, ref_layers, images, CLASSES)
    assert mine.shape == ref.shape == (2, 2, 128, 128)
    assert (mine - ref).abs().max() <= 1e-4
    assert mine.std() > 0.05  # a real map, not a constant that trivially matches


def _sign_fixed(original, reference_of):
    """pytorch-grad-cam's projection with our documented sign rule applied to it."""
    def projection(batch):
        proj = torch.from_numpy(original(batch.copy()))
        ref = reference_of(torch.from_numpy(batch))
        return dsxai.methods._sign(proj.flatten(1), ref.flatten(1))[:, None, None].numpy() * proj.numpy()
    return projection


def test_eigencam_matches_up_to_the_documented_sign(model, images, monkeypatch):
    import pytorch_grad_cam.eigen_cam as eigen_module

    mine = dsxai.EigenCAM(model, ["layer4"])(images)  # one class-agnostic map per image
    assert mine.shape == (2, 1, 128, 128)
    monkeypatch.setattr(eigen_module, "get_2d_projection",
                        _sign_fixed(eigen_module.get_2d_projection, lambda a: a.mean(1)))
    with gradcam.EigenCAM(model=model, target_layers=[model.layer4]) as cam:
        ref = torch.from_numpy(cam(input_tensor=images, targets=None))
    assert (mine[:, 0] - ref).abs().max() <= 1e-4


def test_eigengradcam_matches_up_to_the_documented_sign(model, images, monkeypatch):
    import pytorch_grad_cam.eigen_grad_cam as module

    mine = dsxai.EigenGradCAM(model, ["layer4"])(images, dsxai.ClassTarget(CLASSES))
    monkeypatch.setattr(module, "get_2d_projection", _sign_fixed(module.get_2d_projection, lambda p: p.sum(1)))
    ref = reference(gradcam.EigenGradCAM, model, [model.layer4], images, CLASSES)
    assert (mine - ref).abs().max() <= 1e-4


def test_eigencam_sign_is_deterministic_under_svd_sign_flip(model, images, monkeypatch):
    """The SVD may return v or -v (it differs between builds and model sizes); the map must not."""
    before = dsxai.EigenCAM(model, ["layer4"])(images)
    real_svd = torch.linalg.svd

    def flipped_svd(a, full_matrices=True):
        u, s, vh = real_svd(a, full_matrices=full_matrices)
        return -u, s, -vh

    monkeypatch.setattr(torch.linalg, "svd", flipped_svd)
    after = dsxai.EigenCAM(model, ["layer4"])(images)
    assert torch.allclose(before, after, atol=1e-6)
    assert before.std() > 0.05


def test_eigencam_sign_points_at_strong_activations():
    """A bright blob in an otherwise flat feature map must come out hot, not cold."""
    feats = torch.zeros(1, 4, 8, 8)
    feats[0, :, 2:4, 2:4] = torch.tensor([3.0, 1.0, 2.0, 0.5]).view(4, 1, 1)
    feats += 0.01 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    proj = dsxai.methods.first_component(feats, feats.mean(1))
    assert proj[0, 2:4, 2:4].mean() > 0 > proj[0, 5:, 5:].mean()
    flipped = dsxai.methods.first_component(-feats, (-feats).mean(1))
    assert flipped[0, 2:4, 2:4].mean() < 0  # the reference decides, not the SVD


def test_scorecam_matches_pytorch_grad_cam(model):
    torch.manual_seed(2)
    x = torch.rand(1, 3, 64, 64)
    mine = dsxai.ScoreCAM(model, ["layer3"], batch_size=64)(x, dsxai.ClassTarget([[4, 9]]))
    with gradcam.ScoreCAM(model=model, target_layers=[model.layer3]) as cam:
        cam.batch_size = 64
        ref = torch.stack([torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(c)]))
                           for c in (4, 9)], 1)
    assert (mine - ref).abs().max() <= 1e-3
    assert mine.std() > 0.05


def test_ablationcam_matches_pytorch_grad_cam_on_a_relu_layer(model):
    torch.manual_seed(3)
    x = torch.rand(1, 3, 64, 64)
    mine = dsxai.AblationCAM(model, ["layer3"], batch_size=64)(x, dsxai.ClassTarget([[4, 9]]))
    with gradcam.AblationCAM(model=model, target_layers=[model.layer3], batch_size=64) as cam:
        ref = torch.stack([torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(c)]))
                           for c in (4, 9)], 1)
    assert (mine - ref).abs().max() <= 1e-3
    assert mine.std() > 0.05


def test_default_target_is_the_top_class_like_pytorch_grad_cam(model, images):
    mine = dsxai.GradCAM(model, ["layer4"])(images)
    with gradcam.GradCAM(model=model, target_layers=[model.layer4]) as cam:
        ref = torch.from_numpy(cam(input_tensor=images, targets=None))
    assert mine.shape == (2, 1, 128, 128)
    assert np.abs((mine[:, 0] - ref).numpy()).max() <= 1e-4

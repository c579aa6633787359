"""segmentation-models-pytorch: masks from logits, per-mask maps at the original size, a known answer."""
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

smp = pytest.importorskip("segmentation_models_pytorch")

from dsxai.adapters.smp_segmentation import SMPAdapter  # noqa: E402
from _model_state import assert_unchanged, snapshot  # noqa: E402
from dsxai.pipeline import explain_maps


def dilate(mask, pixels):
    k = 2 * pixels + 1
    return F.max_pool2d(mask[None, None].float(), k, 1, pixels)[0, 0].bool()


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return smp.Unet("resnet34", encoder_weights=None, classes=3).eval()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)

    def smooth(h, w):  # blocky random colours (10 x 10 px blocks)
        return np.kron(rng.random((h // 10 + 1, w // 10 + 1, 3)), np.ones((10, 10, 1)))[:h, :w] * 255

    return {
        "nonsquare": smooth(70, 100).astype(np.uint8),      # not a multiple of 32
        "tall": smooth(96, 64).astype(np.uint8),
        "gray": smooth(50, 90)[..., 0].astype(np.uint8),  # H x W
        "rgba": np.dstack([smooth(64, 48).astype(np.uint8), np.full((64, 48), 200, np.uint8)]),
    }


def test_preprocess_pads_to_output_stride(unet, images):
    adapter = SMPAdapter(unet)
    batch = adapter.preprocess(images["nonsquare"])
    assert tuple(batch.tensor.shape) == (1, 3, 96, 128)
    g = batch.geometries[0]
    assert g.content_size == (70, 100) and g.offset == (0, 0) and g.network_size == (96, 128)
    assert torch.count_nonzero(batch.tensor[0, :, 70:]) == 0  # padding = 0 after normalisation
    # ImageNet normalisation of the first pixel
    pixel = torch.tensor(images["nonsquare"][0, 0], dtype=torch.float32) / 255
    expected = (pixel - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(batch.tensor[0, :, 0, 0], expected, atol=1e-5)
    resized = SMPAdapter(unet, size=50).preprocess(images["nonsquare"])
    assert resized.geometries[0].content_size == (35, 50) and tuple(resized.tensor.shape[-2:]) == (64, 64)


@pytest.mark.parametrize("name", ["nonsquare", "tall", "gray", "rgba"])
def test_per_mask_maps_shapes_and_alignment(unet, images, name):
    before = snapshot(unet)
    adapter = SMPAdapter(unet)
    image = images[name]
    h, w = image.shape[:2]
    # HiResCAM at the decoder output: the head is one 3x3 conv, so the mean logit inside a mask
    # reads the decoder features only within 1 px of the mask, whatever the weights
    dets, maps = explain_maps(adapter, image, method="hirescam", min_area=20)
    d, m = dets[0], maps[0]
    assert len(d) > 0 and m.shape == (len(d), h, w)
    assert d.masks.shape == (len(d), h, w) and d.image_size == (h, w)
    assert set(d.labels.tolist()) <= {1, 2}  # background (0) skipped
    assert (d.scores > 0).all() and (d.scores <= 1).all()
    for k in range(len(d)):
        mask = d.masks[k]
        ys, xs = torch.where(mask)
        assert d.boxes[k].tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        share = (m[k] * dilate(mask, 3)).sum() / m[k].sum()
        assert share > 0.97, (k, share)
    assert_unchanged(unet, before)


def test_targets_options(unet, images):
    adapter = SMPAdapter(unet, class_names=["bg", "a", "b"])
    image = images["nonsquare"]
    comps = adapter.predict(image, min_area=1)
    classes, class_maps = explain_maps(adapter, image, per="class", min_area=1)
    d = classes[0]
    assert class_maps[0].shape == (len(d), 70, 100)
    assert sorted(d.labels.tolist()) == sorted(set(comps[0].labels.tolist()))
    assert len(comps[0]) >= len(d) and d.names[0] in ("a", "b")
    # a class mask is the union of that class's components
    for k, c in enumerate(d.labels.tolist()):
        union = comps[0].masks[comps[0].labels == c].any(0)
        assert (union == d.masks[k]).float().mean() > 0.99
    # classes filter and background=None
    only = adapter.predict(image, per="class", classes=[2], min_area=1)[0]
    assert only.labels.tolist() == [2]
    with_bg = adapter.predict(image, per="class", background=None, min_area=1)[0]
    with torch.no_grad():
        present = unet(adapter.preprocess(image).tensor)[0, :, :70, :100].argmax(0).unique().tolist()
    assert sorted(with_bg.labels.tolist()) == present and sorted(d.labels.tolist()) == [c for c in present if c]
    # user masks: a square and the left half, classes inferred or given
    square = np.zeros(image.shape[:2], bool)
    square[20:40, 30:60] = True
    half = np.zeros(image.shape[:2], bool)
    half[:, :50] = True
    user, user_maps = explain_maps(adapter, image, masks=[np.stack([square, half])], classes=[[1, 2]])
    assert user[0].labels.tolist() == [1, 2] and user_maps[0].shape == (2, 70, 100)
    assert user[0].boxes[0].tolist() == [30, 20, 60, 40]
    assert torch.equal(user[0].masks[0], torch.from_numpy(square))
    assert not torch.allclose(user_maps[0][0], user_maps[0][1])
    inferred = adapter.predict(image, masks=square)[0]
    assert inferred.labels.item() in (0, 1, 2) and len(inferred) == 1
    # sum vs mean change the scalar explained, not the masks
    target = adapter.mask_target(adapter.preprocess(image), reduce="sum", min_area=1)
    with torch.no_grad():
        sums = target(unet(adapter.preprocess(image).tensor))
    target_mean = adapter.mask_target(adapter.preprocess(image), reduce="mean", min_area=1)
    with torch.no_grad():
        means = target_mean(unet(adapter.preprocess(image).tensor))
    area = target_mean._grid[0].flatten(1).sum(1)
    assert torch.allclose(torch.as_tensor(sums[0]), torch.as_tensor(means[0]) * area, rtol=1e-4)


def test_batch_of_two_sizes_and_min_area(unet, images):
    adapter = SMPAdapter(unet)
    dets, maps = explain_maps(adapter, [images["nonsquare"], images["tall"]], min_area=30)
    assert [m.shape[1:] for m in maps] == [(70, 100), (96, 64)]
    for d, m in zip(dets, maps):
        assert m.shape[0] == len(d) and (d.masks.flatten(1).sum(1) >= 30 * 0.7).all()
    none = explain_maps(adapter, images["tall"], min_area=10**6)
    assert len(none[0][0]) == 0 and none[1][0].shape == (0, 96, 64)


def test_binary_model_and_other_architecture():
    torch.manual_seed(1)
    model = smp.FPN("resnet18", encoder_weights=None, classes=1).eval()
    adapter = SMPAdapter(model)
    assert adapter.class_names == {0: "background", 1: "foreground"}
    image = (np.random.default_rng(1).random((64, 80, 3)) * 255).astype(np.uint8)
    dets, maps = explain_maps(adapter, image, per="class", min_area=1)
    with torch.no_grad():
        logits = model(adapter.preprocess(image).tensor)[0, 0, :64, :80]
    fg = logits > 0
    if fg.any():
        assert dets[0].labels.tolist() == [1]
        assert torch.equal(dets[0].masks[0], fg)
        assert maps[0].shape == (1, 64, 80)
    else:
        assert len(dets[0]) == 0


def test_missing_smp_says_how_to_install(monkeypatch, unet):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    with pytest.raises(ImportError, match=r"pip install 'dsxai\[smp\]'"):
        SMPAdapter(unet)


def test_rejects_non_smp_models():
    with pytest.raises(TypeError, match="SegmenterAdapter"):
        SMPAdapter(torch.nn.Conv2d(3, 2, 1))


# The known-answer test on a trained U-Net lives in test_known_answer.py (the shipped shapes U-Net).

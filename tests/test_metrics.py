"""Localization and faithfulness metrics against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dsxai import metrics as M
from dsxai.adapter import Adapter
from dsxai.boxes import box_masks
from dsxai.detections import Detections


def peak_map(h: int, w: int, y: int, x: int) -> torch.Tensor:
    m = torch.zeros(1, h, w)
    m[0, y, x] = 1.0
    return m


# ----------------------------------------------------------------------------------------------- regions


def test_box_masks_use_pixel_centres():
    m = box_masks(torch.tensor([[1.0, 2.0, 4.0, 5.0]]), (6, 6))[0]
    assert int(m.sum()) == 9
    assert m[2:5, 1:4].all() and not m[:2].any() and not m[:, 4:].any()
    # a box that covers no pixel centre holds no pixel
    assert int(box_masks(torch.tensor([[0.6, 0.0, 1.4, 1.0]]), (4, 4)).sum()) == 0


def test_region_masks_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="boxes"):
        M.region_masks(torch.zeros(2, 5, 5), (6, 6))
    with pytest.raises(ValueError, match="one region per map"):
        M.pointing_game(torch.rand(2, 6, 6), torch.tensor([[0.0, 0.0, 2.0, 2.0]]))


def test_dilate_is_the_euclidean_disk():
    m = torch.zeros(1, 41, 41, dtype=torch.bool)
    m[0, 20, 20] = True
    ys, xs = torch.meshgrid(torch.arange(41), torch.arange(41), indexing="ij")
    for r in (1, 2.5, 7, 15):
        ref = ((ys - 20) ** 2 + (xs - 20) ** 2) <= r * r
        assert torch.equal(M.dilate(m, r)[0], ref), r
    assert int(M.dilate(m, 1)[0].sum()) == 5  # the 4-neighbourhood
    assert int(M.dilate(m, 15)[0].sum()) == 709  # lattice points in a disk of radius 15


# ----------------------------------------------------------------------------------------------- pointing game


def test_pointing_game_tolerance_is_euclidean():
    maps = peak_map(40, 40, 10, 10)
    box = torch.tensor([[20.0, 20.0, 30.0, 30.0]])  # nearest pixel (20, 20): distance sqrt(200) = 14.14
    assert M.pointing_game(maps, box, tolerance=0).item() == 0.0
    assert M.pointing_game(maps, box, tolerance=14).item() == 0.0
    assert M.pointing_game(maps, box, tolerance=15).item() == 1.0
    inside = peak_map(40, 40, 25, 25)
    assert M.pointing_game(inside, box, tolerance=0).item() == 1.0


def test_pointing_game_boxes_and_masks_agree():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(5, 30, 40, generator=g)
    boxes = torch.tensor([[0, 0, 5, 5], [10, 10, 20, 25], [35, 0, 40, 30], [3.3, 4.7, 9.2, 8.1], [0, 0, 40, 30]])
    for tol in (0, 3, 15):
        a = M.pointing_game(maps, boxes, tol)
        b = M.pointing_game(maps, box_masks(boxes, (30, 40)), tol)
        assert torch.equal(a, b)


def test_pointing_game_mask_touching_the_border():
    mask = torch.zeros(1, 20, 20, dtype=torch.bool)
    mask[0, 0:5, 0] = True  # column 0, rows 0..4: touches the left and top border
    assert M.pointing_game(peak_map(20, 20, 2, 0), mask, 0).item() == 1.0
    # distance from (2, 15) to (2, 0) is exactly 15: inside (inclusive); 16 columns away is a miss
    assert M.pointing_game(peak_map(20, 20, 2, 15), mask, 15).item() == 1.0
    assert M.pointing_game(peak_map(20, 20, 2, 16), mask, 15).item() == 0.0
    # below the mask: (4 + 15, 0) hits, (4 + 16, 0) would be off the image; (19, 10): sqrt(15^2 + 10^2) > 15
    assert M.pointing_game(peak_map(20, 20, 19, 0), mask, 15).item() == 1.0
    assert M.pointing_game(peak_map(20, 20, 19, 10), mask, 15).item() == 0.0


def test_pointing_game_ties_count_the_share_inside():
    maps = torch.zeros(1, 10, 10)
    maps[0, 1, 1] = maps[0, 8, 8] = 0.7  # two maxima, one inside the box
    box = torch.tensor([[0.0, 0.0, 3.0, 3.0]])
    assert M.pointing_game(maps, box, 0).item() == pytest.approx(0.5)
    # a uniform map scores the region's share of the image: chance level, not an automatic hit
    uniform = torch.ones(1, 10, 10)
    assert M.pointing_game(uniform, torch.tensor([[0.0, 0.0, 5.0, 4.0]]), 0).item() == pytest.approx(0.2)
    # 400 tied maxima take the full-dilation path: a 5x4 box grown by 1 px (no corners) is 7*6-4 = 38 pixels
    uniform = torch.ones(1, 20, 20)
    pg = M.pointing_game(uniform, torch.tensor([[5.0, 5.0, 10.0, 9.0]]), 1)
    assert pg.item() == pytest.approx(38 / 400)


def test_pointing_game_empty_and_nan_maps_miss():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    maps = torch.stack([torch.zeros(10, 10), torch.full((10, 10), math.nan)])
    assert M.pointing_game(maps, box).tolist() == [0.0, 0.0]
    assert M.energy_pointing_game(maps, box).tolist() == [0.0, 0.0]
    assert M.iou_at_threshold(maps, box).tolist() == [0.0, 0.0]
    assert M.box_localization_accuracy(maps, box).tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------------------------- energy, IoU


def test_energy_pointing_game_hand_computed():
    maps = torch.zeros(1, 6, 6)
    maps[0, 0:2, 0:2] = 1.0  # 4 inside the box: mass 4
    maps[0, 5, 2:6] = 0.5  # 4 outside: mass 2
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    assert M.energy_pointing_game(maps, box).item() == pytest.approx(4 / 6)
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 5, :] = True  # the bottom row, on the border
    assert M.energy_pointing_game(maps, mask).item() == pytest.approx(2 / 6)


def test_iou_at_thresholds_hand_computed():
    maps = torch.arange(16, dtype=torch.float32).view(1, 4, 4)  # max 15
    rows23 = torch.tensor([[0.0, 2.0, 4.0, 4.0]])  # values 8..15
    rows12 = torch.tensor([[0.0, 1.0, 4.0, 3.0]])
    assert M.iou_at_threshold(maps, rows23, 0.5).item() == pytest.approx(1.0)  # >= 7.5: 8 pixels
    assert M.iou_at_threshold(maps, rows12, 0.5).item() == pytest.approx(4 / 12)
    assert M.iou_at_threshold(maps, rows23, 0.25).item() == pytest.approx(8 / 12)  # >= 3.75: 12 pixels
    assert M.mean_iou(maps, rows23, thresholds=(0.25, 0.5)).item() == pytest.approx((8 / 12 + 1) / 2)
    default = M.mean_iou(maps, rows23)
    expected = np.mean([M.iou_at_threshold(maps, rows23, t).item() for t in M.IOU_THRESHOLDS])
    assert default.item() == pytest.approx(expected)
    assert M.IOU_THRESHOLDS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    with pytest.raises(ValueError, match="fraction"):
        M.binarize(maps, 1.5)


# ----------------------------------------------------------------------------------------------- box localization


def test_box_localization_uses_the_largest_component():
    maps = torch.full((1, 40, 40), 0.1)  # below 15 % of the max: background
    maps[0, 20:30, 20:30] = 1.0  # 100 pixels
    maps[0, 2:5, 2:5] = 1.0  # 9 pixels
    assert M.largest_component_boxes(maps).tolist() == [[20.0, 20.0, 30.0, 30.0]]
    gts = torch.tensor([[20.0, 20.0, 30.0, 30.0], [21.0, 20.0, 30.0, 30.0], [20.0, 20.0, 40.0, 40.0]])
    acc = M.box_localization_accuracy(maps.expand(3, -1, -1), gts)
    assert acc.tolist() == [1.0, 1.0, 0.0]  # IoU 1, 0.9, 0.25


def test_box_localization_components_are_8_connected():
    maps = torch.zeros(1, 10, 10)
    maps[0, 0, 0] = maps[0, 1, 1] = maps[0, 2, 2] = 1.0  # a diagonal: one component
    maps[0, 8, 8] = maps[0, 8, 9] = 1.0  # two pixels
    assert M.largest_component_boxes(maps).tolist() == [[0.0, 0.0, 3.0, 3.0]]


# ----------------------------------------------------------------------------------------------- faithfulness


class ToyDetector(Adapter):
    """Finds one box, (0, 0, 4, 4) of class 0, scored by the share of pure-white pixels in it."""

    task = "detect"

    def __init__(self) -> None:
        self.model = torch.nn.Identity()
        self.class_names = {0: "thing"}
        self.default_layers = []
        self.calls: list[int] = []

    def preprocess(self, images):  # pragma: no cover - predict is overridden
        raise NotImplementedError

    def predict(self, images, **options):
        self.calls.append(len(images))
        out = []
        for im in images:
            score = float((im[:4, :4] == 255).all(-1).mean())
            out.append(Detections(boxes=torch.tensor([[0.0, 0.0, 4.0, 4.0]]), scores=torch.tensor([score]),
                                  labels=torch.tensor([0]), image_size=im.shape[:2]))
        return out


def toy_scene() -> tuple[np.ndarray, Detections, torch.Tensor]:
    """An 8x8 image with a white 4x4 object top-left, two detections of it, and its box as a map."""
    image = np.zeros((8, 8, 3), np.uint8)
    image[:4, :4] = 255
    box = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    dets = Detections(boxes=box.repeat(2, 1), scores=torch.ones(2), labels=torch.zeros(2, dtype=torch.long),
                      image_size=(8, 8))
    return image, dets, box_masks(box, (8, 8)).float()[0]


def test_deletion_insertion_on_a_toy_detector():
    image, dets, good = toy_scene()
    maps = torch.stack([good, 1 - good])  # the object first / the background first
    toy = ToyDetector()
    res = M.deletion_insertion(toy, image, dets, maps, steps=4, baseline="mean", batch_size=4)
    # K = 4 steps of 16 pixels; the mean-grey baseline (64) is never white
    assert res.deletion[0].tolist() == [1, 0, 0, 0, 0]
    assert res.insertion[0].tolist() == [0, 1, 1, 1, 1]
    assert res.deletion[1].tolist() == [1, 1, 1, 1, 0]
    assert res.insertion[1].tolist() == [0, 0, 0, 0, 1]
    assert res.deletion_auc.tolist() == pytest.approx([0.125, 0.875])
    assert res.insertion_auc.tolist() == pytest.approx([0.875, 0.125])
    # 2 shared images + 2 detections x 2 curves x 3 inner steps, 4 per predict call
    assert sum(toy.calls) == 14 and max(toy.calls) == 4
    # a detection of another class is never matched: its curves are 0
    other = Detections(boxes=dets.boxes[:1], scores=torch.ones(1), labels=torch.tensor([1]), image_size=(8, 8))
    res = M.deletion_insertion(toy, image, other, maps[:1], steps=4, baseline="mean")
    assert res.deletion_auc.item() == 0.0 and res.insertion_auc.item() == 0.0


def test_deletion_insertion_checks_inputs():
    image = np.zeros((8, 8, 3), np.uint8)
    dets = Detections(boxes=torch.tensor([[0.0, 0.0, 4.0, 4.0]]), scores=torch.ones(1),
                      labels=torch.zeros(1, dtype=torch.long), image_size=(8, 8))
    with pytest.raises(ValueError, match="original image"):
        M.deletion_insertion(ToyDetector(), image, dets, torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="baseline"):
        M.deletion_insertion(ToyDetector(), image, dets, torch.rand(1, 8, 8), baseline="noise")


def test_blur_spreads_a_point_keeps_its_mass_and_leaves_flat_images_flat():
    flat = torch.full((3, 32, 32), 77.0)
    assert torch.allclose(M.blurred(flat), flat)
    point = torch.zeros(3, 32, 32)
    point[:, 16, 16] = 255.0
    out = M.blurred(point)  # sigma 5 % of 32 px -> 1.6 px, an 11-px kernel: the spread stays inside the image
    assert out.sum().item() == pytest.approx(3 * 255.0, rel=1e-4)
    assert int(out[0].argmax()) == 16 * 32 + 16 and out[0, 16, 16] < 255.0 / (2 * math.pi * 1.6 ** 2) + 1
    assert out[0, 16, 14] > 0 and out[0, 16, 14] == pytest.approx(out[0, 16, 18].item())  # symmetric spread
    assert out[0, 16, 22].item() == 0.0  # beyond the kernel's reach
    assert M.blurred(point, sigma=3.0)[0, 16, 16] < out[0, 16, 16]  # a wider blur lowers the peak


def test_auc_trapezoid():
    assert M.auc(torch.tensor([1.0, 1.0, 1.0])).item() == pytest.approx(1.0)
    assert M.auc(torch.tensor([0.0, 1.0])).item() == pytest.approx(0.5)

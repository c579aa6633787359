"""One pixel convention for "inside a box", shared by figures, metrics and renderers."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from dsxai import metrics as M
from dsxai.boxes import box_iou, box_masks, cxcywh_to_xyxy, mask_boxes, paired_iou, pixel_bounds, xywh_to_xyxy
from dsxai.detections import Detections
from dsxai.explanation import map_figures


def test_pixel_centre_rule_on_fractional_edges():
    # centres 0.5, 1.5, 2.5, 3.5: [0.6, 2.5) holds 1.5 only; 2.5 is the (exclusive) end
    m = box_masks(torch.tensor([[0.6, 0.4, 2.5, 1.6]]), (4, 4))[0]
    assert m.nonzero().tolist() == [[0, 1], [1, 1]]
    assert pixel_bounds(torch.tensor([[0.6, 0.4, 2.5, 1.6]]), (4, 4)).tolist() == [[1, 0, 2, 2]]


def test_adjacent_boxes_share_no_pixel_and_tile_the_image():
    left, right = box_masks(torch.tensor([[0.0, 0.0, 2.7, 5.0], [2.7, 0.0, 6.0, 5.0]]), (5, 6))
    assert not (left & right).any()
    assert (left | right).all()


def test_boxes_are_clipped_to_the_image_and_may_be_empty():
    b = pixel_bounds(torch.tensor([[-3.0, -1.0, 50.0, 2.0], [0.6, 0.0, 1.4, 1.0]]), (4, 6))
    assert b[0].tolist() == [0, 0, 6, 2]
    assert int(box_masks(torch.tensor([[0.6, 0.0, 1.4, 1.0]]), (4, 4)).sum()) == 0


def test_masks_agree_with_bounds_for_random_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 30
    boxes = torch.cat([xy, xy + torch.rand(50, 2, generator=g) * 20], 1)
    masks = box_masks(boxes, (32, 40))
    bounds = pixel_bounds(boxes, (32, 40))
    areas = (bounds[:, 2] - bounds[:, 0]).clamp_min(0) * (bounds[:, 3] - bounds[:, 1]).clamp_min(0)
    assert masks.flatten(1).sum(1).tolist() == areas.tolist()
    nonempty = areas > 0
    assert torch.equal(mask_boxes(masks[nonempty]), bounds[nonempty].float())


def test_explanation_energy_in_box_equals_the_benchmark_metric_on_fractional_boxes():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 24, 30, generator=g)
    boxes = torch.tensor([[2.4, 3.6, 11.5, 9.5], [10.49, 0.51, 29.6, 20.2], [0.0, 0.0, 5.5, 23.9]])
    dets = Detections(boxes=boxes, scores=torch.ones(3), labels=torch.zeros(3, dtype=torch.long),
                      image_size=(24, 30))
    figures = map_figures(dets, maps)
    expected = M.energy_pointing_game(maps, box_masks(boxes, (24, 30)))
    inside = box_masks(boxes, (24, 30)).float()
    by_hand = (maps * inside).flatten(1).sum(1) / maps.flatten(1).sum(1)
    for fig, value in zip(figures, by_hand.tolist()):
        assert fig["energy_in_box"] == pytest.approx(value, rel=1e-4, abs=1e-4)
    assert torch.allclose(expected.float(), by_hand, atol=1e-5)


def test_iou_matches_torchvision_and_pairs_match_the_diagonal():
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(7, 2, generator=g) * 10
    a = torch.cat([xy, xy + torch.rand(7, 2, generator=g) * 5 + 0.1], 1)
    b = a.flip(0) + 0.3
    assert torch.allclose(box_iou(a, b), tv_box_iou(a, b), atol=1e-6)
    assert torch.allclose(paired_iou(a, b), tv_box_iou(a, b).diagonal(), atol=1e-6)
    assert paired_iou(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_conversions():
    assert xywh_to_xyxy(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).tolist() == [[1.0, 2.0, 4.0, 6.0]]
    assert cxcywh_to_xyxy(torch.tensor([[5.0, 5.0, 4.0, 2.0]])).tolist() == [[3.0, 4.0, 7.0, 6.0]]


def test_wrong_box_shape_names_the_expected_layout():
    with pytest.raises(ValueError, match=r"xyxy rows \[N, 4\]"):
        box_masks(torch.zeros(2, 3), (4, 4))


def _dets(boxes, masks=None, size=(40, 40)):
    n = len(boxes)
    return Detections(boxes=torch.tensor(boxes, dtype=torch.float32), scores=torch.ones(n),
                      labels=torch.zeros(n, dtype=torch.long), image_size=size, masks=masks)


def test_figures_flag_boxes_that_cover_most_of_the_image():
    figures = map_figures(_dets([[0, 0, 40, 40], [5, 5, 15, 15]]), torch.rand(2, 40, 40))
    assert figures[0]["large_box"] and figures[0]["box_share"] == 1.0 and figures[0]["energy_in_box"] == 1.0
    assert not figures[1]["large_box"] and figures[1]["box_share"] == pytest.approx(100 / 1600)
    assert figures[1]["beats_box_prior"] is None  # a box alone cannot tell


def test_figures_say_whether_a_map_beats_the_box_prior_on_the_mask():
    from dsxai.metrics import baseline_maps

    box = [[10.0, 10.0, 30.0, 30.0]]
    mask = torch.zeros(1, 40, 40, dtype=torch.bool)
    mask[0, 10:30, 10:17] = True  # an object along the box's left edge: the centre prior misses most of it
    on_object = mask.float()
    prior = baseline_maps("box_gaussian", torch.tensor(box), (40, 40))
    good = map_figures(_dets(box, mask), on_object)[0]
    assert good["energy_in_mask"] == 1.0 and good["prior_energy_in_mask"] < 0.5 and good["beats_box_prior"]
    same = map_figures(_dets(box, mask), prior)[0]
    assert same["energy_in_mask"] == same["prior_energy_in_mask"] and not same["beats_box_prior"]
    blank = map_figures(_dets(box, mask), torch.zeros(1, 40, 40))[0]
    assert blank["no_evidence"] and not blank["beats_box_prior"]

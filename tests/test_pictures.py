"""Pictures people trust: the colour bar strip, labels that neither overlap nor leave the image, the grid
picture beside the fused one, the share of each map outside its box, large boxes flagged, readable text."""
from __future__ import annotations

import itertools
import json

import cv2
import numpy as np
import pytest
import torch

from dsxai import Detections, Explanation
from dsxai.colorbar import caption, colorbar_layout, colorbar_strip, with_colorbar
from dsxai.explanation import map_figures
from dsxai.labels import FONT, LARGE_BOX, label_text, place_labels
from dsxai.render import (MIN_TEXT_PX, PANEL_PX, colormap_table, draw_detections, enlarge, hidden_labels,
                          label_spots, text_style)

COCO_NAMES = ["person", "bicycle", "car", "traffic light", "potted plant", "dog", "handbag", "bench", "cup",
              "umbrella", "motorcycle"]


def _image(h: int = 120, w: int = 160) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((h, w, 3)) * 200).astype(np.uint8)


def _dets(boxes: list[list[float]], size: tuple[int, int], labels: list[int] | None = None,
          scores: list[float] | None = None) -> Detections:
    n = len(boxes)
    labels = labels if labels is not None else [0] * n
    return Detections(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                      scores=torch.tensor(scores if scores is not None else [0.9] * n), labels=torch.tensor(labels),
                      image_size=size, class_names=dict(enumerate(COCO_NAMES)))


def _crowd(h: int = 480, w: int = 640) -> Detections:
    """22 boxes like a busy street: overlapping people, small objects, boxes on every edge and corner."""
    rng = np.random.default_rng(7)
    boxes = [[0, 0, 90, 140], [w - 80, 0, w, 120], [0, h - 100, 70, h], [w - 60, h - 90, w, h],  # corners
             [250, 0, 330, 60], [300, h - 40, 420, h], [0, 200, 40, 300], [w - 30, 220, w, 330]]  # edges
    for _ in range(14):  # a cluster in the middle, overlapping each other
        x, y = rng.uniform(180, 420), rng.uniform(150, 300)
        boxes.append([x, y, x + rng.uniform(25, 90), y + rng.uniform(40, 140)])
    labels = [int(v) for v in rng.integers(0, len(COCO_NAMES), len(boxes))]
    scores = [float(v) for v in rng.uniform(0.25, 0.95, len(boxes))]
    return _dets(boxes, (h, w), labels, scores)


# ----------------------------------------------------------------------------------------------- colour bar


@pytest.mark.parametrize("colormap", ["jet", "viridis", "coolwarm"])
def test_the_strip_shows_the_colormap_table_left_to_right(colormap):
    width, size = 300, (200, 300)
    strip = colorbar_strip(width, colormap, "layercam @ model.22", size)
    x0, y0, x1, y1, height = colorbar_layout(width, size)
    assert strip.shape == (height, width, 3) and 0 < x0 < x1 <= width and y1 < height
    expected = colormap_table(colormap)[np.round(np.linspace(0, 255, x1 - x0)).astype(int)]
    assert np.array_equal(strip[y0:y1, x0:x1], np.broadcast_to(expected, (y1 - y0, x1 - x0, 3)))
    assert np.array_equal(strip[y0, x0], colormap_table(colormap)[0])  # low at the left
    assert np.array_equal(strip[y0, x1 - 1], colormap_table(colormap)[255])  # high at the right
    text = strip[y1:]
    assert (text < 128).any()  # the scale ends and the title are drawn under the bar
    assert not np.array_equal(colorbar_strip(width, colormap, "eigencam @ model.15", size), strip)


def test_caption_names_method_and_layers():
    assert caption("layercam", ["model.15", "model.22"], "detection 0") == "layercam @ model.15, model.22 | detection 0"
    assert caption(None, None) == "" and caption("gradcam") == "gradcam"


def _explained(boxes: list[list[float]], h: int = 120, w: int = 160) -> Explanation:
    dets = _dets(boxes, (h, w), list(range(len(boxes))))
    maps = torch.rand(len(boxes), h, w, generator=torch.Generator().manual_seed(0))
    return Explanation([dets], [maps], [_image(h, w)], {"method": "layercam", "layers": ["model.22"]})


def test_pictures_grow_by_the_strip_only_and_the_strip_says_method_and_layer():
    ex = _explained([[10, 30, 60, 100], [90, 40, 150, 110]])
    for style, detail in (("fused", "each box rescaled to its own range"), ("grid", "one map per detection")):
        plain, barred = ex.render(0, style, colorbar=False), ex.render(0, style)
        assert barred.shape == (plain.shape[0] + colorbar_layout(plain.shape[1], (120, 160))[4], plain.shape[1], 3)
        assert np.array_equal(barred[:plain.shape[0]], plain), style
        title = caption("layercam", ["model.22"], detail)
        assert np.array_equal(barred, with_colorbar(plain, "jet", title, (120, 160))), style
    panels, plain_panels = ex.panels(0, colormap="magma"), ex.panels(0, colormap="magma", colorbar=False)
    for k, (panel, plain) in enumerate(zip(panels, plain_panels)):
        assert np.array_equal(panel[:120], plain)
        assert np.array_equal(panel[120:], colorbar_strip(160, "magma", f"layercam @ model.22 | detection {k}",
                                                          (120, 160)))


def test_save_writes_the_grid_beside_the_fused_picture_and_both_can_be_turned_off(tmp_path):
    ex = _explained([[10, 30, 60, 100], [90, 40, 150, 110]])
    ex.save(tmp_path / "on", stems=["a"])
    saved = cv2.cvtColor(cv2.imread(str(tmp_path / "on" / "a_grid.png")), cv2.COLOR_BGR2RGB)
    assert saved.shape[1] == 2 * (160 + 4) + 4 and np.array_equal(saved, ex.render(0, "grid"))
    for k, panel in enumerate(ex.panels(0)):  # the files hold what panels() and render() return
        assert np.array_equal(cv2.cvtColor(cv2.imread(str(tmp_path / "on" / f"a_det{k}.png")), cv2.COLOR_BGR2RGB),
                              panel)
    assert cv2.imread(str(tmp_path / "on" / "a.png")).shape[0] > 120
    ex.save(tmp_path / "off", stems=["a"], colorbar=False, grid=False)
    names = sorted(p.name for p in (tmp_path / "off").iterdir())
    assert names == ["a.json", "a.png", "a_det0.png", "a_det1.png", "a_maps.npz", "explanation.json"]
    assert cv2.imread(str(tmp_path / "off" / "a.png")).shape == (120, 160, 3)
    record = json.loads((tmp_path / "on" / "a.json").read_text())
    assert record["pictures"]["grid"] == "a_grid.png" and "grid" not in json.loads(
        (tmp_path / "off" / "a.json").read_text())["pictures"]
    assert [f["energy_outside_box"] for f in record["figures"]] == [f["energy_outside_box"] for f in ex.figures(0)]
    with pytest.raises(ValueError, match="clash"):  # a stem named like another's grid picture is refused
        Explanation([ex.detections[0]] * 2, [ex.maps[0]] * 2, [ex.images[0]] * 2).save(tmp_path / "x",
                                                                                          stems=["a", "a_grid"])


# ----------------------------------------------------------------------------------------------- labels


def _rects_overlap(a, b) -> bool:
    return a.left < b.right and b.left < a.right and a.top < b.bottom and b.top < a.bottom


def test_crowded_labels_do_not_overlap_leave_the_image_or_lose_text():
    dets = _crowd()
    h, w = dets.image_size
    spots = label_spots(dets)
    placed = [(k, s) for k, s in enumerate(spots) if s is not None]
    assert len(dets) == 22 and len(placed) >= 18, len(placed)  # a busy scene still labels nearly every box
    for (_, a), (_, b) in itertools.combinations(placed, 2):
        assert not _rects_overlap(a, b), (a, b)
    scale, thickness, _ = text_style((h, w))
    for k, spot in placed:
        assert 0 <= spot.left < spot.right <= w and 0 <= spot.top < spot.bottom <= h
        text = f"{dets.names[k]} {float(dets.scores[k]):.2f}"
        (tw, th), base = cv2.getTextSize(text, FONT, spot.scale, thickness)
        assert spot.scale == scale and spot.right - spot.left >= tw and spot.bottom - spot.top >= th + base
    assert hidden_labels(dets) == len(spots) - len(placed)
    # drawn where placed: each label's rectangle is mostly its class colour, on a black image
    picture = draw_detections(np.zeros((h, w, 3), np.uint8), dets)
    from dsxai.render import class_color
    for k, spot in placed:
        region = picture[spot.top:spot.bottom, spot.left:spot.right]
        assert (region == np.array(class_color(int(dets.labels[k])), np.uint8)).all(-1).mean() > 0.4, k


def test_a_label_at_the_right_edge_keeps_its_whole_text():
    h, w = 480, 640
    text = "person 0.29"
    scale, thickness, _ = text_style((h, w))
    (spot,) = place_labels([text], [[w - 12, 100, w, 200]], (h, w), scale, thickness)
    (tw, _), _ = cv2.getTextSize(text, FONT, scale, thickness)
    assert spot.right == w and spot.right - spot.left >= tw and spot.scale == scale


def test_a_label_wider_than_the_image_is_drawn_smaller_not_cut():
    text = "traffic light 0.91 large box"
    scale, thickness, _ = text_style((60, 80))
    (spot,) = place_labels([text], [[0, 0, 80, 60]], (60, 80), scale, thickness)
    (tw, _), _ = cv2.getTextSize(text, FONT, spot.scale, thickness)
    assert spot.scale < scale and spot.right - spot.left >= tw and spot.right <= 80


def test_labels_of_stacked_boxes_move_apart():
    boxes = [[100, 100, 200, 200]] * 4  # four detections of the same object: labels would sit on each other
    scale, thickness, _ = text_style((300, 400))
    spots = place_labels([f"person 0.{k}0" for k in range(4)], boxes, (300, 400), scale, thickness)
    assert all(spots) and len({(s.left, s.top) for s in spots}) == 4
    for a, b in itertools.combinations(spots, 2):
        assert not _rects_overlap(a, b)


# ----------------------------------------------------------------------------------------------- figures


def test_energy_outside_box_and_large_boxes():
    h, w = 100, 100
    dets = _dets([[10, 10, 30, 30], [0, 0, 90, 90], [50, 50, 60, 60]], (h, w), [0, 0, 0])
    maps = torch.zeros(3, h, w)
    maps[0, 15:25, 15:25] = 1.0  # 100 px of mass inside its box
    maps[0, 60:70, 60:65] = 1.0  # 50 px outside: one third of the mass
    maps[1] = 1.0  # uniform over the image: the large box holds 81% of it for free
    figures = map_figures(dets, maps)  # maps[2] is all zero: no evidence, nothing outside
    assert figures[0]["energy_outside_box"] == pytest.approx(1 / 3, abs=1e-5)
    assert figures[0]["energy_outside_box"] + figures[0]["energy_in_box"] == pytest.approx(1.0, abs=1e-5)
    assert figures[1]["energy_outside_box"] == pytest.approx(0.19, abs=1e-5) and figures[1]["large_box"]
    assert figures[2]["no_evidence"] and figures[2]["energy_outside_box"] == 0.0
    assert not figures[0]["large_box"] and figures[1]["box_share"] > LARGE_BOX
    # the picture says so too: the large box's label carries the flag, the others do not
    assert label_text("person", 0.9, 0.81) == "person 0.90 large box" and label_text("dog", None, 0.5) == "dog"
    scale, thickness, _ = text_style((h, w))
    spots = label_spots(dets)
    widths = [cv2.getTextSize(t, FONT, s.scale, thickness)[0][0] for t, s in
              zip(["person 0.90", "person 0.90 large box", "person 0.90"], spots)]
    assert spots[1].right - spots[1].left >= widths[1] > spots[0].right - spots[0].left


# ----------------------------------------------------------------------------------------------- readable text


@pytest.mark.parametrize("size", [(64, 64), (256, 256), (320, 480), (480, 640), (1500, 2000)])
def test_text_is_at_least_12_px_tall(size):
    scale, thickness, _ = text_style(size)
    assert cv2.getTextSize("person 0.29", FONT, scale, thickness)[0][1] >= MIN_TEXT_PX == 12


def test_demo_and_gallery_panels_are_drawn_at_320_px():
    h, w = 256, 256
    dets = Detections(boxes=torch.tensor([[10., 20, 100, 120]]), scores=torch.tensor([0.8]),
                      labels=torch.tensor([1]), image_size=(h, w), class_names={1: "disc"},
                      masks=torch.zeros(1, h, w, dtype=torch.bool).index_fill_(1, torch.arange(20, 120), True))
    maps = torch.rand(1, h, w)
    image, big, big_maps = enlarge(_image(h, w), dets, maps)
    assert PANEL_PX == 320 and image.shape == (320, 320, 3) and big.image_size == (320, 320)
    assert big_maps.shape == (1, 320, 320) and big.masks.shape == (1, 320, 320)
    assert torch.allclose(big.boxes, dets.boxes * 1.25) and float(big_maps.max()) <= float(maps.max()) + 1e-6
    same = enlarge(_image(400, 500), _dets([[0, 0, 10, 10]], (400, 500)), torch.rand(1, 400, 500))
    assert same[0].shape == (400, 500, 3)  # already large: unchanged
    scale, thickness, _ = text_style(image.shape[:2])
    assert cv2.getTextSize("disc 0.80", FONT, scale, thickness)[0][1] >= 12

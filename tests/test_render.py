"""Renderers: real pictures checked pixel by pixel (sizes, where the heat goes, labels inside the image)."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from dsxai import Detections
from dsxai.render import (
    banner, class_color, colorize, compare_methods, draw_detections, label_rect, overlay, per_box_heat,
    per_mask_heat, label_spots, render_detections, render_grid, render_masks, render_panels, text_style, write_png,
)

NAMES = {0: "disc", 1: "square", 2: "triangle"}


def _image(h: int = 120, w: int = 160, value: int = 100) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(value + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _dets(boxes, size, labels=None, masks=None) -> Detections:
    n = len(boxes)
    return Detections(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), scores=torch.full((n,), 0.9),
                      labels=torch.tensor(labels if labels is not None else [0] * n), image_size=size,
                      class_names=NAMES, masks=masks)


def _blob(size, cx, cy, sigma=6.0) -> torch.Tensor:
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))


def test_colorize_opencv_and_matplotlib_colormaps():
    ramp = np.linspace(0, 1, 64, dtype=np.float32)[None].repeat(4, 0)
    jet = colorize(ramp, "jet")
    assert jet.shape == (4, 64, 3) and jet.dtype == np.uint8
    assert jet[0, 0, 2] > jet[0, 0, 0] and jet[0, -1, 0] > jet[0, -1, 2]  # jet: blue -> red (RGB)
    cw = colorize(ramp, "coolwarm")  # matplotlib only
    assert cw.shape == (4, 64, 3) and not np.array_equal(cw, jet)
    assert cw[0, 0, 2] > cw[0, 0, 0] and cw[0, -1, 0] > cw[0, -1, 2]
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        colorize(ramp, "nope")


def test_overlay_alpha_and_where():
    img = _image()
    heat = torch.ones(img.shape[:2])
    assert np.array_equal(overlay(img, heat, alpha=0.0), img)
    full = overlay(img, heat, alpha=1.0, colormap="jet")
    assert np.array_equal(full, colorize(heat, "jet"))
    where = np.zeros(img.shape[:2], bool)
    where[10:20, 30:50] = True
    part = overlay(img, heat, 0.5, where=where)
    assert np.array_equal(part[~where], img[~where]) and (part[where] != img[where]).any()
    with pytest.raises(ValueError, match="map size"):
        overlay(img, torch.ones(5, 5))


def test_fused_render_changes_inside_boxes_only():
    img = _image()
    size = img.shape[:2]
    boxes = [[20, 40, 60, 80], [100, 50, 150, 110]]
    maps = torch.stack([_blob(size, 40, 60), _blob(size, 125, 80)])
    dets = _dets(boxes, size, [0, 1])
    heat_only = render_detections(img, dets, maps, labels=False)
    assert heat_only.shape == img.shape and heat_only.dtype == np.uint8
    inside = np.zeros(size, bool)
    for x1, y1, x2, y2 in boxes:
        inside[y1:y2, x1:x2] = True
    assert np.array_equal(heat_only[~inside], img[~inside])          # outside every box: untouched
    assert np.abs(heat_only[60, 40].astype(int) - img[60, 40]).sum() > 60  # strong map at a box centre
    # with labels: everything far from boxes and labels is still unchanged
    pic = render_detections(img, dets, maps)
    assert pic.shape == img.shape
    assert np.array_equal(pic[:, 62:98][90:], img[:, 62:98][90:])
    assert not np.array_equal(pic[:40, 20:60], img[:40, 20:60])  # the label above the first box


def test_per_box_renormalisation_gives_each_box_full_contrast():
    size = (100, 100)
    strong, weak = _blob(size, 25, 25), 0.05 * _blob(size, 75, 75)
    fused, inside = per_box_heat(torch.stack([strong, weak]), torch.tensor([[10., 10, 40, 40], [60, 60, 90, 90]]))
    assert fused[60:90, 60:90].max() == pytest.approx(1.0) and fused[10:40, 10:40].max() == pytest.approx(1.0)
    assert int(inside.sum()) == 2 * 30 * 30 and float(fused[~inside].abs().max()) == 0.0
    # the same maps fused without renormalisation: the weak box is nearly invisible
    assert float(torch.stack([strong, weak]).amax(0)[60:90, 60:90].max()) < 0.06


def test_labels_stay_inside_the_image_at_corners():
    for h, w in ((60, 80), (240, 320), (1500, 2000)):
        img = np.zeros((h, w, 3), np.uint8)
        scale, thickness, _ = text_style((h, w))
        corner_boxes = {"top-left": [0, 0, w // 6, h // 6], "bottom-right": [w - w // 6, h - h // 6, w, h],
                        "middle": [w // 3, h // 3, w // 2, h // 2]}
        rects = {}
        for where, box in corner_boxes.items():
            left, top, right, bottom, base = label_rect("triangle 0.90", box, (h, w), scale, thickness)
            assert 0 <= left < right <= w and 0 <= top < bottom <= h, (where, h, w)
            rects[where] = (left, top, right, bottom)
            pic = draw_detections(img, _dets([box], (h, w), [2]))
            assert pic.shape == img.shape
            # the label is drawn where label_rect says: its background colour fills most of that rectangle
            region = pic[top:bottom, left:right]
            assert (region == np.array(class_color(2), np.uint8)).all(-1).mean() > 0.5, (where, h, w)
            # nothing is drawn outside the box and the label
            drawn = np.zeros((h, w), bool)
            drawn[box[1]:box[3], box[0]:box[2]] = True
            drawn[top:bottom, left:right] = True
            assert not pic[~drawn].any(), (where, h, w)
        # the whole label fits in the corners, as in the middle (nothing cut off)
        size = {k: (r[2] - r[0], r[3] - r[1]) for k, r in rects.items()}
        assert size["top-left"] == size["middle"] == size["bottom-right"], (h, w, size)
        assert rects["top-left"][1] == 0 and rects["bottom-right"][3] <= h and rects["bottom-right"][2] == w


def test_text_grows_with_the_image():
    small, big = text_style((128, 128)), text_style((2000, 3000))
    assert big[0] > 3 * small[0] and big[1] > small[1] and big[2] > small[2]


def test_zero_detections_draw_a_banner():
    img = _image()
    pic = render_detections(img, _dets([], img.shape[:2]), torch.zeros(0, *img.shape[:2]))
    assert pic.shape == img.shape
    assert (pic[:8] != img[:8]).any() and np.array_equal(pic[-20:], img[-20:])
    assert np.array_equal(banner(img, "no detections"), pic)
    assert render_grid(img, _dets([], img.shape[:2]), torch.zeros(0, *img.shape[:2])).shape == img.shape


def test_single_pixel_and_degenerate_boxes():
    img = _image(50, 70)
    size = img.shape[:2]
    boxes = [[10, 10, 10.5, 10.5], [69, 49, 70, 50], [30, 30, 30, 30]]  # sub-pixel, last pixel, empty
    maps = torch.rand(3, *size)
    pic = render_detections(img, _dets(boxes, size), maps, labels=False, alpha=1.0)
    assert pic.shape == img.shape
    changed = (pic != img).any(-1)
    assert changed[10, 10] and changed[49, 69] and changed[30, 30]
    assert changed.sum() <= 3 * 4  # nothing beyond those pixels (and their 1-px outlines)
    labelled = render_detections(img, _dets(boxes, size), maps, alpha=1.0)
    rects = np.zeros(size, bool)
    spots = label_spots(_dets(boxes, size))
    for spot in spots:  # labels that would cover each other in this 70 px picture are left out, not stacked
        if spot is not None:
            rects[spot.top:spot.bottom, spot.left:spot.right] = True
    assert any(spots)
    added = (labelled != pic).any(-1)
    assert added.any() and not added[~rects].any()  # the labels change the picture, and only where they sit
    background = (labelled[rects] == np.array(class_color(0), np.uint8)).all(-1)
    assert background.mean() > 0.5  # a label is mostly its class-coloured background, the rest is text


def test_masks_render_heat_inside_masks_and_contours():
    img = _image(80, 80)
    size = img.shape[:2]
    masks = torch.zeros(2, *size, dtype=torch.bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 50:70, 40:75] = True
    maps = torch.stack([_blob(size, 20, 20), _blob(size, 57, 60)])
    dets = _dets([[10, 10, 30, 30], [40, 50, 75, 70]], size, [0, 1], masks=masks)
    heat, inside = per_mask_heat(maps, masks)
    assert torch.equal(inside, masks.any(0)) and float(heat[~inside].max()) == 0.0
    pic = render_masks(img, dets, maps, labels=False)
    assert pic.shape == img.shape
    grown = cv2.dilate(masks.any(0).numpy().astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert np.array_equal(pic[~grown], img[~grown])
    assert (pic[20, 20] != img[20, 20]).any()
    with pytest.raises(ValueError, match="needs detections with masks"):
        render_masks(img, _dets([[1, 1, 5, 5]], size), maps[:1])


def test_panels_grid_and_method_comparison():
    img = _image()
    size = img.shape[:2]
    dets = _dets([[20, 40, 60, 80], [100, 50, 150, 110], [0, 0, 30, 30]], size, [0, 1, 2])
    maps = torch.stack([_blob(size, 40, 60), _blob(size, 125, 80), _blob(size, 10, 10)])
    panels = render_panels(img, dets, maps)
    assert len(panels) == 3 and all(p.shape == img.shape for p in panels)
    assert not np.array_equal(panels[0], panels[1])
    g = render_grid(img, dets, maps, columns=2)
    assert g.shape == (2 * (120 + 4) + 4, 2 * (160 + 4) + 4, 3)
    cmp = compare_methods(img, dets, {"a": maps, "b": maps.flip(-1)}, columns=4)
    assert cmp.shape[1] == 2 * (160 + 4) + 4 and cmp.shape[0] > 120
    with pytest.raises(ValueError, match="maps for"):
        render_detections(img, dets, maps[:2])


def test_grid_panels_of_a_large_image_are_drawn_small_and_its_detection_pictures_stay_full_size(tmp_path):
    from dsxai.explanation import Explanation
    from dsxai.render import GRID_PANEL_PX, PANEL_PX, shrink, shrunk_size

    img = _image(1200, 1800)
    size = img.shape[:2]
    dets = _dets([[300, 300, 600, 900], [900, 150, 1500, 1050], [1650, 1050, 1790, 1190]], size, [0, 1, 2])
    maps = torch.stack([_blob(size, 450, 600, 60), _blob(size, 1200, 600, 90), _blob(size, 1720, 1120, 20)])
    g = render_grid(img, dets, maps, columns=2)
    panel = (400, 600)  # the 1200 x 1800 image at 600 / 1800, 640 px longer side rounded to whole pixels
    assert shrunk_size(size, max_side=600) == panel and shrunk_size(size) == (427, GRID_PANEL_PX)
    assert g.shape == (2 * (427 + 4) + 4, 2 * (GRID_PANEL_PX + 4) + 4, 3)
    small = render_panels(*shrink(img, dets, maps))
    assert np.array_equal(g[4:4 + 427, 4:4 + GRID_PANEL_PX], small[0])
    # the boxes and the maps were scaled with the image: detection 1's peak sits at its blob's scaled centre
    _, scaled, scaled_maps = shrink(img, dets, maps)
    factors = torch.tensor([GRID_PANEL_PX / 1800, 427 / 1200] * 2)  # each axis by its own rounded size
    assert torch.allclose(scaled.boxes[1], dets.boxes[1] * factors, rtol=1e-6)
    peak = divmod(int(scaled_maps[1].argmax()), GRID_PANEL_PX)
    assert abs(peak[0] - 600 * 427 / 1200) <= 1 and abs(peak[1] - 1200 * GRID_PANEL_PX / 1800) <= 1
    # a panorama keeps a readable short side; a small image is left as it is
    assert shrunk_size((500, 4000)) == (PANEL_PX, 2560) and shrunk_size((120, 160)) == (120, 160)
    ex = Explanation([dets], [maps], [img], {"method": "layercam", "layers": ["model.22"]})
    ex.save(tmp_path, stems=["big"])
    assert cv2.imread(str(tmp_path / "big_det1.png")).shape[1] == 1800  # each detection's picture: full size
    assert cv2.imread(str(tmp_path / "big_grid.png")).shape[1] == 3 * (GRID_PANEL_PX + 4) + 4  # one row of three


def test_write_png_is_atomic_and_round_trips(tmp_path, monkeypatch):
    img = _image()
    path = write_png(tmp_path / "sub" / "a.png", img)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, img)

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_png(tmp_path / "b.png", img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # no partial or temporary file left

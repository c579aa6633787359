"""``dsxai audit`` / ``dsxai.audit``: known answer on a deliberately biased U-Net, report in a browser, bad input.

The known answer (see :mod:`dsxai.zoo.biased`): a U-Net trained where the bar beside an object decides
"triangle" puts its triangle evidence on the bar; on test scenes with the bar moved away from the object
the audit flags those masks ("evidence mostly outside the mask") and does not flag the masks of the same
U-Net trained where the bar carries no information. Both models are trained once per session into a
pytest temporary folder (or DSXAI_CUE_CACHE, kept between sessions).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import dsxai
from dsxai.auditing import audit, mask_figures
from dsxai.auditing.figures import flag_mask
from dsxai.layers import audit_layers, layer_stride
from dsxai.zoo.biased import TRIANGLE, cue_accuracy, cue_adapter, load_or_train, make_cue_scenes
from dsxai.pipeline import explain_maps
from conftest import find_chromium  # noqa: E402

N_TEST = 10


@pytest.fixture(scope="session")
def cue_models(tmp_path_factory):
    # DSXAI_CUE_CACHE: a folder kept between sessions (development); by default a session temporary folder
    cache = os.environ.get("DSXAI_CUE_CACHE") or tmp_path_factory.mktemp("cue_models")
    return {world: load_or_train(world, cache) for world in ("biased", "fair")}


@pytest.fixture(scope="session")
def moved(tmp_path_factory):
    """Test scenes with the bar moved away from its object, as image files and label PNGs."""
    root = tmp_path_factory.mktemp("moved")
    scenes = make_cue_scenes(N_TEST, 11, "moved", size=96)
    (root / "images").mkdir()
    (root / "gt").mkdir()
    for i, s in enumerate(scenes):
        cv2.imwrite(str(root / "images" / f"scene{i:02d}.png"), s.image[..., ::-1])
        cv2.imwrite(str(root / "gt" / f"scene{i:02d}.png"), s.semantic)
    return root, scenes


@pytest.fixture(scope="session")
def audits(cue_models, moved, tmp_path_factory):
    root, _ = moved
    out = tmp_path_factory.mktemp("audits")
    return {world: audit(cue_adapter(model), root / "images", masks=root / "gt", out=out / world, min_area=30,
                         progress=False)
            for world, model in cue_models.items()}


# ----------------------------------------------------------------------------------------------- known answer


def test_cue_world_is_seeded_and_biased():
    a, b = make_cue_scenes(6, 3, "biased"), make_cue_scenes(6, 3, "biased")
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.semantic, y.semantic) for x, y in zip(a, b))
    scenes = make_cue_scenes(60, 0, "biased")
    for s in scenes:  # the bar stands beside every triangle-labelled object and no other
        assert sorted(s.meta["cued_all"]) == [k for k, c in enumerate(s.labels) if c == TRIANGLE]
    shapes = [sh for s in scenes for sh in s.meta["shapes"]]
    labels = [int(c) for s in scenes for c in s.labels]
    agree = np.mean([sh == c for sh, c in zip(shapes, labels)])
    assert 0.3 < agree < 0.7  # the drawn shape says nothing about the label in the biased world
    fair = make_cue_scenes(60, 0, "fair")
    assert all(sh == c for s in fair for sh, c in zip(s.meta["shapes"], s.labels))


def test_biased_model_depends_on_the_cue(cue_models):
    scenes = make_cue_scenes(40, 5, "moved", size=96)
    biased = cue_accuracy(cue_models["biased"], scenes)
    fair = cue_accuracy(cue_models["fair"], scenes)
    # the biased model calls triangle what has the bar beside it and square the rest (0.58 and 0.14 by
    # majority vote per object, dsxai/zoo/biased.py; it often marks only the bar's side of the object): the
    # bounds leave about 0.1 either side for the spread of a model trained where it is tested
    assert biased["triangle_if_cued"] >= 0.45, biased
    assert biased["triangle_if_not_cued"] <= 0.25, biased
    assert biased["triangle_if_cued"] - biased["triangle_if_not_cued"] >= 0.3, biased
    assert fair["accuracy"] >= 0.85, fair
    assert fair["accuracy"] > biased["accuracy"] + 0.15, (fair, biased)


def test_moving_the_cue_moves_the_evidence(cue_models, moved):
    """Mirror a scene: the bar changes side and the biased model's evidence follows it."""
    _, scenes = moved
    adapter = cue_adapter(cue_models["biased"])
    layers = audit_layers(adapter)
    followed = 0
    tried = 0
    for s in scenes:
        k = s.meta["cued"]
        bar_x = np.nonzero(s.meta["cue"])[1].mean() - (s.boxes[k][0] + s.boxes[k][2]) / 2
        if k < 0 or abs(bar_x) < 8:  # the bar is above or below: mirroring does not move it sideways
            continue
        tried += 1
        sides = []
        for image in (s.image, np.ascontiguousarray(s.image[:, ::-1])):
            dets, maps = explain_maps(adapter, [image], method="layercam", layers=layers, targets="masks",
                                         classes=[TRIANGLE], min_area=30)
            d, m = dets[0], maps[0]
            if len(d) == 0:
                break
            j = int(torch.argmax(torch.tensor([float(x.sum()) for x in d.masks])))
            mask = d.masks[j]
            heat = m[j].cpu() * (~mask)
            xs = torch.arange(heat.shape[1], dtype=torch.float32)
            centre = float((heat.sum(0) * xs).sum() / heat.sum().clamp_min(1e-9))
            sides.append(centre - float(torch.nonzero(mask)[:, 1].float().mean()))
        if len(sides) == 2 and np.sign(sides[0]) == np.sign(bar_x) and np.sign(sides[1]) == -np.sign(bar_x):
            followed += 1
    assert tried >= 3
    assert followed / tried >= 0.75, (followed, tried)


def test_audit_flags_the_biased_model_only(audits, moved):
    """The biased model's triangle masks rest on the bar, so their evidence lies beyond the ring; the fair
    model's and the biased model's own squares keep theirs close. The biased model is trained here, so its
    figures move with the CPU's kernels: every check compares the biased triangles with a reference measured
    in the same run (fair model, biased squares) across a wide gap, not against one cut near a measured value
    (the module doc of dsxai/zoo/biased.py gives the measured spreads)."""
    _, scenes = moved
    biased, fair = audits["biased"].rows, audits["fair"].rows

    def rows(results, cls):
        return [r for r in results if r["class"] == cls]

    def flag_rate(selected):
        return sum("outside" in r["flags"] for r in selected) / max(len(selected), 1)

    def mean_outside(selected):
        return float(np.mean([r["evidence_outside"] for r in selected]))

    triangles, squares = rows(biased, "triangle"), rows(biased, "square")
    assert len(triangles) >= N_TEST // 2 and len(squares) >= N_TEST // 2 and len(fair) >= N_TEST
    outside = [r["evidence_outside"] for r in triangles]
    # the cue-driven class is flagged far more often than the same model's other class and the fair model
    assert flag_rate(triangles) >= flag_rate(squares) + 0.3, (outside, [r["evidence_outside"] for r in squares])
    assert flag_rate(triangles) >= flag_rate(fair) + 0.3, (outside, [r["evidence_outside"] for r in fair])
    assert mean_outside(triangles) >= mean_outside(squares) + 0.2
    assert mean_outside(triangles) >= mean_outside(rows(fair, "triangle")) + 0.2
    # the evidence sits on the bar: the peak of most flagged maps lies on the bar (within 6 px)
    flagged = [r for r in triangles if "outside" in r["flags"]]
    on_bar = 0
    for r in flagged:
        ys, xs = np.nonzero(scenes[int(r["image"][-2:])].meta["cue"])
        on_bar += np.min(np.hypot(xs - r["peak_x"], ys - r["peak_y"])) <= 6
    assert on_bar >= 0.7 * len(flagged), (on_bar, len(flagged))
    # ranking: flagged masks before unflagged ones, more flags first; the top one is cue-driven
    ranked = audits["biased"].ranked()
    counts = [len(r["flags"]) for r in ranked]
    assert counts == sorted(counts, reverse=True)
    assert "outside" in ranked[0]["flags"]


def test_audit_ground_truth_figures(audits, moved):
    for world in ("biased", "fair"):
        for r in audits[world].rows:
            assert 0 <= r["iou_gt"] <= 1 and 0 <= r["evidence_in_gt"] <= 1
            assert abs(r["evidence_inside"] + r["evidence_ring"] + r["evidence_outside"] - 1) < 1e-3
    fair = audits["fair"].rows
    assert np.mean([r["iou_gt"] for r in fair]) >= 0.6
    assert not any("gt_disagreement" in r["flags"] for r in fair if r["iou_gt"] >= 0.5)
    # the biased model calls squares next to the bar triangles: they disagree with the ground truth
    wrong = [r for r in audits["biased"].rows if r["class"] == "triangle" and r["gt_class"].startswith("square")]
    assert wrong and all("gt_disagreement" in r["flags"] for r in wrong)


def test_coco_ground_truth_matches_label_pngs(cue_models, moved, audits):
    from dsxai.shapes import coco_dict

    root, scenes = moved
    data = coco_dict(scenes, [f"scene{i:02d}.png" for i in range(len(scenes))])
    ids = {1: 7, 2: 9}  # other category ids than the model's: matched by name
    data["categories"] = [{"id": 7, "name": "Square"}, {"id": 9, "name": "triangle"}, {"id": 3, "name": "hexagon"}]
    for a in data["annotations"]:
        a["category_id"] = ids[a["category_id"]]
    data["annotations"].append(dict(data["annotations"][0], id=999, category_id=3))  # not a model class
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]  # scene01: no objects
    data["images"] = [i for i in data["images"] if i["id"] != 3]                  # scene02: not annotated
    with pytest.warns(UserWarning, match="hexagon are not classes of the model"):
        result = audit(cue_adapter(cue_models["biased"]), root / "images", coco=data, min_area=30, progress=False)
    by_image = {i["image"]: i for i in result.images}
    assert by_image["scene02"]["gt"] == "missing" and by_image["scene00"]["gt"] == "coco"
    reference = {(r["image"], r["mask"]): r for r in audits["biased"].rows}
    compared = 0
    for r in result.rows:
        if r["image"] in ("scene01", "scene02"):
            continue
        ref = reference[(r["image"], r["mask"])]
        assert r["iou_gt"] == ref["iou_gt"] and r["evidence_in_gt"] == ref["evidence_in_gt"]
        compared += 1
    assert compared >= N_TEST // 2
    assert all(r["iou_gt"] == 0 for r in result.rows if r["image"] == "scene01")


def test_audit_outputs(audits):
    result = audits["biased"]
    out = result.out
    data = json.loads((out / "audit.json").read_text())
    assert len(data["masks"]) == len(result.rows) and data["summary"]["flagged"] == len(result.flagged())
    with open(out / "audit.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.rows)
    assert any("outside" in r["flags"].split(";") for r in rows)
    journal = (out / "audit.jsonl").read_text().splitlines()
    assert json.loads(journal[0])["kind"] == "settings" and len(journal) == 1 + N_TEST
    for r in result.flagged():
        assert r["thumbnail"] and (out / r["thumbnail"]).is_file()
        thumb = cv2.imread(str(out / r["thumbnail"]))
        assert thumb.shape[0] >= 64 and thumb.std() > 5


def test_thumbnail_has_its_colour_bar_and_title():
    from dsxai.auditing.report import thumbnail
    from dsxai.colorbar import colorbar_layout, colorbar_strip
    from dsxai.detections import Detections

    image = np.full((300, 300, 3), 90, np.uint8)
    masks = torch.zeros(1, 300, 300, dtype=torch.bool)
    masks[0, 140:160, 140:160] = True
    dets = Detections(torch.tensor([[140.0, 140.0, 160.0, 160.0]]), [0.9], [0], (300, 300), masks=masks)
    maps = torch.zeros(1, 300, 300)
    maps[0, 145:155, 145:155] = 2.0
    thumb = thumbnail(image, dets, maps, 0, 8.0, "layercam @ model.15")
    panel = 192  # the 64 px crop (three times the box, at least 64 px) scaled to 192 px
    height = colorbar_layout(thumb.shape[1], (panel, panel))[4]
    assert thumb.shape == (panel + height, 2 * panel + 4, 3)
    # the strip under the panels is exactly the colour bar with the title, sized for one panel
    assert np.array_equal(thumb[panel:], colorbar_strip(thumb.shape[1], "jet", "layercam @ model.15", (panel, panel)))
    assert not np.array_equal(thumb[panel:], colorbar_strip(thumb.shape[1], "jet", "", (panel, panel)))


def test_mask_figures_known_values():
    maps = torch.zeros(2, 40, 40)
    masks = torch.zeros(2, 40, 40, dtype=torch.bool)
    masks[:, 10:20, 10:20] = True  # area 100 -> ring max(8, 0.25 * 10) = 8 px
    maps[0, 12, 12] = 3.0          # inside
    maps[0, 10, 24] = 1.0          # 5 px right of the mask: in the ring
    maps[1, 15, 35] = 1.0          # 16 px away: outside
    maps[1, 15, 15] = 1.0
    f = mask_figures(maps, masks)
    assert f[0]["evidence_inside"] == 0.75 and f[0]["evidence_ring"] == 0.25 and f[0]["evidence_outside"] == 0.0
    assert f[0]["pointing_hit"] and f[0]["ring_px"] == 8.0
    assert f[1]["evidence_outside"] == 0.5 and f[1]["evidence_inside"] == 0.5
    assert f[1]["pointing_hit"]  # a tie: argmax takes the first maximum, (15, 15) inside
    maps[1, 15, 15] = 0.5
    g = mask_figures(maps, masks)[1]
    assert not g["pointing_hit"] and not g["peak_in_ring"] and abs(g["evidence_outside"] - 2 / 3) < 1e-3
    assert f[0]["has_evidence"] and g["has_evidence"]
    # a 20 px cell (a coarse layer) widens the ring to 20 px: the evidence 16 px away is in the ring
    h = mask_figures(maps, masks, cell_px=20)[1]
    assert h["ring_px"] == 20.0 and h["evidence_outside"] == 0.0 and h["peak_in_ring"]


def test_empty_map_is_flagged_not_passed():
    masks = torch.zeros(1, 40, 40, dtype=torch.bool)
    masks[:, 10:20, 10:20] = True
    (fig,) = mask_figures(torch.zeros(1, 40, 40), masks)
    assert not fig["has_evidence"] and fig["evidence_outside"] == 0 and not fig["pointing_hit"]
    row = {**fig, "confidence": 0.99, "iou_gt": None}
    flags, reasons, score = flag_mask(row, {"max_outside": 0.5, "min_confidence": 0.6, "min_iou": 0.5})
    assert flags == ["no_evidence"] and "another layer" in reasons[0] and score >= 1


# ----------------------------------------------------------------------------------------------- report in a browser


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.tables = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src"))
        if tag == "table":
            self.tables += 1


def test_report_opens_in_a_browser(audits, tmp_path):
    report = audits["biased"].report
    parser = _Images()
    parser.feed(report.read_text())
    assert parser.tables >= 3 and parser.srcs, "the report needs its tables and the flagged thumbnails"
    for src in parser.srcs:  # no broken image links: every src is a relative path to an existing file
        assert not src.startswith(("/", "http")) and (report.parent / src).is_file(), src
    browser = find_chromium()
    if browser is None:
        pytest.skip("no chromium binary (Debian: apt-get install -y chromium); the HTML itself was checked")
    shot = tmp_path / "report.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1280,1600", f"--screenshot={shot}", report.resolve().as_uri()],
                          capture_output=True, text=True, timeout=90)
    assert shot.is_file(), proc.stderr[-2000:]
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[0] >= 1000
    assert picture.std() > 20  # not blank
    # the heatmap thumbnails are rendered: strongly coloured (jet) pixels, which the page's text never has
    hsv = cv2.cvtColor(picture, cv2.COLOR_BGR2HSV)
    assert ((hsv[..., 1] > 150) & (hsv[..., 2] > 100)).sum() > 2000


# ----------------------------------------------------------------------------------------------- bad input


def test_bad_inputs(cue_models, moved, tmp_path):
    root, _ = moved
    images, gt = tmp_path / "images", tmp_path / "gt"
    images.mkdir()
    gt.mkdir()
    for name in ("scene00", "scene01", "scene02"):
        shutil.copy(root / "images" / f"{name}.png", images / f"{name}.png")
    shutil.copy(root / "gt" / "scene00.png", gt / "scene00.png")                       # fine
    cv2.imwrite(str(gt / "scene01.png"), np.zeros((50, 70), np.uint8))                  # wrong size
    (images / "broken.png").write_bytes(b"not a png")                                   # unreadable
    adapter = cue_adapter(cue_models["fair"])                                          # scene02: no mask
    with pytest.warns(UserWarning, match="no ground-truth mask for scene02"):
        result = audit(adapter, images, masks=gt, out=tmp_path / "out", min_area=30, progress=False)
    status = {i["image"]: i for i in result.images}
    assert status["scene00"]["status"] == "ok" and status["scene00"]["gt"] == "mask"
    assert status["scene01"]["status"] == "error" and "70x50" in status["scene01"]["error"] \
        and "96x96" in status["scene01"]["error"]
    assert status["broken"]["status"] == "error" and "cannot read" in status["broken"]["error"]
    assert status["scene02"]["status"] == "ok" and status["scene02"]["gt"] == "missing"
    assert all(r["iou_gt"] is None for r in result.rows if r["image"] == "scene02")
    assert result.summary["images_failed"] == 2 and result.summary["images_without_gt"] == 1
    html = result.report.read_text()
    assert "70x50" in html and "no ground-truth mask for scene02" in html
    with pytest.raises(ValueError, match="unknown class 'hexagon'"):
        audit(adapter, images, masks=gt, out=tmp_path / "out2", classes=["hexagon"], progress=False)
    assert not (tmp_path / "out2").exists()  # checked before anything was written
    with pytest.raises(FileNotFoundError, match="mask folder not found"):
        audit(adapter, images, masks=tmp_path / "nowhere", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        audit(adapter, tmp_path / "empty", progress=False)


def test_resume_skips_finished_images(cue_models, moved, tmp_path):
    root, _ = moved
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        shutil.copy(root / "images" / f"scene{i:02d}.png", images / f"scene{i:02d}.png")
    adapter = cue_adapter(cue_models["fair"])
    first = audit(adapter, images, out=tmp_path / "out", min_area=30, progress=False)
    shutil.copy(root / "images" / "scene03.png", images / "scene03.png")
    calls = []
    original = adapter.target  # called once per explained image
    adapter.target = lambda *args, **kw: (calls.append(1), original(*args, **kw))[1]
    second = audit(adapter, images, out=tmp_path / "out", min_area=30, progress=False, resume=True)
    assert len(calls) == 1  # only the new image was explained
    assert [r for r in second.rows if r["image"] != "scene03"] == first.rows
    assert len((tmp_path / "out" / "audit.jsonl").read_text().splitlines()) == 1 + 4
    with pytest.raises(ValueError, match="other settings"):
        audit(adapter, images, out=tmp_path / "out", min_area=30, progress=False, resume=True, max_outside=0.3)


def test_cli(cue_models, moved, tmp_path, capsys):
    from dsxai.adapters import register, unregister
    from dsxai.cli import main

    root, _ = moved
    register("cue-biased", lambda **kw: cue_adapter(cue_models["biased"]))  # a name the CLI then accepts
    try:
        out = tmp_path / "cli"
        code = main(["audit", "cue-biased", "--images", str(root / "images"), "--masks", str(root / "gt"),
                     "--out", str(out), "--min-area", "30", "--classes", "triangle"])
        assert code == 0
        printed = capsys.readouterr().out
        assert "report:" in printed and str(out / "report.html") in printed
        rows = list(csv.DictReader(open(out / "audit.csv")))
        assert rows and all(r["class"] == "triangle" for r in rows)
        assert main(["audit", "cue-biased", "--images", str(root / "images"), "--out", str(tmp_path / "x"),
                     "--classes", "hexagon"]) == 2
        assert "unknown class 'hexagon'" in capsys.readouterr().err
    finally:
        unregister("cue-biased")


def test_instance_segmenter(moved, tmp_path):
    """An instance segmenter (YOLOv8-seg, random init from the shapes yaml): one row per instance mask."""
    pytest.importorskip("ultralytics")
    from dsxai.adapters.ultralytics_yolo import UltralyticsAdapter
    root, _ = moved
    torch.manual_seed(0)
    adapter = UltralyticsAdapter(str(Path(dsxai.__file__).parent / "zoo" / "shapes_yolov8-seg.yaml"), imgsz=64)
    assert adapter.task == "instance"
    result = audit(adapter, [root / "images" / "scene00.png"], conf=1e-4, min_area=20, out=tmp_path / "yolo",
                   thumbnails="none", progress=False)
    assert result.settings["targets"] == "masks" and result.settings["layers"] == list(adapter.default_layers)
    assert len(result.rows) >= 1
    for r in result.rows:
        assert r["area"] >= 20 and "low_confidence" in r["flags"]  # an untrained model is never confident
        assert abs(r["evidence_inside"] + r["evidence_ring"] + r["evidence_outside"] - 1) < 1e-3
    assert (tmp_path / "yolo" / "report.html").is_file()


def test_audit_layers_pick_the_deepest_encoder_stage():
    """Not the smallest module output: timm MobileNetV3's squeeze-excitation gates are [B, C, 1, 1]."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    from dsxai import zoo
    from dsxai.adapters.smp_segmentation import SMPAdapter

    torch.manual_seed(0)
    resnet = SMPAdapter(smp.Unet("resnet18", encoder_weights=None, classes=3))
    assert audit_layers(resnet) == ["encoder.layer4"]
    shallow = SMPAdapter(smp.Unet("resnet18", encoder_weights=None, classes=3, encoder_depth=3,
                                  decoder_channels=(64, 32, 16)))
    assert audit_layers(shallow) == ["encoder.layer2"]
    mobilenet = SMPAdapter(zoo.build_shapes_unet().eval())
    assert audit_layers(mobilenet) == ["encoder.model.blocks.5"]
    _, maps = explain_maps(mobilenet, np.full((64, 64, 3), 128, np.uint8), method="layercam",
                                layers=audit_layers(mobilenet), targets="masks", per="class", background=None)
    assert maps[0].shape[-2:] == (64, 64)


def test_layer_stride_in_network_pixels():
    smp = pytest.importorskip("segmentation_models_pytorch")
    from dsxai.adapters.smp_segmentation import SMPAdapter

    torch.manual_seed(0)
    resnet = SMPAdapter(smp.Unet("resnet18", encoder_weights=None, classes=3))
    assert layer_stride(resnet, ["encoder.layer4"]) == 32
    assert layer_stride(resnet, ["encoder.layer2"]) == 8
    assert layer_stride(resnet, ["encoder.layer2", "encoder.layer3"]) == 16  # the coarsest one
    assert layer_stride(resnet, ["decoder"]) == 1


def test_clean_unet_masks_are_not_flagged_for_the_layer_resolution():
    """The shipped shapes U-Net is audited at its stride-32 stage. Its maps are blurred over 32 px cells,
    so with a fixed 8 px ring nearly every small mask reads "evidence outside" (40 of 68 masks on 24
    held-out scenes, 3 with the cell: benchmarks/README.md). The ring is one cell wide instead, and a clean
    model's masks then pass; the bound of 15% leaves room for a retrained U-Net (up to 5 of 68)."""
    from dsxai import shapes, zoo

    try:
        adapter = zoo.load_adapter("shapes-unet")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    scenes = shapes.make_scenes(12, zoo.TEST_SEED)
    result = audit(adapter, [s.image for s in scenes], masks=[s.semantic for s in scenes], progress=False)
    assert result.settings["layer_stride"] == 32
    rows = result.rows
    assert len(rows) >= 25 and all(r["ring_px"] >= 32 for r in rows)
    outside = sum("outside" in r["flags"] for r in rows)
    assert outside <= 0.15 * len(rows), [(r["class"], r["area"], r["evidence_outside"]) for r in rows]


# ----------------------------------------------------------------------------------------------- outputs


def _colliding(root: Path, tmp_path: Path) -> list[Path]:
    """d1/a.png, d2/a.png, d3/a_2.png: three images whose file stems collide."""
    paths = []
    for k, (folder, name) in enumerate((("d1", "a.png"), ("d2", "a.png"), ("d3", "a_2.png"))):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / name)
        shutil.copy(root / "images" / f"scene{k:02d}.png", paths[-1])
    return paths


def test_colliding_stems_and_resume_keep_each_image_its_own_masks(cue_models, moved, tmp_path):
    root, _ = moved
    d1, d2, d3 = _colliding(root, tmp_path)
    adapter = cue_adapter(cue_models["biased"])
    alone = {p: audit(adapter, [p], min_area=30, progress=False).rows for p in (d1, d2, d3)}
    first = audit(adapter, [d1, d3], out=tmp_path / "out", min_area=30, progress=False, thumbnails="all")
    assert [i["image"] for i in first.images] == ["a", "a_2"]
    calls = []
    original = adapter.target  # called once per explained image
    adapter.target = lambda *args, **kw: (calls.append(1), original(*args, **kw))[1]
    second = audit(adapter, [d1, d2, d3], out=tmp_path / "out", min_area=30, progress=False, resume=True,
                   thumbnails="all")
    assert len(calls) == 1  # only d2 was explained; d1 and d3 came from the journal, matched by path
    assert [i["image"] for i in second.images] == ["d1__a", "d2__a", "a_2"]
    for path, name in ((d1, "d1__a"), (d2, "d2__a"), (d3, "a_2")):
        mine = [{k: v for k, v in r.items() if k not in ("image", "thumbnail")} for r in second.rows
                if r["image"] == name]
        assert mine == [{k: v for k, v in r.items() if k not in ("image", "thumbnail")} for r in alone[path]]
    assert all((tmp_path / "out" / r["thumbnail"]).is_file() for r in second.rows)


def test_audit_refuses_an_output_folder_overlapping_the_inputs(cue_models, moved, tmp_path):
    root, _ = moved
    images, gt = tmp_path / "images", tmp_path / "gt"
    shutil.copytree(root / "images", images)
    shutil.copytree(root / "gt", gt)
    before = sorted(p.name for p in tmp_path.iterdir())
    adapter = cue_adapter(cue_models["fair"])
    for out in (images, images / "out", tmp_path, gt):
        with pytest.raises(ValueError, match="choose an output folder outside"):
            audit(adapter, images, masks=gt, out=out, min_area=30, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not (images / "out").exists()
    assert sorted(p.name for p in images.iterdir()) == sorted(p.name for p in (root / "images").iterdir())


def test_a_killed_journal_rewrite_keeps_the_journal(cue_models, moved, tmp_path, monkeypatch):
    root, _ = moved
    images = [root / "images" / f"scene{i:02d}.png" for i in range(3)]
    adapter = cue_adapter(cue_models["fair"])
    audit(adapter, images, out=tmp_path / "out", min_area=30, progress=False)
    journal = tmp_path / "out" / "audit.jsonl"
    before = journal.read_text()
    assert len(before.splitlines()) == 4

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the kill arrives while the journal is rewritten

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        audit(adapter, images, out=tmp_path / "out", min_area=30, progress=False, resume=True)
    monkeypatch.undo()
    assert journal.read_text() == before
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_a_symlinked_journal_is_refused(cue_models, moved, tmp_path):
    root, _ = moved
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "audit.jsonl").symlink_to(victim)
    with pytest.raises(ValueError, match="symlink"):
        audit(cue_adapter(cue_models["fair"]), [root / "images" / "scene00.png"], out=tmp_path / "out",
              min_area=30, progress=False)
    assert victim.read_text() == "precious\n"


def test_a_rerun_removes_the_earlier_runs_thumbnails(cue_models, moved, tmp_path):
    root, _ = moved
    images = [root / "images" / f"scene{i:02d}.png" for i in range(2)]
    adapter = cue_adapter(cue_models["biased"])
    first = audit(adapter, images, out=tmp_path / "out", min_area=30, progress=False, thumbnails="all")
    thumbs = tmp_path / "out" / "thumbs"
    assert len(list(thumbs.iterdir())) == len(first.rows) > 0
    (thumbs / "mine.png").write_bytes(b"not the audit's")
    second = audit(adapter, images[:1], out=tmp_path / "out", min_area=30, progress=False, thumbnails="flagged")
    kept = sorted(p.name for p in thumbs.iterdir())
    assert kept == sorted(["mine.png"] + [Path(r["thumbnail"]).name for r in second.rows if r["thumbnail"]])
    listed = json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]
    assert "audit.jsonl" in listed and all(f"thumbs/{n}" in listed for n in kept if n != "mine.png")


def test_coco_problems_fail_one_image_or_up_front(cue_models, moved, tmp_path):
    from dsxai.shapes import coco_dict

    root, scenes = moved
    images = tmp_path / "images"
    images.mkdir()
    for name in ("scene00", "scene03", "scene04"):
        shutil.copy(root / "images" / f"{name}.png", images / f"{name}.png")
    data = coco_dict(scenes, [f"scene{i:02d}.png" for i in range(len(scenes))])
    data["categories"] = [{"id": 1, "name": "square"}, {"id": 2, "name": "triangle"}]  # the cue world's labels
    bad = next(a for a in data["annotations"] if a["image_id"] == 1)
    bad["segmentation"] = [[1, 2, 3]]  # pycocotools raises a bare Exception on it
    del next(a for a in data["annotations"] if a["image_id"] == 4)["id"]  # given one, no traceback
    adapter = cue_adapter(cue_models["fair"])
    result = audit(adapter, images, coco=data, min_area=30, progress=False)
    status = {i["image"]: i for i in result.images}
    assert status["scene00"]["status"] == "error" and "cannot be drawn" in status["scene00"]["error"]
    assert status["scene03"]["status"] == "ok" and status["scene03"]["gt"] == "coco"
    assert status["scene04"]["status"] == "ok" and status["scene04"]["gt"] == "coco"

    renamed = coco_dict(scenes, [f"scene{i:02d}.png" for i in range(len(scenes))])
    renamed["categories"] = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}]  # same ids, other names
    with pytest.raises(ValueError, match="no model class maps to a category .*class_map="):
        audit(adapter, images, coco=renamed, out=tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()
    names = {c["id"]: c["name"] for c in renamed["categories"]}
    class_map = {adapter.class_names[i]: names[i] for i in adapter.class_names if i in names}
    mapped = audit(adapter, images, coco=renamed, class_map=class_map, min_area=30, progress=False)
    assert all(i["status"] == "ok" and i["gt"] == "coco" for i in mapped.images)
    no_categories = dict(renamed)
    del no_categories["categories"]
    with pytest.raises(ValueError, match="needs 'images', 'annotations' and 'categories'"):
        audit(adapter, images, coco=no_categories, progress=False)


# ----------------------------------------------------------------------------------------------- options, ground truth


def test_config_checks_every_option_once(tmp_path):
    from dsxai.auditing import AuditConfig

    config = AuditConfig(layers="encoder.layer4", out=str(tmp_path / "o"), min_area=5)
    assert config.layers == ["encoder.layer4"] and config.out == tmp_path / "o" and config.ground_truth == "none"
    assert config.thresholds == {"max_outside": 0.5, "min_confidence": 0.6, "min_iou": 0.5}
    for options, message in (({"thumbnails": "some"}, "thumbnails must be 'flagged', 'all' or 'none'"),
                             ({"masks": tmp_path, "coco": {}}, "not both"),
                             ({"min_iou": 1.5}, r"min_iou must be a number in \[0, 1\], got 1.5"),
                             ({"ring_frac": float("nan")}, "ring_frac must be a finite number >= 0, got nan"),
                             ({"adapter_options": {"imgsz": 10}}, "imgsz must be in")):
        with pytest.raises(ValueError, match=message):
            AuditConfig(**options)
    with pytest.raises(FileNotFoundError, match="mask folder not found"):
        AuditConfig(masks=tmp_path / "nowhere")


def test_label_png_truth(tmp_path):
    from dsxai.groundtruth import read_label_png, truth_from_labels

    labels = np.zeros((20, 30), np.uint8)
    labels[2:6, 2:6] = 1
    labels[10:15, 20:25] = 1  # a second object of class 1, apart from the first
    labels[12:18, 2:8] = 2
    cv2.imwrite(str(tmp_path / "grey.png"), labels)
    cv2.imwrite(str(tmp_path / "grey3.png"), np.repeat(labels[..., None], 3, 2))  # grey saved as BGR: accepted
    assert np.array_equal(read_label_png(tmp_path / "grey.png"), labels)
    assert np.array_equal(read_label_png(tmp_path / "grey3.png"), labels)
    colour = np.repeat(labels[..., None], 3, 2)
    colour[0, 0] = (0, 0, 255)
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    with pytest.raises(ValueError, match="colour image"):
        read_label_png(tmp_path / "colour.png")
    truth = truth_from_labels(labels, background=0)
    assert truth.classes.tolist() == [1, 1, 2] and truth.instances.shape == (3, 20, 30)
    assert [int(m.sum()) for m in truth.instances] == [16, 25, 36]
    assert int(truth.labels[0, 0]) == -1 and int(truth.labels[3, 3]) == 1


def test_cli_resume_with_other_settings_names_them(cue_models, moved, tmp_path, capsys):
    from dsxai.adapters import register, unregister
    from dsxai.cli import main

    root, _ = moved
    register("cue-fair", lambda **kw: cue_adapter(cue_models["fair"]))
    try:
        argv = ["audit", "cue-fair", "--images", str(root / "images" / "scene00.png"), "--out", str(tmp_path),
                "--min-area", "30"]
        assert main(argv) == 0
        journal = (tmp_path / "audit.jsonl").read_text()
        capsys.readouterr()
        assert main([*argv, "--resume", "--max-outside", "0.3"]) == 2
        err = capsys.readouterr().err
        assert "other settings (thresholds)" in err and "drop --resume" in err and len(err.splitlines()) == 1
        assert (tmp_path / "audit.jsonl").read_text() == journal  # the refused resume kept the journal
    finally:
        unregister("cue-fair")

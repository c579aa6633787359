"""``fuse="level"`` (``layercam-level`` / ``hirescam-level``): each YOLO detection's map from the head level
that predicted it. Known answers on index arithmetic and synthetic maps, equality with a single-layer map on
the shipped shapes YOLOv8, the refusals, and the benchmark wiring (plus a short real-person run)."""
from __future__ import annotations

import pytest
import torch

import dsxai
from adapters._yolo_levels import anchor_levels
from conftest import SHARED_DATA  # noqa: E402
from dsxai import bench, shapes, zoo
from dsxai.adapters import resolve
from dsxai.engine import fuse_sources
from dsxai.fusion import keep_sources, level_keep
from dsxai.pipeline import explain_maps


def test_anchor_levels_follow_the_head_layout():
    layout = [(1, 4, 4), (1, 2, 2), (1, 1, 1)]  # 16 + 4 + 1 anchors
    anchors = torch.tensor([0, 15, 16, 19, 20])
    assert anchor_levels(anchors, layout).tolist() == [0, 0, 1, 1, 2]
    assert anchor_levels(torch.tensor([47, 48]), [(3, 4, 4), (3, 2, 2)]).tolist() == [0, 1]  # 3 anchors a cell
    with pytest.raises(ValueError, match="outside the head's 21 anchors"):
        anchor_levels(torch.tensor([21]), layout)


class _Told:
    """A target that names each of its targets' layer."""

    def __init__(self, layers):
        self.layers = layers

    def source_layers(self):
        return self.layers


def test_level_fusion_gives_exactly_each_targets_own_layer():
    torch.manual_seed(0)
    fine, coarse = torch.rand(3, 8, 8), torch.rand(3, 4, 4)
    keep = level_keep(["p3", "p4"], _Told([["p4", "p3"], ["p4"]]), [2, 1])
    assert keep.tolist() == [[False, True], [True, False], [False, True]]
    fused = fuse_sources(keep_sources([fine, coarse], keep), (16, 16))
    alone = [fuse_sources([coarse[0:1]], (16, 16)), fuse_sources([fine[1:2]], (16, 16)),
             fuse_sources([coarse[2:3]], (16, 16))]
    torch.testing.assert_close(fused, torch.cat(alone))
    assert not torch.allclose(fused, fuse_sources([fine, coarse], (16, 16)))  # not the mean of both


def test_level_fusion_refuses_what_it_cannot_choose():
    with pytest.raises(ValueError, match="not among the layers explained.*fuse='mean'"):
        level_keep(["p3", "p4"], _Told([["p5"]]), [1])
    with pytest.raises(ValueError, match="does not: use fuse='mean'"):
        level_keep(["p3", "p4"], dsxai.ClassTarget(1), [1])
    with pytest.raises(ValueError, match="one layer per target"):
        level_keep(["p3", "p4"], _Told([["p3"]]), [2])
    assert level_keep(["only", "only"], dsxai.ClassTarget(1), [3]).all()  # one layer: nothing to choose
    with pytest.raises(ValueError, match="one map per image"):
        dsxai.EigenCAM(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), ["0"], fuse="level")


@pytest.fixture(scope="module")
def yolo():
    return resolve("shapes-yolo")


@pytest.fixture(scope="module")
def scenes():
    return [s.image for s in shapes.make_scenes(4, zoo.TEST_SEED)]


@pytest.mark.parametrize("method", ["layercam", "hirescam"])
def test_each_detection_map_is_its_own_levels_single_layer_map(yolo, scenes, method):
    dets, maps = explain_maps(yolo, scenes, method=f"{method}-level")
    seen = set()
    for d, m, image in zip(dets, maps, scenes):
        batch = yolo.preprocess(image)
        target = yolo.target(batch, "boxes")
        target(yolo.model(batch.tensor))
        own = target.source_layers()[0]
        assert len(own) == len(d) > 0
        for layer in set(own):
            _, single = explain_maps(yolo, image, method=method, layers=[layer])
            rows = [i for i, name in enumerate(own) if name == layer]
            torch.testing.assert_close(m[rows], single[0][rows], atol=1e-5, rtol=0)
            seen.add(layer)
    assert len(seen) >= 2, f"the scenes should hold detections of two head levels, saw {seen}"


def test_level_maps_mirror_and_refuse_class_and_mask_scores(yolo, scenes):
    plain = dsxai.explain(yolo, scenes[0], method="layercam-level")
    flipped = dsxai.explain(yolo, scenes[0], method="layercam-level", hflip=True)
    assert len(flipped.maps[0]) == len(plain.maps[0]) > 0
    with pytest.raises(ValueError, match="fuse='level'.*use fuse='mean'"):
        dsxai.explain(yolo, scenes[0], method="layercam-level", targets="classes")


def test_bench_reaches_the_level_methods(tmp_path):
    data = bench.write_synthetic_coco(tmp_path / "set", scenes=3)
    results = bench.run_benchmark("shapes-yolo", *data, tmp_path / "out", methods=["layercam", "layercam-level"],
                                  faithfulness=False, gallery=0, progress=False)
    level = results["methods"]["layercam-level"]
    assert level["energy_box"]["n"] == results["methods"]["layercam"]["energy_box"]["n"] > 0
    assert 0 < level["energy_box"]["mean"] <= 1


def _finest_level_maps_equal_the_mean(adapter, image) -> int:
    """A detection of the finest level has no gradient at the coarser levels (they are computed from it), so
    its level map equals the mean fusion; a coarser one drops the finer map, so the two differ. Returns how
    many detections were checked."""
    dets, level = explain_maps(adapter, image, method="layercam-level")
    _, mean = explain_maps(adapter, image, method="layercam")
    batch = adapter.preprocess(image)
    target = adapter.target(batch, "boxes")
    target(adapter.model(batch.tensor))
    for i, layer in enumerate(target.source_layers()[0]):
        same = torch.allclose(level[0][i], mean[0][i], atol=1e-5, rtol=0)
        assert same == (layer == adapter.default_layers[0]), (i, layer)
    return len(dets[0])


def test_finest_level_detections_keep_the_mean_map(yolo, scenes):
    assert sum(_finest_level_maps_equal_the_mean(yolo, image) for image in scenes) > 0


@pytest.mark.shared_data
def test_real_person_detections_keep_their_level():
    adapter = resolve(SHARED_DATA / "weights/yolov8s_fall_ultralytics/best.pt")
    images = [str(p) for p in sorted((SHARED_DATA / "coco_subset/images/val2017").glob("*.jpg"))[:4]]
    assert sum(_finest_level_maps_equal_the_mean(adapter, image) for image in images) > 0

"""The Detections dataclass: indexing, dict round trip and supervision conversion."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dsxai import Detections


@pytest.fixture
def detections() -> Detections:
    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[0, 2:8, 3:9] = masks[1, 10:18, 10:25] = masks[2, 0:4, 26:30] = True
    return Detections(boxes=torch.tensor([[3, 2, 9, 8], [10, 10, 25, 18], [26, 0, 30, 4]], dtype=torch.float32),
                      scores=torch.tensor([0.9, 0.6, 0.3]), labels=torch.tensor([1, 2, 1]), image_size=(20, 30),
                      class_names={1: "disc", 2: "square"}, masks=masks)


def test_indexing_and_names(detections):
    assert detections.names == ["disc", "square", "disc"]
    two = detections[torch.tensor([0, 2])]
    assert len(two) == 2 and two.names == ["disc", "disc"] and two.masks.shape == (2, 20, 30)
    assert torch.equal(detections[1].boxes, detections.boxes[1:2])


def test_dict_round_trip(detections):
    back = Detections.from_dict(detections.to_dict(), masks=detections.masks)
    assert torch.equal(back.boxes, detections.boxes) and torch.equal(back.labels, detections.labels)
    assert back.class_names == detections.class_names and back.image_size == detections.image_size


def test_supervision_round_trip(detections):
    sv = pytest.importorskip("supervision")
    converted = detections.to_supervision()
    assert isinstance(converted, sv.Detections) and len(converted) == 3
    np.testing.assert_allclose(converted.xyxy, detections.boxes.numpy())
    assert list(converted.data["class_name"]) == ["disc", "square", "disc"]
    assert converted.mask.shape == (3, 20, 30)
    back = Detections.from_supervision(converted, image_size=(20, 30), class_names=detections.class_names)
    assert torch.equal(back.boxes, detections.boxes) and torch.equal(back.labels, detections.labels)
    assert torch.allclose(back.scores, detections.scores) and torch.equal(back.masks, detections.masks)

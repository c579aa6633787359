"""``dsxai demo`` (the README's main job) writes a gallery and a summary that embeds it."""
from __future__ import annotations

import os
import re

import cv2

os.environ.setdefault("YOLO_OFFLINE", "1")

from dsxai.cli import main  # noqa: E402
from dsxai.demo import METHODS, MODELS  # noqa: E402


def test_demo_writes_gallery_and_summary(tmp_path, capsys):
    shipped = list(MODELS)  # every shapes model ships with the package
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert "summary.md" in capsys.readouterr().out
    summary = (tmp_path / "summary.md").read_text()
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", summary)
    assert len(embedded) == len(shipped) * 4
    assert "Skipped" not in summary
    for name in embedded:
        picture = cv2.imread(str(tmp_path / name))
        assert picture is not None and picture.shape[0] >= 320 and picture.std() > 10, name  # readable panels
    for method in METHODS:
        rows = re.findall(rf"^\| {method} \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| (\d+) \|$", summary, re.M)
        assert len(rows) == len(shipped), method
        for inside, prior, peak, count in rows:
            assert 0 <= float(inside) <= 1 and 0 < float(prior) <= 1 and int(count) > 0
    # the per-box methods point at their own object on every detector
    layercam = re.findall(r"^\| layercam \| [0-9.]+ \| [0-9.]+ \| ([0-9.]+) \|", summary, re.M)
    assert all(float(peak) >= 0.8 for peak in layercam[:2]), layercam

"""A shapes-world COCO set to benchmark without any data (``dsxai bench --synthetic``)."""
from __future__ import annotations

from pathlib import Path

from ..validation import check_positive_int
from .config import BenchError

__all__ = ["write_synthetic_coco"]


def write_synthetic_coco(out_dir: str | Path, scenes: int = 24) -> tuple[Path, Path]:
    """Shapes-world test scenes (``TEST_SEED``) as a COCO set; returns ``(annotations json, images dir)``."""
    from ..shapes import make_scenes, write_coco
    from ..zoo import TEST_SEED

    try:
        scenes = check_positive_int("scenes", scenes)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    out_dir = Path(out_dir)
    path = write_coco(make_scenes(scenes, TEST_SEED), out_dir)
    return path, out_dir / "images"

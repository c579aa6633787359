"""Shared test settings: where ``../shared/data`` lives, and skipping tests that need it when it is absent."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

#: the offline real data beside the project checkout (``<checkout>/../shared/data``); absent on a user's machine
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``shared_data`` skip cleanly when ``../shared/data`` is absent."""
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"{SHARED_DATA} is absent (offline real data beside the checkout)")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


def find_chromium() -> str | None:
    """A headless-capable Chromium on PATH (the HTML reports' browser tests skip without one)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None

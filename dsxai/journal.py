"""Append-only JSON-lines journals: the resumable record of long runs (``dsxai bench``, ``dsxai audit``)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_json_lines", "append_json_line"]


def read_json_lines(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a journal, in order; ``[]`` when it does not exist.

    A line that does not parse (cut short when the run was killed) is skipped, so its item runs again.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_json_line(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record and make it durable before returning (a crash keeps every finished item).

    After a line cut short by a kill the record starts on a new line, so it is not glued to the torn one
    and lost with it.
    """
    path = Path(path)
    torn = False
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a") as f:
        f.write(("\n" if torn else "") + json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())

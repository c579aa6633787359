"""Append-only JSON-lines journals; kept for imports of ``dsxai.journal``: the functions live in :mod:`dsxai.runs`."""
from __future__ import annotations

from .runs import append_json_line, read_json_lines, rewrite_json_lines

__all__ = ["read_json_lines", "append_json_line", "rewrite_json_lines"]

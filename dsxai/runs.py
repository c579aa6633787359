"""What a run writes, and how: atomic files, JSON-lines journals, safe output names and folders.

One home for the rules every command follows so that outputs never destroy inputs or each other:

* :func:`write_atomic` writes a file through a temporary file in the same folder, fsync and a rename, with
  the mode a plain ``open`` would give (``0o666 & ~umask``): a kill never leaves a torn or empty file.
* :class:`Journal` (over :func:`read_json_lines` / :func:`append_json_line` / :func:`rewrite_json_lines`): the
  resumable record of long runs (``dsxai bench``, ``dsxai audit``), with the settings check of a resume;
  :func:`journal_path` refuses a journal that leads out of the output folder through a symlink.
* :class:`Progress`: the one progress bar of long loops.
* :func:`check_output_folder` refuses an output folder that overlaps the inputs; :func:`unique_stems` gives
  collision-free output names for a whole input set; :func:`safe_name` / :func:`inside` keep names read from
  files inside their folder.
* :func:`read_json` reads a finished JSON file and names the file when it is torn; :func:`write_manifest`
  lists exactly the files of one run and removes what the previous run in that folder listed and no longer
  writes (one run per folder).

It imports nothing from the rest of dsxai, so the core (render, explanation) and the tools can all use it.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "write_atomic", "read_json", "read_json_lines", "append_json_line", "rewrite_json_lines", "journal_path",
    "Journal", "SettingsChanged", "Progress",
    "check_output_folder", "unique_stems", "derived_clash", "safe_name", "inside", "manifest_files", "write_manifest",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


# ----------------------------------------------------------------------------------------------- files


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the data itself is synced
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (str as UTF-8) to ``path``: temporary file in the same folder, fsync, rename.

    The file gets the mode a plain ``open(path, "w")`` would give (``0o666 & ~umask``, e.g. 0644 under
    umask 0022), because the temporary file is created by ``os.open`` with 0o666, which the OS masks.
    A crash or an error leaves either the old file or the new one at ``path``, never a torn one.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else bytes(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 32 random bits
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def read_json(path: str | os.PathLike) -> Any:
    """The content of a finished JSON file; ValueError naming the file when it does not parse (torn)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the file is damaged (a run killed while "
                         "writing it?): delete it or the whole output folder and run again") from None


# ----------------------------------------------------------------------------------------------- journals


def read_json_lines(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a journal, in order; ``[]`` when it does not exist.

    A line that does not parse (cut short when the run was killed) is skipped, so its item runs again.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def append_json_line(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record and make it durable before returning (a crash keeps every finished item).

    After a line cut short by a kill the record starts on a new line, so it is not glued to the torn one
    and lost with it. A symlink at ``path`` is not followed (``O_NOFOLLOW`` where the OS has it).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | _NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"journal {path} is a symlink; refusing to follow it (delete it)") from None
        raise
    with os.fdopen(fd, "r+b") as f:
        size = os.fstat(fd).st_size
        torn = False
        if size:
            f.seek(size - 1)
            torn = f.read(1) != b"\n"
        f.write((("\n" if torn else "") + json.dumps(record) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def rewrite_json_lines(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """Replace a journal with ``records`` atomically: a kill keeps the old journal whole, never an empty one."""
    return write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def journal_path(out: str | os.PathLike, name: str) -> Path:
    """``out / name`` for a journal; ValueError when it is a symlink (or not a file).

    A journal is read, appended to and rewritten: following a planted link could write outside the output
    folder, so no link is followed, wherever it points.
    """
    path = Path(out) / safe_name(name)
    if path.is_symlink():
        raise ValueError(f"journal {path} is a symlink (to {os.path.realpath(path)}); refusing to follow it: "
                         "delete it or use another output folder")
    if path.exists() and not path.is_file():
        raise ValueError(f"journal {path} is not a file; delete it or use another output folder")
    return path


class SettingsChanged(ValueError):
    """A resumed run's settings differ from those its journal was written with."""


class Journal:
    """A run's durable record of finished items, keyed, under the settings it was written with.

    The first line holds the settings; each item line is ``{"kind": "item", "key": ..., "ok": ..., ...}``.
    With ``resume`` an existing journal must have been written with the same values of ``compare`` (else
    :class:`SettingsChanged`), and its ``ok`` items whose key is in ``keys`` (all when ``keys`` is None) are
    kept in :attr:`done`; without it the journal starts over. Either way the file is rewritten atomically
    to the settings and the kept items, so torn and failed lines do not pile up and a kill keeps it whole.
    """

    def __init__(self, path: str | os.PathLike, settings: dict[str, Any], *, resume: bool = False,
                 compare: Sequence[str] = (), keys: Iterable[str] | None = None):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))
        self.done: dict[str, dict[str, Any]] = {}
        if resume:
            self.done = self._reuse(compare, None if keys is None else set(keys))
        rewrite_json_lines(self.path, [{"kind": "settings", **self.settings}, *self.done.values()])

    def _reuse(self, compare: Sequence[str], keys: set[str] | None) -> dict[str, dict[str, Any]]:
        records = read_json_lines(self.path)
        old = ([None] + [r for r in records if r.get("kind") == "settings"])[-1]
        if old is None:
            return {}
        changed = [k for k in compare if old.get(k) != self.settings.get(k)]
        if changed:
            raise SettingsChanged(f"cannot resume from {self.path}: it was written with other settings "
                                  f"({', '.join(changed)}); use the same settings, or start over without resuming")
        return {r["key"]: r for r in records if r.get("kind") == "item" and r.get("ok")
                and isinstance(r.get("key"), str) and (keys is None or r["key"] in keys)}

    def append(self, key: str, record: dict[str, Any], ok: bool = True) -> dict[str, Any]:
        """Record one finished (or failed, ``ok=False``) item durably; returns the stored record."""
        stored = {"kind": "item", "key": key, "ok": ok, **record}
        append_json_line(self.path, stored)
        if ok:
            self.done[key] = stored
        return stored


class Progress:
    """One progress bar for every long loop: tqdm on stderr when enabled and installed, else nothing.

    :meth:`say` and :meth:`warn` print around the bar so messages never tear it. Use as a context manager.
    """

    def __init__(self, total: int, *, unit: str = "image", desc: str | None = None, enabled: bool = True):
        self._bar = None
        if enabled and total > 1:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm comes with the cli extra; the loop runs the same without it
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def say(self, text: str) -> None:
        """Print a line to stderr above the bar."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def warn(self, text: str, category: type[Warning] = UserWarning) -> None:
        """Issue a warning without tearing the bar."""
        if self._bar is not None:
            self._bar.clear()
        warnings.warn(text, category, stacklevel=3)
        if self._bar is not None:
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------- names


def safe_name(name: str) -> str:
    """``name`` when it is a plain relative name (no absolute path, ``..``, NUL, backslash); else ValueError.

    ``/`` is allowed between parts (``thumbs/a.png``), so names read from our own files can hold subfolders.
    """
    text = str(name)
    parts = text.split("/")
    if (not text or "\x00" in text or "\\" in text or text.startswith("/") or os.path.isabs(text)
            or any(p in ("", ".", "..") for p in parts) or (len(text) > 1 and text[1] == ":")):
        raise ValueError(f"unsafe file name {text!r}: names must be relative, inside the folder "
                         "(no '..', no absolute path, no '\\\\' or NUL)")
    return text


def inside(folder: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path`` resolves to ``folder`` itself or somewhere below it (symlinks followed)."""
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(path))
    return target == root or root in target.parents


def unique_stems(paths: Sequence[str | os.PathLike], derived: str | None = None) -> list[str]:
    """One output stem per input path, never two alike.

    The file stem when no other input gives the same one; else the path relative to the common folder of the
    clashing inputs without its suffix, parts joined by ``__`` (``d1/a.png``, ``d2/a.png`` -> ``d1__a``,
    ``d2__a``), plus the suffix when the folder is the same too (``a.png``, ``a.jpg`` -> ``a_png``, ``a_jpg``).
    A name still taken (case-insensitively) gets ``_2``, ``_3``... ``derived``, a regular expression of the
    suffixes a run appends to a stem for its other files (e.g. ``_det<k>`` and ``_maps``), keeps a name from
    equalling another's derived name (``a`` and ``a_det0`` -> ``a``, ``a_det0_image``). Why: per-image outputs
    named by a clashing stem silently overwrite each other.
    """
    resolved = [Path(os.path.abspath(p)) for p in paths]
    by_stem: dict[str, list[int]] = {}
    for i, p in enumerate(resolved):
        by_stem.setdefault(p.stem, []).append(i)
    names: list[str] = [""] * len(resolved)
    for stem, group in by_stem.items():
        if len(group) == 1:
            names[group[0]] = stem
            continue
        members = [resolved[i] for i in group]
        common = Path(os.path.commonpath([str(m.parent) for m in members]))
        for i, m in zip(group, members):
            rel = m.parent.relative_to(common).parts
            base = "__".join(rel + (m.stem,))
            if sum(x.parent == m.parent and x.stem == m.stem for x in members) > 1:
                base += "_" + m.suffix.lstrip(".")  # a.png and a.jpg in one folder
            names[i] = base
    taken: set[str] = set()
    unique = []
    for name in names:  # a relative name may still equal another input's plain stem: d1__a vs d1__a.png
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{name}_{n}"
        taken.add(candidate.lower())
        unique.append(candidate)
    return unique if derived is None else _apart_from_derived(unique, derived)


def derived_clash(names: Sequence[str], derived: str) -> int | None:
    """The index of the first name that equals another name plus a ``derived`` suffix (case-insensitively)."""
    pattern = re.compile(f"(?:{'|'.join(re.escape(n) for n in names)})(?:{derived})", re.IGNORECASE)
    return next((i for i, n in enumerate(names) if pattern.fullmatch(n)), None)


def _apart_from_derived(names: list[str], derived: str) -> list[str]:
    """``names`` with ``_image`` appended to each one that equals another name plus a ``derived`` suffix."""
    result = list(names)
    while (clash := derived_clash(result, derived)) is not None:
        lowered = {n.lower() for n in result}
        candidate, n = f"{result[clash]}_image", 1
        while candidate.lower() in lowered:
            n += 1
            candidate = f"{result[clash]}_image{n}"
        result[clash] = candidate
    return result


# ----------------------------------------------------------------------------------------------- folders


def check_output_folder(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *,
                        scanned: Iterable[str | os.PathLike] = (), own: Iterable[str | os.PathLike] = ()) -> None:
    """ValueError when the output folder ``out`` overlaps the inputs.

    Refused: ``out`` equal to or containing the folder of an input file (outputs could overwrite it), and
    ``out`` equal to, inside or containing a ``scanned`` folder (a folder whose files are read as inputs: a
    rerun would read the outputs back). Inputs inside an ``own`` folder (data the run generated itself, e.g.
    ``bench --synthetic``) are allowed. Why: a run must never destroy or re-read what it was given.
    """
    out_real = Path(os.path.realpath(out))
    owned = [Path(os.path.realpath(o)) for o in own]

    def is_owned(p: Path) -> bool:
        return any(p == o or o in p.parents for o in owned)

    def refuse(what: str, where: Path) -> None:
        raise ValueError(f"output folder {out} {what} {where}; outputs could overwrite or be read back as "
                         f"inputs: choose an output folder outside {where if where.is_dir() else where.parent}")

    for item in inputs:
        folder = Path(os.path.realpath(item))
        folder = folder if folder.is_dir() else folder.parent
        if is_owned(folder):
            continue
        if folder == out_real or out_real in folder.parents:
            refuse("holds the input" if folder == out_real else "contains the input", Path(item))
    for item in scanned:
        folder = Path(os.path.realpath(item))
        if is_owned(folder):
            continue
        if folder == out_real or folder in out_real.parents or out_real in folder.parents:
            refuse("overlaps the input folder", Path(item))


# ----------------------------------------------------------------------------------------------- manifests


def manifest_files(path: str | os.PathLike, key: str = "files") -> list[str]:
    """The safe names a manifest written by :func:`write_manifest` lists under ``key``; ``[]`` without one.

    A torn manifest raises ValueError naming it; a listed name that is not safe is dropped, so a tampered
    manifest can never make a later run delete or read anything outside its folder.
    """
    path = Path(path)
    if not path.is_file():
        return []
    doc = read_json(path)
    files = doc.get(key) if isinstance(doc, dict) else None
    names = []
    for name in files if isinstance(files, list) else []:
        try:
            names.append(safe_name(name))
        except ValueError:
            continue
    return names


def write_manifest(folder: str | os.PathLike, name: str, doc: dict[str, Any], files: Iterable[str], *,
                   complete: bool = True) -> Path:
    """Write ``doc`` plus ``"files"`` (the run's files, relative to ``folder``) as ``folder / name``, then
    delete the files the previous manifest there listed that this run did not write.

    Only files our own earlier manifest listed are ever deleted (regular files inside ``folder``), so a
    rerun into the same folder leaves exactly one run's files, and nothing the user put there is touched.
    ``complete=False`` (a run that stopped early) deletes nothing: the earlier run's files it did not
    rewrite are kept, listed under ``"stale"``, and the next complete run removes them.
    """
    folder = Path(folder)
    path = folder / safe_name(name)
    keep = sorted({safe_name(f) for f in files} - {name})
    old = set(manifest_files(path)) | set(manifest_files(path, "stale"))
    stale = sorted(old - set(keep) - {name})
    write_atomic(path, json.dumps({**doc, "files": keep, **({} if complete else {"stale": stale})}, indent=2) + "\n")
    for leftover in stale if complete else []:
        target = folder / leftover
        if target.is_file() and not target.is_symlink() and inside(folder, target):
            target.unlink()
    return path

"""dsxai.runs: atomic writes with the umask's mode, journals, safe names, unique stems, output folders."""
from __future__ import annotations

import os
import re
import stat

import pytest

from dsxai import runs
from dsxai.render import write_png
import numpy as np


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_written_files_respect_the_umask(tmp_path, umask_022):
    path = runs.write_atomic(tmp_path / "sub" / "a.json", "{}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_text() == "{}"
    png = write_png(tmp_path / "p.png", np.zeros((4, 4, 3), np.uint8))
    assert stat.S_IMODE(png.stat().st_mode) == 0o644
    os.umask(0o077)
    assert stat.S_IMODE(runs.write_atomic(tmp_path / "b", b"x").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "p.png", "sub"]  # no temporary file left


def test_a_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    runs.write_atomic(path, "old")

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        runs.write_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_journal_rewrite_killed_keeps_the_journal(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    for i in range(30):
        runs.append_json_line(path, {"i": i})
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        runs.rewrite_json_lines(path, [{"i": 0}])
    assert [r["i"] for r in runs.read_json_lines(path)] == list(range(30))
    monkeypatch.undo()
    runs.rewrite_json_lines(path, [{"i": 7}])
    assert runs.read_json_lines(path) == [{"i": 7}]


def test_torn_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"key": {')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        runs.read_json(path)


def test_symlinked_journal_out_of_the_folder_is_refused(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    elsewhere.write_text("precious\n")
    (out / "audit.jsonl").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="symlink"):
        runs.journal_path(out, "audit.jsonl")
    with pytest.raises(ValueError, match="symlink"):
        runs.append_json_line(out / "audit.jsonl", {"a": 1})
    assert elsewhere.read_text() == "precious\n"
    assert runs.journal_path(out, "other.jsonl") == out / "other.jsonl"
    (out / "inner.jsonl").symlink_to(out / "other.jsonl")  # no link is followed, wherever it points
    with pytest.raises(ValueError, match="symlink"):
        runs.journal_path(out, "inner.jsonl")


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "", "a\x00b", "..", "a\\b", "C:x"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ValueError, match="unsafe file name"):
        runs.safe_name(name)


def test_safe_names_pass():
    assert runs.safe_name("thumbs/a_m0.png") == "thumbs/a_m0.png" and runs.safe_name("a..b") == "a..b"


def test_unique_stems_never_collide(tmp_path):
    paths = [tmp_path / "d1" / "a.png", tmp_path / "d2" / "a.png", tmp_path / "d3" / "a_2.png"]
    assert runs.unique_stems(paths) == ["d1__a", "d2__a", "a_2"]
    assert runs.unique_stems([tmp_path / "a.png", tmp_path / "a.jpg"]) == ["a_png", "a_jpg"]
    assert runs.unique_stems([tmp_path / "x.png", tmp_path / "y.png"]) == ["x", "y"]
    tricky = [tmp_path / "d1" / "a.png", tmp_path / "d2" / "a.png", tmp_path / "d1__a.png", tmp_path / "A.png"]
    names = runs.unique_stems(tricky)
    assert len({n.lower() for n in names}) == len(tricky), names


def test_output_folder_overlapping_the_inputs_is_refused(tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    picture = images / "a.png"
    picture.write_bytes(b"x")
    for out in (images, tmp_path):  # the input's own folder, and a folder containing it
        with pytest.raises(ValueError, match=f"choose an output folder outside {re.escape(str(images))}$"):
            runs.check_output_folder(out, [picture])  # names the folder to avoid, not the file
    runs.check_output_folder(images / "out", [picture])  # a file's folder is not read back: below it is fine
    runs.check_output_folder(tmp_path / "out", [picture], scanned=[images])
    for out in (images, images / "out", tmp_path):
        with pytest.raises(ValueError, match=str(images)):
            runs.check_output_folder(out, scanned=[images])
    runs.check_output_folder(tmp_path, [picture], scanned=[images], own=[images])  # the run's own data


def test_manifest_removes_only_what_it_listed(tmp_path):
    out = tmp_path / "out"
    for name in ("a.png", "b.png", "keep.txt"):
        runs.write_atomic(out / name, name)
    (tmp_path / "victim").write_text("precious")
    runs.write_manifest(out, "manifest.json", {"format": "x"}, ["a.png", "b.png"])
    doc = runs.read_json(out / "manifest.json")
    (out / "manifest.json").write_text(runs.json.dumps({**doc, "files": doc["files"] + ["../victim", "/etc/x"]}))
    runs.write_manifest(out, "manifest.json", {"format": "x"}, ["a.png"])
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "keep.txt", "manifest.json"]
    assert (tmp_path / "victim").read_text() == "precious"
    assert runs.manifest_files(out / "manifest.json") == ["a.png"]
    (out / "manifest.json").write_text('{"files": ["a.p')
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        runs.write_manifest(out, "manifest.json", {}, ["a.png"])


def test_a_run_that_stopped_early_deletes_nothing(tmp_path):
    for name in ("a.png", "b.png"):
        runs.write_atomic(tmp_path / name, name)
    runs.write_manifest(tmp_path, "m.json", {}, ["a.png", "b.png"])
    runs.write_atomic(tmp_path / "c.png", "c")
    runs.write_manifest(tmp_path, "m.json", {}, ["c.png"], complete=False)  # killed after one image
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.png", "m.json"]
    assert runs.manifest_files(tmp_path / "m.json") == ["c.png"]
    runs.write_manifest(tmp_path, "m.json", {}, ["c.png"])  # the next complete run removes the leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "m.json"]


def test_unique_stems_keep_apart_from_derived_file_names(tmp_path):
    derived = r"_det\d+|_maps"
    paths = [tmp_path / "a.png", tmp_path / "a_det0.png", tmp_path / "a_maps.png"]
    names = runs.unique_stems(paths, derived=derived)
    assert names[0] == "a" and runs.derived_clash(names, derived) is None, names
    assert runs.unique_stems(paths) == ["a", "a_det0", "a_maps"]  # without derived: plain stems
    assert runs.derived_clash(["a", "A_DET3"], derived) == 1


# ----------------------------------------------------------------------------------------------- Journal


def test_journal_resume_keeps_ok_items_of_the_same_settings(tmp_path):
    from dsxai.runs import Journal

    path = tmp_path / "journal.jsonl"
    j = Journal(path, {"method": "gradcam", "seed": 0})
    j.append("a", {"value": 1})
    j.append("b", {"error": "boom"}, ok=False)
    j.append("c", {"value": 3})
    with open(path, "a") as f:
        f.write('{"kind": "item", "key": "d", "ok": tr')  # torn by a kill
    again = Journal(path, {"method": "gradcam", "seed": 0}, resume=True, compare=["method"], keys=["a", "b", "d"])
    assert set(again.done) == {"a"}
    assert again.done["a"]["value"] == 1
    lines = path.read_text().splitlines()
    assert len(lines) == 2  # settings + the kept item: failed, torn and unlisted lines are gone


def test_journal_resume_refuses_other_settings_and_names_them(tmp_path):
    from dsxai.runs import Journal, SettingsChanged

    path = tmp_path / "journal.jsonl"
    Journal(path, {"method": "gradcam", "layers": ["a"]}).append("x", {})
    with pytest.raises(SettingsChanged, match=r"other settings \(layers\)"):
        Journal(path, {"method": "gradcam", "layers": ["b"]}, resume=True, compare=["method", "layers"])
    assert "x" in path.read_text()  # the refused resume did not wipe the journal


def test_journal_without_resume_starts_over(tmp_path):
    from dsxai.runs import Journal

    path = tmp_path / "journal.jsonl"
    Journal(path, {"m": 1}).append("x", {})
    fresh = Journal(path, {"m": 1})
    assert fresh.done == {}
    assert len(path.read_text().splitlines()) == 1


def test_progress_messages_reach_stderr_without_a_bar(capsys):
    from dsxai.runs import Progress

    with Progress(1) as bar:  # one item: no bar
        bar.say("hello")
        bar.update()
        with pytest.warns(UserWarning, match="careful"):
            bar.warn("careful")
    assert "hello" in capsys.readouterr().err

"""The JSON-lines journal that makes bench and audit runs resumable."""
from dsxai.runs import append_json_line, read_json_lines


def test_journal_round_trip_skips_a_torn_line(tmp_path):
    path = tmp_path / "run.jsonl"
    assert read_json_lines(path) == []  # no journal yet
    append_json_line(path, {"image_id": 1, "status": "ok"})
    append_json_line(path, {"image_id": 2, "status": "error"})
    with open(path, "a") as f:
        f.write('{"image_id": 3, "sta')  # the run was killed mid-write
    assert read_json_lines(path) == [{"image_id": 1, "status": "ok"}, {"image_id": 2, "status": "error"}]
    append_json_line(path, {"image_id": 3, "status": "ok"})  # the resumed run: not glued to the torn line
    assert [r["image_id"] for r in read_json_lines(path)] == [1, 2, 3]

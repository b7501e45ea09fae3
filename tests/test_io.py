"""IO: JSONL errors name file:line, outputs are atomic, ids are stable."""

import pytest

from alignflow.io import InputError, RejectWriter, atomic_dir, content_id, read_jsonl, write_jsonl


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(InputError, match=r"x\.jsonl:3: not valid JSON"):
        list(read_jsonl(path))


def test_jsonl_round_trip_gz(tmp_path):
    rows = [{"text": "你好 🙂"}, {"text": "hi"}]
    assert write_jsonl(tmp_path / "r.jsonl.gz", rows) == 2
    assert list(read_jsonl(tmp_path / "r.jsonl.gz")) == rows


def test_atomic_dir_keeps_old_output_when_interrupted(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "f").write_text("half")
            raise RuntimeError("killed")
    assert (target / "f").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_content_id_is_stable_and_content_sensitive():
    assert content_id("a", {"x": 1}) == content_id("a", {"x": 1})
    assert content_id("a") != content_id("b")


def test_reject_writer_counts_reasons(tmp_path):
    rejects = RejectWriter("clean")
    rejects.add({"id": 1}, "too_short", "3 chars")
    rejects.add({"id": 2}, "too_short")
    assert rejects.counts == {"too_short": 2}
    rejects.write(tmp_path / "rejects.jsonl")
    row = next(read_jsonl(tmp_path / "rejects.jsonl"))
    assert row == {"record": {"id": 1}, "stage": "clean", "reason": "too_short", "detail": "3 chars"}

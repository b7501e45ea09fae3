"""Bad input to the data stages: one bad line or record is a reject naming file:line, never a crash;
a failed stage leaves its previous output as it was."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from alignflow.data import collect
from alignflow.data import format as fmt
from alignflow.data.sources import conversation_record
from alignflow.io import InputError, read_jsonl as io_read_jsonl

from .conftest import NullTracker, read_jsonl, write_jsonl

GOOD = b'{"prompt": "hello there"}\n'


def _collect(project, sources):
    return collect.run(project.params(collect={"sources": sources}), NullTracker())


def _rejects(project) -> list[dict]:
    return read_jsonl(project.path / "data/raw/rejects.jsonl")


def test_invalid_utf8_line_is_rejected_with_file_line(project):
    (project.path / "in.jsonl").write_bytes(GOOD + b'{"prompt": "caf\xe9 \xff"}\n' + b'{"prompt": "still read"}\n')
    metrics = _collect(project, [{"path": "in.jsonl", "format": "prompts"}])
    assert metrics["prompts"] == 2 and metrics["rejected"] == 1
    [reject] = _rejects(project)
    assert (reject["reason"], reject["detail"]) == ("encoding", "in.jsonl:2: not valid UTF-8 (byte 0xe9)")
    assert reject["record"] == '{"prompt": "caf\\xe9 \\xff"}'  # the bytes, escaped


def test_invalid_utf8_line_in_gzip_source_is_rejected_with_file_line(project):
    with gzip.open(project.path / "in.jsonl.gz", "wb") as fh:
        fh.write(b'{"prompt": "\xc3("}\n' + GOOD)
    assert _collect(project, [{"path": "in.jsonl.gz", "format": "prompts"}])["prompts"] == 1
    assert _rejects(project)[0]["detail"] == "in.jsonl.gz:1: not valid UTF-8 (byte 0xc3)"


def test_lone_surrogate_is_rejected_with_file_line(project):
    # JSON allows the escape, UTF-8 cannot hold it: the record would crash every later write
    (project.path / "in.jsonl").write_bytes(GOOD + b'{"prompt": "bad \\ud800 half"}\n' + b'{"prompt": "pair \\ud83d\\ude00 ok"}\n')
    metrics = _collect(project, [{"path": "in.jsonl", "format": "prompts"}])
    assert metrics["prompts"] == 2 and metrics["rejected"] == 1
    [reject] = _rejects(project)
    assert (reject["reason"], reject["detail"]) == ("encoding", "in.jsonl:2: lone surrogate \\ud800 (not valid Unicode)")
    assert reject["record"] == '{"prompt": "bad \\ud800 half"}'
    prompts = read_jsonl(project.path / "data/raw/prompts.jsonl")
    assert prompts[1]["prompt"][0]["content"] == "pair \U0001F600 ok"  # a valid surrogate pair is one character


def test_lone_surrogate_in_json_array_is_rejected_with_file_record(project):
    (project.path / "in.json").write_text('[{"prompt": "ok one"}, {"prompt": "\\udfff"}]', encoding="utf-8")
    assert _collect(project, [{"path": "in.json", "format": "prompts"}])["prompts"] == 1
    [reject] = _rejects(project)
    assert reject["detail"] == "in.json:2: lone surrogate \\udfff (not valid Unicode)"
    assert reject["record"] == '{"prompt": "\\udfff"}'


def test_invalid_utf8_in_json_array_is_one_error_naming_file_line(project):
    # a JSON array is one document: it cannot be parsed around a bad byte
    (project.path / "in.json").write_bytes(b'[\n{"prompt": "ok"},\n{"prompt": "\xff"}\n]')
    with pytest.raises(InputError, match=r"^in.json:3: not valid UTF-8 \(byte 0xff\)$"):
        _collect(project, [{"path": "in.json", "format": "prompts"}])


@pytest.mark.parametrize("name", ["in.jsonl", "in.json"])
def test_utf8_bom_keeps_the_first_record(project, name):
    rows = [{"prompt": "first one"}, {"prompt": "second one"}]
    text = json.dumps(rows) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in rows)
    (project.path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
    metrics = _collect(project, [{"path": name, "format": "prompts"}])
    assert metrics["prompts"] == 2 and metrics["rejected"] == 0


def test_read_jsonl_names_file_line_of_bad_unicode(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD + b'{"a": "\xff"}\n')
    with pytest.raises(InputError, match=r"x.jsonl:2: not valid UTF-8 \(byte 0xff\)"):
        list(io_read_jsonl(path))
    path.write_bytes(GOOD + b'{"a": "\\ud800"}\n')
    with pytest.raises(InputError, match=r"x.jsonl:2: lone surrogate \\ud800"):
        list(io_read_jsonl(path))


def _snapshot(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_failed_collect_leaves_previous_output_untouched(project):
    write_jsonl(project.path / "good.jsonl", [{"prompt": "hello there"}])
    _collect(project, [{"path": "good.jsonl", "format": "prompts"}])
    before = _snapshot(project.path / "data/raw")

    write_jsonl(project.path / "more.jsonl", [{"prompt": "a new prompt"}])
    write_jsonl(project.path / "bad.jsonl", ["not json", {"wrong": "schema"}])
    with pytest.raises(InputError, match=r"collect.sources\[2\] \(bad, bad.jsonl\): yielded no records \(malformed_json: 1, schema: 1\)") as err:
        _collect(project, [{"path": "good.jsonl", "format": "prompts"}, {"path": "more.jsonl", "format": "prompts"},
                           {"path": "bad.jsonl", "format": "prompts"}])
    assert _snapshot(project.path / "data/raw") == before
    # nothing was written, so the error itself says why
    assert str(err.value).endswith("first reject: bad.jsonl:1: not valid JSON (Expecting value); data/raw was left as it was")
    assert sorted(p.name for p in (project.path / "data").iterdir()) == ["raw", "sample"]  # no temp dir left behind


def _conv(i: int, answer: str) -> dict:
    return conversation_record([{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": answer}],
                               task="t", source="s")


def test_format_writes_over_long_drops_to_rejects(project):
    clean = project.path / "data" / "clean"
    long = _conv(999, " ".join(["long"] * 600))
    write_jsonl(clean / "conversations.jsonl", [_conv(i, "A short answer.") for i in range(30)] + [long])
    write_jsonl(clean / "preferences.jsonl", [])
    write_jsonl(clean / "prompts.jsonl", [{"id": "p-long", "prompt": [{"role": "user", "content": "why " * 200}], "task": "t"}])
    params = project.params(format={"max_length": 128, "max_prompt_length": 64, "over_long": "drop",
                                    "splits": {"train": 1.0, "val": 0.0, "test": 0.0},
                                    "constraints": {"tasks": []}})  # no constraint prompts: only these two drops
    metrics = fmt.run(params, NullTracker())

    sft, prompt = read_jsonl(project.path / "data/formatted/rejects.jsonl")
    assert metrics["dropped_over_long"] == 2 and {sft["stage"], prompt["stage"], sft["reason"], prompt["reason"]} == {"format", "over_long"}
    assert sft["record"]["id"] == long["id"] and sft["record"]["messages"] == long["messages"]
    assert re.fullmatch(rf"sft_train: {long['id']}: \d+ tokens > format.max_length 128", sft["detail"])
    assert prompt["record"]["id"] == "p-long"
    assert re.fullmatch(r"prompts_train: p-long: \d+ tokens > format.max_prompt_length 64", prompt["detail"])


def test_format_rejects_answers_that_cannot_be_cut(project):
    """over_long: truncate still drops what cannot be cut (a prompt with no room left): that is a reject too."""
    from alignflow.io import RejectWriter

    checker = fmt.LengthChecker(fmt.load_tokenizer("tiny:llama"), max_length=64, max_prompt_length=32, policy="truncate",
                                rejects=RejectWriter("format"))
    pref = {"id": "x", "prompt": [{"role": "user", "content": "why " * 100}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    assert checker.preference(pref, "prefs_train")[0] is None
    [row] = checker.rejects.rows
    assert row["detail"].startswith("prefs_train: x: ") and row["detail"].endswith("(the prompt leaves no room for an answer)")

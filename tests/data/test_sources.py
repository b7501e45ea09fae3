"""Source readers and the collect stage: every format, provenance, and bad input."""

from __future__ import annotations

import gzip
import json

import pytest

from alignflow.config import ParamsError
from alignflow.data import collect
from alignflow.data.sources import (
    RecordError,
    parse_hh_transcript,
    read_alpaca,
    read_hh_rlhf,
    read_messages,
    read_preference,
    read_prompts,
    read_self_instruct_seed,
    read_sharegpt,
    split_at_shared_prompt,
)
from alignflow.io import InputError

from .conftest import NullTracker, read_jsonl, write_jsonl


def test_alpaca_puts_input_after_instruction():
    [rec] = read_alpaca({"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"})
    assert rec["messages"] == [
        {"role": "user", "content": "Translate to French.\n\nGood morning"},
        {"role": "assistant", "content": "Bonjour"},
    ]
    [rec] = read_alpaca({"instruction": "Say hi.", "input": "", "output": "Hi!"})
    assert rec["messages"][0]["content"] == "Say hi."


def test_self_instruct_seed_expands_instances():
    recs = read_self_instruct_seed({"instruction": "Add the numbers.", "instances": [
        {"input": "1 2", "output": "3"}, {"input": "2 2", "output": "4"}]})
    assert [r["messages"][1]["content"] for r in recs] == ["3", "4"]


def test_sharegpt_maps_roles_and_requires_assistant_last():
    [rec] = read_sharegpt({"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                             {"from": "gpt", "value": "Hello"}]})
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
    with pytest.raises(RecordError, match="does not end with an assistant turn"):
        read_sharegpt({"conversations": [{"from": "human", "value": "Hi"}]})
    with pytest.raises(RecordError, match=r"conversations\[0\]"):
        read_sharegpt({"conversations": [{"from": "robot", "value": "Hi"}]})


def test_messages_validates_roles():
    with pytest.raises(RecordError, match="role"):
        read_messages({"messages": [{"role": "bot", "content": "x"}]})
    with pytest.raises(RecordError, match="no user turn"):
        read_messages({"messages": [{"role": "assistant", "content": "x"}]})


def test_hh_rlhf_splits_at_the_last_shared_turn():
    shared = "\n\nHuman: How do I pick a lock?\n\nAssistant: Why do you want to?\n\nHuman: I locked myself out."
    row = {"chosen": shared + "\n\nAssistant: Call a locksmith.", "rejected": shared + "\n\nAssistant: Use a bobby pin."}
    [rec] = read_hh_rlhf(row)
    assert [m["role"] for m in rec["prompt"]] == ["user", "assistant", "user"]
    assert rec["prompt"][-1]["content"] == "I locked myself out."
    assert rec["chosen"] == [{"role": "assistant", "content": "Call a locksmith."}]
    assert rec["rejected"] == [{"role": "assistant", "content": "Use a bobby pin."}]


def test_hh_rlhf_rejects_identical_and_malformed_transcripts():
    t = "\n\nHuman: hi\n\nAssistant: hello"
    with pytest.raises(RecordError, match="identical"):
        read_hh_rlhf({"chosen": t, "rejected": t})
    with pytest.raises(RecordError, match="Human"):
        parse_hh_transcript("Assistant said hello")
    with pytest.raises(RecordError, match="diverge after an assistant turn"):
        split_at_shared_prompt(
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "d"}],
        )


def test_preference_explicit_and_implicit_prompt():
    [rec] = read_preference({"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 1.5})
    assert rec["prompt"] == [{"role": "user", "content": "2+2?"}] and rec["chosen"][0]["role"] == "assistant"
    assert rec["margin"] == 1.5
    conv = [{"role": "user", "content": "2+2?"}]
    [rec] = read_preference({"chosen": conv + [{"role": "assistant", "content": "4"}],
                             "rejected": conv + [{"role": "assistant", "content": "5"}]})
    assert rec["prompt"] == conv and rec["rejected"][0]["content"] == "5"


def test_prompts_text_or_messages_with_reference():
    [rec] = read_prompts({"prompt": "Name a color.", "reference": "Blue."})
    assert rec == {"prompt": [{"role": "user", "content": "Name a color."}], "reference": "Blue."}
    [rec] = read_prompts({"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]})
    assert len(rec["prompt"]) == 2 and "reference" not in rec
    with pytest.raises(RecordError, match="end with a user turn"):
        read_prompts({"prompt": [{"role": "assistant", "content": "x"}]})


def _collect(project, sources):
    params = project.params(collect={"sources": sources})
    return collect.run(params, NullTracker())


def test_collect_all_formats_with_provenance(project):
    d = project.path / "in"
    (d).mkdir()
    (d / "alpaca.json").write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi!"}] * 2))
    write_jsonl(d / "share.jsonl", [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}])
    with gzip.open(d / "hh.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"}) + "\n")
    write_jsonl(d / "p.jsonl", [{"prompt": "Name a color.", "reference": "Blue."}])
    metrics = _collect(project, [
        {"path": "in/alpaca.json", "format": "alpaca", "task": "inst", "weight": 2.0, "license": "CC-BY-NC-4.0", "limit": 1},
        {"path": "in/share*.jsonl", "format": "sharegpt"},
        {"path": "in/hh.jsonl.gz", "format": "hh_rlhf", "license": "MIT"},
        {"path": "in/p.jsonl", "format": "prompts", "name": "colors"},
    ])
    assert metrics["conversations"] == 2 and metrics["preferences"] == 1 and metrics["prompts"] == 1
    convs = read_jsonl(project.path / "data/raw/conversations.jsonl")
    assert convs[0]["task"] == "inst" and convs[0]["license"] == "CC-BY-NC-4.0" and convs[0]["origin"] == "in/alpaca.json:1"
    assert convs[1]["source"] == "share" and convs[1]["origin"].endswith("share.jsonl:1")
    [pref] = read_jsonl(project.path / "data/raw/preferences.jsonl")
    assert pref["license"] == "MIT" and pref["chosen"][0]["content"] == "good"
    [prompt] = read_jsonl(project.path / "data/raw/prompts.jsonl")
    assert prompt["source"] == "colors" and prompt["reference"] == "Blue."
    manifest = json.loads((project.path / "data/raw/sources.json").read_text())
    assert manifest[0]["weight"] == 2.0 and manifest[0]["records"] == 1


def test_collect_directory_source(project):
    write_jsonl(project.path / "dir" / "a.jsonl", [{"prompt": "one two three"}])
    write_jsonl(project.path / "dir" / "sub" / "b.jsonl", [{"prompt": "four five six"}])
    assert _collect(project, [{"path": "dir", "format": "prompts"}])["prompts"] == 2


def test_malformed_line_and_wrong_schema_go_to_rejects(project):
    write_jsonl(project.path / "in.jsonl", [
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        '{"instruction": "broken", ',
        {"instruction": "No output here."},
        {"instruction": 3, "output": "x"},
    ])
    metrics = _collect(project, [{"path": "in.jsonl", "format": "alpaca"}])
    assert metrics["conversations"] == 1 and metrics["rejected"] == 3
    rejects = read_jsonl(project.path / "data/raw/rejects.jsonl")
    by_line = {r["detail"].split(": ")[0]: r for r in rejects}
    assert by_line["in.jsonl:2"]["reason"] == "malformed_json"
    assert "not valid JSON" in by_line["in.jsonl:2"]["detail"] and by_line["in.jsonl:2"]["record"].startswith('{"instruction"')
    assert by_line["in.jsonl:3"]["reason"] == "schema" and "missing field 'output'" in by_line["in.jsonl:3"]["detail"]
    assert "must be a string" in by_line["in.jsonl:4"]["detail"]
    assert all(r["stage"] == "collect" for r in rejects)


def test_source_that_yields_nothing_is_an_error_naming_it(project):
    write_jsonl(project.path / "bad.jsonl", ["not json", {"wrong": "schema"}])
    write_jsonl(project.path / "good.jsonl", [{"prompt": "hello there"}])
    with pytest.raises(InputError, match=r"collect.sources\[1\] \(bad, bad.jsonl\): yielded no records \(malformed_json: 1, schema: 1\)"):
        _collect(project, [{"path": "good.jsonl", "format": "prompts"}, {"path": "bad.jsonl", "format": "prompts"}])
    # nothing is written on failure (the first reject is in the error)
    assert not (project.path / "data/raw").exists()


def test_missing_path_and_empty_sources(project):
    with pytest.raises(InputError, match=r"collect.sources\[0\] \(nope\).path: nope.jsonl: no such file"):
        _collect(project, [{"path": "nope.jsonl", "format": "prompts"}])
    with pytest.raises(InputError, match="collect.sources is empty"):
        _collect(project, [])


def test_hf_source_offline_fails_clearly(project, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(InputError, match=r"collect.sources\[0\] \(someone/no-such-dataset\): hf dataset .* could not be loaded.*HF_HUB_OFFLINE=1"):
        _collect(project, [{"hf": "someone/no-such-dataset", "format": "prompts"}])


def test_source_params_are_validated(project):
    with pytest.raises(ParamsError, match=r"collect.sources.0: Value error, give exactly one of `path`"):
        project.params(collect={"sources": [{"path": "a.jsonl", "hf": "x/y", "format": "alpaca"}]})
    with pytest.raises(ParamsError, match=r"collect.sources.0.format"):
        project.params(collect={"sources": [{"path": "a.jsonl", "format": "csv"}]})
    with pytest.raises(ParamsError, match="source names must be unique"):
        project.params(collect={"sources": [{"path": "a.jsonl", "format": "alpaca"}, {"path": "x/a.jsonl", "format": "alpaca"}]})

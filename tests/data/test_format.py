"""format: stable hash splits, task mixing by weight, chat formatting, token lengths with the model's tokenizer."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from alignflow.config.data import FormatParams, SplitParams
from alignflow.data import format as fmt
from alignflow.data.sources import conversation_record, preference_record, prompt_record

from .conftest import NullTracker, read_jsonl, write_jsonl


def test_splits_are_stable_and_follow_the_ratios():
    ratios = SplitParams(train=0.8, val=0.1, test=0.1)
    ids = [f"id{i}" for i in range(20000)]
    splits = {i: fmt.split_of(i, "t", 42, ratios) for i in ids}
    counts = Counter(splits.values())
    assert abs(counts["train"] / 20000 - 0.8) < 0.02 and abs(counts["test"] / 20000 - 0.1) < 0.01
    # a record's split depends on itself only: adding data never moves it (no train/test leakage)
    assert all(fmt.split_of(i, "t", 42, ratios) == s for i, s in list(splits.items())[:500])
    assert any(fmt.split_of(i, "t", 7, ratios) != s for i, s in list(splits.items())[:500])  # the seed matters


def test_mix_quotas_follow_weights_and_redistribute():
    assert fmt.mix_quotas({"a": 100, "b": 100}, {"a": 2.0, "b": 1.0}, 30) == {"a": 20, "b": 10}
    # b has only 5: it gives all it has, a fills the rest
    assert fmt.mix_quotas({"a": 100, "b": 5}, {"a": 1.0, "b": 1.0}, 30) == {"a": 25, "b": 5}
    # with upsampling b is repeated to reach its share
    assert fmt.mix_quotas({"a": 100, "b": 5}, {"a": 1.0, "b": 1.0}, 30, upsample=True) == {"a": 15, "b": 15}
    # no cap: everything
    assert fmt.mix_quotas({"a": 7, "b": 3}, {"a": 1.0, "b": 5.0}, None) == {"a": 7, "b": 3}
    # rounding keeps the total exact
    assert sum(fmt.mix_quotas({"a": 50, "b": 50, "c": 50}, {"a": 1, "b": 1, "c": 1}, 10).values()) == 10


def test_mix_is_deterministic_and_interleaved():
    recs = [{"id": f"a{i}", "task": "a"} for i in range(50)] + [{"id": f"b{i}", "task": "b"} for i in range(50)]
    one = fmt.mix(recs, {"a": 1, "b": 1}, 20, 42, "sft_train", False)
    assert one == fmt.mix(list(reversed(recs)), {"a": 1, "b": 1}, 20, 42, "sft_train", False)
    assert Counter(r["task"] for r in one) == {"a": 10, "b": 10}
    assert [r["task"] for r in one[:10]].count("a") not in (0, 10)


def _conv(i: int, task: str = "inst", answer: str = "Blue is a nice color.") -> dict:
    msgs = [{"role": "user", "content": f"Name color number {i}."}, {"role": "assistant", "content": answer}]
    return conversation_record(msgs, task=task, source=task, license="MIT")


def _pref(i: int, task: str = "hh_harmless") -> dict:
    return preference_record([{"role": "user", "content": f"Harmful question {i}?"}],
                             [{"role": "assistant", "content": "I won't help with that."}],
                             [{"role": "assistant", "content": "Sure, here is how."}], task=task, source=task, license="MIT")


def test_build_outputs_keeps_prompts_with_their_conversations():
    p = FormatParams(splits=SplitParams(train=0.6, val=0.2, test=0.2), system_prompt="Be helpful.")
    convs = [_conv(i) for i in range(200)]
    prefs = [_pref(i) for i in range(100)]
    prompts = [prompt_record([{"role": "user", "content": f"Extra prompt {i}"}], task="extra", source="x") for i in range(20)]
    out = fmt.build_outputs(convs, prefs, prompts, p, seed=1)
    train_ids = {r["id"] for r in out["sft_train"]}
    test_ids = {r["id"] for r in out["sft_test"]}
    assert not train_ids & test_ids
    # prompts_test holds the held-out instructions (with their answers as references) + prompt sources
    conv_prompt_ids = {r["id"] for r in out["prompts_test"] if r["task"] == "inst"}
    assert conv_prompt_ids == test_ids
    assert all(r["prompt"][0] == {"role": "system", "content": "Be helpful."} for r in out["prompts_test"])
    assert all(r["reference"] == "Blue is a nice color." for r in out["prompts_test"] if r["task"] == "inst")
    assert sum(len(out[f"prompts_{s}"]) for s in ("train", "val", "test")) == 220
    # harmful prompts come from the held-out preference pairs only
    pref_test_prompts = {r["prompt"][-1]["content"] for r in out["prefs_test"]}
    assert {r["prompt"][-1]["content"] for r in out["prompts_harmful_test"]} == pref_test_prompts
    assert out["sft_train"][0]["messages"][0]["role"] == "system"


def test_constraint_prompts_stay_in_their_instructions_split_and_are_checkable():
    from alignflow import verifiable

    p = FormatParams(splits=SplitParams(train=0.6, val=0.2, test=0.2))
    convs = [_conv(i) for i in range(120)] + [_conv(i, task="other") for i in range(30)]
    out = fmt.build_outputs(convs, [], [], p, seed=3)
    for split in ("train", "val", "test"):
        base = {r["id"]: r for r in out[f"prompts_{split}"]}
        constrained = out[f"prompts_ifeval_{split}"]
        assert {r["id"].removesuffix("-if") for r in constrained} == set(base)  # no record changes split
        for rec in constrained:
            instruction = base[rec["id"].removesuffix("-if")]["prompt"][-1]["content"]
            assert rec["prompt"][-1]["content"].startswith(instruction)
            if split == "test":  # held-out prompts are only answered: no demonstration
                assert "reference" not in rec
            elif "reference" in rec:  # a demonstration: the reference rewritten, and the checkers pass it
                assert verifiable.verify(rec["reference"], rec["constraints"], rec["prompt"][-1]["content"]).all_strict
            assert 1 <= len(rec["constraints"]) <= p.constraints.max_per_prompt
            verifiable.verify("some answer", rec["constraints"])  # every stored constraint is checkable
    demos = [r for r in out["prompts_ifeval_train"] if "reference" in r]
    assert 0 < len(demos) < len(out["prompts_ifeval_train"])  # e.g. no rewrite adds keywords
    off = fmt.build_outputs(convs, [], [], FormatParams(splits=p.splits, constraints={"demonstrations": False}), seed=3)
    assert not any("reference" in r for r in off["prompts_ifeval_train"])
    counts = Counter(len(r["constraints"]) for r in out["prompts_ifeval_train"])
    assert set(counts) == {1, 2}
    again = fmt.build_outputs(convs, [], [], p, seed=3)
    assert again["prompts_ifeval_test"] == out["prompts_ifeval_test"]  # a pure function of (seed, id)
    # only the configured tasks, only the configured types
    p2 = FormatParams(splits=p.splits, constraints={"tasks": ["other"], "types": ["punctuation:no_comma"],
                                                     "max_per_prompt": 1})
    out2 = fmt.build_outputs(convs, [], [], p2, seed=3)
    recs = [r for s in ("train", "val", "test") for r in out2[f"prompts_ifeval_{s}"]]
    assert len(recs) == 30 and {r["task"] for r in recs} == {"other"}
    assert {c["id"] for r in recs for c in r["constraints"]} == {"punctuation:no_comma"}


def test_unknown_constraint_types_fail_validation_by_name():
    with pytest.raises(ValueError, match="language:response_language"):
        FormatParams(constraints={"types": ["language:response_language"]})


@pytest.fixture(scope="module")
def tokenizer():
    return fmt.load_tokenizer("tiny:llama")


def test_length_checker_truncates_or_drops(tokenizer):
    long_answer = " ".join(["word"] * 400)
    ex = fmt.sft_example(_conv(1, answer=long_answer), None)
    checker = fmt.LengthChecker(tokenizer, max_length=64, max_prompt_length=32, policy="truncate")
    out, n = checker.sft(ex, "sft_train")
    assert out is not None and n <= 64 and checker.n_tokens(out["messages"]) <= 64
    assert out["messages"][-1]["content"].startswith("word word") and len(out["messages"][-1]["content"]) < len(long_answer)
    assert checker.counts["sft_train"]["truncated"] == 1
    drop = fmt.LengthChecker(tokenizer, max_length=64, max_prompt_length=32, policy="drop")
    assert drop.sft(ex, "sft_train")[0] is None and drop.counts["sft_train"]["dropped_over_long"] == 1
    # prompts are never cut (a cut question is another question)
    long_prompt = {"id": "p", "prompt": [{"role": "user", "content": long_answer}], "task": "t"}
    assert checker.prompt(long_prompt, "prompts_test")[0] is None


def test_preference_truncation_keeps_the_prompt(tokenizer):
    pref = fmt.preference_example(_pref(1), None)
    pref["chosen"] = [{"role": "assistant", "content": "no " * 300}]
    checker = fmt.LengthChecker(tokenizer, max_length=64, max_prompt_length=32, policy="truncate")
    out, n = checker.preference(pref, "prefs_train")
    assert out["prompt"] == pref["prompt"] and n <= 64
    assert checker.n_tokens(out["prompt"] + out["chosen"]) <= 64 and out["rejected"] == pref["rejected"]


def test_format_stage_writes_every_output_with_caps_and_stats(project):
    clean = project.path / "data" / "clean"
    convs = [_conv(i, task="inst") for i in range(120)] + [_conv(i, task="seed") for i in range(40)]
    convs.append(_conv(999, answer=" ".join(["long"] * 600)))
    write_jsonl(clean / "conversations.jsonl", convs)
    write_jsonl(clean / "preferences.jsonl", [_pref(i) for i in range(80)])
    write_jsonl(clean / "prompts.jsonl", [])
    write_jsonl(clean / "eval_prompts.jsonl", [prompt_record([{"role": "user", "content": "Eval?"}], "Yes.", task="eval", source="e")])
    (clean / "sources.json").write_text(json.dumps([{"task": "inst", "weight": 1.0}, {"task": "seed", "weight": 1.0},
                                                    {"task": "hh_harmless", "weight": 1.0}]))
    params = project.params(format={"splits": {"train": 0.8, "val": 0.1, "test": 0.1}, "max_length": 128,
                                    "max_prompt_length": 64, "over_long": "drop",
                                    "max_records": {"sft_train": 40, "prefs_train": 10}})
    metrics = fmt.run(params, NullTracker())
    out = project.path / "data" / "formatted"
    sft_train = read_jsonl(out / "sft_train.jsonl")
    assert len(sft_train) == 40 == metrics["sft_train"]
    assert Counter(r["task"] for r in sft_train) == {"inst": 20, "seed": 20}  # equal weights: balanced tasks
    assert len(read_jsonl(out / "prefs_train.jsonl")) == 10
    assert metrics["dropped_over_long"] >= 1 and metrics["eval_prompts"] == 1
    stats = json.loads((out / "stats.json").read_text())
    assert stats["model"] == "tiny:llama" and stats["files"]["sft_train"]["tokens_max"] <= 128
    assert {p.stem for p in out.glob("*.jsonl")} >= {"sft_train", "sft_val", "sft_test", "prefs_train", "prefs_val", "prefs_test",
                                                      "prompts_train", "prompts_val", "prompts_test", "prompts_harmful_test",
                                                      "eval_prompts"}
    first = (out / "sft_train.jsonl").read_text()
    fmt.run(params, NullTracker())
    assert (out / "sft_train.jsonl").read_text() == first  # deterministic


def test_format_params_are_validated(project):
    from alignflow.config import ParamsError

    with pytest.raises(ParamsError, match="train \\+ val \\+ test must be 1"):
        project.params(format={"splits": {"train": 0.9, "val": 0.2, "test": 0.1}})
    with pytest.raises(ParamsError, match="unknown output"):
        project.params(format={"max_records": {"sft_trian": 3}})
    with pytest.raises(ParamsError, match="format.max_prompt_length"):
        project.params(format={"max_length": 64, "max_prompt_length": 64})

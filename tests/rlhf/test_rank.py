"""rank: rankings -> pairs, margins, ties, human mixing, agreement; the stage on a tiny sample file."""

from __future__ import annotations

import math

import pytest

from alignflow.config import validate
from alignflow.io import InputError, read_jsonl, write_jsonl
from alignflow.rlhf import rank


def test_make_pairs_all_k_choose_2():
    pairs, stats = rank.make_pairs([0.9, 0.1, 0.5, 0.5], "all", min_margin=0.2)
    # 6 candidates: (0,1) .8, (0,2) .4, (0,3) .4, (1,2) .4, (1,3) .4, (2,3) tie
    assert stats["candidates"] == 6 and stats["ties"] == 1 and stats["below_margin"] == 0
    assert (0, 1, 0.8) in [(c, r, round(m, 6)) for c, r, m in pairs]
    assert all(m > 0 for _, _, m in pairs)
    assert (2, 1) in [(c, r) for c, r, _ in pairs]  # the better one is always "chosen"
    pairs, stats = rank.make_pairs([0.9, 0.1, 0.5, 0.5], "all", min_margin=0.5)
    assert [(c, r) for c, r, _ in pairs] == [(0, 1)] and stats["below_margin"] == 4


def test_make_pairs_best_vs_worst_and_nan():
    pairs, _ = rank.make_pairs([0.2, float("nan"), 0.7, 0.4], "best_vs_worst")
    assert [(c, r) for c, r, _ in pairs] == [(2, 0)]
    assert math.isclose(pairs[0][2], 0.5)
    pairs, stats = rank.make_pairs([float("nan"), 0.3], "all")
    assert pairs == [] and stats["candidates"] == 0


def test_make_pairs_keeps_unfinished_samples_off_the_chosen_side():
    finished = [True, False, True, True]
    pairs, stats = rank.make_pairs([0.5, 0.9, 0.2, 0.1], "all", can_be_chosen=finished)
    # every pair with sample 1 would choose the cut-off sample: dropped
    assert sorted((c, r) for c, r, _ in pairs) == [(0, 2), (0, 3), (2, 3)]
    assert stats["unfinished_chosen"] == 3
    pairs, _ = rank.make_pairs([0.5, 0.9, 0.2, 0.1], "best_vs_worst", can_be_chosen=finished)
    assert [(c, r) for c, r, _ in pairs] == [(0, 3)]  # the best finished one, not the cut-off 0.9
    pairs, stats = rank.make_pairs([0.5, 0.9], "best_vs_worst", can_be_chosen=[False, False])
    assert pairs == [] and stats["unfinished_chosen"] == 1
    pairs, _ = rank.make_pairs([0.9, 0.5], "all", can_be_chosen=[True, False])
    assert [(c, r) for c, r, _ in pairs] == [(0, 1)]  # a cut-off sample may be the rejected one


def test_pairwise_agreement():
    assert rank.pairwise_agreement([1, 2, 3], [1, 2, 3]) == (3, 3)
    assert rank.pairwise_agreement([1, 2, 3], [3, 2, 1]) == (0, 3)
    assert rank.pairwise_agreement([1, 1, 3], [1, 2, 0]) == (0, 2)  # the tie in the first is skipped


def test_rank_stage(tmp_path, monkeypatch, tracker):
    monkeypatch.chdir(tmp_path)
    q = [{"role": "user", "content": "What is the capital of France?"}]
    samples = [
        {"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"{q[0]['content']} ({i})"}],
         "responses": ["Paris is the capital of France.", "I'm sorry, I can't help with that.", "Bananas are yellow.",
                       "Paris is the capital of France."],
         "finished": [True, True, True, True], "gen": {"k": 4}, "reference": "The capital of France is Paris."}
        for i in range(6)
    ]
    write_jsonl("data/samples/samples.jsonl", samples)
    human = [{"id": f"h{i}", "prompt": q, "chosen": [{"role": "assistant", "content": "Paris."}],
              "rejected": [{"role": "assistant", "content": "Rome."}], "task": "qa", "source": "hh"} for i in range(50)]
    write_jsonl("data/formatted/prefs_train.jsonl", human)
    params = validate({"rank": {"judge": ["reference", "reference"], "min_margin": 0.05, "human_weight": 0.5,
                                "val_fraction": 0.2}})
    metrics = rank.run(params, tracker)

    assert metrics["pairs_candidate"] == 6 * 6
    assert metrics["ties"] == 6  # the duplicated answer
    assert metrics["pairs_judge"] == 6 * 5 - metrics["dropped_below_margin"]
    assert metrics["pairs_human"] == round(0.5 * metrics["pairs_judge"])
    assert metrics["judge_agreement"] == 1.0  # the same judge twice agrees with itself
    train = list(read_jsonl("data/prefs/train.jsonl"))
    val = list(read_jsonl("data/prefs/val.jsonl"))
    assert len(train) + len(val) == metrics["pairs_judge"] + metrics["pairs_human"]
    judge_pairs = [p for p in train + val if p["source"] == "judge:reference"]
    assert all(p["chosen"][0]["content"].startswith("Paris") for p in judge_pairs if p["margin"] > 5.0)  # logits: a 0.5 gap
    assert not any(p["chosen"][0]["content"].startswith("I'm sorry") and p["rejected"][0]["content"].startswith("Paris")
                   for p in judge_pairs)
    kto = list(read_jsonl("data/prefs/kto.jsonl"))
    assert {r["label"] for r in kto} == {True, False}
    assert kto[0]["completion"][0]["content"].startswith("Paris")
    tasks = rank.labelstudio.load_tasks("data/prefs/labelstudio_tasks.json")
    assert len(tasks) == 6 and len(tasks[0]["data"]["responses"]) == 4
    every = rank.run(validate({"rank": {"judge": ["reference"], "min_margin": 0.05, "human_weight": None,
                                        "val_fraction": 0.2}}), tracker)
    assert every["pairs_judge"] == metrics["pairs_judge"] and every["pairs_human"] == 50  # null: all human pairs


def test_pair_sources_split_judge_from_human():
    assert rank.pair_source({"source": "judge:reference"}) == "judge"
    assert rank.pair_source({"source": "hh_rlhf_harmless_800"}) == rank.pair_source({}) == "human"


def test_verifier_judge_pairs_followers_over_breakers_and_falls_back_elsewhere(tmp_path, monkeypatch, tracker):
    """rank.judge [verifier]: a constraint prompt's pairs put the sample that follows more of its
    constraints first (margin = share gap / compare_scale); a plain prompt goes to the fallback."""
    monkeypatch.chdir(tmp_path)
    constraints = [{"id": "punctuation:no_comma", "kwargs": {}},
                   {"id": "change_case:english_lowercase", "kwargs": {}}]
    samples = [
        {"prompt_id": "c1", "prompt": [{"role": "user", "content": "Describe Paris. No commas; all lowercase."}],
         "responses": ["paris is a city in france", "Paris is a city in France", "Paris, a city, is in France",
                       "paris is lovely and old"],
         "finished": [True] * 4, "constraints": constraints},
        {"prompt_id": "p1", "prompt": [{"role": "user", "content": "What is the capital of France?"}],
         "responses": ["Paris is the capital of France.", "Bananas are yellow."], "finished": [True, True],
         "reference": "The capital of France is Paris."},
    ]
    write_jsonl("data/samples/samples.jsonl", samples)
    params = validate({"rank": {"judge": ["verifier"], "min_margin": 0.05, "human_weight": 0.0, "val_fraction": 0.0}})
    metrics = rank.run(params, tracker)
    pairs = list(read_jsonl("data/prefs/train.jsonl"))
    mine = [p for p in pairs if "commas" in p["prompt"][0]["content"]]
    # follows both (0, 3) > follows one (1: no comma) > follows none (2): 2·2 + 1 pairs; (0, 3) tie
    assert sorted((p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in mine) == sorted([
        ("paris is a city in france", "Paris is a city in France"),
        ("paris is a city in france", "Paris, a city, is in France"),
        ("paris is lovely and old", "Paris is a city in France"),
        ("paris is lovely and old", "Paris, a city, is in France"),
        ("Paris is a city in France", "Paris, a city, is in France")])
    assert {round(p["margin"], 6) for p in mine} == {1.0, 2.0}  # half / all constraints over compare_scale 0.5
    assert all(p["source"] == "judge:verifier" for p in pairs)
    # the plain prompt was ranked by the fallback (reference) judge
    assert [(p["chosen"][0]["content"]) for p in pairs if p not in mine] == ["Paris is the capital of France."]
    assert metrics["verifier.constraint_prompts"] == 1 and metrics["verifier.fallback_prompts"] == 1
    assert metrics["verifier.followed_all"] == 2

    params = validate({"rank": {"judge": ["verifier"], "verifier": {"fallback": "none"}, "min_margin": 0.05,
                                "human_weight": 0.0, "val_fraction": 0.0}})
    rank.run(params, tracker)
    assert all("commas" in p["prompt"][0]["content"] for p in read_jsonl("data/prefs/train.jsonl"))


def test_verifier_prefers_a_constraint_prompts_demonstration_over_samples_that_break_it(tmp_path, monkeypatch, tracker):
    """rank.verifier.demonstrations: format's checked rewrite of the reference (the record's
    `reference`) joins the samples as a finished candidate and is chosen over every sample that
    follows fewer constraints; off, only the samples pair."""
    monkeypatch.chdir(tmp_path)
    samples = [{"prompt_id": "c1", "prompt": [{"role": "user", "content": "Describe Paris in all lowercase."}],
                "responses": ["Paris is old.", "paris is old.", "Paris is big."], "finished": [True, False, True],
                "reference": "paris is the capital of france.",
                "constraints": [{"id": "change_case:english_lowercase", "kwargs": {}}]}]
    write_jsonl("data/samples/samples.jsonl", samples)
    base = {"judge": ["verifier"], "min_margin": 0.05, "human_weight": 0.0, "val_fraction": 0.0}
    metrics = rank.run(validate({"rank": base}), tracker)
    pairs = {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in read_jsonl("data/prefs/train.jsonl")}
    # the unfinished lowercase sample is never chosen (rank.finished_chosen_only); the demonstration is
    assert pairs == {("paris is the capital of france.", "Paris is old."),
                     ("paris is the capital of france.", "Paris is big.")}
    assert metrics["pairs_demonstration"] == 2 and metrics["verifier.followed_all"] == 2
    with pytest.raises(InputError, match="no preference pairs"):  # without it: nothing finished to prefer
        rank.run(validate({"rank": {**base, "verifier": {"demonstrations": False}}}), tracker)

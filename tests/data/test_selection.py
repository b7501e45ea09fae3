"""Quality selection (format, `selection.*`): Alpagasus ratings from a real local endpoint, the
threshold and keep_fraction cuts, the reward model as a proxy judge, complexity balancing, and
format selecting the train split only (the held-out files stay byte for byte)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from alignflow.config import ParamsError, validate
from alignflow.config.synthesis import BalanceParams
from alignflow.data import format as fmt
from alignflow.data import selection as S
from alignflow.data.sources import conversation_record, preference_record
from alignflow.io import RejectWriter
from tests.chat_server import ChatServer

from .conftest import NullTracker, read_jsonl, write_jsonl

# What the scripted judge answers, by a word in the response.
RATINGS = {"excellent": "5\nAccurate and complete.", "good": "Score: 4.5\nMostly right.", "fine": "4",
           "weak": "3\nPartly wrong.", "bad": "1\nWrong.", "garbled": "I am not able to rate this."}


def judge_reply(body: dict) -> str:
    response = body["messages"][-1]["content"].split("Response: ", 1)[1].split("\n\nPlease rate", 1)[0]
    return next(reply for word, reply in RATINGS.items() if word in response)


@pytest.fixture
def judge():
    srv = ChatServer(judge_reply)
    yield srv
    srv.close()


def conv(i: int, quality: str, task: str = "alpaca", instruction: str | None = None) -> dict:
    prompt = instruction or f"Answer question number {i} about the weather."
    return conversation_record([{"role": "user", "content": prompt},
                                {"role": "assistant", "content": f"A {quality} answer number {i}."}],
                               task=task, source=task, license="MIT")


def selection_params(judge, **over):
    section = {"enabled": True, "llm": {"backend": "http", "base_url": judge.url, "model": "rater", "cache_dir": None},
               **over}
    return validate({"selection": section}).selection


def test_parse_rating():
    assert S.parse_rating("4") == 4.0 and S.parse_rating("Score: 4.5\nbecause 2 reasons") == 4.5
    assert S.parse_rating("\n\nRating: 2.5/5") == 2.5 and S.parse_rating("3 out of 5") == 3.0
    for reply in ("10", "I rate it 6.", "0", "The response is accurate.", "", None):
        assert S.parse_rating(reply) is None, reply


def test_rating_request_uses_the_rubric():
    rec = conversation_record([{"role": "user", "content": "Translate it.\n\nBonjour"},
                               {"role": "assistant", "content": "Hello"}], task="t")
    system, user = S.rating_request(rec)
    assert "feedback on the performance" in system["content"]
    assert user["content"].startswith("Instruction: Translate it.\nInput: Bonjour\nResponse: Hello\n")
    assert "scale of 1 to 5" in user["content"] and "accuracy of the response" in user["content"]


def test_threshold_then_keep_fraction_and_rejects_carry_scores(judge):
    records = [conv(i, q) for i, q in enumerate(["excellent", "good", "fine", "weak", "bad", "garbled", "fine", "good"])]
    records.append(conv(99, "bad", task="human_curated"))  # a task that is not scored passes through
    rejects = RejectWriter("format")
    chosen = S.select(records, selection_params(judge, threshold=3.5, keep_fraction=0.5, tasks=["alpaca"]), 42, rejects)
    assert len(judge.requests) == 8 and judge.requests[0]["temperature"] == 0.0 and judge.requests[0]["max_tokens"] == 8
    by_id = {r["id"]: i for i, r in enumerate(records)}
    # rated >= 3.5: excellent 5, good 4.5 (x2), fine 4 (x2) -> the best half of five: 3
    assert {by_id[i]: s for i, s in chosen.kept.items()} == {0: 5.0, 1: 4.5, 7: 4.5, 8: None}
    reasons = {by_id[row["record"]["id"]]: (row["reason"], row["record"]["quality_score"]) for row in rejects.rows}
    assert reasons == {3: ("selection.below_threshold", 3.0), 4: ("selection.below_threshold", 1.0),
                       5: ("selection.unrated", None), 2: ("selection.keep_fraction", 4.0),
                       6: ("selection.keep_fraction", 4.0)}
    assert chosen.metrics["dropped"] == {"below_threshold": 2, "keep_fraction": 2, "unrated": 1}
    assert chosen.metrics["scored"] == 8 and chosen.metrics["kept"] == 4
    assert [row["score"] for row in chosen.plot] == [5.0, 4.5, 4.5, 4.0, 4.0, 3.0, 1.0]
    assert [row["kept"] for row in chosen.plot] == [1, 1, 1, 0, 0, 0, 0] and chosen.plot[0]["rank"] == 1


def test_rank_scale_shares_ties():
    assert S.rank_scale([3.0, 1.0, 2.0, 2.0]) == [5.0, 1.0, 3.0, 3.0]
    assert S.rank_scale([0.7]) == [5.0] and S.rank_scale([]) == []


def test_reward_model_as_a_cheap_proxy(tmp_path):
    from alignflow.models.embedding_reward import EmbeddingRewardModel
    from alignflow.models import load_reward_model

    rm = EmbeddingRewardModel(weight=np.random.default_rng(0).normal(size=768).astype(np.float32))
    rm.save(tmp_path / "rm", {"base": "test"})
    records = [conv(i, q) for i, q in enumerate(["excellent", "bad", "fine", "weak", "good"])]
    p = validate({"selection": {"enabled": True, "judge": "reward_model", "reward_model": str(tmp_path / "rm"),
                                "threshold": 3.0}}).selection
    rejects = RejectWriter("format")
    chosen = S.select(records, p, 42, rejects)
    model, _ = load_reward_model(str(tmp_path / "rm"))
    raw = model.score([r["messages"][:-1] for r in records], [r["messages"][-1]["content"] for r in records])
    best = sorted(range(5), key=lambda i: -raw[i])[:3]  # rank-based 1, 2, 3, 4, 5: >= 3 keeps the top three
    assert set(chosen.kept) == {records[i]["id"] for i in best}
    assert sorted(chosen.kept.values()) == [3.0, 4.0, 5.0] and len(rejects) == 2


def test_complexity_features():
    plain = conv(1, "fine", instruction="Name a fruit.")
    strict = conv(2, "fine", instruction="Name a fruit. You must answer in exactly three words and do not use commas.")
    evolved = dict(plain, synthetic={"method": "evol_instruct", "round": 2})
    assert S.complexity(plain, "instruction_tokens") == 3 and S.complexity(strict, "instruction_tokens") == 15
    assert S.complexity(plain, "constraints") == 0 and S.complexity(strict, "constraints") == 3
    assert S.complexity(evolved, "evolution_round") == 2 and S.complexity(plain, "evolution_round") == 0
    assert S.complexity(dict(plain, synthetic={"method": "self_instruct", "round": 3}), "evolution_round") == 0


def test_balance_fills_buckets_to_their_proportions():
    short = [conv(i, "fine", instruction=f"Say {i}.") for i in range(10)]
    medium = [conv(i, "fine", instruction=f"Describe item {i} " + "in detail " * 5) for i in range(10)]
    long = [conv(i, "fine", instruction=f"Write about {i} " + "with many words " * 10) for i in range(2)]
    p = BalanceParams(enabled=True, feature="instruction_tokens", edges=[5, 20], proportions=[0.4, 0.4, 0.2])
    kept, dropped = S.balance(short + medium + long, p, 42)
    ids = {r["id"] for r in kept}
    # the long bucket (2 records = 20%) bounds the set: 4 + 4 + 2
    assert (len(ids & {r["id"] for r in short}), len(ids & {r["id"] for r in medium}), len(ids & {r["id"] for r in long})) == (4, 4, 2)
    assert len(dropped) == 12 and dropped[0][1] == "instruction_tokens bucket 0 over its 40% share"
    assert kept == S.balance(list(reversed(short + medium + long)), p, 42)[0]  # by content, not by file order


def test_format_selects_the_train_split_only(project, judge):
    clean = project.path / "data" / "clean"
    qualities = ["excellent", "good", "fine", "weak", "bad", "garbled"]
    write_jsonl(clean / "conversations.jsonl", [conv(i, qualities[i % 6]) for i in range(60)])
    write_jsonl(clean / "preferences.jsonl", [preference_record(
        [{"role": "user", "content": f"Question {i}?"}], [{"role": "assistant", "content": "Yes."}],
        [{"role": "assistant", "content": "No."}], task="hh", source="hh", license="MIT") for i in range(10)])
    write_jsonl(clean / "prompts.jsonl", [])
    (clean / "sources.json").write_text(json.dumps([{"task": "alpaca", "weight": 1.0}]))
    formatted, plot = project.path / "data" / "formatted", project.path / "plots" / "selection_scores.csv"

    off = fmt.run(project.params(format={"splits": {"train": 0.6, "val": 0.2, "test": 0.2}}), NullTracker())
    before = {p.name: p.read_bytes() for p in formatted.glob("*.jsonl")}
    assert "selection" not in off and plot.read_text().splitlines() == ["rank,score,kept"]

    params = project.params(format={"splits": {"train": 0.6, "val": 0.2, "test": 0.2}},
                            selection={"enabled": True, "threshold": 4.0, "llm": {"backend": "http", "base_url": judge.url,
                                                                                    "cache_dir": "cache"}})
    on = fmt.run(params, NullTracker())
    after = {p.name: p.read_bytes() for p in formatted.glob("*.jsonl")}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"sft_train.jsonl", "rejects.jsonl"}  # val/test, prompts and prefs as they were
    train = read_jsonl(formatted / "sft_train.jsonl")
    assert train and all(r["quality_score"] >= 4.0 for r in train)
    assert all(any(w in r["messages"][-1]["content"] for w in ("excellent", "good", "fine")) for r in train)
    n_train = len(read_jsonl(formatted / "prompts_train.jsonl"))
    assert len(judge.requests) == n_train == on["selection"]["scored"]  # only the train split was rated
    dropped = [row for row in read_jsonl(formatted / "rejects.jsonl") if row["reason"].startswith("selection.")]
    assert len(dropped) + len(train) == n_train
    assert {row["reason"] for row in dropped} == {"selection.below_threshold", "selection.unrated"}
    rows = list(csv.DictReader(plot.open()))
    assert len(rows) == on["selection"]["scored"] - on["selection"]["dropped"]["unrated"]
    assert sum(int(r["kept"]) for r in rows) == len(train) and float(rows[0]["score"]) == 5.0


@pytest.mark.parametrize("section, message", [
    ({"threshold": 6}, r"selection\.threshold"),
    ({"keep_fraction": 0}, r"selection\.keep_fraction"),
    ({"judge": "human"}, r"selection\.judge"),
    ({"balance": {"edges": [64, 24]}}, r"selection\.balance.*edges: \[64.0, 24.0\] must be strictly ascending"),
    ({"balance": {"proportions": [0.5, 0.6, 0.1]}}, r"selection\.balance.*proportions: must be >= 0 and sum to 1"),
    ({"enabled": True, "llm": {"backend": "http"}}, r"selection\.llm\.base_url"),
    ({"enabled": True, "judge": "reward_model"}, r"selection\.reward_model: the reward_model judge needs"),
    ({"enabled": True, "judge": "reward_model", "reward_model": "./models/reward/"}, r"selection\.reward_model: .* cycle"),
])
def test_params_errors_name_the_parameter(section, message):
    with pytest.raises(ParamsError, match=message):
        validate({"selection": section})

"""Judges: rule penalties, the reference judge, the LLM judge against a fake endpoint, Label Studio."""

from __future__ import annotations

import json
import math

import pytest

from alignflow.io import InputError
from alignflow.rlhf import judges, labelstudio
from tests.chat_server import ChatServer as FakeJudgeServer

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


# ---------------------------------------------------------------- rules


def test_rule_penalties_flags():
    assert judges.rule_penalties("I'm sorry, but I can't help with that.")["refusal"]
    assert judges.rule_penalties("I'm sorry, but I can't help with that.")["apology"]
    assert judges.rule_penalties("   ")["empty"]
    loop = "the cat sat on the mat " * 10
    assert judges.rule_penalties(loop)["repetition"]
    clean = judges.rule_penalties("Paris is the capital of France.")
    assert not any(clean.values())
    # truncation: the generator's EOS bit wins; without it, a long answer stopping mid-sentence
    assert judges.rule_penalties("Paris is the capital of France.", finished=False)["truncated"]
    assert judges.rule_penalties("Paris is the capital of France and it is known for the")["truncated"]


def test_parse_verdict():
    assert judges.parse_verdict("After thinking: [[B]]") == "B"
    assert judges.parse_verdict(" a ") == "A"
    assert judges.parse_verdict("[[tie]]") == "TIE"
    assert judges.parse_verdict("[[A]] or maybe [[B]]") is None  # contradictory: not guessed
    assert judges.parse_verdict("Both are fine.") is None
    assert judges.parse_verdict(None) is None


# ---------------------------------------------------------------- reference judge


@pytest.fixture(scope="module")
def reference_judge():
    return judges.ReferenceJudge()


def test_reference_judge_ranks_the_right_answer_first(reference_judge):
    responses = [
        "The capital of France is Paris.",
        "I'm sorry, but I can't help with that.",
        "Bananas are rich in potassium.",
        "",
    ]
    scores = reference_judge.score(PROMPT, responses, reference="Paris is the capital of France.")
    assert scores[0] == max(scores)
    assert scores[3] == min(scores)  # empty
    assert scores[1] < scores[0] - 0.3  # refusal + apology penalties
    assert reference_judge.compare(PROMPT, responses[0], responses[2], reference="Paris.") > 0.9


def test_reference_judge_without_reference_uses_relevance(reference_judge):
    a, b = "Paris is the capital city of France.", "Photosynthesis converts light into chemical energy."
    sa, sb = reference_judge.score(PROMPT, [a, b])
    assert sa > sb


def test_build_judge_from_params():
    from alignflow.config import validate

    params = validate({"rank": {"judge": ["reference", "llm"], "llm": {"base_url": "http://127.0.0.1:9/v1"}}})
    judge = judges.build_judge("llm", params)
    assert isinstance(judge, judges.LLMJudge) and judge.backend.url == "http://127.0.0.1:9/v1/chat/completions"
    with pytest.raises(ValueError, match="unknown judge"):
        judges.build_judge("oracle", params)
    with pytest.raises(Exception, match="rank.llm.base_url"):
        validate({"rank": {"judge": "llm"}})


# ---------------------------------------------------------------- LLM judge over HTTP


def _shown(body: dict) -> tuple[str, str]:
    text = body["messages"][-1]["content"]
    a = text.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
    b = text.split("[Response B]\n")[1].split("\n\nWhich")[0]
    return a, b


def _llm_judge(server, **kw):
    return judges.LLMJudge(judges.HTTPChatBackend(server.url, "judge-model", api_key_env="ALIGNFLOW_TEST_KEY"), **kw)


def test_llm_judge_cancels_position_bias(monkeypatch):
    monkeypatch.setenv("ALIGNFLOW_TEST_KEY", "sk-test")
    server = FakeJudgeServer(lambda body: "[[A]]")  # a judge that always prefers the first slot
    try:
        judge = _llm_judge(server)
        assert judge.compare(PROMPT, "Paris.", "Lyon.") == pytest.approx(0.5)
        assert judge.stats["position_inconsistent"] == 1
        shown = [_shown(b) for b in server.requests]
        assert shown == [("Paris.", "Lyon."), ("Lyon.", "Paris.")]  # asked in both orders
        assert server.headers[0]["Authorization"] == "Bearer sk-test"
    finally:
        server.close()


def test_llm_judge_content_preference_survives_swapping():
    def prefers_paris(body):
        a, b = _shown(body)
        return "Verdict: [[A]]" if "Paris" in a else "Verdict: [[B]]"

    server = FakeJudgeServer(prefers_paris)
    try:
        judge = _llm_judge(server)
        assert judge.compare(PROMPT, "Paris.", "Lyon.") == 1.0
        assert judge.compare(PROMPT, "Lyon.", "Paris.") == 0.0
        scores = judge.score(PROMPT, ["Lyon.", "Paris.", "Nice."])
        assert scores[1] == 1.0 and scores[1] == max(scores)
        # Lyon vs Nice (no Paris): the fake judge says "B" both times, i.e. pure position preference
        assert judge.stats["position_inconsistent"] == 1
    finally:
        server.close()


@pytest.mark.parametrize("reply", ["Both answers have merit.", b"<html>502 bad gateway</html>", b'{"choices": []}'])
def test_llm_judge_malformed_reply_is_retried_then_counted(reply):
    server = FakeJudgeServer(lambda body: reply)
    try:
        judge = _llm_judge(server, max_retries=2)
        p = judge.compare(PROMPT, "Paris.", "Lyon.")
        assert math.isnan(p)  # never guessed
        assert len(server.requests) == 6  # 2 orders × (1 + 2 retries)
        assert judge.stats["unparseable_replies"] == 6 and judge.stats["retries"] == 4
        assert judge.stats["failed_verdicts"] == 2 and judge.stats["pairs_without_verdict"] == 1
        assert all(math.isnan(s) for s in judge.score(PROMPT, ["a", "b"]))
    finally:
        server.close()


def test_llm_judge_recovers_on_retry():
    replies = iter(["hmm", "[[B]]", "[[A]]"])
    server = FakeJudgeServer(lambda body: next(replies))
    try:
        judge = _llm_judge(server, max_retries=1)
        # (x, y) → "hmm" (re-asked) → [[B]]; (y, x) → [[A]]: y wins in both orders
        assert judge.compare(PROMPT, "x", "y") == 0.0
        assert judge.stats["retries"] == 1 and judge.stats["failed_verdicts"] == 0
    finally:
        server.close()


def test_llm_judge_unreachable_endpoint_is_an_error():
    judge = judges.LLMJudge(judges.HTTPChatBackend("http://127.0.0.1:9/v1", "m", timeout_s=2))
    with pytest.raises(judges.JudgeUnavailable, match="127.0.0.1:9"):
        judge.compare(PROMPT, "a", "b")


# ---------------------------------------------------------------- Label Studio


SAMPLES = [
    {"prompt_id": "p1", "prompt": PROMPT, "responses": ["Paris.", "Lyon.", "Nice."], "gen": {}},
    {"prompt_id": "p2", "prompt": [{"role": "user", "content": "2+2?"}], "responses": ["4", "5"], "gen": {}},
]


def _as_label_studio_export(tasks, results_by_task):
    """What Label Studio's JSON export looks like after annotating the imported tasks."""
    out = []
    for n, task in enumerate(tasks, 1):
        results = results_by_task.get(task["data"]["alignflow_id"], [])
        out.append({"id": n, "data": task["data"], "annotations": [
            {"id": 100 + n, "completed_by": 1, "was_cancelled": False, "result": results}]})
    return out


def test_labelstudio_round_trip(tmp_path):
    tasks = labelstudio.export_tasks(SAMPLES, "ranking")
    path = tmp_path / "tasks.json"
    labelstudio.write_tasks(tasks, path)
    tasks = labelstudio.load_tasks(path)
    assert [t["data"]["alignflow_id"] for t in tasks] == ["p1", "p2"]
    ranker = {"p1": [{"from_name": "rank", "to_name": "responses", "type": "ranker",
                      "value": {"ranker": {"responses": ["r1", "r0", "r2"]}}}]}
    export = _as_label_studio_export(tasks, ranker)
    pair_tasks = labelstudio.export_tasks(SAMPLES, "pairwise")
    export += _as_label_studio_export([t for t in pair_tasks if t["data"]["alignflow_id"] == "p2:0-1"],
                                      {"p2:0-1": [{"type": "pairwise", "value": {"selected": "left"}}]})
    export_path = tmp_path / "export.json"
    export_path.write_text(json.dumps(export))

    judgements = labelstudio.import_annotations(export_path, tasks + pair_tasks)
    assert [j["kind"] for j in judgements] == ["ranking", "pairwise"]
    assert judgements[0]["order"] == [1, 0, 2]
    human = judges.HumanJudge(labelstudio.merge_scores(judgements, tasks + pair_tasks))
    assert human.score(PROMPT, ["Lyon.", "Paris.", "Nice."]) == [1.0, 0.5, 0.0]
    assert human.score(SAMPLES[1]["prompt"], ["4", "5"]) == [1.0, 0.0]
    assert math.isnan(human.score(PROMPT, ["Marseille."])[0])

    # The same export through params: build_judge rebuilds the tasks from the samples.
    from alignflow.config import validate

    params = validate({"rank": {"judge": "human", "human_annotations": str(export_path)}})
    judge = judges.build_judge("human", params, samples=SAMPLES)
    assert judge.score(PROMPT, ["Paris.", "Lyon.", "Nice."]) == [0.5, 1.0, 0.0]
    with pytest.raises(InputError, match="unknown task"):
        judges.build_judge("human", params, samples=SAMPLES[1:])  # p1 is not among these samples


def test_labelstudio_unknown_task_is_an_error(tmp_path):
    tasks = labelstudio.export_tasks(SAMPLES, "ranking")
    export = _as_label_studio_export(tasks, {})
    export[1]["data"] = {**export[1]["data"], "alignflow_id": "p-from-another-run"}
    with pytest.raises(InputError, match="unknown task 'p-from-another-run'"):
        labelstudio.import_annotations(export, tasks)
    bad = _as_label_studio_export(tasks, {"p1": [{"type": "ranker", "value": {"ranker": {"r": ["r7"]}}}]})
    with pytest.raises(InputError, match="unknown responses"):
        labelstudio.import_annotations(bad, tasks)


def test_local_llm_judge_with_a_model_that_cannot_judge():
    """A local HF judge (here a random tiny model): its gibberish is retried, counted, never guessed."""
    backend = judges.LocalChatBackend("tiny:llama", max_new_tokens=4)
    judge = judges.LLMJudge(backend, max_retries=1)
    p = judge.compare(PROMPT, "Paris.", "Lyon.")
    assert math.isnan(p)
    assert judge.stats["calls"] == 4 and judge.stats["failed_verdicts"] == 2

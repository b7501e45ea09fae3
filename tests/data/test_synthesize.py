"""synthesize: Self-Instruct and Evol-Instruct rounds against a real local OpenAI-compatible
endpoint with scripted replies and against an in-process tiny model; every filter with a text it
drops and one it keeps; the teacher's cache across a kill and a re-run; the disabled default."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from alignflow.config import ParamsError
from alignflow.config.synthesis import TeacherParams
from alignflow.data import clean as clean_stage
from alignflow.data import collect
from alignflow.data.sources import conversation_record
from alignflow.data.synthesis import filters as F
from alignflow.data.synthesis import self_instruct as si
from alignflow.data.synthesis import stage
from alignflow.data.synthesis.evol_instruct import DEPTH_METHODS
from alignflow.data.synthesis.teacher import ChatCache, Request, Teacher, TeacherUnavailable
from tests.chat_server import ChatServer

from .conftest import NullTracker, read_jsonl, write_jsonl

SEEDS = [
    ("Give three tips for staying healthy.", "", "Eat vegetables, sleep well and walk every day."),
    ("What is the relation between the given pairs?", "Night : Day :: Right : Left", "They are opposites."),
    ("Classify the sentiment of the review as positive or negative.", "The soup was cold and bland.", "Negative"),
    ("Suggest a name for a bakery that sells only bread.", "", "The Daily Loaf"),
    ("Explain why the sky looks blue during the day.", "", "Air scatters blue light more than red light."),
    ("Translate the sentence into French.", "I like apples.", "J'aime les pommes."),
    ("Write a haiku about autumn leaves.", "", "Red leaves drift and fall, quiet paths of amber light, the year exhales slow."),
    ("Sort the numbers from smallest to largest.", "5, 2, 9, 1", "1, 2, 5, 9"),
    ("Describe the main job of a lighthouse keeper.", "", "Keeping the light working so ships can navigate safely."),
    ("Is the number prime or composite?", "21", "Composite"),
]
TOPICS = ["volcanoes", "bicycles", "tea ceremonies", "glaciers", "chess openings", "bees", "lighthouses", "solar panels",
          "sourdough bread", "coral reefs", "jazz drumming", "paper money", "origami cranes", "desert foxes",
          "railway signals", "moss gardens", "night markets", "kite festivals", "wind turbines", "ancient libraries"]
FRAMES = ["Explain to a child how {} work and why they matter.", "List four surprising facts about {} with one line each.",
          "Write a short persuasive paragraph about protecting {}.", "Compare two common myths about {} and correct them.",
          "Plan a weekend trip for someone who loves {}.", "Summarize the history of {} in five sentences."]
ANSWER = "Here is a clear answer: the main idea is explained step by step, with one concrete example for the reader."


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def scripted(body: dict):
    """A teacher whose replies follow from the request (so a resumed run asks the same things)."""
    text = body["messages"][-1]["content"]
    h = _h(text)
    if text.startswith("Come up with a series"):
        tasks = [FRAMES[(h >> (4 * k)) % len(FRAMES)].format(TOPICS[(h >> (8 + 5 * k)) % len(TOPICS)]) for k in range(2)]
        return f"Sure! Here they are.\nTask 9: {tasks[0]}\nTask 10: {tasks[1]}\nTask 11: Draw a picture of a cat."
    if text.endswith("Is it classification?"):
        return "Yes" if "Classify the" in text.rsplit("Task:", 1)[1] else "No"
    if text.startswith("Given the classification task"):
        return "Class label: Positive\nInput: I loved every minute of this film."
    if text.startswith("Come up with an example"):
        return "Input: <noinput>\nOutput: " + ANSWER
    if "#Rewritten Prompt#" in text:
        given = text.split("#The Given Prompt#:\n", 1)[1].split("\n#Rewritten Prompt#", 1)[0]
        if DEPTH_METHODS["concretize"] in text:
            return "#Rewritten Prompt#: " + given  # copies the prompt's words: eliminated
        return f"{given} Answer in exactly three sentences and give one example about {TOPICS[h % len(TOPICS)]}."
    if "#Created Prompt#" in text:
        return f"Describe a rare tradition connected with {TOPICS[h % len(TOPICS)]} and who keeps it alive."
    return ANSWER  # an answer to an evolved instruction


@pytest.fixture
def server():
    srv = ChatServer(scripted)
    yield srv
    srv.close()


def seed_project(project, server=None, **synth):
    """Seeds collected into data/raw (a real collect run) and params with synthesize on."""
    rows = [{"instruction": i, "instances": [{"input": x, "output": o}]} for i, x, o in SEEDS]
    write_jsonl(project.path / "data" / "sample" / "seeds.jsonl", rows)
    teacher = {"backend": "http", "base_url": server.url, "model": "scripted", "batch_size": 4, "retry_backoff_s": 0,
               "cache_dir": "cache"} if server else {}
    section = {"enabled": True, "teacher": {**teacher, **synth.pop("teacher", {})},
               "self_instruct": {"target": 6, "prompts_per_round": 2, "max_rounds": 6, **synth.pop("self_instruct", {})},
               "evol_instruct": {"rounds": 2, "max_inputs": 4, **synth.pop("evol_instruct", {})}, **synth}
    params = project.params(
        collect={"sources": [{"path": "data/sample/seeds.jsonl", "format": "self_instruct_seed", "name": "seeds",
                              "seeds": True, "license": "Apache-2.0"}]},
        synthesize=section)
    collect.run(params, NullTracker())
    return params


def with_cache(params, cache_dir: str):
    """The same params with another teacher cache (a run that has asked nothing yet)."""
    teacher = params.synthesize.teacher.model_copy(update={"cache_dir": cache_dir})
    return params.model_copy(update={"synthesize": params.synthesize.model_copy(update={"teacher": teacher})})


# ------------------------------------------------------------------------------------ the stage


def test_disabled_default_writes_empty_outputs_in_a_moment(project):
    params = project.params()
    assert not params.synthesize.enabled
    started = time.perf_counter()
    metrics = stage.run(params, NullTracker())  # no data/raw needed: nothing is read
    assert time.perf_counter() - started < 2
    assert metrics == {"enabled": False, "records": 0}
    out = project.path / "data" / "synth"
    assert (out / "conversations.jsonl").read_text() == "" and (out / "rejects.jsonl").read_text() == ""
    assert json.loads((out / "sources.json").read_text()) == []


def test_both_methods_run_against_an_http_teacher(project, server):
    params = seed_project(project, server)
    metrics = stage.run(params, NullTracker())
    out = project.path / "data" / "synth"
    records = read_jsonl(out / "conversations.jsonl")
    by_method = {m: [r for r in records if r["synthetic"]["method"] == m] for m in ("self_instruct", "evol_instruct")}
    assert len(by_method["self_instruct"]) == 6 == metrics["self_instruct"]["kept"]  # rounds until the target
    assert by_method["evol_instruct"] and metrics["records"] == len(records)
    seed_ids = {r["id"] for r in read_jsonl(project.path / "data" / "raw" / "conversations.jsonl")}
    for r in by_method["self_instruct"]:
        assert r["source"] == r["task"] == "synthetic:self_instruct" and r["license"] == "unknown"
        assert r["synthetic"]["teacher"] == "http:scripted" and r["synthetic"]["round"] >= 1
        assert len(r["synthetic"]["parents"]) == 8  # the in-context tasks it was asked with
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    clf = [r for r in by_method["self_instruct"] if r["synthetic"]["classification"]]
    assert all(r["messages"][-1]["content"] == "Positive" for r in clf)  # output-first: the label is the output
    known = seed_ids | {r["id"] for r in records}
    for r in by_method["evol_instruct"]:  # lineage: parent, operation, round, root
        syn = r["synthetic"]
        assert syn["parent"] in known and syn["root"] in seed_ids and syn["round"] in (1, 2)
        assert syn["operation"] in ("add_constraints", "deepen", "increase_reasoning", "complicate_input", "breadth")
        assert "#Rewritten Prompt#" not in r["messages"][0]["content"]
    reasons = {row["reason"] for row in read_jsonl(out / "rejects.jsonl")}
    assert {"self_instruct.blocklist", "self_instruct.rouge_l"} <= reasons  # the cat picture, repeated tasks
    assert "evol_instruct.copied_prompt_words" in reasons  # the scripted "concretize" copies "#Rewritten Prompt#"
    assert metrics["teacher_calls"] == len(server.requests) and metrics["cache_hits"] == 0
    assert metrics["seconds_per_record"] > 0 and metrics["kept_fraction"] < 1
    assert json.loads((out / "sources.json").read_text())[0]["task"] == "synthetic:self_instruct"
    # in-context tasks: 6 seeds + 2 generated once the pool has generated tasks (the paper's mix)
    listed = [re.findall(r"^Task \d+: (.*)$", b["messages"][-1]["content"], re.M) for b in server.requests
              if b["messages"][-1]["content"].startswith("Come up with a series")]
    seed_texts = {i for i, _, _ in SEEDS}
    assert [sum(t not in seed_texts for t in shown) for shown in listed][:2] == [0, 0]  # round 1: seeds only
    assert sum(t not in seed_texts for t in listed[-1]) == 2 and len(listed[-1]) == 8


def test_kill_and_resume_reuses_the_cache(project):
    """A teacher that goes away after 5 answers stops the run; the re-run asks only what is missing
    and makes what an uninterrupted run makes; a third run asks nothing."""
    calls = {"n": 0, "fail_after": 5}

    def flaky(body):
        calls["n"] += 1
        return 400 if calls["fail_after"] and calls["n"] > calls["fail_after"] else scripted(body)

    srv = ChatServer(flaky)
    try:
        params = seed_project(project, srv, teacher={"batch_size": 1})  # one request at a time: exact counts
        with pytest.raises(TeacherUnavailable, match="synthesize.teacher: .*HTTP 400"):
            stage.run(params, NullTracker())
        assert not (project.path / "data" / "synth").exists()  # nothing half-written
        cached, = (project.path / "cache").glob("*.jsonl")
        assert len(cached.read_text().splitlines()) == 5  # every answer was written when it came
        calls.update(n=0, fail_after=0)
        resumed = stage.run(params, NullTracker())
        assert resumed["cache_hits"] == 5 and resumed["teacher_calls"] == calls["n"]
        first = (project.path / "data" / "synth" / "conversations.jsonl").read_bytes()

        calls["n"] = 0
        fresh = stage.run(with_cache(params, "fresh-cache"), NullTracker())
        assert fresh["cache_hits"] == 0 and fresh["teacher_calls"] == resumed["teacher_calls"] + 5
        assert (project.path / "data" / "synth" / "conversations.jsonl").read_bytes() == first

        calls["n"] = 0
        again = stage.run(params, NullTracker())
        assert calls["n"] == 0 and again["teacher_calls"] == 0 and again["cache_hits"] == fresh["teacher_calls"]
        assert (project.path / "data" / "synth" / "conversations.jsonl").read_bytes() == first
    finally:
        srv.close()


def test_sigkill_mid_run_then_resume(project):
    """kill -9 of a synthesis run while the teacher answers its 6th request: the 5 answers it got
    are in the cache, and the re-run asks only the others."""
    state = {"n": 0, "hold": True}
    arrived, release = threading.Event(), threading.Event()

    def held(body):
        state["n"] += 1
        if state["hold"] and state["n"] > 5:
            arrived.set()
            release.wait(60)
            return 503
        return scripted(body)

    srv = ChatServer(held)
    try:
        params = seed_project(project, srv, teacher={"batch_size": 1})
        code = ("from alignflow.config import load_params\nfrom alignflow.data.synthesis.stage import run\n"
                "run(load_params('params.yaml'), None)\n")
        child = subprocess.Popen([sys.executable, "-c", code], cwd=project.path, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
        try:
            assert arrived.wait(120), child.stderr.read().decode()[-2000:] if child.poll() is not None else "no request"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
            release.set()
        state.update(n=0, hold=False)
        resumed = stage.run(params, NullTracker())
        assert resumed["cache_hits"] == 5 and resumed["teacher_calls"] == state["n"] > 0
        state["n"] = 0
        fresh = stage.run(with_cache(params, "fresh-cache"), NullTracker())
        assert fresh["teacher_calls"] == resumed["teacher_calls"] + 5  # what a run without the kill asks
    finally:
        srv.close()


def test_in_process_tiny_model_teacher(project):
    """The embedded model's path on a random tiny model: it runs, its gibberish is filtered with
    reasons, and a re-run is served from the cache without loading the model."""
    params = seed_project(project, teacher={"backend": "local", "model": "tiny:llama", "max_new_tokens": 12,
                                            "batch_size": 8, "cache_dir": "cache"},
                          self_instruct={"target": 2, "max_rounds": 1}, evol_instruct={"rounds": 1, "max_inputs": 2})
    metrics = stage.run(params, NullTracker())
    assert metrics["teacher"] == "local:tiny:llama" and metrics["teacher_calls"] >= 4  # 2 generation + 2 evolution
    rejects = read_jsonl(project.path / "data" / "synth" / "rejects.jsonl")
    assert len(rejects) + metrics["records"] >= metrics["evol_instruct"]["candidates"]
    assert all(row["stage"] == "synthesize" and row["reason"].split(".")[0] in ("self_instruct", "evol_instruct")
               for row in rejects)
    again = stage.run(params, NullTracker())
    assert again["teacher_calls"] == 0 and again["cache_hits"] == metrics["teacher_calls"]


def test_synthetic_records_go_through_clean(project):
    """Dedup and decontamination drop synthetic records like any other; the kept ones keep their
    provenance; format's task weights learn the synthetic tasks."""
    params = project.params()
    raw, synth = project.path / "data" / "raw", project.path / "data" / "synth"
    human = conversation_record([{"role": "user", "content": "Name three colors of the rainbow please."},
                                 {"role": "assistant", "content": "Red, orange and yellow are three of them."}],
                                task="alpaca", source="alpaca", license="MIT")
    write_jsonl(raw / "conversations.jsonl", [human])
    write_jsonl(raw / "preferences.jsonl", [])
    write_jsonl(raw / "prompts.jsonl", [])
    (raw / "sources.json").write_text('[{"task": "alpaca", "weight": 1.0}]\n')
    clean_stage.run(params, NullTracker())
    baseline = (project.path / "data" / "clean" / "sources.json").read_text()
    assert baseline == (raw / "sources.json").read_text()  # no synthetic data: collect's file as it was

    prov = {"task": "synthetic:evol_instruct", "source": "synthetic:evol_instruct", "license": "unknown",
            "synthetic": {"method": "evol_instruct", "round": 1, "parent": human["id"]}}
    eval_prompt = json.loads((project.path / "data/sample/eval_prompts.jsonl").read_text().splitlines()[0])
    contaminated = conversation_record([{"role": "user", "content": eval_prompt["prompt"]},
                                        {"role": "assistant", "content": "An answer to an eval prompt, learned by heart."}],
                                       **prov)
    fresh = conversation_record([{"role": "user", "content": "Describe a rare kite festival and who keeps it alive."},
                                 {"role": "assistant", "content": "In one coastal town, fishermen fly kites at dawn."}],
                                **prov)
    write_jsonl(synth / "conversations.jsonl", [dict(human, **prov), contaminated, fresh])
    (synth / "sources.json").write_text(json.dumps([{"task": "synthetic:evol_instruct", "weight": 2.0}]))
    metrics = clean_stage.run(params, NullTracker())
    kept = read_jsonl(project.path / "data" / "clean" / "conversations.jsonl")
    assert [r["id"] for r in kept] == [human["id"], fresh["id"]]
    assert kept[1]["synthetic"]["parent"] == human["id"]
    reasons = {row["record"]["id"]: row["reason"] for row in read_jsonl(project.path / "data/clean/rejects.jsonl")}
    assert reasons == {contaminated["id"]: "decontamination", human["id"]: "exact_dedup"}
    assert metrics["synthetic"] == {"input": 3, "output": 1}
    from alignflow.data.format import task_weights

    assert task_weights(project.path / "data" / "clean" / "sources.json") == {"alpaca": 1.0, "synthetic:evol_instruct": 2.0}


# ------------------------------------------------------------------------------------ the teacher


def test_transient_failures_are_retried_and_failures_not_cached(tmp_path):
    replies = iter([503, 429, "fine"])
    srv = ChatServer(lambda body: next(replies, 503))
    try:
        p = TeacherParams(backend="http", base_url=srv.url, model="m", max_retries=2, retry_backoff_s=0,
                          cache_dir=str(tmp_path))
        teacher = Teacher(p, "t")
        assert teacher.ask([Request([{"role": "user", "content": "hi"}])]) == ["fine"]
        assert teacher.stats["retries"] == 2 and len(srv.requests) == 3
        assert srv.requests[0]["temperature"] == 0.7 and srv.requests[0]["max_tokens"] == 256
        failing = Teacher(p.model_copy(update={"max_retries": 0}), "t")
        assert failing.ask([Request([{"role": "user", "content": "other"}])]) == [None]
        assert failing.stats["failed"] == 1
        assert Teacher(p, "t").cache.get(next(iter(failing.cache.replies))) == "fine"  # only the answer was kept
        assert len(failing.cache.replies) == 1
    finally:
        srv.close()


def test_rate_limit_and_salted_samples(tmp_path):
    srv = ChatServer(lambda body: f"reply {len(srv.requests)}")
    try:
        p = TeacherParams(backend="http", base_url=srv.url, model="m", requests_per_minute=600, cache_dir=None)
        teacher = Teacher(p, "t")
        started = time.perf_counter()
        same = [{"role": "user", "content": "the same prompt"}]
        replies = teacher.ask([Request(same, salt=str(i)) for i in range(4)])
        assert time.perf_counter() - started >= 0.29  # 4 requests, 0.1 s apart
        assert len(set(replies)) == 4  # a salt makes a second sample, not a cache hit
        assert teacher.ask([Request(same, salt="0")]) == [replies[0]] and teacher.stats["cache_hits"] == 1
    finally:
        srv.close()


def test_unreachable_teacher_is_one_error_naming_the_parameter(tmp_path):
    p = TeacherParams(backend="http", base_url="http://127.0.0.1:9/v1", model="m", timeout_s=2, cache_dir=None)
    with pytest.raises(TeacherUnavailable, match="synthesize.teacher: LLM judge http://127.0.0.1:9"):
        Teacher(p, "synthesize.teacher").ask([Request([{"role": "user", "content": "hi"}])])


def test_cache_skips_the_line_a_kill_cut_short(tmp_path):
    path = tmp_path / "c.jsonl"
    ChatCache(path).put("a", "one")
    with open(path, "a") as fh:
        fh.write('{"key": "b", "rep')  # killed mid-write
    cache = ChatCache(path)
    assert cache.get("a") == "one" and cache.get("b") is None
    cache.put("b", "two")
    assert ChatCache(path).get("b") is None  # the torn line glued to it; asked again next time, never wrong
    assert ChatCache(path).get("a") == "one"


# ------------------------------------------------------------------------------------ filters


POOL = [F.tokens("Give three tips for staying healthy.")]


@pytest.mark.parametrize("check, dropped, kept", [
    (lambda t: F.rouge_check(F.tokens(t), POOL, 0.7)[0], "Give three good tips for staying healthy.",
     "Plan a weekend trip for someone who loves glaciers."),
    (lambda t: F.rouge_check(F.tokens(t), POOL, 0.7)[0], "Give three tips for staying healthy.",  # a duplicate
     "Give a tip."),
    (lambda t: F.blocklist_check(t, ["image", "go to"]), "Describe the image below.", "Describe the imagery of this poem."),
    (lambda t: F.blocklist_check(t, ["image", "go to"]), "Go to the website and order.", "Tell me where to go."),
    (lambda t: F.blocklist_check(t, [], ["write a program"]), "Write a program that sorts files.",
     "Explain what a program is."),
    (lambda t: F.length_check(t, 4, 12), "Sort these.", "Sort these numbers from small to large."),
    (lambda t: F.length_check(t, 4, 12), "word " * 13, "Sort these numbers from small to large."),
    (F.language_check, "Расскажи мне о погоде в Москве сегодня.", "Tell me about the weather in Paris today."),
    (F.language_check, "xq zvv kpl rrt wqq mnb", "Tell me about the weather in Paris today."),
    (F.language_check, "   ", "Hi there."),
    (F.start_check, "- list three fruits", "List three fruits."),
    (F.start_check, "¿List three fruits?", "List three fruits."),
    (lambda t: F.instance_check("Echo it.", "hello there", t, 50), "Hello there!", "Hi, how are you?"),
    (lambda t: F.instance_check("Answer.", "", t, 50), "", "Forty-two."),
    (lambda t: F.instance_check("Answer.", "", t, 5), "one two three four five six", "Forty-two."),
    (lambda t: F.instance_check("Answer.", "", t, 50), "Это ответ на вопрос.", "Positive"),
    (lambda t: F.instance_check("Answer.", "", t, 50), "кошка", "1, 2, 5, 9"),
    (F.copies_prompt_words, "#Rewritten Prompt#: Explain gravity.", "Explain gravity to a ten-year-old."),
    (F.copies_prompt_words, "Here is the given prompt, rewritten: explain gravity.", "Explain gravity briefly."),
    (lambda t: F.no_information_gain("Explain gravity.", t), "explain GRAVITY!", "Explain gravity using a falling apple."),
    (lambda t: F.no_information_gain("Explain why gravity pulls things down.", t), "Explain gravity.",
     "Explain gravity in two steps."),
    (lambda t: F.cannot_answer(t, 80), "Sorry, I cannot answer that.", "Sorry is a word, and " + "more words " * 40),
    (F.stopwords_only, "... and the of it ...", "The apple falls."),
    (F.stopwords_only, "?!", "Yes, 42."),
])
def test_each_filter_drops_one_and_keeps_another(check, dropped, kept):
    assert check(dropped) is not None, dropped
    assert check(kept) is None, kept


def test_parsing_the_teachers_replies():
    reply = "Sure! Here are more tasks:\nTask 9: Write a limerick about a cat.\nTask 10: Name two rivers.\n\nTask 11:"
    assert si.parse_instructions(reply) == ["Write a limerick about a cat.", "Name two rivers."]
    assert si.parse_instructions("1. Name a color.\n2. Spell 'cat'.") == ["Name a color.", "Spell 'cat'."]
    assert si.parse_instructions("Name a planet.") == ["Name a planet."] and si.parse_instructions(None) == []
    assert si.is_classification(" yes.") and not si.is_classification("No") and not si.is_classification(None)
    assert si.parse_instance("Class label: Even\nInput: 42", classification=True) == ("42", "Even")
    assert si.parse_instance("Input: <noinput>\nOutput: Paris.", classification=False) == ("", "Paris.")
    assert si.parse_instance("Input: 3, 1, 2\nOutput: 1, 2, 3", classification=False) == ("3, 1, 2", "1, 2, 3")
    assert si.parse_instance("Just an answer.", classification=False) == ("", "Just an answer.")


# ------------------------------------------------------------------------------------ params


@pytest.mark.parametrize("section, message", [
    ({"enabled": True, "teacher": {"backend": "http"}}, r"synthesize\.teacher\.base_url"),
    ({"self_instruct": {"human_tasks": 9}}, r"synthesize\.self_instruct.*human_tasks: 9"),
    ({"self_instruct": {"target": 0}}, r"synthesize\.self_instruct\.target"),
    ({"evol_instruct": {"operations": ["shorten"]}}, r"synthesize\.evol_instruct\.operations"),
    ({"teacher": {"temperature": -1}}, r"synthesize\.teacher\.temperature"),
    ({"enabled": True, "self_instruct": {"enabled": False}, "evol_instruct": {"enabled": False}},
     r"synthesize\.enabled: true, but self_instruct\.enabled and evol_instruct\.enabled are both false"),
    ({"enabled": True}, r"synthesize\.enabled: true, but no collect source is marked `seeds: true`"),
    ({"teacher": {"batch": 4}}, r"synthesize\.teacher\.batch: unknown key"),
])
def test_params_errors_name_the_parameter(project, section, message):
    with pytest.raises(ParamsError, match=message):
        project.params(synthesize=section)

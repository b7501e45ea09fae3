"""Decontamination finds planted overlaps with the eval sets (13-gram, 50-char, whole short prompts, CJK)."""

from __future__ import annotations

import json

from alignflow.data import clean
from alignflow.data.decontam import EvalIndex

from .conftest import NullTracker, read_jsonl, write_jsonl

EVAL = [
    "Write a detailed product description for a solar powered backpack that charges phones while hiking in the mountains",
    "请用三句话解释为什么天空在白天是蓝色的，并给出一个适合小学生理解的比喻来帮助他们记住这个现象，最后再推荐一本相关的科普读物给家长参考。",
    "Name three famous paintings by Vincent van Gogh",
    "Hi there",
]


def test_planted_overlaps_are_found():
    index = EvalIndex(EVAL, ngram=13, substring_chars=50)
    train = [
        "Unrelated text about cooking pasta with garlic, olive oil and a little chili for dinner tonight.",
        # 13 consecutive words of eval 0, with different case and punctuation around them
        "Task: WRITE a detailed product description for a solar-powered backpack that charges phones! Thanks.",
        # 50+ characters of the Chinese eval prompt (no word boundaries: the substring rule catches it)
        "老师说：解释为什么天空在白天是蓝色的，并给出一个适合小学生理解的比喻来帮助他们记住这个现象，最后再推荐一本相关的书。",
        # a whole short eval prompt (fewer than 13 words) inside a longer text
        "Question: name three famous paintings by Vincent van Gogh. Answer: Starry Night, Sunflowers, Irises.",
        # a whole prompt that is too short to mean anything ("Hi there") is not matched
        "Hi there, how are you doing today my friend?",
    ]
    matches = {m.index: m for m in index.find(train)}
    assert sorted(matches) == [1, 2, 3]
    assert matches[1].eval_index == 0 and matches[1].kind == "13-gram"
    assert matches[2].eval_index == 1 and matches[2].kind == "50-char"
    assert matches[3].eval_index == 2 and matches[3].kind == "whole-text"


def test_near_miss_is_not_contamination():
    index = EvalIndex(EVAL)
    # fewer than 13 shared words and fewer than 50 shared characters
    assert index.find(["Please write a detailed product description for a solar lamp."]) == []
    assert index.find(["天空在白天是蓝色的，这是一个常见的问题。"]) == []


def test_clean_stage_drops_contaminated_records_and_reports(project):
    write_jsonl(project.path / "evals" / "mine.jsonl", [{"prompt": EVAL[0], "reference": "A backpack."}])
    raw = project.path / "data" / "raw"
    convs = [
        {"id": "c1", "messages": [{"role": "user", "content": "Describe a good hiking backpack for long trips please."},
                                  {"role": "assistant", "content": "It should be light, waterproof and have a hip belt."}],
         "task": "t", "source": "s", "license": "MIT"},
        {"id": "c2", "messages": [{"role": "user", "content": EVAL[0] + " in 100 words."},
                                  {"role": "assistant", "content": "Meet the SunPack: a backpack with solar panels."}],
         "task": "t", "source": "s", "license": "MIT"},
    ]
    write_jsonl(raw / "conversations.jsonl", convs)
    write_jsonl(raw / "preferences.jsonl", [])
    write_jsonl(raw / "prompts.jsonl", [])
    params = project.params(clean={"decontamination": {"eval_sets": [{"path": "evals/mine.jsonl", "format": "prompts"}]}})
    metrics = clean.run(params, NullTracker())
    assert metrics["steps"]["decontamination"]["dropped"] == 1
    assert [r["id"] for r in read_jsonl(project.path / "data/clean/conversations.jsonl")] == ["c1"]
    [reject] = [r for r in read_jsonl(project.path / "data/clean/rejects.jsonl") if r["reason"] == "decontamination"]
    assert reject["record"]["id"] == "c2" and "overlaps eval set mine" in reject["detail"]
    report = json.loads((project.path / "data/clean/decontamination.json").read_text())
    assert report["matched"] == 1 and report["matches"][0]["id"] == "c2" and report["matches"][0]["match"] == "13-gram"
    # the eval prompts travel on to format as prompt records
    [ev] = read_jsonl(project.path / "data/clean/eval_prompts.jsonl")
    assert ev["prompt"][0]["content"] == EVAL[0] and ev["reference"] == "A backpack."

"""A malformed Label Studio export: each bad task or annotation is one reject with its reason, the rest is kept."""

from __future__ import annotations

import copy
import json

import pytest

from alignflow.io import InputError, RejectWriter
from alignflow.rlhf import labelstudio

SAMPLES = [
    {"prompt_id": "p1", "prompt": [{"role": "user", "content": "Capital of France?"}], "responses": ["Paris.", "Lyon.", "Nice."]},
    {"prompt_id": "p2", "prompt": [{"role": "user", "content": "2+2?"}], "responses": ["4", "5"]},
    {"prompt_id": "p3", "prompt": [{"role": "user", "content": "Say x."}], "responses": ["x", "x"]},
]
TASKS = labelstudio.export_tasks(SAMPLES, "ranking") + labelstudio.export_tasks(SAMPLES, "pairwise")
DATA = {t["data"]["alignflow_id"]: t["data"] for t in TASKS}
LEFT = [{"type": "pairwise", "value": {"selected": "left"}}]


def ranked(task_id: str, order: list[str], ls_id: int = 1) -> dict:
    return {"id": ls_id, "data": DATA[task_id], "annotations": [
        {"id": 10 + ls_id, "completed_by": 1, "result": [{"type": "ranker", "value": {"ranker": {"responses": order}}}]}]}


def pair(result=LEFT, ls_id: int = 2, **fields) -> dict:
    """A pairwise task on p2 ('4' vs '5'), with `fields` replacing the task's own."""
    task = {"id": ls_id, "data": DATA["p2:0-1"], "annotations": [{"id": 20, "completed_by": 2, "result": result}]}
    return {**task, **fields}


def without(task: dict, key: str) -> dict:
    return {k: v for k, v in task.items() if k != key}


GOOD = ranked("p1", ["r1", "r0", "r2"])

# case id -> (the bad entry, the reject reason, what the reject detail says)
BAD = {
    "entry_not_an_object": ("oops", "malformed_task", "task #1: task must be an object, got str"),
    "task_without_data": (without(pair(), "data"), "malformed_task", "no 'data'"),
    "data_not_an_object": (pair(data="p2:0-1"), "malformed_task", "'data' must be an object, got str"),
    "no_alignflow_id": (pair(data=without(DATA["p2:0-1"], "alignflow_id")), "malformed_task", "'data.alignflow_id' must be our task id"),
    "prompt_missing": (pair(data=without(DATA["p2:0-1"], "prompt")), "malformed_task", "no 'data.prompt'"),
    "annotations_missing": (without(pair(), "annotations"), "no_annotation", "'p2:0-1'): no annotations"),
    "annotations_empty": (pair(annotations=[]), "no_annotation", "no annotations"),
    "annotations_not_a_list": (pair(annotations={"result": LEFT}), "malformed_task", "annotations must be a list, got dict"),
    "annotation_not_an_object": (pair(annotations=["left"]), "malformed_annotation", "annotations[0]: annotation must be an object"),
    "result_missing": (pair(annotations=[{"id": 3, "completed_by": 2}]), "malformed_annotation", "annotations[0]: no result"),
    "result_empty": (pair(result=[]), "malformed_annotation", "annotations[0]: no result"),
    "result_entry_not_an_object": (pair(result=["left"]), "malformed_annotation", "result[0] must be an object, got str"),
    "value_not_an_object": (pair(result=[{"type": "pairwise", "value": "left"}]), "malformed_annotation", "'value' must be an object"),
    "choice_value_unknown": (pair(result=[{"type": "pairwise", "value": {"selected": "middle"}}]), "unknown_choice",
                             "pairwise 'selected' must be left or right (got 'middle')"),
    "ranker_without_order": (pair(data=DATA["p2"], result=[{"type": "ranker", "value": {"ranker": {}}}]), "malformed_annotation",
                             "ranker result without an order"),
    "pairwise_choice_on_a_ranking_task": (pair(data=DATA["p2"]), "malformed_annotation", "a pairwise choice on a ranking task"),
    "chosen_equals_rejected_in_a_ranking": (ranked("p2", ["r0", "r0"], ls_id=2), "same_response", "ranking lists a response twice"),
    "chosen_equals_rejected_same_text": (pair(data=DATA["p3:0-1"]), "same_response", "left and right are the same text"),
    "only_cancelled_annotations": (pair(annotations=[{"id": 4, "was_cancelled": True, "result": []}]), "no_annotation",
                                   "all 1 annotation(s) cancelled"),
    "duplicate_task_id": (ranked("p1", ["r0", "r1", "r2"], ls_id=7), "duplicate_task", "task 'p1' again (first as task #0)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_label_studio_task_is_rejected_and_the_rest_kept(case):
    bad, reason, detail = BAD[case]
    rejects = RejectWriter("rank")
    judgements = labelstudio.import_annotations([copy.deepcopy(GOOD), copy.deepcopy(bad)], TASKS, rejects)
    assert [(j["task_id"], j["order"]) for j in judgements] == [("p1", [1, 0, 2])]  # the good task, once
    [row] = rejects.rows
    assert row["reason"] == reason and row["stage"] == "rank"
    assert row["detail"].startswith("<annotations>: task #1") and detail in row["detail"], row["detail"]
    assert row["record"] == bad


def test_bad_annotation_does_not_cost_the_task_its_good_ones():
    task = pair(annotations=[{"id": 1, "completed_by": 1, "result": LEFT}, {"id": 2, "completed_by": 2, "result": []},
                             {"id": 3, "completed_by": 3, "was_cancelled": True}])
    rejects = RejectWriter("rank")
    [j] = labelstudio.import_annotations([task], TASKS, rejects)
    assert (j["winner"], j["loser"], j["annotator"]) == (0, 1, 1)
    assert [r["detail"] for r in rejects.rows] == ["<annotations>: task #0 (Label Studio id 2, 'p2:0-1'): annotations[1]: no result"]


def test_rejects_are_logged_when_no_writer_is_given(caplog):
    judgements = labelstudio.import_annotations([GOOD, pair(result=[{"type": "pairwise", "value": {"selected": "up"}}])], TASKS)
    assert len(judgements) == 1
    assert "1 rejected ({'unknown_choice': 1}), first: <annotations>: task #1" in caplog.text


@pytest.mark.parametrize("content, message", [
    ("{not json", r"export.json: cannot read the Label Studio export \(Expecting property name"),
    (json.dumps({"tasks": [GOOD]}), r"export.json: expected a JSON list of tasks \(Label Studio's JSON export\), got dict"),
    (b"[\xff]", r"export.json: cannot read the Label Studio export \('utf-8' codec can't decode byte 0xff"),
    (json.dumps([pair(result=[]), "oops"]), r"export.json: no usable annotation in its 2 tasks: 2 rejected "
                                            r"\({'malformed_annotation': 1, 'malformed_task': 1}\), first: export.json: task #0"),
], ids=["not_json", "not_a_list", "not_utf8", "nothing_usable"])
def test_unreadable_label_studio_export_is_one_error_naming_the_file(tmp_path, monkeypatch, content, message):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "export.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=message):
        labelstudio.import_annotations("export.json", TASKS)


def test_label_studio_export_with_a_bom_is_read(tmp_path):
    """Windows tools save JSON with a BOM; the export is still the same list of tasks."""
    path = tmp_path / "export.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD]).encode())
    assert len(labelstudio.import_annotations(path, TASKS)) == 1


def test_human_judge_writes_bad_annotations_to_the_rank_rejects(tmp_path):
    """Through build_judge (what the rank stage calls): the malformed tasks land in its rejects."""
    from alignflow.config import validate
    from alignflow.rlhf import judges

    export = tmp_path / "export.json"
    export.write_text(json.dumps([GOOD, BAD["choice_value_unknown"][0], BAD["entry_not_an_object"][0]]))
    params = validate({"rank": {"judge": "human", "human_annotations": str(export)}})
    rejects = RejectWriter("rank")
    judge = judges.build_judge("human", params, samples=SAMPLES, rejects=rejects)
    assert judge.score(SAMPLES[0]["prompt"], ["Lyon.", "Paris.", "Nice."]) == [1.0, 0.5, 0.0]
    assert rejects.counts == {"unknown_choice": 1, "malformed_task": 1}
    rejects.write(tmp_path / "rejects.jsonl")
    assert len((tmp_path / "rejects.jsonl").read_text().splitlines()) == 2

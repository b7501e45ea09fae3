"""Human judging through Label Studio: export samples as tasks, import completed annotations.

Round trip:
1. `rank` writes data/prefs/labelstudio_tasks.json (`export_tasks`): one task per prompt that
   ranks its K responses (Label Studio's Ranker tag), or one task per response pair (Pairwise tag).
   Create a project with `LABEL_CONFIG[mode]` as its labeling config and import the file.
2. Annotate, then export the project as JSON (Label Studio's "JSON" export: each task with its
   `data` and `annotations[].result`).
3. Set `rank.human_annotations` to that file and add `human` to `rank.judge`: `import_annotations`
   checks every annotation against the tasks rebuilt from data/samples (an annotation naming a task
   we did not export is an error, not silently dropped; a malformed task or annotation is rejected
   alone with its reason), `merge_scores` turns rankings and pairwise choices from all annotators
   into per-response win rates.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Literal

from alignflow.io import InputError, RejectWriter, content_id
from alignflow.rlhf.judges import render_conversation

log = logging.getLogger(__name__)
TASKS_PATH = Path("data/prefs/labelstudio_tasks.json")
Mode = Literal["ranking", "pairwise"]

LABEL_CONFIG: dict[str, str] = {
    "ranking": """<View>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Drag the responses into order: best first"/>
  <List name="responses" value="$responses" title="Responses"/>
  <Ranker name="rank" toName="responses"/>
</View>""",
    "pairwise": """<View>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt"/>
  <Text name="left" value="$left"/>
  <Text name="right" value="$right"/>
  <Pairwise name="comparison" toName="left,right" selectionStyle="background-color: #eff"/>
</View>""",
}


def export_tasks(samples: list[dict], mode: Mode = "ranking") -> list[dict]:
    """Label Studio tasks for the sample records; `data.alignflow_id` is our stable task id."""
    tasks = []
    for rec in samples:
        base = {"prompt_id": rec["prompt_id"], "prompt": render_conversation(rec["prompt"], sep="\n\n"), "messages": rec["prompt"]}
        responses = rec["responses"]
        if mode == "ranking":
            items = [{"id": f"r{i}", "title": f"Response {i + 1}", "body": r} for i, r in enumerate(responses)]
            tasks.append({"data": {**base, "alignflow_id": rec["prompt_id"], "responses": items,
                                   "response_texts": responses}})
        elif mode == "pairwise":
            for i, j in itertools.combinations(range(len(responses)), 2):
                tasks.append({"data": {**base, "alignflow_id": f"{rec['prompt_id']}:{i}-{j}", "left": responses[i],
                                       "right": responses[j], "left_index": i, "right_index": j,
                                       "response_texts": responses}})
        else:
            raise ValueError(f"Label Studio mode {mode!r}: expected 'ranking' or 'pairwise'")
    return tasks


def write_tasks(tasks: list[dict], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tasks, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def load_tasks(path: str | os.PathLike) -> list[dict]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read Label Studio tasks ({err})") from None


class BadTask(ValueError):
    """One exported task or annotation that cannot be used: it is rejected alone, the rest is kept."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _mapping(value: Any, what: str, reason: str) -> dict:
    if value is None:
        raise BadTask(reason, f"no {what}")
    if not isinstance(value, dict):
        raise BadTask(reason, f"{what} must be an object, got {type(value).__name__}")
    return value


def _items(value: Any, what: str, reason: str, empty_reason: str | None = None) -> list:
    if value is None or value == []:
        raise BadTask(empty_reason or reason, f"no {what}")
    if not isinstance(value, list):
        raise BadTask(reason, f"{what} must be a list, got {type(value).__name__}")
    return value


def _judgement_from_result(result: dict, data: dict, where: str) -> dict | None:
    value = result.get("value") or {}
    if not isinstance(value, dict):
        raise BadTask("malformed_annotation", f"'value' must be an object, got {type(value).__name__}")
    kind = result.get("type")
    if kind == "ranker" or "ranker" in value:
        buckets = value.get("ranker") or {}
        if not isinstance(buckets, dict) or not buckets or not all(isinstance(b, list) for b in buckets.values()):
            raise BadTask("malformed_annotation", "ranker result without an order")
        # One bucket = the full order; several = Label Studio buckets listed best first.
        order = [item for bucket in buckets.values() for item in bucket]
        known = {item["id"]: i for i, item in enumerate(data.get("responses", []))}
        unknown = [item for item in order if not isinstance(item, str) or item not in known]
        if unknown:  # our response ids: the task is not the one we exported
            raise InputError(f"{where}: ranking names unknown responses {unknown}")
        if len(set(order)) < len(order):
            raise BadTask("same_response", f"ranking lists a response twice ({order}): it would win against itself")
        if len(order) < 2:
            raise BadTask("malformed_annotation", f"ranking orders {len(order)} response(s): nothing is compared")
        return {"kind": "ranking", "order": [known[item] for item in order]}
    if kind == "pairwise" or "selected" in value:
        if "left_index" not in data:
            raise BadTask("malformed_annotation", "a pairwise choice on a ranking task")
        selected = value.get("selected")
        if selected not in ("left", "right"):
            raise BadTask("unknown_choice", f"pairwise 'selected' must be left or right (got {selected!r})")
        winner, loser = (data["left_index"], data["right_index"])[:: 1 if selected == "left" else -1]
        if data["response_texts"][winner] == data["response_texts"][loser]:
            raise BadTask("same_response", "left and right are the same text: chosen and rejected would be identical")
        return {"kind": "pairwise", "winner": winner, "loser": loser}
    return None  # other control tags (comments, ratings) carry no preference


def _read_export(export: str | os.PathLike | list) -> tuple[str, list]:
    """(name, tasks) of a Label Studio JSON export; a file that is not one is a single error naming it."""
    if isinstance(export, list):
        return "<annotations>", export
    source = str(export)
    try:
        items = json.loads(Path(export).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as err:
        raise InputError(f"{source}: cannot read the Label Studio export ({err})") from None
    if not isinstance(items, list):
        raise InputError(f"{source}: expected a JSON list of tasks (Label Studio's JSON export), got {type(items).__name__}")
    return source, items


def _where(source: str, n: int, item: Any) -> str:
    """'export.json: task #3 (Label Studio id 17, 'p1')': how errors and rejects name a task."""
    if not isinstance(item, dict):
        return f"{source}: task #{n}"
    data = item.get("data")
    task_id = data.get("alignflow_id") if isinstance(data, dict) else None
    return f"{source}: task #{n} (Label Studio id {item.get('id')}" + (f", {task_id!r})" if task_id else ")")


def _task_data(item: Any, by_id: dict[str, dict], where: str) -> tuple[str, dict]:
    """(alignflow id, our task data) for one exported task.

    A malformed task is a BadTask (rejected alone); a task we did not export, or one whose prompt
    or responses differ from ours, is an InputError: the export belongs to other samples.
    """
    item = _mapping(item, "task", "malformed_task")
    data = _mapping(item.get("data"), "'data'", "malformed_task")
    task_id = data.get("alignflow_id")
    if not isinstance(task_id, str):
        raise BadTask("malformed_task", f"'data.alignflow_id' must be our task id, got {task_id!r}")
    if task_id not in by_id:
        raise InputError(f"{where}: names unknown task {task_id!r} (not among the {len(by_id)} exported tasks)")
    ours = by_id[task_id]["data"]
    if not isinstance(data.get("prompt"), str):
        raise BadTask("malformed_task", "no 'data.prompt' (the annotator saw no prompt)")
    if data["prompt"] != ours["prompt"] or data.get("response_texts", ours["response_texts"]) != ours["response_texts"]:
        raise InputError(f"{where}: task {task_id!r} has a different prompt or responses than the exported one")
    return task_id, ours


def _annotation_judgements(ann: Any, ours: dict, where: str) -> list[dict]:
    ann = _mapping(ann, "annotation", "malformed_annotation")
    out = []
    for r, result in enumerate(_items(ann.get("result"), "result", "malformed_annotation")):
        j = _judgement_from_result(_mapping(result, f"result[{r}]", "malformed_annotation"), ours, where)
        if j:
            out.append({"annotator": ann.get("completed_by"), **j})
    return out


def import_annotations(export: str | os.PathLike | list[dict], tasks: list[dict],
                       rejects: RejectWriter | None = None) -> list[dict]:
    """Judgements {"task_id", "prompt_id", "kind", ...} from a Label Studio JSON export.

    Every exported task must be one of `tasks` (matched by data.alignflow_id). A malformed task or
    annotation (no data, no result, an unknown choice, chosen == rejected, a task listed twice, ...)
    is rejected alone into `rejects` with its reason, and the rest is kept; cancelled annotations
    are skipped. An export with no usable annotation at all is an error.
    """
    source, export = _read_export(export)
    rejects = rejects if rejects is not None else RejectWriter("rank")
    start = len(rejects)
    by_id = {t["data"]["alignflow_id"]: t for t in tasks}
    first_seen: dict[str, int] = {}
    judgements = []
    for n, item in enumerate(export):
        where = _where(source, n, item)
        try:
            task_id, ours = _task_data(item, by_id, where)
            if task_id in first_seen:
                raise BadTask("duplicate_task", f"task {task_id!r} again (first as task #{first_seen[task_id]}): "
                                                "its annotations would count twice")
            first_seen[task_id] = n
            annotations = _items(item.get("annotations"), "annotations", "malformed_task", "no_annotation")
        except BadTask as err:
            rejects.add(item, err.reason, f"{where}: {err}")
            continue
        found, bad, cancelled = [], 0, 0
        for a, ann in enumerate(annotations):
            if isinstance(ann, dict) and ann.get("was_cancelled"):
                cancelled += 1
                continue
            try:
                found += _annotation_judgements(ann, ours, f"{where}: annotations[{a}]")
            except BadTask as err:
                rejects.add(item, err.reason, f"{where}: annotations[{a}]: {err}")
                bad += 1
        if not found and not bad:
            why = f"all {cancelled} annotation(s) cancelled" if cancelled else "no ranking or pairwise choice in its results"
            rejects.add(item, "no_annotation", f"{where}: {why}")
        judgements += [{"task_id": task_id, "prompt_id": ours["prompt_id"], **j} for j in found]
    new = rejects.rows[start:]
    if new:
        summary = f"{len(new)} rejected ({dict(Counter(r['reason'] for r in new))}), first: {new[0]['detail']}"
        if not judgements:
            raise InputError(f"{source}: no usable annotation in its {len(export)} tasks: {summary}")
        log.warning("%s: %s", source, summary)
    return judgements


def pairwise_outcomes(judgement: dict) -> list[tuple[int, int]]:
    """(winner, loser) response indices implied by one judgement."""
    if judgement["kind"] == "ranking":
        return list(itertools.combinations(judgement["order"], 2))
    return [(judgement["winner"], judgement["loser"])]


def merge_scores(judgements: list[dict], tasks: list[dict]) -> dict[str, dict[str, float]]:
    """{content_id(prompt messages): {response text: win rate over all annotators' comparisons}}."""
    texts = {t["data"]["prompt_id"]: (t["data"]["messages"], t["data"]["response_texts"]) for t in tasks}
    wins: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    games: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for j in judgements:
        for winner, loser in pairwise_outcomes(j):
            wins[j["prompt_id"]][winner] += 1
            games[j["prompt_id"]][winner] += 1
            games[j["prompt_id"]][loser] += 1
    out: dict[str, dict[str, float]] = {}
    for prompt_id, counts in games.items():
        messages, responses = texts[prompt_id]
        out[content_id(messages)] = {responses[i]: wins[prompt_id][i] / n for i, n in counts.items()}
    return out


def annotation_summary(judgements: list[dict]) -> dict[str, Any]:
    return {
        "human_judgements": len(judgements),
        "human_tasks_annotated": len({j["task_id"] for j in judgements}),
        "human_annotators": len({j.get("annotator") for j in judgements}),
    }

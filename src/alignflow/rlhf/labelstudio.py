"""Human judging through Label Studio: export samples as tasks, import completed annotations.

Round trip:
1. `rank` writes data/prefs/labelstudio_tasks.json (`export_tasks`): one task per prompt that
   ranks its K responses (Label Studio's Ranker tag), or one task per response pair (Pairwise tag).
   Create a project with `LABEL_CONFIG[mode]` as its labeling config and import the file.
2. Annotate, then export the project as JSON (Label Studio's "JSON" export: each task with its
   `data` and `annotations[].result`).
3. Set `rank.human_annotations` to that file and add `human` to `rank.judge`: `import_annotations`
   checks every annotation against the tasks rebuilt from data/samples (an annotation naming a task
   we did not export is an error, not silently dropped), `merge_scores` turns rankings and pairwise
   choices from all annotators into per-response win rates.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from alignflow.io import InputError, content_id

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


def _prompt_text(messages: list[dict]) -> str:
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def export_tasks(samples: list[dict], mode: Mode = "ranking") -> list[dict]:
    """Label Studio tasks for the sample records; `data.alignflow_id` is our stable task id."""
    tasks = []
    for rec in samples:
        base = {"prompt_id": rec["prompt_id"], "prompt": _prompt_text(rec["prompt"]), "messages": rec["prompt"]}
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


def _judgement_from_result(result: dict, data: dict, where: str) -> dict | None:
    value = result.get("value") or {}
    kind = result.get("type")
    if kind == "ranker" or "ranker" in value:
        buckets = value.get("ranker") or {}
        if not isinstance(buckets, dict) or not buckets:
            raise InputError(f"{where}: ranker result without an order")
        # One bucket = the full order; several = Label Studio buckets listed best first.
        order = [item for bucket in buckets.values() for item in bucket]
        known = {item["id"]: i for i, item in enumerate(data.get("responses", []))}
        unknown = [item for item in order if item not in known]
        if unknown:
            raise InputError(f"{where}: ranking names unknown responses {unknown}")
        return {"kind": "ranking", "order": [known[item] for item in order]}
    if kind == "pairwise" or "selected" in value:
        if "left_index" not in data:
            raise InputError(f"{where}: a pairwise choice on a ranking task")
        selected = value.get("selected")
        if selected not in ("left", "right"):
            raise InputError(f"{where}: pairwise 'selected' must be left or right (got {selected!r})")
        winner, loser = (data["left_index"], data["right_index"])[:: 1 if selected == "left" else -1]
        return {"kind": "pairwise", "winner": winner, "loser": loser}
    return None  # other control tags (comments, ratings) carry no preference


def import_annotations(export: str | os.PathLike | list[dict], tasks: list[dict]) -> list[dict]:
    """Judgements {"task_id", "prompt_id", "kind", ...} from a Label Studio JSON export.

    Every exported task must be one of `tasks` (matched by data.alignflow_id); cancelled
    annotations are skipped.
    """
    source = "<annotations>"
    if not isinstance(export, list):
        source = str(export)
        try:
            export = json.loads(Path(export).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(f"{source}: cannot read the Label Studio export ({err})") from None
    if not isinstance(export, list):
        raise InputError(f"{source}: expected a JSON list of tasks (Label Studio's JSON export)")
    by_id = {t["data"]["alignflow_id"]: t for t in tasks}
    judgements = []
    for n, item in enumerate(export):
        data = item.get("data") or {}
        task_id = data.get("alignflow_id")
        where = f"{source}: task #{n} (Label Studio id {item.get('id')})"
        if task_id not in by_id:
            raise InputError(f"{where}: names unknown task {task_id!r} (not among the {len(by_id)} exported tasks)")
        ours = by_id[task_id]["data"]
        if data.get("response_texts", ours["response_texts"]) != ours["response_texts"]:
            raise InputError(f"{where}: task {task_id!r} has different responses than the exported one")
        for ann in item.get("annotations") or []:
            if ann.get("was_cancelled"):
                continue
            for result in ann.get("result") or []:
                j = _judgement_from_result(result, ours, where)
                if j:
                    judgements.append({"task_id": task_id, "prompt_id": ours["prompt_id"],
                                       "annotator": ann.get("completed_by"), **j})
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

"""Quality selection of the SFT training conversations (format, `selection.*`): score, keep, balance.

- Score (Alpagasus, Chen et al. 2024): a judge rates each (instruction, input, output) 1-5 for the
  accuracy of the response with the paper's rubric; `llm` is any chat model behind the teacher's
  client (an OpenAI-compatible endpoint or an in-process model), `reward_model` a reward model as
  a cheap proxy, its scores turned into a rank-based 1-5 (1 = the worst, 5 = the best of the set).
  A reply without a rating is not guessed: the record is dropped as `unrated`.
- Keep the records scored >= `threshold`, then the best-scored `keep_fraction` of them (LIMA and
  Alpagasus: quality over quantity).
- Balance (optional): buckets of a complexity feature (instruction tokens, constraint count,
  evolution round) filled to target proportions, with format's water-filling quotas.

Only the train split is selected (format decides the split first): the held-out splits, and so
the eval sets, stay the same across a `selection.keep_fraction` sweep. Every drop goes to
data/formatted/rejects.jsonl with its score and reason; kept records carry `quality_score`.
"""

from __future__ import annotations

import bisect
import csv
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignflow.config.synthesis import BalanceParams, SelectionParams
from alignflow.data.filters import input_block
from alignflow.data.text import tokens
from alignflow.io import RejectWriter, content_id

RATING_SYSTEM = ("We would like to request your feedback on the performance of an AI assistant in response to the "
                 "instruction and the given input displayed following.")
RATING_TEMPLATE = """Instruction: {instruction}
Input: {input}
Response: {response}

Please rate according to the accuracy of the response to the instruction and the input. Each assistant receives a score on a scale of 1 to 5, where a higher score indicates a higher level of accuracy. Please first output a single line containing only the score. In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias."""
_RATING = re.compile(r"(?<![\d.])([1-5](?:\.\d+)?)(?![\d.]*\d)")
# What makes an instruction ask for more: the cues of Evol-Instruct's "add constraints".
_CONSTRAINT = re.compile(r"\b(must|should|at least|at most|no more than|no less than|exactly|only|without|do not|"
                         r"don't|ensure|make sure|include|limit(?:ed)? to|within|in \d+ (?:words|sentences))\b",
                         re.IGNORECASE)


def parts(record: dict) -> tuple[str, str, str]:
    """(instruction, input, output) of a conversation: its last user turn split at the blank line."""
    msgs = record["messages"]
    prompt = [m for m in msgs if m["role"] == "user"][-1]["content"]
    inp = input_block(prompt) or ""
    return (prompt.partition("\n\n")[0] if inp else prompt), inp, msgs[-1]["content"]


def rating_request(record: dict) -> list[dict]:
    instruction, inp, output = parts(record)
    return [{"role": "system", "content": RATING_SYSTEM},
            {"role": "user", "content": RATING_TEMPLATE.format(instruction=instruction, input=inp or "(none)",
                                                                response=output)}]


def parse_rating(reply: str | None) -> float | None:
    """The score on the reply's first non-empty line ("4", "Score: 4.5"), or None."""
    for line in (reply or "").splitlines():
        if line.strip():
            found = _RATING.search(line)
            return float(found.group(1)) if found else None
    return None


def llm_scores(records: list[dict], p: SelectionParams) -> list[float | None]:
    from alignflow.data.synthesis.teacher import Request, Teacher

    teacher = Teacher(p.llm, "selection.llm")
    replies = teacher.ask([Request(rating_request(r)) for r in records])
    return [parse_rating(r) for r in replies]


def rank_scale(raw: list[float]) -> list[float]:
    """Scores -> 1..5 by rank (ties share their mean rank): a reward model's scale means nothing
    across models, its order does; 4.0 keeps the top quarter."""
    n = len(raw)
    if n < 2:
        return [5.0] * n
    order = sorted(range(n), key=lambda i: raw[i])
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and raw[order[j + 1]] == raw[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return [round(1 + 4 * r / (n - 1), 4) for r in ranks]


def reward_model_scores(records: list[dict], p: SelectionParams) -> list[float | None]:
    from alignflow.models import load_reward_model
    from alignflow.rlhf.judges import score_with_reward_model

    model, tokenizer = load_reward_model(p.reward_model)
    prompts = [r["messages"][:-1] for r in records]
    return rank_scale(score_with_reward_model(model, tokenizer, prompts, [r["messages"][-1]["content"] for r in records]))


def complexity(record: dict, feature: str) -> float:
    instruction = [m for m in record["messages"] if m["role"] == "user"][-1]["content"]
    if feature == "instruction_tokens":
        return len(tokens(instruction))
    if feature == "constraints":
        return len(_CONSTRAINT.findall(instruction))
    synthetic = record.get("synthetic") or {}
    return synthetic.get("round", 0) if synthetic.get("method") == "evol_instruct" else 0


def balance(records: list[dict], p: BalanceParams, seed: int) -> tuple[list[dict], list[tuple[dict, str]]]:
    """(kept, [(dropped, detail)]): the largest subset whose buckets follow `proportions`."""
    from alignflow.data.format import mix_quotas, take

    buckets: dict[int, list[dict]] = {b: [] for b in range(len(p.proportions))}
    for r in records:
        buckets[bisect.bisect_left(p.edges, complexity(r, p.feature))].append(r)
    weights = {b: w for b, w in enumerate(p.proportions)}
    quotas = mix_quotas({b: len(v) for b, v in buckets.items()}, weights, None, upsample=True)
    kept, dropped = [], []
    for b, members in buckets.items():
        chosen = take(members, quotas.get(b, 0), seed, f"balance-{b}")
        ids = {r["id"] for r in chosen}
        kept += chosen
        dropped += [(r, f"{p.feature} bucket {b} over its {weights[b]:.0%} share") for r in members if r["id"] not in ids]
    return kept, dropped


@dataclass
class Selection:
    kept: dict[str, float | None]  # kept id -> its score (None: a task not scored)
    metrics: dict[str, Any]
    plot: list[dict]  # plots/selection_scores.csv: every rated record, best first, kept or not


def select(records: list[dict], p: SelectionParams, seed: int, rejects: RejectWriter) -> Selection:
    """Select among the train-split conversations; every drop goes to `rejects`."""
    scored = [r for r in records if p.tasks is None or r["task"] in p.tasks]
    passed = [r for r in records if not (p.tasks is None or r["task"] in p.tasks)]
    raw = (llm_scores if p.judge == "llm" else reward_model_scores)(scored, p) if scored else []
    dropped: Counter = Counter()

    def drop(rec: dict, score: float | None, reason: str, detail: str) -> None:
        dropped[reason] += 1
        rejects.add({**rec, "quality_score": score}, f"selection.{reason}", detail)

    rated = []
    for rec, score in zip(scored, raw):
        if score is None:
            drop(rec, None, "unrated", f"the {p.judge} judge gave no rating")
        elif p.threshold is not None and score < p.threshold:
            drop(rec, score, "below_threshold", f"score {score:g} < threshold {p.threshold:g}")
        else:
            rated.append((rec, score))
    # best first; ties in a stable order of the content (not of the file)
    rated.sort(key=lambda rs: (-rs[1], content_id(seed, rs[0]["id"])))
    keep = math.ceil(p.keep_fraction * len(rated))
    for rank, (rec, score) in enumerate(rated[keep:], keep + 1):
        drop(rec, score, "keep_fraction", f"score {score:g}: rank {rank} of {len(rated)}, keep_fraction {p.keep_fraction:g}")
    kept: dict[str, float | None] = {r["id"]: s for r, s in rated[:keep]}
    kept.update({r["id"]: None for r in passed})
    if p.balance.enabled:
        _, over = balance([r for r in records if r["id"] in kept], p.balance, seed)
        for rec, detail in over:
            drop(rec, kept.pop(rec["id"]), "balance", detail)
    scores = [s for s in raw if s is not None]
    metrics = {
        "judge": p.judge, "candidates": len(records), "scored": len(scored), "kept": len(kept),
        "dropped": dict(sorted(dropped.items())), "mean_score": round(sum(scores) / len(scores), 3) if scores else None,
        "score_histogram": {f"{k:g}": v for k, v in sorted(Counter(round(s) for s in scores).items())},
    }
    plot = sorted(({"score": s, "kept": int(r["id"] in kept)} for r, s in zip(scored, raw) if s is not None),
                  key=lambda row: -row["score"])
    return Selection(kept, metrics, [{"rank": i, **row} for i, row in enumerate(plot, 1)])


def write_scores_csv(rows: list[dict], path: Path) -> None:
    """The plot CSV (rank, score, kept): written on every run, with no rows when selection is off."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rank", "score", "kept"])
        writer.writerows([r["rank"], f"{r['score']:g}", r["kept"]] for r in rows)

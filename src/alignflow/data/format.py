"""format: data/clean -> data/formatted: splits, task mixing, chat formatting, length checks.

- Splits are a pure function of (seed, task, record id): a record never moves between train
  and test when other records are added or removed (no leakage across dataset versions).
- The train splits are mixed by task: each task gets a share of the file's cap proportional to
  its sources' `weight` (task balancing, as in FLAN: Longpre et al. 2023); a task short of its share passes the rest on
  (or is repeated with `format.upsample`).
- Outputs are TRL's conversational formats: SFT `messages`, preference `prompt/chosen/rejected`
  message lists, prompt records for sampling/PPO/eval with a `reference` when there is one.
- Verifiable-instruction prompts (prompts_ifeval_*): each instruction, in its conversation's split,
  also appears with 1..`format.constraints.max_per_prompt` IFEval constraints appended and the
  constraints stored (`constraints: [{id, kwargs}]`) for the checkers of eval, rank and align;
  train/val ones carry as `reference` the reference answer rewritten to follow them, when the
  checkers pass the rewrite (data/demonstrations.py).
- Lengths are counted with the configured model's tokenizer and chat template; over-long
  examples are truncated (the answer is cut) or dropped by `format.over_long`; every drop goes
  to data/formatted/rejects.jsonl with its file, id and length, as in the other stages.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from alignflow.config import Params
from alignflow.config.data import OUTPUT_FILES, ConstraintParams, FormatParams, SplitParams
from alignflow.data.selection import write_scores_csv
from alignflow.data.sources import prompt_record
from alignflow.io import InputError, RejectWriter, atomic_dir, read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)
CLEAN_DIR, OUT_DIR = Path("data/clean"), Path("data/formatted")
SELECTION_PLOT = Path("plots/selection_scores.csv")  # rank (best first), score, kept; no rows unless selection.enabled
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------- pure functions


def unit_hash(*parts: Any) -> float:
    """A stable number in [0, 1) from the parts (xxh64)."""
    return xxhash.xxh64_intdigest("\x1f".join(map(str, parts)).encode("utf-8")) / 2.0**64


def split_of(record_id: str, task: str, seed: int, ratios: SplitParams) -> str:
    u = unit_hash(seed, task, record_id)
    if u < ratios.train:
        return "train"
    return "val" if u < ratios.train + ratios.val else "test"


def mix_quotas(available: dict[str, int], weights: dict[str, float], total: int | None, upsample: bool = False) -> dict[str, int]:
    """How many records each task contributes to a file of `total` records (None: all there are).

    Shares follow the weights; without upsampling a task that has fewer records than its share
    gives all it has and the remainder is redistributed over the others (water-filling).
    """
    tasks = [t for t in available if available[t] > 0 and weights.get(t, 1.0) > 0]
    if not tasks:
        return {t: 0 for t in available}
    if total is None:
        if not upsample:
            return {t: available.get(t, 0) if t in tasks else 0 for t in available}
        # the largest file in which every task's share is available
        total = int(min(available[t] / weights.get(t, 1.0) for t in tasks) * sum(weights.get(t, 1.0) for t in tasks))
    quotas = {t: 0 for t in available}
    open_tasks, remaining = list(tasks), total
    while open_tasks and remaining > 0:
        wsum = sum(weights.get(t, 1.0) for t in open_tasks)
        share = {t: remaining * weights.get(t, 1.0) / wsum for t in open_tasks}
        short = [t for t in open_tasks if not upsample and available[t] - quotas[t] <= share[t]]
        if not short:
            # largest remainder rounding keeps the total exact
            floors = {t: math.floor(share[t]) for t in open_tasks}
            left = remaining - sum(floors.values())
            for t in sorted(open_tasks, key=lambda t: (floors[t] - share[t], t))[:left]:
                floors[t] += 1
            for t in open_tasks:
                quotas[t] += floors[t]
            break
        for t in short:
            remaining -= available[t] - quotas[t]
            quotas[t] = available[t]
            open_tasks.remove(t)
    return quotas


def take(records: list[dict], n: int, seed: int, salt: str, upsample: bool = False) -> list[dict]:
    """A deterministic sample of n records (hash order); repeated only when upsampling."""
    ordered = sorted(records, key=lambda r: unit_hash(seed, salt, r["id"]))
    if n <= len(ordered) or not upsample:
        return ordered[:n]
    return [ordered[i % len(ordered)] for i in range(n)]


def mix(records: list[dict], weights: dict[str, float], cap: int | None, seed: int, name: str, upsample: bool) -> list[dict]:
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    quotas = mix_quotas({t: len(v) for t, v in by_task.items()}, weights, cap, upsample)
    chosen = [r for t in sorted(by_task) for r in take(by_task[t], quotas[t], seed, name, upsample)]
    # interleave tasks (a stable shuffle), so a truncated read still sees the mix
    keyed = [(unit_hash(seed, name, "order", r["id"], k), r) for k, r in enumerate(chosen)]
    return [r for _, r in sorted(keyed, key=lambda x: x[0])]


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


PROV = ("task", "source", "license")


def sft_example(rec: dict, system_prompt: str | None) -> dict:
    return {"id": rec["id"], "messages": with_system(rec["messages"], system_prompt), **{k: rec[k] for k in PROV if k in rec}}


def preference_example(rec: dict, system_prompt: str | None) -> dict:
    out = {"id": rec["id"], "prompt": with_system(rec["prompt"], system_prompt), "chosen": rec["chosen"], "rejected": rec["rejected"]}
    if "margin" in rec:
        out["margin"] = rec["margin"]
    return {**out, **{k: rec[k] for k in PROV if k in rec}}


def prompt_from_conversation(rec: dict, system_prompt: str | None) -> dict:
    """The instruction of an SFT example as a prompt record; its answer is the reference.

    It keeps the conversation's id, so it lands in the same split as the conversation.
    """
    msgs = rec["messages"]
    return {"id": rec["id"], "prompt": with_system(msgs[:-1], system_prompt), "reference": msgs[-1]["content"],
            **{k: rec[k] for k in PROV if k in rec}}


def prompt_example(rec: dict, system_prompt: str | None) -> dict:
    out = {"id": rec["id"], "prompt": with_system(rec["prompt"], system_prompt)}
    if rec.get("reference") is not None:
        out["reference"] = rec["reference"]
    return {**out, **{k: rec[k] for k in PROV if k in rec}}


def constrained_prompt(prompt: dict, p: ConstraintParams, seed: int, demonstrate: bool = False) -> dict:
    """The prompt record with verifiable constraints appended to its last (user) message.

    Which constraints and their parameters are a pure function of (seed, record id). The reference
    answer was written without the constraints: with `demonstrate` (training splits, and
    format.constraints.demonstrations) it becomes the reference rewritten to follow them when the
    checkers pass the rewrite (data/demonstrations.py), else it is dropped."""
    from alignflow import verifiable
    from alignflow.data.demonstrations import demonstrate as rewrite

    n = 1 + int(unit_hash(seed, "constraint-count", prompt["id"]) * p.max_per_prompt)
    constraints = verifiable.pick_constraints(p.types, n, int(unit_hash(seed, "constraints", prompt["id"]) * 2**31))
    last = prompt["prompt"][-1]
    instruction = verifiable.constrained_text(last["content"], constraints)
    messages = [*prompt["prompt"][:-1], {**last, "content": instruction}]
    out = {"id": f"{prompt['id']}-if", "prompt": messages, "constraints": [c.to_json() for c in constraints]}
    if demonstrate and prompt.get("reference"):
        demo = rewrite(prompt["reference"], out["constraints"], instruction)
        if demo is not None:
            out["reference"] = demo
    return {**out, **{k: prompt[k] for k in PROV if k in prompt}}


def harmful_prompt(rec: dict, system_prompt: str | None) -> dict:
    out = prompt_record(with_system(rec["prompt"], system_prompt), rec["chosen"][-1]["content"],
                        **{k: rec[k] for k in PROV if k in rec})
    return out


# ---------------------------------------------------------------------------------- tokenizer


def load_tokenizer(spec: str):
    """The configured model's tokenizer, with its chat template (ChatML when it has none)."""
    from alignflow.models import load_tokenizer as load

    return load(spec)


class LengthChecker:
    """Token counts with the chat template; cuts the last answer of over-long examples, rejects the rest."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int, policy: str, rejects: RejectWriter | None = None):
        self.tok, self.max_length, self.max_prompt_length, self.policy = tokenizer, max_length, max_prompt_length, policy
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.rejects = rejects if rejects is not None else RejectWriter("format")

    def drop(self, ex: dict, name: str, n: int, limit: str, why: str = "") -> tuple[None, int]:
        """Count an over-long example and keep it as a reject naming the file, id and limit."""
        self.counts[name]["dropped_over_long"] += 1
        detail = f"{name}: {ex['id']}: {n} tokens > format.{limit} {getattr(self, limit)}"
        self.rejects.add(ex, "over_long", f"{detail} ({why})" if why else detail)
        return None, n

    def n_tokens(self, messages: list[dict], generation_prompt: bool = False) -> int:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def cut_answer(self, messages: list[dict], budget: int) -> list[dict] | None:
        """messages with the last (assistant) content shortened so the whole fits `budget` tokens."""
        for _ in range(4):
            excess = self.n_tokens(messages) - budget
            if excess <= 0:
                return messages
            ids = self.tok(messages[-1]["content"], add_special_tokens=False)["input_ids"]
            keep = len(ids) - excess - 2  # decode/re-encode may merge tokens differently: a small margin
            if keep < 1:
                return None
            messages = [*messages[:-1], {**messages[-1], "content": self.tok.decode(ids[:keep]).rstrip()}]
        return None

    def sft(self, ex: dict, name: str) -> tuple[dict | None, int]:
        n = self.n_tokens(ex["messages"])
        if n <= self.max_length:
            return ex, n
        if self.policy == "drop":
            return self.drop(ex, name, n, "max_length")
        cut = self.cut_answer(ex["messages"], self.max_length)
        if cut is None:
            return self.drop(ex, name, n, "max_length", "the answer cannot be cut to fit")
        self.counts[name]["truncated"] += 1
        return {**ex, "messages": cut}, self.n_tokens(cut)

    def preference(self, ex: dict, name: str) -> tuple[dict | None, int]:
        lens = [self.n_tokens(ex["prompt"] + ex[k]) for k in ("chosen", "rejected")]
        if max(lens) <= self.max_length:
            return ex, max(lens)
        if self.policy == "drop":
            return self.drop(ex, name, max(lens), "max_length")
        if self.n_tokens(ex["prompt"], True) >= self.max_length - 8:
            return self.drop(ex, name, max(lens), "max_length", "the prompt leaves no room for an answer")
        out = dict(ex)
        for k in ("chosen", "rejected"):
            cut = self.cut_answer(ex["prompt"] + ex[k], self.max_length)
            if cut is None:
                return self.drop(ex, name, max(lens), "max_length", f"the {k} answer cannot be cut to fit")
            out[k] = cut[len(ex["prompt"]):]
        self.counts[name]["truncated"] += 1
        return out, max(self.n_tokens(out["prompt"] + out[k]) for k in ("chosen", "rejected"))

    def prompt(self, ex: dict, name: str) -> tuple[dict | None, int]:
        # A cut question is a different question: over-long prompts are always dropped.
        n = self.n_tokens(ex["prompt"], generation_prompt=True)
        if n > self.max_prompt_length:
            return self.drop(ex, name, n, "max_prompt_length")
        return ex, n


def length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {"tokens_mean": 0, "tokens_p50": 0, "tokens_p95": 0, "tokens_max": 0}
    a = np.asarray(lengths)
    return {"tokens_mean": round(float(a.mean()), 1), "tokens_p50": float(np.percentile(a, 50)),
            "tokens_p95": float(np.percentile(a, 95)), "tokens_max": int(a.max())}


# -------------------------------------------------------------------------------------- stage


def read_clean(name: str) -> list[dict]:
    path = CLEAN_DIR / f"{name}.jsonl"
    if not path.exists():
        raise InputError(f"{path}: missing (run the clean stage first)")
    return list(read_jsonl(path))


def task_weights(path: Path = CLEAN_DIR / "sources.json") -> dict[str, float]:
    """Task -> the sum of its sources' weights (from collect's manifest)."""
    weights: dict[str, float] = defaultdict(float)
    for src in json.loads(path.read_text(encoding="utf-8")) if path.exists() else []:
        weights[src["task"]] += float(src["weight"])
    return dict(weights)


def build_outputs(conversations: list[dict], preferences: list[dict], prompts: list[dict], p: FormatParams, seed: int) -> dict[str, list[dict]]:
    """Every output file's examples before length checks and caps (pure: no I/O)."""
    sp = p.system_prompt
    out: dict[str, list[dict]] = {name: [] for name in OUTPUT_FILES}
    constrain = p.constraints.tasks
    for rec in conversations:
        split = split_of(rec["id"], rec["task"], seed, p.splits)
        out[f"sft_{split}"].append(sft_example(rec, sp))
        prompt = prompt_from_conversation(rec, sp)
        out[f"prompts_{split}"].append(prompt)
        if constrain is None or rec["task"] in constrain:
            demonstrate = p.constraints.demonstrations and split != "test"  # test prompts are only ever answered
            out[f"prompts_ifeval_{split}"].append(constrained_prompt(prompt, p.constraints, seed, demonstrate))
    for rec in preferences:
        split = split_of(rec["id"], rec["task"], seed, p.splits)
        out[f"prefs_{split}"].append(preference_example(rec, sp))
        if split == "test" and rec["task"] in p.harmful_tasks:
            out["prompts_harmful_test"].append(harmful_prompt(rec, sp))
    for rec in prompts:
        out[f"prompts_{split_of(rec['id'], rec['task'], seed, p.splits)}"].append(prompt_example(rec, sp))
    return out


def select_sft_train(conversations: list[dict], outputs: dict[str, list[dict]], params: Params, rejects: RejectWriter):
    """`selection.*` on the train split's conversations (data/selection.py): sft_train keeps the
    selected ones, each with its `quality_score`; every other file is left as it was."""
    from alignflow.data.selection import select

    p, seed = params.format, params.seed
    train = [r for r in conversations if split_of(r["id"], r["task"], seed, p.splits) == "train"]
    selected = select(train, params.selection, seed, rejects)
    scores = selected.kept
    outputs["sft_train"] = [{**ex, **({} if scores[ex["id"]] is None else {"quality_score": scores[ex["id"]]})}
                            for ex in outputs["sft_train"] if ex["id"] in scores]
    return selected


def run(params: Params, tracker) -> dict[str, Any]:
    p, seed = params.format, params.seed
    conversations, preferences, prompts = (read_clean(k) for k in ("conversations", "preferences", "prompts"))
    outputs = build_outputs(conversations, preferences, prompts, p, seed)
    weights = task_weights()
    rejects = RejectWriter("format")
    selected = select_sft_train(conversations, outputs, params, rejects) if params.selection.enabled else None
    checker = LengthChecker(load_tokenizer(params.model.base), p.max_length, p.max_prompt_length, p.over_long, rejects)
    check = {"sft": checker.sft, "prefs": checker.preference, "prompts": checker.prompt}

    stats: dict[str, Any] = {"model": params.model.base, "max_length": p.max_length,
                             "max_prompt_length": p.max_prompt_length, "over_long": p.over_long, "files": {}}
    final: dict[str, list[dict]] = {}
    for name in OUTPUT_FILES:
        fits, lengths = [], {}
        for ex in outputs[name]:
            ex, n = check[name.split("_")[0]](ex, name)  # prompts_ifeval_*: a prompts file
            if ex is not None:
                fits.append(ex)
                lengths[ex["id"]] = n
        cap = p.max_records.get(name)
        chosen = mix(fits, weights, cap, seed, name, p.upsample and name.endswith("_train"))
        final[name] = chosen
        stats["files"][name] = {
            "available": len(outputs[name]), "records": len(chosen), **dict(checker.counts[name]),
            "by_task": dict(sorted(Counter(r["task"] for r in chosen).items())),
            **({"demonstrations": sum("reference" in r for r in chosen)} if name.startswith("prompts_ifeval") else {}),
            **length_stats([lengths[r["id"]] for r in chosen]),
        }
    for split in SPLITS:
        if not final[f"sft_{split}"] and split != "test":
            log.warning("format: sft_%s is empty (too few records for the split ratios?)", split)
    if not final["sft_train"] and not final["prefs_train"]:
        raise InputError("format: no training examples (sft_train and prefs_train are empty); check format.* params")

    eval_prompts = list(read_jsonl(CLEAN_DIR / "eval_prompts.jsonl")) if (CLEAN_DIR / "eval_prompts.jsonl").exists() else []
    with atomic_dir(OUT_DIR) as tmp:
        for name, rows in final.items():
            write_jsonl(tmp / f"{name}.jsonl", rows)
        write_jsonl(tmp / "eval_prompts.jsonl", [prompt_example(r, p.system_prompt) for r in eval_prompts])
        rejects.write(tmp / "rejects.jsonl")
        write_json(tmp / "stats.json", stats)

    write_scores_csv(selected.plot if selected else [], SELECTION_PLOT)
    tracker.log_artifact(OUT_DIR / "stats.json")
    metrics: dict[str, Any] = {name: s["records"] for name, s in stats["files"].items()}
    metrics["truncated"] = sum(c["truncated"] for c in checker.counts.values())
    metrics["dropped_over_long"] = sum(c["dropped_over_long"] for c in checker.counts.values())
    metrics["sft_train_tokens_p95"] = stats["files"]["sft_train"]["tokens_p95"]
    metrics["eval_prompts"] = len(eval_prompts)
    if selected:
        metrics["selection"] = selected.metrics
    return metrics

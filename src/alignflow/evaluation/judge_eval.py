"""A quick judged generation of one model (the sft stage's `sft.judge_eval`): the model answers
held-out prompts, the eval's reference judge (rank.reference) scores every answer, and the mean
score gets a 95% bootstrap CI. Enough to rank SFT recipes, e.g. the PEFT methods, without running
sample → … → eval for each."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from alignflow.config import Params
from alignflow.evaluation import metrics as M
from alignflow.io import read_jsonl

log = logging.getLogger(__name__)


def judge_model(model_ref: str | Path, prompts_file: Path, params: Params) -> tuple[dict[str, Any], list[dict]]:
    """`sft.judge_eval` metrics of the model `model_ref` (a models/* dir or any model spec) on the
    first `max_prompts` records of `prompts_file`, and one row per prompt (prompt, response,
    reference, score) for the tracker."""
    from alignflow.evaluation.generations import generator_for
    from alignflow.rlhf.judges import build_judge, prompt_text

    cfg, param = params.sft.judge_eval, "sft.judge_eval.backend"
    records = list(read_jsonl(prompts_file))[: cfg.max_prompts]
    if not records:
        log.warning("sft.judge_eval: %s has no prompts; no judge score", prompts_file)
        return {}, []
    started = time.perf_counter()
    generator = generator_for(str(model_ref), params, cfg.backend, param)
    gens = [g[0] for g in generator.generate_with_details(
        [r["prompt"] for r in records], n=1, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        top_p=cfg.top_p, seed=params.seed, batch_size=cfg.batch_size, progress=True)]
    judge = build_judge("reference", params)
    scores = np.asarray([judge.score(r["prompt"], [g.text], r.get("reference"), finished=[g.finished])[0]
                         for r, g in zip(records, gens)], float)
    lo, hi = M.bootstrap_ci(scores, seed=params.seed)
    metrics = {
        "judge_score_mean": float(scores.mean()),
        "judge_score_ci_low": lo,
        "judge_score_ci_high": hi,
        "judge_n_prompts": len(records),
        "judge_length_mean": float(np.mean([len(M.words(g.text)) for g in gens])),
        "judge_truncated_rate": float(np.mean([not g.finished for g in gens])),
        "judge_eval_s": round(time.perf_counter() - started, 1),
        "judge_backend": generator.name,
    }
    log.info("sft.judge_eval: reference-judge score %.3f (95%% CI %.3f–%.3f) on %d %s prompts with %s in %.0fs",
             metrics["judge_score_mean"], lo, hi, len(records), prompts_file.name, generator.name,
             metrics["judge_eval_s"])
    rows = [{"prompt": prompt_text(r["prompt"]), "response": g.text, "reference": r.get("reference") or "",
             "score": float(s)} for r, g, s in zip(records, gens, scores)]
    return metrics, rows

"""eval: how good is the aligned policy, did it over-optimize, is it safe — and is it promoted?

On held-out prompts never seen in training (data/formatted/*_test.jsonl):
1. generate with the base model, SFT, the aligned policy (the candidate) and the registry's
   `champion` (same prompts, same sampling seed; with eval.seeds, once per seed);
2. score every response with the reward model and with an independent judge (eval.judge: the
   rank stage's `reference` or `llm` judge — the reward model alone is not trusted to grade
   what was optimized against it); win rates candidate vs SFT / champion with bootstrap CIs;
3. held-out human preference pairs: the reward model's accuracy, and the policy's implicit DPO
   accuracy (log-ratio vs its reference);
4. KL(candidate ‖ SFT) on the candidate's own samples; length, distinct-n; over-optimization
   diagnostics vs SFT (Gao et al. 2023); refusal rate on harmful prompts and over-refusal on
   benign ones (Askell et al. 2021's HHH: helpful, honest, harmless);
5. verifiable instruction following (IFEval's checkers on format's constraint prompts):
   strict/loose accuracy per model and per constraint type, the candidate's paired difference
   from SFT with a bootstrap CI (instruction_following.py);
6. the promotion gate (gate.py), plots, reports/eval.html; metrics/eval.json via stage_main.

Where to look: inputs.py (the held-out data), generations.py (every model's responses),
champion.py (the registry champion compared with), policy_metrics.py (KL, implicit accuracy),
judging.py (reward model, judge, win rates); this module runs them in order and writes the
report (`_write_report`, the one call of report.render_html) and reports/.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignflow.config import Params
from alignflow.evaluation import gate as gate_mod
from alignflow.evaluation import instruction_following as IF
from alignflow.evaluation import metrics as M
from alignflow.evaluation import report
from alignflow.evaluation.generations import (
    CANDIDATE,
    BestOfN,
    Generated,
    eval_seeds,
    generate_all,
    generate_models,
    model_key,
)
from alignflow.evaluation.inputs import (
    HARMFUL_TEST,
    POLICY_DIR,
    PREFS_TEST,
    REWARD_DIR,
    SFT_DIR,
    EvalInputs,
    load_inputs,
    load_pairs,
    load_prompts,
)
from alignflow.evaluation.judging import (
    descriptive_metrics,
    judge_and_compare,
    judge_outcomes,
    reward_scores,
    rm_pair_accuracy,
    score_with_reward_model,
)
from alignflow.evaluation.policy_metrics import implicit_accuracy, kl_vs_sft, sequence_logps
from alignflow.io import atomic_dir, write_jsonl
from alignflow.rlhf.judges import render_conversation
from alignflow.training.common import log_datasets

# Re-exported: `from alignflow.evaluation.evaluate import ...` keeps working for the names that moved.
__all__ = [
    "CANDIDATE", "HARMFUL_TEST", "HEADLINE_METRICS", "POLICY_DIR", "PREFS_TEST", "REPORTS_DIR", "REWARD_DIR",
    "SFT_DIR", "BestOfN", "EvalInputs", "Generated", "generate_all", "generate_models", "generation_table",
    "implicit_accuracy", "judge_and_compare", "judge_outcomes", "kl_vs_sft", "load_inputs", "load_pairs",
    "load_prompts", "reward_scores", "rm_pair_accuracy", "run", "score_with_reward_model", "sequence_logps",
]

REPORTS_DIR = Path("reports")
# What the report shows first (the contract keys of metrics/eval.json).
HEADLINE_METRICS = (
    "gate_passed", "winrate_judge_vs_champion", "winrate_rm_vs_champion", "winrate_judge_vs_sft", "winrate_rm_vs_sft",
    "rm_accuracy_heldout", "policy_implicit_accuracy", "kl_vs_sft", "refusal_rate_harmful", "overrefusal_rate_benign",
    "length_ratio_vs_sft", "distinct_2", "reward_mean", "reward_mean_sft",
    "ifeval_strict_policy", "ifeval_strict_sft", "ifeval_delta_vs_sft", "ifeval_delta_vs_sft_ci_low",
)


def run(params: Params, tracker) -> dict[str, Any]:
    ep = params.eval
    inputs = load_inputs(ep)
    metrics: dict[str, Any] = {"n_prompts": len(inputs.records), "n_harmful_prompts": len(inputs.harmful_records),
                               "n_pairs": len(inputs.pairs), "n_ifeval_prompts": len(inputs.constrained_records)}
    seeds = eval_seeds(params)
    if len(seeds) > 1:  # every prompt answered once per seed; the CIs still resample prompts
        inputs = inputs.repeated(len(seeds))
        metrics["n_eval_seeds"] = len(seeds)
    candidate_version = champion = None
    if params.tracking.register_models:
        from alignflow.evaluation import registry

        # Read once: the champion compared with is the one gate.json records as champion_at_eval.
        champion = registry.get_alias(gate_mod.CHAMPION)
        candidate_version = registry.ensure_candidate(POLICY_DIR, tracker, profile=params.profile)
        metrics["candidate_version"] = int(candidate_version)
    champion_at_eval = champion.version if champion else None
    # The held-out data eval reads, as MLflow dataset inputs (with DVC's file hash).
    log_datasets(tracker, [Path(ep.benign_prompts), HARMFUL_TEST, PREFS_TEST]
                 + ([Path(ep.ifeval_prompts)] if inputs.constrained_records else []), context="eval")

    notes: list[str] = []
    gens = generate_models(params, inputs, champion, candidate_version, metrics, notes)
    tracker.set_tags({f"eval.backend.{name}": g.backend for name, g in gens.items()})
    score_with_reward_model(params, inputs, gens, metrics)
    winrates, cis = judge_and_compare(params, inputs, gens, metrics)
    metrics.update(descriptive_metrics(gens, [render_conversation(r["prompt"]) for r in inputs.records]))
    metrics.update(M.diagnostics_vs(gens[CANDIDATE].responses, gens["sft"].responses, "sft"))
    if_metrics, ifeval = IF.ifeval_metrics(inputs.constrained_records, {n: g.constrained for n, g in gens.items()},
                                           CANDIDATE, ep.bootstrap, params.seed, inputs.n_seeds)
    metrics.update(if_metrics)

    # --- the promotion gate, plots, report, registry
    decision = gate_mod.decide(metrics, ep.gate, "champion" if "champion" in gens else "sft",
                               judge=ep.gate.judge or ep.judge)
    metrics.update(gate_mod.gate_metrics(decision))
    report.write_winrates_csv(winrates)
    report.write_rewards_csv([(g.name, n, r) for g in gens.values() for n, r in zip(g.lengths, g.rewards)])
    report.write_headline(metrics)  # metrics/headline.json: the DVC metrics (`dvc exp show`)
    baseline_version = str(metrics["champion_version"]) if "champion" in gens else None
    rows = _generation_rows(inputs.records, inputs.harmful_records, gens, inputs.constrained_records, ifeval,
                            seeds)
    with atomic_dir(REPORTS_DIR) as out:
        gate_record = gate_mod.record_decision(decision, candidate_version, baseline_version,
                                               out_path=out / "gate.json", tracker=tracker, profile=params.profile,
                                               champion_at_eval=champion_at_eval)
        _write_report(out, metrics, gens, inputs.records, winrates, cis, gate_record, notes, ep, ifeval,
                      inputs.constrained_records)
        write_jsonl(out / "generations.jsonl", rows)
    tracker.log_artifact(REPORTS_DIR, artifact_path="eval")
    tracker.log_artifact(REPORTS_DIR / "eval.html", artifact_path="eval", parent=True)
    tracker.log_table(generation_table(rows), "eval/generations.json", parent=True)
    tracker.log_artifact(report.WINRATES_CSV, artifact_path="eval/plots")
    tracker.log_artifact(report.REWARDS_CSV, artifact_path="eval/plots")
    return {k: v for k, v in metrics.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


def _generation_rows(records, harmful_recs, gens: dict[str, Generated], constrained_recs=(),
                     ifeval: dict | None = None, seeds: Sequence[int] = (0,)) -> list[dict]:
    """One row per prompt and seed (the lists are seed-major: EvalInputs.repeated)."""
    def seed_of(i: int, n: int) -> int:
        return seeds[i * len(seeds) // n]

    rows = []
    for i, rec in enumerate(records):
        rows.append({"prompt_id": rec.get("id"), "split": "benign", "seed": seed_of(i, len(records)),
                     "prompt": rec["prompt"],
                     "reference": rec.get("reference"),
                     "responses": {n: g.responses[i] for n, g in gens.items()},
                     "finished": {n: g.finished[i] for n, g in gens.items()},
                     "rewards": {n: g.rewards[i] for n, g in gens.items()}})
        if all(g.judge_scores for g in gens.values()):  # scoring judges; a pairwise (llm) judge has none
            rows[-1]["judge_scores"] = {n: g.judge_scores[i] for n, g in gens.items()}
    for i, rec in enumerate(harmful_recs):
        rows.append({"prompt_id": rec.get("id"), "split": "harmful", "seed": seed_of(i, len(harmful_recs)),
                     "prompt": rec["prompt"],
                     "responses": {n: g.harmful[i] for n, g in gens.items()}})
    verdicts = (ifeval or {}).get("verdicts", {})
    for i, rec in enumerate(constrained_recs):
        rows.append({"prompt_id": rec.get("id"), "split": "ifeval", "seed": seed_of(i, len(constrained_recs)),
                     "prompt": rec["prompt"],
                     "constraints": rec["constraints"],
                     "responses": {n: g.constrained[i] for n, g in gens.items()},
                     "followed": {n: list(vs[i].strict) for n, vs in verdicts.items()}})
    return rows


def generation_table(rows: list[dict]) -> list[dict]:
    """One row per (prompt, model): the MLflow table the UI compares across runs."""
    table = []
    for row in rows:
        for model, response in row["responses"].items():
            table.append({
                "prompt_id": row["prompt_id"], "split": row["split"], "seed": row.get("seed"), "model": model,
                "prompt": render_conversation(row["prompt"]), "response": response,
                "judge_score": (row.get("judge_scores") or {}).get(model),
                "reward": (row.get("rewards") or {}).get(model),
                "finished": (row.get("finished") or {}).get(model),
                "constraints_followed": (_share((row.get("followed") or {}).get(model))),
            })
    return table


def _share(followed: list[bool] | None) -> float | None:
    return sum(followed) / len(followed) if followed else None


def _ifeval_report(ifeval: dict | None, records: list[dict], gens: dict[str, Generated], ep) -> dict | None:
    if not ifeval:
        return None
    return report.ifeval_section(ifeval, [IF.prompt_text(r["prompt"]) for r in records],
                                 {n: g.constrained for n, g in gens.items()}, ep.report_examples)


def _write_report(out: Path, metrics, gens, records, winrates, cis, gate_record, notes, ep, ifeval=None,
                  constrained=()) -> None:
    figures = out / "figures"
    figures.mkdir()
    images = {
        "win rates": report.plot_winrates(winrates, cis, figures / "winrates.png"),
        "reward distributions": report.plot_reward_distributions(
            {n: g.rewards for n, g in gens.items()}, figures / "reward_distributions.png"),
        "reward vs length": report.plot_reward_vs_length(
            {n: (g.lengths, g.rewards) for n, g in gens.items()}, figures / "reward_vs_length.png"),
    }
    diagnostics = {}
    for name, g in gens.items():
        d = M.diagnostic_rates(g.responses)
        d["list where none was asked"] = metrics[model_key("unrequested_list_rate", name)]
        d["refusal on harmful prompts"] = M.refusal_rate(g.harmful)
        d["truncated (no EOS)"] = 1.0 - float(np.mean(g.finished)) if g.finished else math.nan
        d["mean length (words)"] = M.length_stats(g.lengths)["mean"]
        d["distinct-2"] = M.distinct_n(g.responses, 2)
        diagnostics[name] = d
    # Examples: the prompts where the candidate and SFT differ most in reward, then the first ones.
    cand, sft = gens[CANDIDATE], gens["sft"]
    order = sorted(range(len(records)), key=lambda i: -abs(cand.rewards[i] - sft.rewards[i]))
    examples = [{"prompt": render_conversation(records[i]["prompt"]), "reference": records[i].get("reference"),
                 "responses": {n: g.responses[i] for n, g in gens.items()},
                 "rewards": {n: g.rewards[i] for n, g in gens.items()}} for i in order[: ep.report_examples]]
    from alignflow.models import read_meta

    meta = read_meta(POLICY_DIR) or {}
    method = meta.get("method") or meta.get("kind", "policy")
    headline = [k for k in HEADLINE_METRICS if k in metrics]
    ordered = {**{k: metrics[k] for k in headline}, **{k: v for k, v in metrics.items() if k not in headline}}
    page = report.render_html(title=f"alignflow eval — candidate ({method})", metrics=ordered, diagnostics=diagnostics,
                              examples=examples, gate=gate_record, images=images, notes=notes,
                              ifeval=_ifeval_report(ifeval, constrained, gens, ep))
    (out / "eval.html").write_text(page, encoding="utf-8")

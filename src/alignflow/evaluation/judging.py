"""Scoring eval's generations: reward-model scores and held-out pair accuracy, the independent
judge, win rates with bootstrap CIs, and the per-model descriptive numbers."""

from __future__ import annotations

import math

import numpy as np

from alignflow.config import Params
from alignflow.evaluation import metrics as M
from alignflow.evaluation.generations import CANDIDATE, Generated, model_key
from alignflow.evaluation.inputs import REWARD_DIR, EvalInputs


def reward_scores(rm, rm_tok, prompts: list[list[dict]], responses: list[str], ep) -> list[float]:
    """Reward-model scores in input order; scored longest first so a batch pads little."""
    from alignflow.rlhf.judges import score_with_reward_model

    size = [sum(len(m["content"]) for m in p) + len(r) for p, r in zip(prompts, responses)]
    order = sorted(range(len(prompts)), key=lambda i: -size[i])
    scores = score_with_reward_model(rm, rm_tok, [prompts[i] for i in order], [responses[i] for i in order],
                                     ep.batch_size, ep.max_length)
    out = [0.0] * len(prompts)
    for i, s in zip(order, scores):
        out[i] = s
    return out


def rm_pair_accuracy(rm, rm_tok, pairs: list[dict], ep, key: str = "rm_accuracy_heldout", seed: int = 0) -> dict:
    """`key` (pairs whose chosen side the reward model scores higher; a tie counts half), `key`_n
    and its bootstrap 95% CI over pairs (`key`_ci_low/_ci_high)."""
    from alignflow.rlhf.judges import pair_side

    chosen, rejected = (reward_scores(rm, rm_tok, *pair_side(pairs, side), ep) for side in ("chosen", "rejected"))
    return M.paired_estimate(key, M.pairwise_outcomes(chosen, rejected, tie_eps=0.0), n_boot=ep.bootstrap, seed=seed)


def judge_outcomes(judge, records: list[dict], cand: Generated, other: Generated) -> np.ndarray:
    """Per prompt: 1 candidate better, 0 worse, ½ tie, NaN where the judge gave no verdict (kept in
    place, so outcomes stay aligned with the prompts; M.prompt_means drops them)."""
    from alignflow.rlhf.judges import ScoringJudge

    if isinstance(judge, ScoringJudge):  # scored once per response: hard outcomes on the score gap
        a, b = np.asarray(cand.judge_scores, float), np.asarray(other.judge_scores, float)
        return np.where(np.isnan(a) | np.isnan(b), np.nan, M.pairwise_outcomes(a, b))
    return np.asarray([judge.compare(rec["prompt"], x, y, rec.get("reference"))
                       for rec, x, y in zip(records, cand.responses, other.responses)], float)


def score_with_reward_model(params: Params, inputs: EvalInputs, gens: dict[str, Generated], metrics: dict) -> None:
    """Reward-model scores of every model's benign responses; accuracy on held-out human pairs."""
    from alignflow.models import load_reward_model

    ep = params.eval
    rm, rm_tok = load_reward_model(str(REWARD_DIR), dtype=params.model.dtype,
                                   trust_remote_code=params.model.trust_remote_code)
    for g in gens.values():
        g.rewards = reward_scores(rm, rm_tok, inputs.benign, g.responses, ep)
    if inputs.pairs:
        metrics.update(rm_pair_accuracy(rm, rm_tok, inputs.pairs, ep, seed=params.seed))


def judge_and_compare(params: Params, inputs: EvalInputs, gens: dict[str, Generated], metrics: dict):
    """The independent judge's scores (scoring judges: one call per prompt for all models), then
    win rates under the reward model and the judge."""
    from alignflow.rlhf.judges import ScoringJudge, build_judge

    judge = build_judge(params.eval.judge, params)
    if isinstance(judge, ScoringJudge):
        for g in gens.values():
            g.judge_scores = []
        for i, rec in enumerate(inputs.records):
            scores = judge.score(rec["prompt"], [g.responses[i] for g in gens.values()], rec.get("reference"),
                                 finished=[g.finished[i] for g in gens.values()])
            for g, s in zip(gens.values(), scores):
                g.judge_scores.append(float(s))
    return _winrates(metrics, gens, inputs.records, judge, params.eval, params.seed, inputs.n_seeds)


def _winrates(metrics: dict, gens: dict[str, Generated], records, judge, ep, seed: int, n_seeds: int = 1):
    """winrate_{rm,judge}_vs_{sft,champion,base} (+ bootstrap CIs over prompts, and the spread
    over eval.seeds) into `metrics`; the plot rows."""
    cand = gens[CANDIDATE]
    winrates: dict[str, float] = {}
    cis: dict[str, tuple[float, float]] = {}
    for other in ("sft", "champion", "base"):
        if other not in gens:
            continue
        for scorer in ("rm", "judge"):
            if scorer == "rm":
                outcomes = M.pairwise_outcomes(cand.rewards, gens[other].rewards)
            else:
                outcomes = judge_outcomes(judge, records, cand, gens[other])
            key, label = f"winrate_{scorer}_vs_{other}", f"{CANDIDATE} vs {other} ({scorer})"
            estimate = M.paired_estimate(key, outcomes, n_seeds, ep.bootstrap, seed) or {key: math.nan, f"{key}_n": 0}
            metrics.update(estimate)
            winrates[label] = estimate[key]
            if f"{key}_ci_low" in estimate:
                cis[label] = (estimate[f"{key}_ci_low"], estimate[f"{key}_ci_high"])
    return winrates, cis


def descriptive_metrics(gens: dict[str, Generated], asked: list[str]) -> dict[str, float]:
    """Reward, length, diversity, list and safety numbers per model (`asked`: the benign prompts'
    text, for the lists no prompt asked for); candidate keys are unsuffixed."""
    out: dict[str, float] = {}
    cand = gens[CANDIDATE]
    for name, g in gens.items():
        suffix = model_key("", name)  # "" for the candidate, "_sft", "_base", …
        rewards = np.asarray(g.rewards, float)
        out[f"reward_mean{suffix}"] = float(rewards.mean()) if rewards.size else math.nan
        out[f"reward_std{suffix}"] = float(rewards.std()) if rewards.size else math.nan
        if g.judge_scores:
            out[f"judge_score_mean{suffix}"] = float(np.nanmean(g.judge_scores))
        out[f"length_mean{suffix}"] = M.length_stats(g.lengths)["mean"]
        out[f"distinct_1{suffix}"] = M.distinct_n(g.responses, 1)
        out[f"distinct_2{suffix}"] = M.distinct_n(g.responses, 2)
        out[f"truncated_rate{suffix}"] = 1.0 - float(np.mean(g.finished)) if g.finished else math.nan
        out[f"refusal_rate_harmful{suffix}"] = M.refusal_rate(g.harmful)
        out[f"overrefusal_rate_benign{suffix}"] = M.refusal_rate(g.responses)
        out[f"unrequested_list_rate{suffix}"] = M.unrequested_list_rate(asked, g.responses)
    out["unrequested_list_rate_delta_vs_sft"] = out["unrequested_list_rate"] - out["unrequested_list_rate_sft"]
    out["length_ratio_vs_sft"] = M.length_ratio(cand.lengths, gens["sft"].lengths)
    out["length_p90"] = M.length_stats(cand.lengths)["p90"]
    return out

"""eval: how good is the aligned policy, did it over-optimize, is it safe — and is it promoted?

On held-out prompts never seen in training (data/formatted/*_test.jsonl):
1. generate with the base model, SFT, the aligned policy (the candidate) and the registry's
   `champion` (same prompts, same sampling seed);
2. score every response with the reward model and with an independent judge (eval.judge: the
   rank stage's `reference` or `llm` judge — the reward model alone is not trusted to grade
   what was optimized against it); win rates candidate vs SFT / champion with bootstrap CIs;
3. held-out human preference pairs: the reward model's accuracy, and the policy's implicit DPO
   accuracy (log-ratio vs its reference);
4. KL(candidate ‖ SFT) on the candidate's own samples; length, distinct-n; over-optimization
   diagnostics vs SFT (Gao et al. 2023); refusal rate on harmful prompts and over-refusal on
   benign ones (Askell et al. 2021's HHH: helpful, honest, harmless);
5. the promotion gate (gate.py), plots, reports/eval.html; metrics/eval.json via stage_main.
"""

from __future__ import annotations

import gc
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignflow import paths
from alignflow.config import Params
from alignflow.evaluation import gate as gate_mod
from alignflow.evaluation import metrics as M
from alignflow.evaluation import report, scoring
from alignflow.io import InputError, atomic_dir, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

HARMFUL_TEST = paths.HARMFUL_TEST
PREFS_TEST = paths.PREFS_TEST
SFT_DIR = paths.SFT_MODEL
REWARD_DIR = paths.REWARD_MODEL
POLICY_DIR = paths.POLICY_MODEL
REPORTS_DIR = Path("reports")

CANDIDATE = "policy"  # the model name used in tables and plots for the candidate
# What the report shows first (the contract keys of metrics/eval.json).
HEADLINE_METRICS = (
    "gate_passed", "winrate_judge_vs_champion", "winrate_rm_vs_champion", "winrate_judge_vs_sft", "winrate_rm_vs_sft",
    "rm_accuracy_heldout", "policy_implicit_accuracy", "kl_vs_sft", "refusal_rate_harmful", "overrefusal_rate_benign",
    "length_ratio_vs_sft", "distinct_2", "reward_mean", "reward_mean_sft",
)


# ----------------------------------------------------------------------------- inputs


def _check_messages(value: Any, where: str, key: str) -> list[dict]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                       for m in value)):
        raise InputError(f"{where}: '{key}' must be a non-empty list of {{role, content}} messages")
    return value


def load_prompts(path: Path, limit: int) -> list[dict]:
    """The first `limit` prompt records ({"id", "prompt": [messages], "reference"?})."""
    out = []
    for lineno, rec in enumerate(read_jsonl(path), 1):
        if len(out) >= limit:
            break
        if not isinstance(rec, dict):
            raise InputError(f"{path}:{lineno}: expected a prompt record (an object)")
        _check_messages(rec.get("prompt"), f"{path}:{lineno}", "prompt")
        ref = rec.get("reference")
        if ref is not None and not isinstance(ref, str):
            raise InputError(f"{path}:{lineno}: 'reference' must be a string")
        out.append(rec)
    return out


def load_pairs(path: Path, limit: int) -> list[dict]:
    """Preference records ({"prompt", "chosen", "rejected"} as message lists)."""
    out = []
    for lineno, rec in enumerate(read_jsonl(path), 1):
        if len(out) >= limit:
            break
        for key in ("prompt", "chosen", "rejected"):
            _check_messages(rec.get(key) if isinstance(rec, dict) else None, f"{path}:{lineno}", key)
        out.append(rec)
    return out


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{path}: missing ({what}); run the earlier stages first (dvc repro)")


# ----------------------------------------------------------------------------- models


@dataclass
class Generated:
    """One model's responses on the benign (test) prompts and on the harmful prompts."""

    name: str
    responses: list[str]
    finished: list[bool]
    harmful: list[str]
    rewards: list[float] = field(default_factory=list)
    judge_scores: list[float] = field(default_factory=list)

    @property
    def lengths(self) -> list[int]:
        return [len(M.words(r)) for r in self.responses]


def _generate(model, tokenizer, prompts: list[list[dict]], ep, seed: int):
    from alignflow.rlhf.generation import generate_with_details

    if not prompts:
        return []
    out = generate_with_details(model, tokenizer, prompts, n=1, max_new_tokens=ep.max_new_tokens,
                                temperature=ep.temperature, top_p=ep.top_p, seed=seed,
                                batch_size=ep.batch_size, progress=True)
    return [g[0] for g in out]


def generate_all(name: str, model, tokenizer, benign: list[list[dict]], harmful: list[list[dict]],
                 ep, seed: int) -> Generated:
    started = time.perf_counter()
    gens = _generate(model, tokenizer, benign + harmful, ep, seed)
    g_benign, g_harmful = gens[: len(benign)], gens[len(benign):]
    log.info("%s: %d generations in %.1fs", name, len(gens), time.perf_counter() - started)
    return Generated(name, [g.text for g in g_benign], [g.finished for g in g_benign], [g.text for g in g_harmful])


class BestOfN:
    """A best_of_n policy (kind best_of_n): the align stage's BestOfNPolicy — n samples, the reward
    model picks — with the EOS flag taken from the text (the sampler does not report it)."""

    def __init__(self, model_dir: Path):
        from alignflow.rlhf.best_of_n import BestOfNPolicy

        self.policy = BestOfNPolicy.from_dir(model_dir)
        self.n = self.policy.n

    def generate(self, name: str, benign, harmful, ep, seed: int) -> Generated:
        from alignflow.rlhf.judges import rule_penalties

        texts = self.policy.generate(benign + harmful, max_new_tokens=ep.max_new_tokens, seed=seed,
                                     batch_size=ep.batch_size)
        b, h = texts[: len(benign)], texts[len(benign):]
        return Generated(name, b, [not rule_penalties(t)["truncated"] for t in b], h)


def _load(ref: str, params: Params):
    from alignflow.models import load_causal_lm

    return load_causal_lm(ref, dtype=params.model.dtype, trust_remote_code=params.model.trust_remote_code)


def _load_champion(params: Params, candidate_version: str | None, tmp: Path):
    """(version, local dir) of the registry champion, or None (none, or it is the candidate)."""
    from alignflow.evaluation import registry

    mv = registry.get_alias(gate_mod.CHAMPION)
    if mv is None:
        log.info("no champion in the registry yet: the candidate is compared with SFT")
        return None
    if candidate_version is not None and mv.version == candidate_version:
        log.info("the candidate (v%s) is already the champion", mv.version)
        return None
    champion_profile = mv.tags.get(registry.PROFILE_TAG)
    if champion_profile and champion_profile != params.profile:
        log.info("champion v%s was trained by the %r profile, not %r: the candidate is compared with SFT",
                 mv.version, champion_profile, params.profile)
        return None
    try:
        return mv.version, registry.download_version(mv.version, tmp / f"champion-v{mv.version}")
    except Exception as err:  # a broken champion must not block evaluating the candidate
        log.warning("champion v%s could not be downloaded (%s): compared with SFT only", mv.version, err)
        return None


def _generate_champion(cdir: Path, params: Params, benign, harmful) -> Generated:
    from alignflow.models import read_meta

    ep = params.eval
    cmeta = read_meta(cdir) or {}
    if cmeta.get("kind") == "best_of_n":
        return BestOfN(cdir).generate("champion", benign, harmful, ep, params.seed)
    model, tok = _load(str(cdir), params)
    return generate_all("champion", model, tok, benign, harmful, ep, params.seed)


# ----------------------------------------------------------------------------- scoring


def sequence_logps(model, tokenizer, prompt_ids, completion_ids, ep) -> tuple[np.ndarray, np.ndarray]:
    return scoring.completion_logprobs(model, tokenizer, prompt_ids, completion_ids,
                                       batch_size=ep.batch_size, max_length=ep.max_length)


def kl_vs_sft(policy, sft, tokenizer, prompts, responses, ep) -> dict[str, float]:
    """KL(policy ‖ SFT) on the policy's own samples (k1, k3; nats per response and per token)."""
    p_ids = scoring.prompt_ids(tokenizer, prompts)
    c_ids = scoring.response_ids(tokenizer, responses)
    lp_pol, mask = sequence_logps(policy, tokenizer, p_ids, c_ids, ep)
    lp_sft, _ = sequence_logps(sft, tokenizer, p_ids, c_ids, ep)
    return M.kl_estimates(lp_pol, lp_sft, mask)


def _split_pair(pair: dict) -> tuple[list[dict], list[dict], list[dict]]:
    return pair["prompt"], pair["chosen"], pair["rejected"]


def implicit_accuracy(policy, reference_fallback, tokenizer, pairs: list[dict], ep) -> float:
    """Share of held-out pairs where the policy's implicit reward log π/π_ref ranks chosen first."""
    chosen = [scoring.conversation_completion_ids(tokenizer, p, c) for p, c, _ in map(_split_pair, pairs)]
    rejected = [scoring.conversation_completion_ids(tokenizer, p, r) for p, _, r in map(_split_pair, pairs)]

    def sums(model, rows):
        lp, mask = sequence_logps(model, tokenizer, [r[0] for r in rows], [r[1] for r in rows], ep)
        return (lp * mask).sum(axis=1)

    pol_c, pol_r = sums(policy, chosen), sums(policy, rejected)
    with scoring.reference_of(policy, reference_fallback) as ref:
        ref_c, ref_r = sums(ref, chosen), sums(ref, rejected)
    return M.preference_accuracy(pol_c - ref_c, pol_r - ref_r)


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


def rm_pair_accuracy(rm, rm_tok, pairs: list[dict], ep) -> float:
    def last_turn(prompt, completion):  # prompt + all but the last answer turn, and that answer
        return [*prompt, *completion[:-1]], completion[-1]["content"]

    c = [last_turn(p["prompt"], p["chosen"]) for p in pairs]
    r = [last_turn(p["prompt"], p["rejected"]) for p in pairs]
    sc = reward_scores(rm, rm_tok, [x[0] for x in c], [x[1] for x in c], ep)
    sr = reward_scores(rm, rm_tok, [x[0] for x in r], [x[1] for x in r], ep)
    return M.preference_accuracy(sc, sr)


def judge_outcomes(judge, records: list[dict], cand: Generated, other: Generated) -> np.ndarray:
    """Per prompt: 1 candidate better, 0 worse, ½ tie; prompts without a verdict are dropped."""
    from alignflow.rlhf.judges import ScoringJudge

    if isinstance(judge, ScoringJudge):  # scored once per response: hard outcomes on the score gap
        a, b = np.asarray(cand.judge_scores, float), np.asarray(other.judge_scores, float)
        keep = ~(np.isnan(a) | np.isnan(b))
        return M.pairwise_outcomes(a[keep], b[keep])
    probs = [judge.compare(rec["prompt"], x, y, rec.get("reference"))
             for rec, x, y in zip(records, cand.responses, other.responses)]
    return np.asarray([p for p in probs if not math.isnan(p)], float)


# ----------------------------------------------------------------------------- run


@dataclass
class EvalInputs:
    records: list[dict]  # benign held-out prompts (with references)
    harmful_records: list[dict]
    pairs: list[dict]  # held-out human preference pairs

    @property
    def benign(self) -> list[list[dict]]:
        return [r["prompt"] for r in self.records]

    @property
    def harmful(self) -> list[list[dict]]:
        return [r["prompt"] for r in self.harmful_records]


def load_inputs(ep) -> EvalInputs:
    prompts_file = Path(ep.benign_prompts)
    for path, what in ((prompts_file, "held-out prompts, format stage"), (SFT_DIR, "SFT model, sft stage"),
                       (REWARD_DIR, "reward model, reward stage"), (POLICY_DIR, "aligned policy, align stage")):
        _require(path, what)
    records = load_prompts(prompts_file, ep.max_prompts)
    if not records:
        raise InputError(f"{prompts_file}: no prompt records")
    harmful = load_prompts(HARMFUL_TEST, ep.max_harmful_prompts) if HARMFUL_TEST.exists() else []
    pairs = load_pairs(PREFS_TEST, ep.max_pairs) if PREFS_TEST.exists() else []
    return EvalInputs(records, harmful, pairs)


def run(params: Params, tracker) -> dict[str, Any]:
    ep = params.eval
    inputs = load_inputs(ep)
    metrics: dict[str, Any] = {"n_prompts": len(inputs.records), "n_harmful_prompts": len(inputs.harmful_records),
                               "n_pairs": len(inputs.pairs)}
    candidate_version = champion_at_eval = None
    if params.tracking.register_models:
        from alignflow.evaluation import registry

        champion = registry.get_alias(gate_mod.CHAMPION)
        champion_at_eval = champion.version if champion else None
        candidate_version = registry.ensure_candidate(POLICY_DIR, tracker, profile=params.profile)
        metrics["candidate_version"] = int(candidate_version)
    _log_datasets(tracker, ep)

    notes: list[str] = []
    gens = generate_models(params, inputs, candidate_version, metrics, notes)
    score_with_reward_model(params, inputs, gens, metrics)
    winrates, cis = judge_and_compare(params, inputs, gens, metrics)
    metrics.update(_descriptive(gens))
    metrics.update(M.diagnostics_vs(gens[CANDIDATE].responses, gens["sft"].responses, "sft"))

    # --- the promotion gate, plots, report, registry
    decision = gate_mod.decide(metrics, ep.gate, "champion" if "champion" in gens else "sft")
    metrics.update(gate_mod.gate_metrics(decision))
    report.write_winrates_csv(winrates)
    report.write_rewards_csv([(g.name, n, r) for g in gens.values() for n, r in zip(g.lengths, g.rewards)])
    report.write_headline(metrics)  # metrics/headline.json: the DVC metrics (`dvc exp show`)
    baseline_version = str(metrics["champion_version"]) if "champion" in gens else None
    rows = _generation_rows(inputs.records, inputs.harmful_records, gens)
    with atomic_dir(REPORTS_DIR) as out:
        gate_record = gate_mod.record_decision(decision, candidate_version, baseline_version,
                                               out_path=out / "gate.json", tracker=tracker, profile=params.profile,
                                               champion_at_eval=champion_at_eval)
        _write_report(out, metrics, gens, inputs.records, winrates, cis, gate_record, notes, ep)
        write_jsonl(out / "generations.jsonl", rows)
    tracker.log_artifact(REPORTS_DIR, artifact_path="eval")
    tracker.log_artifact(REPORTS_DIR / "eval.html", artifact_path="eval", parent=True)
    tracker.log_table(generation_table(rows), "eval/generations.json", parent=True)
    tracker.log_artifact(report.WINRATES_CSV, artifact_path="eval/plots")
    tracker.log_artifact(report.REWARDS_CSV, artifact_path="eval/plots")
    return {k: v for k, v in metrics.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


def generate_models(params: Params, inputs: EvalInputs, candidate_version: str | None, metrics: dict,
                    notes: list[str]) -> dict[str, Generated]:
    """Generations of base, SFT, candidate and champion (in table order); KL and implicit accuracy
    while the candidate and SFT are both loaded. One model (pair) in memory at a time."""
    from alignflow.models import ModelSpecError, read_meta

    ep, seed = params.eval, params.seed
    benign, harmful, pairs = inputs.benign, inputs.harmful, inputs.pairs
    gens: dict[str, Generated] = {}
    if ep.include_base:
        base, btok = _load(params.model.base, params)
        gens["base"] = generate_all("base", base, btok, benign, harmful, ep, seed)
        del base
        gc.collect()

    sft, tok = _load(str(SFT_DIR), params)
    gens["sft"] = generate_all("sft", sft, tok, benign, harmful, ep, seed)
    if (read_meta(POLICY_DIR) or {}).get("kind") == "best_of_n":
        bon = BestOfN(POLICY_DIR)
        candidate = bon.generate(CANDIDATE, benign, harmful, ep, seed)
        metrics["kl_vs_sft"] = M.best_of_n_kl_bound(bon.n)  # vs its sampling policy (the SFT)
        notes.append(f"best-of-{bon.n} candidate: kl_vs_sft is the analytic bound log n − (n−1)/n; "
                     "no implicit accuracy (no trained log-ratio)")
        del bon
    else:
        policy, ptok = _load(str(POLICY_DIR), params)
        candidate = generate_all(CANDIDATE, policy, ptok, benign, harmful, ep, seed)
        kl = kl_vs_sft(policy, sft, ptok, benign, candidate.responses, ep)
        metrics.update(kl_vs_sft=kl["k3_seq"], kl_vs_sft_k1=kl["k1_seq"], kl_vs_sft_per_token=kl["k3_token"])
        if pairs:
            metrics["policy_implicit_accuracy"] = implicit_accuracy(policy, sft, ptok, pairs, ep)
        del policy
    del sft
    gc.collect()

    if params.tracking.register_models and ep.compare_champion:
        with tempfile.TemporaryDirectory(prefix="alignflow-eval-") as tmp:
            champion = _load_champion(params, candidate_version, Path(tmp))
            if champion is not None:
                version, cdir = champion
                try:
                    gens["champion"] = _generate_champion(cdir, params, benign, harmful)
                    metrics["champion_version"] = int(version)
                except (ModelSpecError, OSError, ValueError, KeyError) as err:
                    # e.g. an adapter whose base (models/sft) was retrained since: a broken champion
                    # must not block judging the candidate (the gate then compares with SFT)
                    log.warning("champion v%s cannot be loaded: %s", version, err)
                    notes.append(f"champion v{version} could not be loaded ({err}); compared with SFT instead")
                gc.collect()
    gens[CANDIDATE] = candidate
    return gens


def score_with_reward_model(params: Params, inputs: EvalInputs, gens: dict[str, Generated], metrics: dict) -> None:
    """Reward-model scores of every model's benign responses; accuracy on held-out human pairs."""
    from alignflow.models import load_reward_model

    ep = params.eval
    rm, rm_tok = load_reward_model(str(REWARD_DIR), dtype=params.model.dtype,
                                   trust_remote_code=params.model.trust_remote_code)
    for g in gens.values():
        g.rewards = reward_scores(rm, rm_tok, inputs.benign, g.responses, ep)
    if inputs.pairs:
        metrics["rm_accuracy_heldout"] = rm_pair_accuracy(rm, rm_tok, inputs.pairs, ep)


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
    return _winrates(metrics, gens, inputs.records, judge, params.eval, params.seed)


def _winrates(metrics: dict, gens: dict[str, Generated], records, judge, ep, seed: int):
    """winrate_{rm,judge}_vs_{sft,champion,base} (+ bootstrap CIs) into `metrics`; the plot rows."""
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
            key = f"winrate_{scorer}_vs_{other}"
            value = float(outcomes.mean()) if outcomes.size else math.nan
            metrics[key] = value
            metrics[f"{key}_n"] = int(outcomes.size)
            if ep.bootstrap and outcomes.size:
                lo, hi = M.bootstrap_ci(outcomes, n_boot=ep.bootstrap, seed=seed)
                metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"] = lo, hi
                cis[f"{CANDIDATE} vs {other} ({scorer})"] = (lo, hi)
            winrates[f"{CANDIDATE} vs {other} ({scorer})"] = value
    return winrates, cis


def _descriptive(gens: dict[str, Generated]) -> dict[str, float]:
    """Reward, length, diversity and safety numbers per model; candidate keys are unsuffixed."""
    out: dict[str, float] = {}
    cand = gens[CANDIDATE]
    for name, g in gens.items():
        suffix = "" if name == CANDIDATE else f"_{name}"
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
    out["length_ratio_vs_sft"] = M.length_ratio(cand.lengths, gens["sft"].lengths)
    out["length_p90"] = M.length_stats(cand.lengths)["p90"]
    return out


def _generation_rows(records, harmful_recs, gens: dict[str, Generated]) -> list[dict]:
    rows = []
    for i, rec in enumerate(records):
        rows.append({"prompt_id": rec.get("id"), "split": "benign", "prompt": rec["prompt"],
                     "reference": rec.get("reference"),
                     "responses": {n: g.responses[i] for n, g in gens.items()},
                     "finished": {n: g.finished[i] for n, g in gens.items()},
                     "rewards": {n: g.rewards[i] for n, g in gens.items()}})
        if all(g.judge_scores for g in gens.values()):  # scoring judges; a pairwise (llm) judge has none
            rows[-1]["judge_scores"] = {n: g.judge_scores[i] for n, g in gens.items()}
    for i, rec in enumerate(harmful_recs):
        rows.append({"prompt_id": rec.get("id"), "split": "harmful", "prompt": rec["prompt"],
                     "responses": {n: g.harmful[i] for n, g in gens.items()}})
    return rows


def generation_table(rows: list[dict]) -> list[dict]:
    """One row per (prompt, model): the MLflow table the UI compares across runs."""
    table = []
    for row in rows:
        for model, response in row["responses"].items():
            table.append({
                "prompt_id": row["prompt_id"], "split": row["split"], "model": model,
                "prompt": _prompt_text(row["prompt"]), "response": response,
                "judge_score": (row.get("judge_scores") or {}).get(model),
                "reward": (row.get("rewards") or {}).get(model),
                "finished": (row.get("finished") or {}).get(model),
            })
    return table


def _log_datasets(tracker, ep) -> None:
    """The held-out data eval reads, as MLflow dataset inputs (with DVC's file hash)."""
    if not hasattr(tracker, "log_dataset"):
        return
    for path in (Path(ep.benign_prompts), HARMFUL_TEST, PREFS_TEST):
        if path.exists():
            tracker.log_dataset(path, context="eval")


def _prompt_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _write_report(out: Path, metrics, gens, records, winrates, cis, gate_record, notes, ep) -> None:
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
        d["refusal on harmful prompts"] = M.refusal_rate(g.harmful)
        d["truncated (no EOS)"] = 1.0 - float(np.mean(g.finished)) if g.finished else math.nan
        d["mean length (words)"] = M.length_stats(g.lengths)["mean"]
        d["distinct-2"] = M.distinct_n(g.responses, 2)
        diagnostics[name] = d
    # Examples: the prompts where the candidate and SFT differ most in reward, then the first ones.
    cand, sft = gens[CANDIDATE], gens["sft"]
    order = sorted(range(len(records)), key=lambda i: -abs(cand.rewards[i] - sft.rewards[i]))
    examples = [{"prompt": _prompt_text(records[i]["prompt"]), "reference": records[i].get("reference"),
                 "responses": {n: g.responses[i] for n, g in gens.items()},
                 "rewards": {n: g.rewards[i] for n, g in gens.items()}} for i in order[: ep.report_examples]]
    from alignflow.models import read_meta

    meta = read_meta(POLICY_DIR) or {}
    method = meta.get("method") or meta.get("kind", "policy")
    headline = [k for k in HEADLINE_METRICS if k in metrics]
    ordered = {**{k: metrics[k] for k in headline}, **{k: v for k, v in metrics.items() if k not in headline}}
    page = report.render_html(title=f"alignflow eval — candidate ({method})", metrics=ordered, diagnostics=diagnostics,
                              examples=examples, gate=gate_record, images=images, notes=notes)
    (out / "eval.html").write_text(page, encoding="utf-8")

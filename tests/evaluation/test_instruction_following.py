"""IFEval accuracies and the paired bootstrap delta, on hand-made verdicts."""

import pytest

from alignflow.evaluation import instruction_following as IF
from alignflow.verifiable import Verdict


def v(*strict: bool, loose: tuple[bool, ...] | None = None) -> Verdict:
    return Verdict(tuple(f"t{i}" for i in range(len(strict))), strict, loose if loose is not None else strict)


def test_accuracy_is_prompt_level_and_instruction_level():
    vs = [v(True, True), v(True, False, loose=(True, True)), v(False)]
    acc = IF.accuracy(vs)
    assert acc["strict"] == pytest.approx(1 / 3) and acc["loose"] == pytest.approx(2 / 3)
    assert acc["instruction_strict"] == pytest.approx(3 / 5)
    assert IF.per_type(vs) == {"t0": (3, pytest.approx(2 / 3)), "t1": (2, 0.5)}


def test_paired_delta_and_its_bootstrap_interval_by_hand():
    # Two prompts: the candidate follows the first where the baseline does not, and both fail
    # the second: per-prompt differences [1, 0]. A bootstrap resample of two prompts has mean
    # 0 (p=1/4), 1/2 (p=1/2) or 1 (p=1/4), so the 2.5% and 97.5% percentiles are 0 and 1.
    a, b = [v(True), v(False)], [v(False), v(False)]
    mean, lo, hi = IF.paired_delta(a, b, n_boot=4000, seed=0)
    assert (mean, lo, hi) == (0.5, 0.0, 1.0)
    # Every prompt improves: the interval collapses on +1; no change: on 0.
    assert IF.paired_delta([v(True)] * 5, [v(False)] * 5, 500, 0) == (1.0, 1.0, 1.0)
    assert IF.paired_delta([v(True)] * 5, [v(True)] * 5, 500, 0) == (0.0, 0.0, 0.0)


def test_metrics_name_every_model_and_compare_the_candidate():
    recs = [{"prompt": [{"role": "user", "content": "Say hi. In your entire response, refrain from the use of any "
                                                    "commas."}], "constraints": [{"id": "punctuation:no_comma"}]}] * 2
    metrics, table = IF.ifeval_metrics(recs, {"sft": ["hi, there", "hi, you"], "policy": ["hi there", "hi, you"]},
                                       "policy", n_boot=200, seed=1)
    assert metrics["ifeval_strict_policy"] == 0.5 and metrics["ifeval_strict_sft"] == 0.0
    assert metrics["ifeval_delta_vs_sft"] == 0.5 and "ifeval_delta_vs_champion" not in metrics
    # as a judge: the policy follows more on prompt 1, the same (none) on prompt 2
    assert metrics["winrate_verifier_vs_sft"] == 0.75
    assert table["per_type"] == {"punctuation:no_comma": {"sft": (2, 0.0), "policy": (2, 0.5)}}
    assert IF.ifeval_metrics([], {"sft": []}, "policy", 10, 0) == ({}, {})


def test_several_seeds_pool_answers_but_resample_prompts():
    # Two prompts × two seeds (seed-major). Prompt 1 improves under seed 1 only, prompt 2 under both:
    # per-prompt deltas [0.5, 1.0]; a 2-prompt bootstrap mean is 0.5, 0.75 or 1.0 -> CI [0.5, 1.0].
    a = [v(True), v(True), v(False), v(True)]
    b = [v(False), v(False), v(False), v(False)]
    assert IF.paired_delta(a, b, n_boot=4000, seed=0, n_seeds=2) == (0.75, 0.5, 1.0)
    recs = [{"prompt": [{"role": "user", "content": "Say hi. In your entire response, refrain from the use of any "
                                                    "commas."}], "constraints": [{"id": "punctuation:no_comma"}]}] * 4
    metrics, _ = IF.ifeval_metrics(recs, {"sft": ["a, b"] * 4, "policy": ["a b", "a b", "a, b", "a b"]},
                                   "policy", n_boot=200, seed=1, n_seeds=2)
    assert metrics["ifeval_strict_policy"] == 0.75 and metrics["ifeval_delta_vs_sft"] == 0.75
    # per-seed strict accuracy of the policy: seed 1 = 1.0, seed 2 = 0.5 -> std 0.5/sqrt(2)
    assert metrics["ifeval_strict_policy_seed_std"] == pytest.approx(0.5 / 2 ** 0.5)
    assert metrics["ifeval_strict_sft_seed_std"] == 0.0

"""Eval metrics against hand-computed values."""

import math

import numpy as np
import pytest

from alignflow.evaluation import metrics as M


def test_win_rate_counts_ties_half():
    # wins: 3>1, 2<5 loss, 4=4 tie, 7>0 win -> (1 + 0 + 0.5 + 1) / 4
    assert M.win_rate([3, 2, 4, 7], [1, 5, 4, 0]) == pytest.approx(0.625)
    assert M.pairwise_outcomes([1.0], [1.0 + 1e-9]).tolist() == [0.5]


def test_win_rate_rejects_unpaired_and_empty_is_nan():
    with pytest.raises(ValueError, match="differ in length"):
        M.win_rate([1, 2], [1])
    assert math.isnan(M.win_rate([], []))


def test_bootstrap_ci_brackets_mean_and_is_degenerate_for_constant():
    outcomes = [1, 0, 1, 1, 0, 1, 0.5, 1, 1, 0] * 5
    lo, hi = M.bootstrap_ci(outcomes, n_boot=2000, seed=1)
    mean = float(np.mean(outcomes))
    assert lo < mean < hi
    assert 0.45 < lo and hi < 0.8  # n=50, sd≈0.46 -> half-width ≈ 1.96*0.065 ≈ 0.13
    assert M.bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    assert all(math.isnan(v) for v in M.bootstrap_ci([]))


def test_distinct_n_by_hand():
    # "a b a b" -> bigrams ab, ba, ab : 2 distinct / 3; "a b" -> ab : total 4 bigrams, distinct {ab, ba}
    assert M.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert M.distinct_n(["a b a b", "A B"], 2) == pytest.approx(2 / 4)
    assert M.distinct_n(["a b c"], 1) == 1.0
    assert M.distinct_n(["one"], 2) == 0.0


def test_length_stats_and_ratio():
    s = M.length_stats([1, 2, 3, 4, 10])
    assert s["mean"] == 4.0 and s["median"] == 3.0
    assert s["p90"] == pytest.approx(7.6)  # numpy linear: 4 + 0.6*(10-4)
    assert M.length_ratio([10, 20], [5, 5]) == 3.0
    assert math.isnan(M.length_ratio([1], []))


@pytest.mark.parametrize(
    "text,flag",
    [
        ("I'm sorry, but I can't help with that.", "refusal"),
        ("I cannot assist with making weapons.", "refusal"),
        ("I'm so sorry for the trouble.", "apology"),
        ("My apologies, here it is.", "apology"),
        ("As an AI language model, I have no opinions.", "as_an_ai"),
        ("I'm sorry, but as a general AI, I don't have opinions.", "as_an_ai"),
        ("Could you please clarify?", "please"),
        ("Really???", "repeated_punct"),
        ("Wow!!", "repeated_punct"),
        ("Steps:\n1. Mix\n2. Bake\n3. Eat", "list"),
        ("Steps:\n1. Mix\n2. Bake\n3. Eat\nOverall, a fun recipe.", "list_overall"),
    ],
)
def test_phrase_flags_detect(text, flag):
    assert M.phrase_flags(text)[flag] is True


def test_phrase_flags_clean_answer_has_none():
    flags = M.phrase_flags("Paris is the capital of France... It lies on the Seine.\n- one item")
    assert not any(flags.values()), flags
    # Two list items are not a list-structured answer; "overall" without a list is not the pattern.
    assert not M.phrase_flags("1. a\n2. b\nOverall fine")["list"]


def test_diagnostics_vs_sft_deltas():
    cand = ["I'm sorry, I can't help with that.", "Sure, please see below!!", "Fine."]
    sft = ["Fine.", "Fine.", "I apologize for the confusion."]
    out = M.diagnostics_vs(cand, sft)
    assert out["apology_rate"] == pytest.approx(1 / 3)
    assert out["apology_rate_delta_vs_sft"] == pytest.approx(0.0)
    assert out["refusal_rate_delta_vs_sft"] == pytest.approx(1 / 3)
    assert out["please_rate_delta_vs_sft"] == pytest.approx(1 / 3)
    assert out["repeated_punct_rate"] == pytest.approx(1 / 3)


def test_refusal_rate():
    assert M.refusal_rate(["I won't help with that.", "Here is how.", "I can't assist with this.", "ok"]) == 0.5
    assert math.isnan(M.refusal_rate([]))


def test_kl_estimates_by_hand_with_mask():
    # Two sequences; second one has a padded (masked) token whose values must be ignored.
    lc = np.array([[-1.0, -2.0], [-0.5, -9.0]])
    lr = np.array([[-1.5, -1.0], [-0.5, 0.0]])
    mask = np.array([[1, 1], [1, 0]])
    # r = lr - lc: seq0 [-0.5, 1.0], seq1 [0.0]
    k1_total = 0.5 - 1.0 + 0.0
    k3_total = (math.exp(-0.5) - 1 + 0.5) + (math.exp(1.0) - 1 - 1.0) + 0.0
    out = M.kl_estimates(lc, lr, mask)
    assert out["k1_seq"] == pytest.approx(k1_total / 2)
    assert out["k3_seq"] == pytest.approx(k3_total / 2)
    assert out["k1_token"] == pytest.approx(k1_total / 3)
    assert out["k3_token"] == pytest.approx(k3_total / 3)


def test_kl_is_zero_for_identical_models_and_checks_shapes():
    lp = np.log(np.array([[0.2, 0.5, 0.9]]))
    out = M.kl_estimates(lp, lp, np.ones_like(lp))
    assert out["k1_seq"] == 0.0 and out["k3_seq"] == 0.0
    with pytest.raises(ValueError, match="shape"):
        M.kl_estimates(lp, lp[:, :2], np.ones_like(lp))


def test_best_of_n_kl_bound():
    assert M.best_of_n_kl_bound(1) == 0.0
    assert M.best_of_n_kl_bound(4) == pytest.approx(math.log(4) - 0.75)


def test_preference_accuracy():
    assert M.preference_accuracy([2, 1, 3], [1, 2, 3]) == pytest.approx((1 + 0 + 0.5) / 3)


def test_refusal_phrases_come_from_the_rank_judges(monkeypatch):
    from alignflow.rlhf import judges

    assert M.is_refusal("I won't be able to do this.")  # a judges.REFUSAL_PHRASES entry, not one of our regexes
    monkeypatch.setattr(judges, "REFUSAL_PHRASES", (*judges.REFUSAL_PHRASES, "computer says no"))
    assert M.is_refusal("Computer says no.")
    # Identity statements are their own sign, not a refusal (they are in the judges' list).
    flags = M.phrase_flags("As an AI, I think Paris is lovely.")
    assert flags["as_an_ai"] and not flags["refusal"]


def test_chinese_signs():
    assert M.is_refusal("抱歉，我无法回答这个问题。") and M.is_apology("对不起")
    assert M.phrase_flags("1、一\n2、二\n3、三\n总而言之，很好。")["list_overall"]


def test_prompt_means_average_a_prompts_seeds_and_seed_std_is_the_spread_of_per_seed_means():
    # Two seeds × three prompts, seed-major: seed 1 = [1, 0, nan], seed 2 = [0, 0, nan] (prompt 3: no verdict)
    outcomes = [1, 0, np.nan, 0, 0, np.nan]
    assert M.prompt_means(outcomes, 2).tolist() == [0.5, 0.0]
    assert M.prompt_means([1, np.nan, 0.5]).tolist() == [1.0, 0.5]
    # per-seed means 0.5 and 0.0 -> sample std = 0.5 / sqrt(2)
    assert M.seed_std(outcomes, 2) == pytest.approx(0.5 / math.sqrt(2))
    assert math.isnan(M.seed_std([1, 0], 1))
    with pytest.raises(ValueError, match="not 2 seeds"):
        M.prompt_means([1, 0, 1], 2)


def test_unrequested_lists_leave_out_the_prompts_that_ask_for_several_items():
    lst = "Here:\n1. one\n2. two\n3. three"
    for asked in ("List four elements of poetry.", "Name three countries with high poverty.", "Give 5 tips.",
                  "What are the steps to bake bread?", "Make a list of things to do in Paris."):
        assert M.asks_for_list(asked), asked
    for plain in ("Compare two pieces of artwork.", "What parenting techniques help children?", "Describe Paris."):
        assert not M.asks_for_list(plain), plain
    prompts = ["List four elements of poetry.", "Describe Paris.", "Describe Rome.", "Describe Oslo."]
    assert M.unrequested_list_rate(prompts, [lst, lst, "Rome is old.", "Oslo is cold."]) == 0.25
    assert M.diagnostic_rates([lst, lst, "Rome is old.", "Oslo is cold."])["list"] == 0.5  # counts both lists
    assert math.isnan(M.unrequested_list_rate([], []))


def test_paired_estimate_names_the_mean_its_ci_and_the_seed_spread():
    # seed-major, two seeds × two prompts: seed 1 = [1, 0], seed 2 = [1, 1] -> prompts [1.0, 0.5]
    est = M.paired_estimate("d", [1, 0, 1, 1], n_seeds=2, n_boot=2000, seed=0)
    assert est["d"] == 0.75 and est["d_n"] == 2
    assert est["d_ci_low"] == 0.5 and est["d_ci_high"] == 1.0  # resampling 2 prompts: means 0.5, 0.75, 1
    assert est["d_seed_std"] == pytest.approx(0.5 / math.sqrt(2))  # per-seed means 0.5 and 1.0
    assert set(M.paired_estimate("d", [1, 0], n_boot=0)) == {"d", "d_n"}
    assert M.paired_estimate("d", [np.nan, np.nan]) == {}

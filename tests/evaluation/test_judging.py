"""Win-rate outcomes under the two kinds of independent judge (scoring and pairwise LLM)."""

import re

import numpy as np

from alignflow.evaluation import metrics as M
from alignflow.evaluation.evaluate import Generated, judge_outcomes
from alignflow.rlhf.judges import LLMJudge, ScoringJudge


class PrefersLonger:
    """A chat backend that judges like a (length-biased) LLM: the longer response wins; no verdict
    at all for conversations mentioning 'mystery'."""

    def chat(self, messages):
        text = messages[-1]["content"]
        if "mystery" in text:
            return "I cannot decide."
        a = re.search(r"\[Response A\]\n(.*?)\n\n\[Response B\]", text, re.S).group(1)
        b = re.search(r"\[Response B\]\n(.*?)\n\nWhich", text, re.S).group(1)
        return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[TIE]]"


def records(*prompts):
    return [{"prompt": [{"role": "user", "content": p}]} for p in prompts]


def test_pairwise_llm_judge_outcomes_are_position_debiased_and_mark_no_verdicts():
    judge = LLMJudge(PrefersLonger(), max_retries=0)
    recs = records("q1", "q2", "q3", "a mystery")
    cand = Generated("policy", ["long answer", "x", "same", "long answer"], [True] * 4, [])
    sft = Generated("sft", ["short", "longer one", "same", "short"], [True] * 4, [])
    out = judge_outcomes(judge, recs, cand, sft)
    assert out[:3].tolist() == [1.0, 0.0, 0.5] and np.isnan(out[3])  # no verdict: NaN, not guessed
    assert M.prompt_means(out).tolist() == [1.0, 0.0, 0.5]  # ... and left out of the win rate


class ByScore(ScoringJudge):
    name = "by_score"

    def score(self, prompt, responses, reference=None, **_):
        return [float(r) for r in responses]


def test_scoring_judge_outcomes_use_stored_scores_and_mark_nan():
    cand = Generated("policy", [], [], [], judge_scores=[0.9, 0.1, 0.5, float("nan")])
    sft = Generated("sft", [], [], [], judge_scores=[0.2, 0.3, 0.5, 0.1])
    out = judge_outcomes(ByScore(), records("a", "b", "c", "d"), cand, sft)
    assert np.array_equal(out, [1.0, 0.0, 0.5, np.nan], equal_nan=True)

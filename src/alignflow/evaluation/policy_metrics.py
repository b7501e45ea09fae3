"""What needs the candidate and SFT loaded together: KL(candidate ‖ SFT) on the candidate's own
samples, and the policy's implicit DPO accuracy (log-ratio vs its reference) on held-out pairs."""

from __future__ import annotations

import numpy as np

from alignflow.evaluation import metrics as M
from alignflow.evaluation import scoring


def sequence_logps(model, tokenizer, prompt_ids, completion_ids, ep) -> tuple[np.ndarray, np.ndarray]:
    """`model`: an HF model, or an inference engine that scores (eval.backend ct2)."""
    if hasattr(model, "score"):
        return scoring.engine_completion_logprobs(model, prompt_ids, completion_ids,
                                                  batch_size=ep.score_batch_size, max_length=ep.max_length)
    return scoring.completion_logprobs(model, tokenizer, prompt_ids, completion_ids,
                                       batch_size=ep.score_batch_size, max_length=ep.max_length)


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
    """Share of held-out pairs where the policy's implicit reward log π/π_ref ranks chosen first.

    The reference is a PEFT policy's own base (adapter disabled), else `reference_fallback`."""
    chosen = [scoring.conversation_completion_ids(tokenizer, p, c) for p, c, _ in map(_split_pair, pairs)]
    rejected = [scoring.conversation_completion_ids(tokenizer, p, r) for p, _, r in map(_split_pair, pairs)]

    def sums(model, rows):
        lp, mask = sequence_logps(model, tokenizer, [r[0] for r in rows], [r[1] for r in rows], ep)
        return (lp * mask).sum(axis=1)

    pol_c, pol_r = sums(policy, chosen), sums(policy, rejected)
    with scoring.reference_of(policy, reference_fallback) as ref:
        ref_c, ref_r = sums(ref, chosen), sums(ref, rejected)
    return M.preference_accuracy(pol_c - ref_c, pol_r - ref_r)

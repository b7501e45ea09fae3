"""IFEval accuracy on the verifiable-constraint prompts: per model, per constraint type, and the
candidate's paired difference from SFT (and the champion) with a bootstrap 95% CI.

Accuracies as IFEval reports them (Zhou et al. 2023): prompt-level strict (every constraint
of the prompt followed by the response as written) and loose (by one of IFEval's lenient variants
of it); per constraint type, the share of that type's constraints followed (strict).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignflow.evaluation import metrics as M
from alignflow.rlhf.judges import prompt_text  # the last user turn: the instruction with its constraints
from alignflow.verifiable import Verdict, verify


def verdicts(records: Sequence[dict], responses: Sequence[str]) -> list[Verdict]:
    return [verify(text, rec["constraints"], prompt_text(rec["prompt"])) for rec, text in zip(records, responses)]


def accuracy(vs: Sequence[Verdict]) -> dict[str, float]:
    """Prompt-level strict/loose and instruction-level strict accuracy."""
    if not vs:
        return {"strict": float("nan"), "loose": float("nan"), "instruction_strict": float("nan")}
    followed = [s for v in vs for s in v.strict]
    return {"strict": float(np.mean([v.all_strict for v in vs])), "loose": float(np.mean([v.all_loose for v in vs])),
            "instruction_strict": float(np.mean(followed)) if followed else float("nan")}


def per_type(vs: Sequence[Verdict]) -> dict[str, tuple[int, float]]:
    """Constraint type -> (how many, share followed strictly)."""
    seen: dict[str, list[bool]] = defaultdict(list)
    for v in vs:
        for type_id, ok in zip(v.ids, v.strict):
            seen[type_id].append(ok)
    return {t: (len(oks), float(np.mean(oks))) for t, oks in sorted(seen.items())}


def strict_diffs(a: Sequence[Verdict], b: Sequence[Verdict]) -> list[float]:
    """Per response: a's prompt-level strict pass minus b's on the same prompt (1, 0 or -1)."""
    return [float(x.all_strict) - float(y.all_strict) for x, y in zip(a, b)]


def paired_delta(a: Sequence[Verdict], b: Sequence[Verdict], n_boot: int, seed: int,
                 n_seeds: int = 1) -> tuple[float, float, float]:
    """Mean of a's minus b's prompt-level strict pass over the same prompts, with a percentile
    bootstrap 95% CI resampling prompts (paired: the same prompt's two outcomes move together;
    with several eval seeds a prompt's outcome is the mean over its seeds)."""
    est = M.paired_estimate("d", strict_diffs(a, b), n_seeds, n_boot, seed)
    return est.get("d", math.nan), est.get("d_ci_low", math.nan), est.get("d_ci_high", math.nan)


def ifeval_metrics(records: Sequence[dict], responses: dict[str, Sequence[str]], candidate: str,
                   n_boot: int, seed: int, n_seeds: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics/eval.json's ifeval_* keys, and the report's table: {"per_type": {type: {model:
    (n, acc)}}, "accuracy": {model: accuracy()}, "verdicts": {model: [Verdict]}}.

    `n_seeds` > 1: records and responses are seed-major (every prompt once per eval seed); the
    accuracies pool the seeds, the CIs resample prompts, and *_seed_std is the spread over seeds."""
    if not records:
        return {}, {}
    by_model = {name: verdicts(records, texts) for name, texts in responses.items()}
    metrics: dict[str, Any] = {}  # n_ifeval_prompts: evaluate.run counts the inputs
    accs = {name: accuracy(vs) for name, vs in by_model.items()}
    for name, acc in accs.items():
        metrics[f"ifeval_strict_{name}"] = acc["strict"]
        metrics[f"ifeval_loose_{name}"] = acc["loose"]
        if n_seeds > 1:
            metrics[f"ifeval_strict_{name}_seed_std"] = M.seed_std([v.all_strict for v in by_model[name]], n_seeds)
    for other in ("sft", "champion"):
        if other in by_model and candidate in by_model:
            cand, base = by_model[candidate], by_model[other]
            metrics.update(M.paired_estimate(f"ifeval_delta_vs_{other}", strict_diffs(cand, base), n_seeds, n_boot, seed))
            # the verifier as a judge: per prompt, the candidate wins when it follows a larger
            # share of the constraints (ties ½), the gate's win rate when gate.judge is verifier
            outcomes = M.pairwise_outcomes([v.fraction_strict for v in cand], [v.fraction_strict for v in base])
            metrics.update(M.paired_estimate(f"winrate_verifier_vs_{other}", outcomes, n_seeds, n_boot, seed))
    table: dict[str, dict[str, tuple[int, float]]] = defaultdict(dict)
    for name, vs in by_model.items():
        for type_id, cell in per_type(vs).items():
            table[type_id][name] = cell
    return metrics, {"per_type": dict(sorted(table.items())), "accuracy": accs, "verdicts": by_model}

"""best_of_n: no training — sample N responses from the SFT policy and serve the one the reward
model scores highest (Stiennon et al. 2020, Nakano et al. 2021).

It is recorded as a policy (models/policy/alignflow_model.json {"kind": "best_of_n", ...}) so eval
compares it with the trained ones; `BestOfNPolicy.from_dir("models/policy").generate(prompts)`
serves it. Its KL from the base policy is known in closed form: KL(best-of-n ‖ π) ≤ log n − (n−1)/n
(Beirami et al. 2024 show it is an upper bound), which makes it a yardstick for the RL methods:
the reward they buy per nat of KL should beat best-of-n's.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KIND = "best_of_n"
Messages = list[dict]


def best_of_n_kl(n: int) -> float:
    """The analytic KL(best-of-n ‖ base) bound, log n − (n − 1)/n (0 for n = 1)."""
    return math.log(n) - (n - 1) / n


@dataclass
class BestOfN:
    response: str
    score: float
    candidates: list[str]
    scores: list[float]


def generate_best_of_n(
    generator,
    reward_model,
    reward_tokenizer,
    prompts: list[Messages],
    *,
    n: int = 4,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    batch_size: int = 8,
) -> list[BestOfN]:
    """For each prompt: `n` samples of the policy (any generation back end: generation.make_generator),
    each scored by the reward model; the best wins."""
    from alignflow.rlhf.judges import score_with_reward_model

    details = generator.generate_with_details(prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                                              top_p=top_p, seed=seed, batch_size=batch_size, progress=False)
    samples = [[g.text for g in gens] for gens in details]
    flat_prompts = [p for p, cands in zip(prompts, samples) for _ in cands]
    flat = [c for cands in samples for c in cands]
    flat_scores = score_with_reward_model(reward_model, reward_tokenizer, flat_prompts, flat, batch_size)
    out, i = [], 0
    for cands in samples:
        scores = flat_scores[i : i + len(cands)]
        i += len(cands)
        best = max(range(len(cands)), key=lambda j: scores[j])
        out.append(BestOfN(cands[best], scores[best], cands, scores))
    return out


class BestOfNPolicy:
    """A best-of-N "policy" loaded from its models/policy dir.

    `backend` (hf | openvino | ct2) is the engine the N samples are drawn with; `compute_type` is ct2's."""

    def __init__(self, policy_dir: str, reward_dir: str, n: int, temperature: float = 0.8, top_p: float = 0.95,
                 device: str | None = None, backend: str = "hf", compute_type: str = "float32"):
        from alignflow.models import load_reward_model
        from alignflow.rlhf.generation import make_generator

        self.n, self.temperature, self.top_p = n, temperature, top_p
        self.generator = make_generator(policy_dir, backend, compute_type=compute_type, fallback=True)
        self.tokenizer = self.generator.tokenizer
        self.reward_model, self.reward_tokenizer = load_reward_model(reward_dir, device=device)

    @classmethod
    def from_dir(cls, path: str | os.PathLike = "models/policy", device: str | None = None, backend: str = "hf",
                 compute_type: str = "float32") -> "BestOfNPolicy":
        from alignflow.models.specs import resolve_base_ref

        path = Path(path)
        meta = json.loads((path / "alignflow_model.json").read_text())
        if meta.get("kind") != KIND:
            raise ValueError(f"{path}: kind {meta.get('kind')!r} is not {KIND}")
        return cls(resolve_base_ref(meta["policy"], path), resolve_base_ref(meta["reward"], path), int(meta["n"]),
                   meta.get("temperature", 0.8), meta.get("top_p", 0.95), device, backend, compute_type)

    def generate(self, prompts: list[Messages], *, max_new_tokens: int = 128, seed: int = 0,
                 batch_size: int = 8, n: int | None = None) -> list[str]:
        return [b.response for b in self.generate_with_scores(prompts, max_new_tokens=max_new_tokens, seed=seed,
                                                               batch_size=batch_size, n=n)]

    def generate_with_scores(self, prompts: list[Messages], *, max_new_tokens: int = 128, seed: int = 0,
                             batch_size: int = 8, n: int | None = None) -> list[BestOfN]:
        return generate_best_of_n(self.generator, self.reward_model, self.reward_tokenizer, prompts,
                                  n=n or self.n, max_new_tokens=max_new_tokens, temperature=self.temperature,
                                  top_p=self.top_p, seed=seed, batch_size=batch_size)


def _pyfunc_base():
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


class BestOfNPyfunc(_pyfunc_base()):
    """MLflow pyfunc wrapper, so the registry holds best_of_n like any other policy.

    The artifact is the models/policy record; the policy and reward model it names are resolved
    relative to the project the model is loaded in (they are the pipeline's own models/sft and
    models/reward, registered themselves as alignflow-sft and alignflow-reward).
    """

    def load_context(self, context):
        self.policy = BestOfNPolicy.from_dir(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        prompts = [r["prompt"] if isinstance(r, dict) else [{"role": "user", "content": str(r)}] for r in rows]
        return self.policy.generate(prompts, max_new_tokens=int((params or {}).get("max_new_tokens", 128)))


def run_best_of_n(params, staging: Path, policy_dir: str, reward_dir: str, prompts: list[Messages]) -> tuple[dict, list[dict]]:
    """Write the best_of_n policy record and measure reward vs n on a few prompts (the curve)."""
    align = params.align
    n = align.best_of_n.n
    temperature = params.sample.temperature
    top_p = params.sample.top_p
    meta: dict[str, Any] = {"kind": KIND, "policy": policy_dir, "reward": reward_dir, "n": n,
                            "temperature": temperature, "top_p": top_p, "stage": "align", "method": KIND}
    policy = BestOfNPolicy(policy_dir, reward_dir, n, temperature, top_p, device="cpu")
    results = policy.generate_with_scores(prompts, max_new_tokens=align.max_new_tokens, seed=params.seed)
    # Reward of best-of-k for k = 1..n from the same samples (the first k candidates of each prompt).
    history = []
    for k in range(1, n + 1):
        best = [max(r.scores[:k]) for r in results]
        chosen = [r.candidates[max(range(k), key=lambda j: r.scores[j])] for r in results]
        lengths = [len(policy.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in chosen]
        history.append({"step": k, "reward": sum(best) / len(best), "kl": best_of_n_kl(k),
                        "response_length": sum(lengths) / len(lengths)})
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "alignflow_model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    metrics = {
        "method": KIND,
        "n": n,
        "eval_prompts": len(prompts),
        "reward_first": history[0]["reward"],  # n = 1: the SFT policy's own samples
        "reward_last": history[-1]["reward"],
        "kl_last": history[-1]["kl"],
        "response_length_last": history[-1]["response_length"],
    }
    return metrics, history

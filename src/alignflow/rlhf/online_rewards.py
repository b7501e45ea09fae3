"""What the online methods (ppo, grpo, rloo) train on and are rewarded with (`align.reward`).

- `reward_model`: the trained reward model (the default); prompts_train.jsonl, plus
  `align.constraint_prompts` verifiable-constraint prompts if asked for (scored by the RM too).
- `verifier`: reinforcement learning with verifiable rewards (Tülu 3's RLVR): IFEval's checkers
  give `align.verifier_weight` × the share of the prompt's constraints the response follows; the
  prompts are the `align.constraint_prompts` constraint prompts only.
- `sum`: both prompt sets; the reward model's score plus the verifier's on constraint prompts.

The verifier finds a prompt's constraints by the prompt itself (its messages, as JSON), so the
trainers pass prompts exactly as they do today.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

Messages = list[dict[str, str]]


def prompt_key(prompt: Messages | str) -> str:
    return json.dumps(prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}], sort_keys=True)


def online_prompt_records(align, prompts_file: str, constraint_file: str | None) -> list[dict]:
    """The prompt records an online method samples on (see the module docstring)."""
    from alignflow.rlhf.sample import load_prompts

    records = [] if align.reward == "verifier" else load_prompts(prompts_file, align.max_prompts)
    if align.constraint_prompts and constraint_file:
        records += load_prompts(constraint_file, align.constraint_prompts)
    return records


def constraint_index(records: Sequence[dict]) -> dict[str, list[dict]]:
    return {prompt_key(r["prompt"]): r["constraints"] for r in records if r.get("constraints")}


def verifier_reward(index: dict[str, list[dict]], weight: float = 1.0) -> Callable[..., list[float | None]]:
    """A reward function (prompts, responses) -> weight × share of constraints followed; None for a
    prompt without constraints (TRL skips a None; `combined` adds nothing)."""
    from alignflow.verifiable import verify

    def verifier(prompts: Sequence[Messages | str], completions: Sequence[Any], **_: Any) -> list[float | None]:
        out: list[float | None] = []
        for prompt, completion in zip(prompts, completions):
            constraints = index.get(prompt_key(prompt))
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            out.append(None if not constraints else weight * verify(text, constraints).fraction_strict)
        return out

    return verifier


def combined(reward_model: Callable[..., list[float]] | None,
             verifier: Callable[..., list[float | None]] | None) -> Callable[..., list[float]]:
    """PPO's single reward: the reward model's score plus the verifier's where it has one."""
    if verifier is None:
        assert reward_model is not None
        return reward_model

    def reward(prompts, responses, **kwargs) -> list[float]:
        checked = verifier(prompts, responses)
        if reward_model is None:
            missing = [i for i, v in enumerate(checked) if v is None]
            if missing:
                raise ValueError(f"align.reward: verifier got {len(missing)} prompt(s) without constraints")
            return [float(v) for v in checked]
        scores = reward_model(prompts, responses, **kwargs)
        return [s + (v or 0.0) for s, v in zip(scores, checked)]

    return reward

"""PPO for RLHF, our own (TRL removed its PPOTrainer upstream in 2026).

Faithful to InstructGPT (Ouyang et al. 2022) and "The N Implementation Details of RLHF with PPO"
(Huang et al. 2024); the math lives in core_algos.py, this file wires models and data:

- one LoRA-adapted base holds the policy (LM head) and the value head (a linear layer on the
  same last hidden state): one forward gives log-probs and values;
- the frozen reference is the same base with the adapter disabled (no second copy);
- the reward model is loaded once: a second LoRA adapter on the same base when it is a LoRA on
  the same weights (scored with that adapter switched on), else a separate model;
- rollout: sample responses at temperature T (the log-probs of old policy and reference use
  logits / T too, as the N details advise), score them with the reward model at the last token,
  penalise responses without EOS, subtract β·KL per token (adaptive β, Ziegler et al.), GAE,
  whitened advantages;
- several PPO epochs of shuffled mini-batches per rollout, clipped policy and value losses
  (optional dual clip, `align.ppo.dual_clip_c`), gradients clipped to `grad_clip`;
- a NaN/inf reward, loss or gradient norm stops the run with the quantity and the step, before
  the optimizer step and so before any checkpoint (align_common.check_finite);
- data-parallel under Ray Train: each worker rolls out its shard of prompts, gradients are
  all-reduced (LoRA + value head are small) and the KL statistic is averaged so every worker
  keeps the same β.

Where to look: ppo_rollout.py (the shared-base forward, sampling, `Rollout`), ppo_trainer.py
(`PPOTrainer`: advantages, the PPO epochs, checkpoints), ppo_reward.py (loading the reward
model); this module is the stage's Ray Train loop and re-exports the names above.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

# ppo_train_loop calls load_ppo_reward through this module's namespace (tests patch it here).
from alignflow.rlhf.ppo_reward import SeparateReward, SharedBaseReward, can_share_base, load_ppo_reward
from alignflow.rlhf.ppo_rollout import (
    Messages,
    Rollout,
    make_value_head,
    policy_forward,
    position_ids_for,
    response_mask_from_ids,
)
from alignflow.rlhf.ppo_trainer import PPOTrainer, RewardFn

__all__ = [
    "VALUE_HEAD_FILE", "Messages", "PPOTrainer", "RewardFn", "Rollout", "SeparateReward", "SharedBaseReward",
    "build_policy", "can_share_base", "load_ppo_reward", "make_value_head", "policy_forward", "position_ids_for",
    "ppo_train_loop", "prompts_for_step", "response_mask_from_ids",
]

log = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"


# ---------------------------------------------------------------------------------------------
# The stage's training loop (runs on every Ray Train worker)
# ---------------------------------------------------------------------------------------------


def prompts_for_step(prompts: list, step: int, batch: int, seed: int) -> list:
    """The rollout prompts of a step: a function of (seed, step) only, so a resumed run continues the same way."""
    rng = random.Random(seed * 1_000_003 + step)
    if batch <= len(prompts):
        return rng.sample(prompts, batch)
    return [rng.choice(prompts) for _ in range(batch)]


def build_policy(base_dir: str, params, device: str | None = None):
    """(PeftModel with a fresh LoRA on the SFT weights, tokenizer, value head)."""
    from peft import LoraConfig, get_peft_model

    from alignflow.models import load_causal_lm

    base, tokenizer = load_causal_lm(base_dir, dtype=params.model.dtype, device=device,
                                     trust_remote_code=params.model.trust_remote_code)
    lora = params.align.lora
    model = get_peft_model(base, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules, task_type="CAUSAL_LM", bias="none"))
    return model, tokenizer, make_value_head(model)


def ppo_train_loop(config: dict) -> dict[str, Any]:
    from alignflow.config import validate
    from alignflow.models import save_model_dir
    from alignflow.rlhf.align_common import MetricsLogger, report_checkpoint
    from alignflow.rlhf.online_rewards import combined, constraint_index, online_prompt_records, verifier_reward
    from alignflow.training.launcher import LOOP_DIR_KEY, is_rank_zero, report_final, resume_checkpoint, world

    params = validate(config["params"], "loop config")
    align = params.align
    rank, world_size = world()
    torch.manual_seed(params.seed)  # the same LoRA init on every worker; sampling seeds differ per rank below
    model, tokenizer, value_head = build_policy(config["policy_base_dir"], params)
    reward_model = None if align.reward == "verifier" else load_ppo_reward(
        model, tokenizer, config["reward_dir"], config["policy_base_dir"], align.ppo.share_reward_base)
    records = online_prompt_records(align, config["prompts_file"], config.get("constraint_prompts_file"))
    verifier = verifier_reward(constraint_index(records), align.verifier_weight) if align.reward != "reward_model" else None
    reward = combined(reward_model, verifier)
    prompts = [p["prompt"] for p in records][rank::world_size]
    if not prompts:
        raise ValueError(f"PPO: worker {rank} got no prompts (fewer prompts than workers)")
    trainer = PPOTrainer(model, tokenizer, value_head, reward, align.ppo, learning_rate=align.learning_rate,
                         max_new_tokens=align.max_new_tokens, max_prompt_length=align.max_prompt_length,
                         seed=params.seed + rank)
    run_dir = config[LOOP_DIR_KEY]
    resume = resume_checkpoint(run_dir)
    if resume:
        trainer.load_checkpoint(resume)
        log.info("PPO: resumed from %s (step %d)", resume, trainer.step)
    resumed_step = trainer.step
    logger = MetricsLogger(is_rank_zero(), total_steps=align.max_steps)
    if resume:
        logger.replay(json.loads((Path(resume) / "trainer_state.json").read_text()).get("log_history", []))
    started = time.perf_counter()
    while trainer.step < align.max_steps:
        chunk = prompts_for_step(prompts, trainer.step, align.ppo.rollout_batch_size, params.seed + rank)
        stats = trainer.train_step(chunk)
        logger.log(stats, trainer.step)
        if trainer.step % align.save_steps == 0 or trainer.step == align.max_steps:
            report_checkpoint(trainer.save_checkpoint(run_dir, logger.history) if is_rank_zero() else None, stats)
    logger.close()
    elapsed = time.perf_counter() - started
    history = logger.history
    last = history[-1] if history else {}
    first = history[0] if history else {}
    metrics = {
        "method": "ppo",
        "steps": trainer.step,
        "resumed_from_step": resumed_step,
        "reward_first": first.get("reward"),
        "reward_last": last.get("reward"),
        "kl_last": last.get("kl"),
        "kl_coef_last": trainer.kl_ctl.value,
        "entropy_last": last.get("entropy"),
        "response_length_last": last.get("response_length"),
        "s_per_step": round(elapsed / max(1, trainer.step - resumed_step), 3),
        "reward_model_shared_base": isinstance(reward_model, SharedBaseReward),
        "workers": world_size,
    }
    if is_rank_zero():
        if reward_model is not None:
            reward_model.detach()
        save_model_dir(model, tokenizer, config["staging_dir"], config["meta"])
        from safetensors.torch import save_file

        save_file(value_head.state_dict(), str(Path(config["staging_dir"]) / VALUE_HEAD_FILE))
        metrics["history"] = history
    report_final({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return metrics

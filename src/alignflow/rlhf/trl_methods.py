"""DPO, ORPO, SimPO, KTO, GRPO and RLOO with TRL's trainers, inside the Ray Train launcher.

Every method starts from the SFT weights (models/sft, its adapter merged into a cached copy) and
trains a fresh LoRA adapter on them, so the frozen reference TRL needs is the same model with the
adapter disabled — no second copy in memory. GRPO and RLOO score their completions with our
reward model (models/reward) through a reward function that renders conversations with the chat
template the reward model was trained with. ORPO and SimPO need no reference at all: they are
TRL's ORPO and CPO (loss_type simpo) trainers, which live in `trl.experimental` (pinned TRL; the
tests run both).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from alignflow.config.rlhf import OFFLINE_METHODS, PAIRWISE_METHODS
from alignflow.io import InputError, read_jsonl
from alignflow.rlhf.align_common import check_finite

log = logging.getLogger(__name__)


def training_args(align, params, run_dir: str, *, per_device_batch: int, grad_accum: int | None = None) -> dict[str, Any]:
    """TrainingArguments shared by the TRL alignment configs."""
    from alignflow.training.common import runtime_args

    return dict(
        output_dir=run_dir,
        per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=grad_accum or align.grad_accum,
        learning_rate=align.learning_rate,
        max_steps=align.max_steps,
        lr_scheduler_type="constant",  # short runs: no decay to cut the last steps short
        activation_checkpointing=align.gradient_checkpointing,  # TRL's default (on) is not ours
        logging_steps=1,
        save_steps=align.save_steps,
        **runtime_args(params),
    )


def lora_config(align):
    from alignflow.training.peft_methods import peft_config

    return peft_config(align, "CAUSAL_LM")  # align has no `peft`: always LoRA from align.lora


def read_table(path: str, columns: tuple[str, ...], what: str, limit: int | None = None,
               keep=lambda record: True):
    """A datasets.Dataset of `columns` from the JSONL records `keep` accepts; a record missing a
    column names file:line."""
    from datasets import Dataset

    rows = []
    for lineno, rec in enumerate(read_jsonl(path), 1):
        missing = [c for c in columns if c not in rec]
        if missing:
            raise InputError(f"{path}:{lineno}: {what} record lacks {', '.join(missing)}")
        if keep(rec):
            rows.append({c: rec[c] for c in columns})
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise InputError(f"{path}: no {what} records")
    return Dataset.from_list(rows)


def make_reward_function(reward_dir: str, device: str | None = None, batch_size: int = 8):
    """TRL reward function (prompts, completions, **kw) -> scores from our reward model."""
    from alignflow.models import load_reward_model
    from alignflow.rlhf.judges import score_with_reward_model

    model, tokenizer = load_reward_model(reward_dir, device=device)
    model.eval().requires_grad_(False)

    def reward_model(prompts, completions, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        convs = [p if isinstance(p, list) else [{"role": "user", "content": p}] for p in prompts]
        scores = score_with_reward_model(model, tokenizer, convs, texts, batch_size)
        # TRL nansum()s rewards: a NaN score would silently count as 0.
        state = kwargs.get("trainer_state")
        check_finite(f"step {state.global_step + 1 if state else '?'}: reward model ({reward_dir})", reward=scores)
        return scores

    return reward_model


def _precompute(dpo_cfg, align, n_examples: int, per_step: int) -> bool:
    if dpo_cfg.precompute_ref_log_probs != "auto":
        return bool(dpo_cfg.precompute_ref_log_probs)
    # One reference forward per example up front pays off when the run sees the data well over once:
    # TRL precomputes at the training micro-batch (0.98 s a pair, default DPO pairs, 2 cores) while a
    # step's own reference forward costs 0.68 s a pair, so below 1.5 passes it is the slower choice.
    return align.max_steps * per_step > 1.5 * n_examples


def dpo_config(align, common: dict[str, Any], n_examples: int, per_step: int):
    """TRL's DPOConfig from align.dpo: β, and the loss mix (loss_type summed with loss_weights)."""
    from trl import DPOConfig

    dpo = align.dpo
    return DPOConfig(**common, beta=dpo.beta, loss_type=list(dpo.loss_type), loss_weights=dpo.loss_weights,
                     max_length=align.max_length, precompute_ref_log_probs=_precompute(dpo, align, n_examples, per_step))


def reference_free_trainer(method: str, align, common: dict[str, Any], model, tokenizer, train):
    """ORPO or SimPO (TRL's CPO trainer with the simpo loss) on preference pairs: one policy, no reference."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # a pinned TRL; these paths are tested
    shared = dict(common, max_length=align.max_length)
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(**shared, beta=align.orpo.beta)
        trainer_cls = ORPOTrainer
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        simpo = align.simpo
        args = CPOConfig(**shared, loss_type="simpo", beta=simpo.beta, simpo_gamma=simpo.gamma,
                         cpo_alpha=simpo.nll_weight)
        trainer_cls = CPOTrainer
    return trainer_cls(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                       peft_config=lora_config(align))


def trl_train_loop(config: dict) -> dict[str, Any]:
    from alignflow.config import validate
    from alignflow.models import load_causal_lm, save_model_dir
    from alignflow.rlhf.align_common import LengthMeter, curve_callback, finite_guard_callback, group_by_length
    from alignflow.training.launcher import (LOOP_DIR_KEY, is_rank_zero, prepare_hf_trainer, report_final,
                                             resume_checkpoint, train_or_restore, world)

    params = validate(config["params"], "loop config")
    align, method = params.align, config["method"]
    run_dir = config[LOOP_DIR_KEY]
    model, tokenizer = load_causal_lm(config["policy_base_dir"], dtype=params.model.dtype, device="cpu",
                                      trust_remote_code=params.model.trust_remote_code)
    tokenizer.padding_side = "right" if method in OFFLINE_METHODS else "left"
    _, world_size = world()
    per_step = align.batch_size * align.grad_accum * world_size
    per_forward, forwards_per_step = align.forward_batch()
    common = training_args(align, params, run_dir, per_device_batch=per_forward, grad_accum=forwards_per_step)
    beta = None

    if method in PAIRWISE_METHODS:
        from alignflow.rlhf.rank import pair_source

        sources = align.pair_sources()
        train = read_table(config["train_file"], ("prompt", "chosen", "rejected"),
                           f"preference (align.{method}.sources: {'+'.join(sources)})",
                           keep=lambda r: pair_source(r) in sources)
        beta = getattr(align, method).beta
        if method == "dpo":
            from trl import DPOTrainer

            trainer = DPOTrainer(model=model, args=dpo_config(align, common, len(train), per_step), train_dataset=train,
                                 processing_class=tokenizer, peft_config=lora_config(align))
        else:
            trainer = reference_free_trainer(method, align, common, model, tokenizer, train)
    elif method == "kto":
        from trl import KTOConfig, KTOTrainer

        train = read_table(config["kto_file"], ("prompt", "completion", "label"), "KTO")
        beta = align.kto.beta
        args = KTOConfig(**common, beta=beta, desirable_weight=align.kto.desirable_weight,
                         undesirable_weight=align.kto.undesirable_weight, max_length=align.max_length)
        trainer = KTOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                             peft_config=lora_config(align))
    elif method in ("grpo", "rloo"):
        group = getattr(align, method)
        from datasets import Dataset

        from alignflow.rlhf.online_rewards import constraint_index, online_prompt_records, verifier_reward

        records = online_prompt_records(align, config["prompts_file"], config.get("constraint_prompts_file"))
        train = Dataset.from_list([{"prompt": r["prompt"]} for r in records])
        # TRL sums the reward functions (a None, the verifier on a prompt without constraints, adds nothing)
        reward_fn = [] if align.reward == "verifier" else [
            make_reward_function(config["reward_dir"], device="cpu" if common["use_cpu"] else None)]
        if align.reward != "reward_model":
            reward_fn.append(verifier_reward(constraint_index(records), align.verifier_weight))
        # per_device_train_batch_size counts completions: `batch_size` prompts × num_generations each.
        group_args = dict(common, per_device_train_batch_size=align.batch_size * group.num_generations)
        kwargs = dict(num_generations=group.num_generations, max_completion_length=align.max_new_tokens,
                      temperature=group.temperature, beta=group.beta)
        if method == "grpo":
            from trl import GRPOConfig, GRPOTrainer

            args = GRPOConfig(**group_args, **kwargs)
            trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=train,
                                  processing_class=tokenizer, peft_config=lora_config(align))
        else:
            from trl import RLOOConfig, RLOOTrainer

            args = RLOOConfig(**group_args, **kwargs)
            trainer = RLOOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=train,
                                  processing_class=tokenizer, peft_config=lora_config(align))
    else:
        raise ValueError(f"align.method {method!r} is not a TRL method")

    lengths = None
    # KTO keeps a random order: its batches need desirable and undesirable examples side by side.
    if method in PAIRWISE_METHODS and align.group_by_length:
        if not group_by_length(trainer, align.batch_size * align.grad_accum, params.seed):
            log.info("align.group_by_length: the %s dataset has no token ids; batches keep a random order", method)
    if method in OFFLINE_METHODS:
        lengths = LengthMeter(trainer.data_collator)
        trainer.data_collator = lengths
    trainer.add_callback(curve_callback(method, beta, lengths))  # first: the later callbacks see the curve keys
    trainer.add_callback(finite_guard_callback())  # before logging and checkpointing callbacks
    trainer = prepare_hf_trainer(trainer, name=f"align {method}")
    resume = resume_checkpoint(run_dir)
    started = time.perf_counter()
    result = train_or_restore(trainer, resume)
    elapsed = time.perf_counter() - started
    history = trainer.step_metrics.history
    train_rows = [h for h in history if "loss" in h or "reward" in h]
    first, last = (train_rows[0], train_rows[-1]) if train_rows else ({}, {})
    resumed = int(Path(resume).name.split("-")[-1]) if resume and Path(resume).name.split("-")[-1].isdigit() else 0
    metrics: dict[str, Any] = {
        "method": method,
        "steps": trainer.state.global_step,
        "resumed_from_step": resumed,
        "train_examples": len(train),
        "train_loss_mean": result.training_loss,
        "s_per_step": round(elapsed / max(1, trainer.state.global_step - resumed), 3),
    }
    for key in ("reward", "kl", "entropy", "response_length", "accuracy"):
        metrics[f"{key}_first"] = first.get(key)
        metrics[f"{key}_last"] = last.get(key)
    if is_rank_zero():
        save_model_dir(trainer.model, tokenizer, config["staging_dir"], config["meta"])
        metrics["history"] = history
    report_final({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return metrics

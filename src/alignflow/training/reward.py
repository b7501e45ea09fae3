"""reward stage: a Bradley–Terry reward model with TRL's RewardTrainer inside Ray Train.

loss = -log σ(r(chosen) - r(rejected) - margin) (+ c · mean((r_c + r_r)²) when
`reward.center_rewards_coefficient` > 0), the score read at the last token of each sequence.
`margin` is in logits (the unit of r): the rank stage converts judge score gaps with the judge's
calibration `compare_scale` (rlhf/judges.py; reference judge: 0.1 score ≈ 1 logit).
Data: data/prefs/{train,val}.jsonl (the rank stage) when present, else the formatted human pairs
data/formatted/prefs_{train,val}.jsonl. Base: `reward.base` (models/sft by default: the SFT adapter
merged into its base, with a fresh score head), a PEFT adapter (`peft: lora | adalora | ia3`, the head
fully trained) or full weights (`peft: none`).
Outputs models/reward/, plots/reward_loss.csv (train loss), plots/reward_eval.csv (eval loss and
held-out pair accuracy per eval step, with the seconds since training started: accuracy against
training time), held-out pair accuracy and mean margin.
`reward.backbone: embedding` trains a linear head on frozen sentence embeddings instead
(training/embedding_reward.py), with the same outputs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from alignflow import paths, scratch
from alignflow.config import Params
from alignflow.io import InputError
from alignflow.training import common, peft_methods
from alignflow.training.launcher import LOOP_DIR_KEY, LOOP_HINT_KEY, run_training

log = logging.getLogger(__name__)

OUTPUT = paths.REWARD_MODEL
CURVE = Path("plots/reward_loss.csv")  # step,train_loss: every logging step
EVAL_CURVE = Path("plots/reward_eval.csv")  # step,eval_loss,eval_accuracy: every eval step
PREFS = Path("data/prefs")


def preference_rows(records: list[dict], use_margin: bool) -> list[dict]:
    """TRL's conversational preference format: prompt / chosen / rejected (+ margin, in logits, used as is)."""
    with_margin = use_margin and any(rec.get("margin") is not None for rec in records)
    rows = []
    for rec in records:
        where = rec.get("_where", "record")
        row = {}
        for key in ("prompt", "chosen", "rejected"):
            if key not in rec:
                raise InputError(f"{where}: preference record without {key!r}")
            row[key] = common.check_messages(rec[key], f"{where} ({key})")
        if with_margin:
            margin = rec.get("margin")
            try:
                row["margin"] = float(margin) if margin is not None else 0.0
            except (TypeError, ValueError):
                raise InputError(f"{where}: margin must be a number (got {margin!r})") from None
        rows.append(row)
    return rows


def preference_files(root: Path = Path(".")) -> tuple[Path, Path | None]:
    """data/prefs/ (judged samples + human pairs) once the rank stage made it, else the formatted pairs."""
    def nonempty(path: Path) -> Path | None:  # few pairs can leave rank's val split empty
        return path if path.exists() and path.stat().st_size > 0 else None

    if (root / PREFS / "train.jsonl").exists():
        return root / PREFS / "train.jsonl", nonempty(root / PREFS / "val.jsonl")
    train = common.require_file(root / common.FORMATTED / "prefs_train.jsonl", "preference pairs", "rank (or format)")
    return train, nonempty(root / common.FORMATTED / "prefs_val.jsonl")


def train_loop(config: dict) -> dict[str, Any]:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from alignflow.config import validate
    from alignflow.models import save_model_dir
    from alignflow.training.launcher import (is_rank_zero, prepare_hf_trainer, report_final, resume_checkpoint,
                                             train_or_restore)
    from alignflow.training.sft import load_for_training

    params = validate(config["params"], "loop config", cross_checks=False)  # checked whole by the stage
    section = params.reward
    run_dir = config[LOOP_DIR_KEY]
    model, tokenizer = load_for_training(config["base"], params, section.peft, reward=True)
    common.check_context(model, section.max_length, "reward", config["base"])
    tokenizer.padding_side = "right"
    train_rows = preference_rows(common.read_records(Path(config["train_file"]), section.max_train_samples), section.use_margin)
    val = None
    if config.get("val_file"):
        val = Dataset.from_list(
            preference_rows(common.read_records(Path(config["val_file"]), section.max_eval_samples), section.use_margin)
        )
    args = RewardConfig(
        **common.hf_args(section, params, run_dir, has_eval=val is not None),
        max_length=section.max_length,
        center_rewards_coefficient=section.center_rewards_coefficient or None,
        disable_dropout=True,
    )
    peft_config = peft_methods.peft_config(section, "SEQ_CLS",
                                     total_steps=peft_methods.planned_steps(section, len(train_rows), args.world_size))
    if peft_config is not None:
        peft_config.modules_to_save = ["score"]  # the new head is trained in full
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=val,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if len(trainer.train_dataset) == 0:
        raise InputError(f"{config['train_file']}: every pair is longer than reward.max_length ({section.max_length})")
    trainable = peft_methods.trainable_summary(trainer.model)
    resume = resume_checkpoint(run_dir)
    trainer = peft_methods.with_peft_method(trainer, section, "reward", resume)
    trainer = prepare_hf_trainer(trainer, name="reward")
    if resume:
        log.info("resuming from %s", resume)
    resumed_step = int(common.checkpoint_state(resume).get("global_step", 0))  # before rotation deletes it
    started = time.perf_counter()
    result = train_or_restore(trainer, resume)
    elapsed = time.perf_counter() - started
    state = trainer.state
    steps_done = state.global_step - resumed_step
    if resume and steps_done == 0:  # the final checkpoint, restored: nothing trained
        peft_methods.restore_peft_state(trainer.model, resume)
    metrics: dict[str, Any] = {
        "train_loss": common.last_logged(state.log_history, "loss"),
        "train_loss_mean": result.training_loss,
        "train_accuracy": common.last_logged(state.log_history, "accuracy"),
        "steps": state.global_step,
        "resumed_from_step": resumed_step,
        "train_pairs": len(trainer.train_dataset),
        "dropped_over_length": len(train_rows) - len(trainer.train_dataset),
        "train_runtime_s": round(elapsed, 2),
        "s_per_step": round(elapsed / max(1, steps_done), 3),
        **trainable,
    }
    if section.peft == "adalora":
        metrics.update(peft_methods.adalora_ranks(trainer.model))
    if val is not None:
        # the last periodic eval, when it ran at the final step, is the final eval
        ev = common.eval_at_step(state.log_history, state.global_step) or trainer.evaluate()
        metrics.update({
            "eval_loss": ev.get("eval_loss"),
            "eval_accuracy": ev.get("eval_accuracy"),  # held-out pair accuracy: r(chosen) > r(rejected)
            "eval_mean_margin": ev.get("eval_margin"),
            "eval_pairs": len(trainer.eval_dataset),
        })
    if is_rank_zero():
        tokenizer.padding_side = "left"
        meta = {"base": config["base"], "stage": "reward", "peft": section.peft, "max_length": section.max_length}
        if config.get("base_digest"):
            meta["base_digest"] = config["base_digest"]
        out = save_model_dir(trainer.model, tokenizer, config["staging_dir"], {"kind": "reward", **meta})
        metrics["adapter_params"] = peft_methods.saved_adapter_params(out)
        metrics["history"] = trainer.step_metrics.history
    report_final({k: v for k, v in metrics.items() if k != "history"})
    return metrics


def reward_base(params: Params) -> str:
    base = params.reward.base
    if base == "models/sft" and not Path(base).exists():
        log.warning("reward.base: models/sft does not exist; starting from model.base (%s)", params.model.base)
        return params.model.base
    return base


def loop_config(params: Params, staging: Path | None = None) -> dict[str, Any]:
    from alignflow.models import read_meta
    from alignflow.models.specs import model_dir_digest

    train, val = preference_files()
    base = reward_base(params)
    staging = staging or scratch.staging_dir(OUTPUT)
    base_digest = model_dir_digest(base) if Path(base).is_dir() and read_meta(base) is not None else None
    return {
        "params": params.model_dump(mode="json", include={"seed", "model", "ray", "reward"}),
        "base": base,
        "base_digest": base_digest,
        "train_file": str(train.resolve()),
        "val_file": str(val.resolve()) if val else None,
        "data_digest": common.file_digest(train, *( [val] if val else [])),
        "staging_dir": str(staging.resolve()),
        LOOP_HINT_KEY: common.oom_hint("reward", params.reward),
    }


def run(params: Params, tracker) -> dict[str, Any]:
    # the backbone in the metrics: the next run's time estimate compares like with like (progress.estimate_s)
    return {"backbone": params.reward.backbone, **_train(params, tracker)}


def _train(params: Params, tracker) -> dict[str, Any]:
    if params.reward.backbone == "embedding":  # a linear head on frozen sentence embeddings, no Ray Train loop
        from alignflow.training import embedding_reward

        common.log_datasets(tracker, preference_files())
        return embedding_reward.run(params, tracker, *preference_files(), OUTPUT, CURVE, EVAL_CURVE)
    config = loop_config(params)
    common.log_datasets(tracker, preference_files())
    if config["base"] != params.model.base and Path(config["base"]).is_dir():
        from alignflow.models import resolve_spec

        resolve_spec(config["base"])  # merge the SFT adapter once, before the workers start
    result = run_training(train_loop, config, params, "reward", tracking_run_id=getattr(tracker, "run_id", None))
    metrics = dict(result.return_value or {})
    history = metrics.pop("history", [])
    common.promote(Path(config["staging_dir"]), OUTPUT)
    common.write_curve(CURVE, history, {"train_loss": "loss"})
    common.write_curve(EVAL_CURVE, history, {"eval_loss": "eval_loss", "eval_accuracy": "eval_accuracy",
                                             "elapsed_s": "elapsed_s"}, required=("eval_loss", "eval_accuracy"))
    if tracker is not None:
        tracker.log_artifact(CURVE)
        tracker.log_artifact(EVAL_CURVE)
        metrics.update(common.log_and_register(params, tracker, OUTPUT, "reward", task="text-classification"))
    return {k: v for k, v in metrics.items() if v is not None}

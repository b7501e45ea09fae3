"""sft stage: TRL SFTTrainer inside Ray Train, loss on assistant tokens only.

data/formatted/sft_{train,val}.jsonl (conversation records) -> models/sft/ (PEFT adapter or full
weights + tokenizer with its chat template + alignflow_model.json), plots/sft_loss.csv (train loss),
plots/sft_eval.csv (eval loss), metrics.

Assistant-only loss. TRL's `assistant_only_loss` needs a chat template with `{% generation %}`
markers, which SmolLM2's (and most) templates lack, and TRL only patches templates it knows. So we
tokenize here, with the model's own template: each assistant turn's characters are the
difference between the conversation rendered up to that turn with the generation prompt and
rendered through it (for a prefix-preserving template, true of ChatML/Llama/SmolLM2 templates;
others fail with a clear error), and a token is trained on when it starts inside such a span. That
covers every assistant turn of a multi-turn chat, including its end-of-turn token (the model learns
to stop). TRL gets `input_ids` + `assistant_masks` and builds the -100 labels, truncation and
packing from them.

PEFT (`sft.peft`, config built by `peft_methods.peft_config`): lora, qlora, adalora, ia3 (weights that
merge: later stages see the merged copy) or prefix, prompt, ptuning (learned virtual tokens, loaded
as base + PeftModel; TRL masks their positions out of the loss), or none. AdaLoRA's rank schedule
runs in `peft_methods.AdaLoraCallback`. The metrics record `trainable_params` / `trainable_fraction`
(what the optimizer updates) and `adapter_params` (what the saved adapter holds: AdaLoRA after
pruning, only the final virtual tokens of P-tuning and projected prefix tuning).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from alignflow import paths, scratch
from alignflow.config import Params
from alignflow.io import InputError
from alignflow.training import common, peft_methods
from alignflow.training.launcher import LOOP_DIR_KEY, LOOP_HINT_KEY, run_training

log = logging.getLogger(__name__)

OUTPUT = paths.SFT_MODEL
CURVE = Path("plots/sft_loss.csv")  # step,train_loss: every logging step
EVAL_CURVE = Path("plots/sft_eval.csv")  # step,eval_loss: every eval step (its own file: no empty cells)


class TemplateError(ValueError):
    """The chat template cannot give assistant masks (not prefix-preserving)."""


def assistant_char_spans(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) characters of each assistant turn."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (full.startswith(before) and full.startswith(through) and through.startswith(before)):
            raise TemplateError(
                "the chat template renders a conversation's prefix differently from the conversation itself, "
                "so assistant turns cannot be located; use a prefix-preserving template or sft.loss_on: all"
            )
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_conversation(messages: list[dict], tokenizer, loss_on: str = "assistant") -> dict[str, list[int]]:
    """{"input_ids", "assistant_masks"} (1 = trained on) for one conversation."""
    if loss_on == "all":
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return {"input_ids": ids, "assistant_masks": [1] * len(ids)}
    text, spans = assistant_char_spans(messages, tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = []
    for start, end in enc["offset_mapping"]:
        inside = any(s <= start < e for s, e in spans) and end > start
        mask.append(1 if inside else 0)
    return {"input_ids": enc["input_ids"], "assistant_masks": mask}


def build_dataset(records: list[dict], tokenizer, loss_on: str):
    from datasets import Dataset

    rows, skipped = [], 0
    for rec in records:
        where = rec.get("_where", "record")
        messages = common.check_messages(rec.get("messages"), where)
        if not any(m["role"] == "assistant" for m in messages):
            skipped += 1
            continue
        try:
            rows.append(tokenize_conversation(messages, tokenizer, loss_on))
        except TemplateError as err:
            raise InputError(f"{where}: {err}") from None
    if skipped:
        log.warning("skipped %d conversations without an assistant turn", skipped)
    if not rows:
        raise InputError("no trainable conversations (none has an assistant turn)")
    return Dataset.from_list(rows)


def load_for_training(base: str, params: Params, peft: str, *, reward: bool = False):
    """(model, tokenizer) for a training run: full precision on CPU, 4-bit for qlora."""
    from alignflow.models import load_causal_lm, load_reward_model, resolve_dtype, resolve_spec

    quant = common.quantization_config(peft)
    kwargs: dict[str, Any] = {"trust_remote_code": params.model.trust_remote_code}
    if quant is None and params.model.attn_implementation == "auto":
        loader = load_reward_model if reward else load_causal_lm
        model, tokenizer = loader(base, dtype=params.model.dtype, device="cpu", **kwargs)
    else:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        from alignflow.models import load_tokenizer

        auto = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
        extra = {"num_labels": 1} if reward else {}
        if quant is not None:
            import torch

            extra["quantization_config"] = quant
            extra["device_map"] = {"": torch.cuda.current_device()}  # this worker's GPU (set by Ray Train)
        if params.model.attn_implementation != "auto":
            extra["attn_implementation"] = params.model.attn_implementation
        model = auto.from_pretrained(resolve_spec(base, trust_remote_code=params.model.trust_remote_code),
                                     dtype=resolve_dtype(params.model.dtype), use_safetensors=True, **extra, **kwargs)
        tokenizer = load_tokenizer(base, **kwargs)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if quant is not None:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)
    return model, tokenizer


# --- the training loop (runs on every Ray Train worker) ---------------------------------------


def train_loop(config: dict) -> dict[str, Any]:
    import time

    from trl import SFTConfig, SFTTrainer

    from alignflow.config import validate
    from alignflow.models import save_model_dir
    from alignflow.training.launcher import (is_rank_zero, prepare_hf_trainer, report_final, resume_checkpoint,
                                             train_or_restore)

    params = validate(config["params"], "loop config", cross_checks=False)  # checked whole by the stage
    section = params.sft
    run_dir = config[LOOP_DIR_KEY]
    model, tokenizer = load_for_training(config["base"], params, section.peft)
    common.check_context(model, section.max_length, "sft", config["base"])
    tokenizer.padding_side = "right"
    train = build_dataset(common.read_records(Path(config["train_file"]), section.max_train_samples), tokenizer, section.loss_on)
    val = None
    if config.get("val_file"):
        val = build_dataset(common.read_records(Path(config["val_file"]), section.max_eval_samples), tokenizer, section.loss_on)
    args = SFTConfig(
        **common.hf_args(section, params, run_dir, has_eval=val is not None),
        max_length=section.max_length,
        packing=section.packing,
        eval_packing=False,  # eval loss on whole conversations, comparable with or without packing
        include_num_input_tokens_seen="non_padding",
        eval_on_start=section.eval_on_start and val is not None,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=val,
        processing_class=tokenizer,
        peft_config=peft_methods.peft_config(section, "CAUSAL_LM",
                                       total_steps=peft_methods.planned_steps(section, len(train), args.world_size),
                                       tokenizer_dir=tokenizer.name_or_path),
    )
    trainable = peft_methods.trainable_summary(trainer.model)
    resume = resume_checkpoint(run_dir)
    trainer = peft_methods.with_peft_method(trainer, section, "sft", resume)
    trainer = prepare_hf_trainer(trainer, name="sft")
    if resume:
        log.info("resuming from %s", resume)
    before = common.checkpoint_state(resume)  # read now: checkpoint rotation may delete it
    started = time.perf_counter()
    result = train_or_restore(trainer, resume)
    elapsed = time.perf_counter() - started
    state = trainer.state
    resumed_step = int(before.get("global_step", 0))
    if resume and state.global_step == resumed_step:  # the final checkpoint, restored: nothing trained
        peft_methods.restore_peft_state(trainer.model, resume)
    # Tokens/s over this process's work only (a resumed run counts from its checkpoint).
    tokens_seen = float(state.num_input_tokens_seen or 0)
    tokens_before = float(before.get("num_input_tokens_seen") or 0)
    metrics: dict[str, Any] = {
        "train_loss": common.last_logged(state.log_history, "loss"),
        "train_loss_mean": result.training_loss,
        "steps": state.global_step,
        "resumed_from_step": resumed_step,
        "world_size": args.world_size,
        "train_examples": len(train),
        "train_tokens": int(tokens_seen),
        "tokens_per_s": round((tokens_seen - tokens_before) / elapsed, 2) if elapsed > 0 else None,
        "train_runtime_s": round(elapsed, 2),
        "s_per_step": round(elapsed / max(1, state.global_step - resumed_step), 3),
        **trainable,
    }
    if section.peft == "adalora":
        metrics.update(peft_methods.adalora_ranks(trainer.model))
    if val is not None:
        # the last periodic eval, when it ran at the final step, is the final eval
        ev = common.eval_at_step(state.log_history, state.global_step) or trainer.evaluate()
        metrics["eval_loss"] = ev.get("eval_loss")
        metrics["eval_perplexity"] = math.exp(ev["eval_loss"]) if ev.get("eval_loss") is not None and ev["eval_loss"] < 50 else None
    if is_rank_zero():
        tokenizer.padding_side = "left"  # saved for generation, as every loader sets it
        model_to_save = trainer.model
        meta = {"base": config["base"], "stage": "sft", "peft": section.peft, "loss_on": section.loss_on,
                "max_length": section.max_length, "packing": section.packing}
        out = save_model_dir(model_to_save, tokenizer, config["staging_dir"], meta,
                             merged=section.merge_adapter and section.peft != "none")
        metrics["adapter_params"] = peft_methods.saved_adapter_params(out)
        metrics["history"] = trainer.step_metrics.history
    report_final({k: v for k, v in metrics.items() if k != "history"})
    return metrics


# --- the stage (driver) -----------------------------------------------------------------------


def loop_config(params: Params, data_dir: Path = common.FORMATTED, staging: Path | None = None) -> dict[str, Any]:
    train = common.require_file(data_dir / "sft_train.jsonl", "SFT conversations", "format")
    val = data_dir / "sft_val.jsonl"
    staging = staging or scratch.staging_dir(OUTPUT)
    return {
        "params": params.model_dump(mode="json", include={"seed", "model", "ray", "sft"}),
        "base": params.model.base,
        "train_file": str(train.resolve()),
        "val_file": str(val.resolve()) if val.exists() else None,
        "data_digest": common.file_digest(train, val),
        "staging_dir": str(staging.resolve()),
        LOOP_HINT_KEY: common.oom_hint("sft", params.sft),
    }


def run(params: Params, tracker) -> dict[str, Any]:
    config = loop_config(params)
    common.log_datasets(tracker, [common.FORMATTED / "sft_train.jsonl", common.FORMATTED / "sft_val.jsonl"])
    staging = Path(config["staging_dir"])
    result = run_training(train_loop, config, params, "sft", tracking_run_id=getattr(tracker, "run_id", None))
    metrics = dict(result.return_value or {})
    history = metrics.pop("history", [])
    common.promote(staging, OUTPUT)
    common.write_curve(CURVE, history, {"train_loss": "loss"})
    common.write_curve(EVAL_CURVE, history, {"eval_loss": "eval_loss"})
    if tracker is not None:
        tracker.log_artifact(CURVE)
        tracker.log_artifact(EVAL_CURVE)
        metrics.update(common.log_and_register(params, tracker, OUTPUT, "sft", task="text-generation"))
    if params.sft.judge_eval.max_prompts:
        metrics.update(_judge_eval(params, tracker))
    return {k: v for k, v in metrics.items() if v is not None}


def _judge_eval(params: Params, tracker) -> dict[str, Any]:
    """sft.judge_eval: the reference judge's score of models/sft on held-out validation prompts."""
    from alignflow.evaluation.judge_eval import judge_model

    prompts = common.require_file(common.FORMATTED / "prompts_val.jsonl", "validation prompts", "format")
    metrics, rows = judge_model(OUTPUT, prompts, params)
    if tracker is not None and rows:
        tracker.log_table(rows, "judge_eval.json")
    return metrics

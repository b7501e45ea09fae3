"""What the sft and reward stages share: data files, model loading for training, HF arguments,
output promotion, loss curves and MLflow model logging."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from alignflow import paths
from alignflow.config import Params, ParamsError
from alignflow.io import InputError, read_jsonl

log = logging.getLogger(__name__)

FORMATTED = paths.FORMATTED


# --- data -------------------------------------------------------------------------------------


def require_file(path: Path, what: str, made_by: str) -> Path:
    if not path.exists():
        raise InputError(f"{path}: missing ({what}; written by the {made_by} stage — run it first)")
    return path


def file_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        if path is not None and path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def check_messages(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise InputError(f"{where}: message {i} must be {{'role': system|user|assistant, 'content': str}} (got {m!r:.120})")
    return messages


def read_records(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    for i, rec in enumerate(read_jsonl(path), 1):
        rec["_where"] = f"{path}:{i}"
        rows.append(rec)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise InputError(f"{path}: no records")
    return rows


# --- model ------------------------------------------------------------------------------------


def model_context(model) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def check_context(model, max_length: int, section: str, base: str) -> None:
    """The validation-time check covers tiny/embedded specs; this one covers hub ids and paths."""
    context = model_context(model)
    if context is not None and max_length > context:
        raise ParamsError(f"{section}.max_length: {max_length} is above the context of {base} ({context} tokens)")


def quantization_config(peft: str):
    if peft != "qlora":
        return None
    import torch

    if not torch.cuda.is_available():
        raise ParamsError("peft: qlora needs a CUDA GPU (bitsandbytes 4-bit); use peft: lora on CPU")
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ParamsError("peft: qlora needs the bitsandbytes package (pip install 'alignflow[gpu]')") from None
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def runtime_args(params: Params) -> dict[str, Any]:
    """Device, precision, seeding, checkpointing and logging that every HF/TRL trainer here shares."""
    import torch

    from alignflow.models import resolve_dtype
    from alignflow.progress import is_tty

    on_gpu = torch.cuda.is_available() and params.ray.use_gpu
    dtype = resolve_dtype(params.model.dtype)
    return dict(
        logging_first_step=True,
        save_strategy="steps",
        save_total_limit=2,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu,
        seed=params.seed,
        data_seed=params.seed,
        report_to="none",
        # bars only on a terminal; prepare_hf_trainer swaps HF's callback for ours (step, loss, ETA)
        disable_tqdm=not is_tty(),
        dataloader_num_workers=0,
        # keep NaN/inf visible to FiniteLossCallback instead of averaging them away
        logging_nan_inf_filter=False,
    )


def hf_args(section, params: Params, run_dir: str, has_eval: bool, **extra) -> dict[str, Any]:
    """TrainingArguments shared by the sft and reward trainers."""
    return dict(
        output_dir=run_dir,
        per_device_train_batch_size=section.per_device_batch_size,
        per_device_eval_batch_size=section.per_device_batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        learning_rate=section.learning_rate,
        num_train_epochs=section.num_epochs,
        max_steps=section.max_steps,
        warmup_steps=section.warmup_ratio,
        weight_decay=section.weight_decay,
        lr_scheduler_type=section.lr_scheduler,
        max_grad_norm=section.max_grad_norm,
        logging_steps=section.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=section.eval_steps,
        save_steps=section.save_steps,
        activation_checkpointing=section.gradient_checkpointing,
        remove_unused_columns=True,
        **runtime_args(params),
        **extra,
    )


def oom_hint(section_name: str, section) -> str:
    return (
        f"{section_name}.per_device_batch_size (now {section.per_device_batch_size}; raise "
        f"{section_name}.gradient_accumulation_steps to keep the effective batch), {section_name}.max_length "
        f"(now {section.max_length}), or set {section_name}.gradient_checkpointing: true / peft: qlora"
    )


# --- trainer state ----------------------------------------------------------------------------


def last_logged(history: list[dict], key: str):
    for row in reversed(history):
        if key in row:
            return row[key]
    return None


def eval_at_step(history: list[dict], step: int) -> dict | None:
    """The last periodic eval when it ran at `step` (the final step: no need to evaluate again)."""
    for row in reversed(history):
        if "eval_loss" in row:
            return row if row.get("step") == step else None
    return None


def checkpoint_state(checkpoint: str | None) -> dict:
    """trainer_state.json of the checkpoint a run resumed from ({} for a fresh run)."""
    if not checkpoint:
        return {}
    import json

    state = Path(checkpoint) / "trainer_state.json"
    return json.loads(state.read_text()) if state.exists() else {}


# --- outputs ----------------------------------------------------------------------------------


def promote(staging: Path, target: Path) -> None:
    """Move a finished output into place (the previous one is removed only afterwards)."""
    if not staging.exists():
        raise RuntimeError(f"training finished but wrote no model to {staging}")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def write_curve(path: Path, history: list[dict], columns: dict[str, str],
                required: tuple[str, ...] | None = None) -> int:
    """A plot CSV (plots/<stage>_*.csv): `step` + `columns` (csv column -> logged key).

    A step becomes a row only when it logged every `required` column (default: all `columns`):
    an empty cell is drawn as 0 by `dvc plots`, so series logged at different steps (train loss
    every logging step, eval loss every eval step) go to separate files. `required=()` keeps
    every step that logged any column (a wide table for people, not a DVC figure)."""
    by_step: dict[int, dict] = {}
    for row in history:
        step = int(row["step"])
        for col, key in columns.items():
            if row.get(key) is not None:
                by_step.setdefault(step, {})[col] = row[key]
    need = tuple(columns) if required is None else tuple(required)
    steps = [s for s in sorted(by_step) if all(c in by_step[s] for c in need)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", *columns])
        for step in steps:
            writer.writerow([step, *(_fmt(by_step[step].get(c)) for c in columns)])
    os.replace(tmp, path)
    return len(steps)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.6g}"


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for name in ("transformers", "torch", "peft", "accelerate", "safetensors"):
        try:
            reqs.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pass
    return reqs


def log_and_register(params: Params, tracker, model_dir: Path, stage: str, task: str) -> dict[str, Any]:
    """Log the saved model with mlflow.transformers (adapter + base recorded) and register it."""
    info: dict[str, Any] = {}
    if tracker is None or not params.tracking.log_models:
        return info
    import mlflow

    from alignflow import tracking
    from alignflow.models import load_causal_lm, load_reward_model, read_meta, resolve_spec
    from alignflow.models.specs import resolve_base_ref

    meta = read_meta(model_dir) or {}
    if meta.get("backbone") == "embedding":  # no transformers flavor for an encoder + head: the dir as artifacts
        tracker.log_artifact(model_dir, artifact_path="model_dir")
        tracker.set_tags({f"alignflow.{stage}.model_uri": f"runs:/{tracker.run_id}/model_dir",
                          f"alignflow.{stage}.base": "embedding"})
        if params.tracking.register_models:
            version = tracking.register_artifacts(tracker.run_id, "model_dir", stage, tags={
                "base": "embedding", "adapter": "False", "alignflow.profile": params.profile})
            info["registered_version"] = int(version.version)
        return info
    loader = load_reward_model if meta.get("kind") == "reward" else load_causal_lm
    model, tokenizer = loader(str(model_dir), device="cpu", dtype="float32")
    # An adapter is logged alone, with its base recorded as the (cached, local) base directory.
    base_path = resolve_spec(resolve_base_ref(meta["base"], model_dir)) if meta.get("adapter") else None
    try:
        logged = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name="model",
            task=task,
            base_model_path=base_path,
            # explicit: MLflow's default list adds torchvision whenever torch is used
            pip_requirements=_pip_requirements(),
            metadata={"alignflow_base": meta.get("base", ""), "alignflow_adapter": bool(meta.get("adapter")),
                      "alignflow_kind": meta.get("kind", "")},
        )
        uri = logged.model_uri
    except Exception as err:
        # mlflow.transformers resolves a PEFT base by hub id; a local base (embedded/tiny cache dir)
        # has none, so fall back to the model dir itself as artifacts (loadable with our loader).
        log.warning("mlflow.transformers.log_model failed (%s: %s); logging the model dir as plain artifacts",
                    type(err).__name__, err)
        tracker.log_artifact(model_dir, artifact_path="model_dir")
        uri = None
    tracker.set_tags({f"alignflow.{stage}.model_uri": uri or f"runs:/{tracker.run_id}/model_dir",
                      f"alignflow.{stage}.base": meta.get("base", "")})
    if params.tracking.register_models:
        tags = {"base": meta.get("base", ""), "adapter": str(bool(meta.get("adapter"))),
                "alignflow.profile": params.profile}
        version = (tracking.register_model(uri, stage, tags=tags) if uri
                   else tracking.register_artifacts(tracker.run_id, "model_dir", stage, tags=tags))
        info["registered_version"] = int(version.version)
    return info


def log_datasets(tracker, files, context: str = "training") -> None:
    """The data files a stage trains on, as MLflow dataset inputs (name = file stem, digest =
    DVC's md5 of the file) on its run and the pipeline's parent run."""
    if tracker is None or not hasattr(tracker, "log_dataset"):
        return
    for path in files:
        if path is not None and Path(path).exists():
            tracker.log_dataset(path, context=context)

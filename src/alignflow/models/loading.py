"""Loading and saving models and tokenizers the same way in every stage.

The tokenizer always carries a chat template (the model's own, else ChatML) and a pad token,
and `save_model_dir` writes that template next to the weights: the template a model was trained
with is the one it is sampled and evaluated with.

Secure by default (docs/SECURITY.md): weights load from safetensors only (`use_safetensors=True`;
a pickled `*.bin` checkpoint or adapter is refused, never unpickled), and a model's own Python code
runs only with `trust_remote_code=True`, which every loader takes as a keyword-only bool that
defaults to False; the stages pass the typed `model.trust_remote_code` param (default false).

Built on specs.py (spec -> local dir, and `load_model_dir`, which the adapter merge there needs),
hf.py (dtype, device, tokenizer preparation) and meta.py (alignflow_model.json); none of them
imports this module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from alignflow.models.hf import (
    CHATML_TEMPLATE,
    check_trust_remote_code,
    resolve_device,
    resolve_dtype,
    sync_pad,
    tokenizer_from_dir,
)
from alignflow.models.meta import META_FILE, ModelSpecError, read_meta
from alignflow.models.specs import load_model_dir, resolve_spec, tokenizer_dir


def load_tokenizer(spec_or_path: str, *, trust_remote_code: bool = False, padding_side: str = "left"):
    """The tokenizer of any model spec, with a chat template and a pad token."""
    check_trust_remote_code(trust_remote_code)
    # A models/* dir carries the tokenizer (and template) it was trained with: prefer it.
    source = tokenizer_dir(spec_or_path, trust_remote_code=trust_remote_code)
    return tokenizer_from_dir(source, trust_remote_code=trust_remote_code, padding_side=padding_side)


def load_causal_lm(spec_or_path: str, *, dtype="auto", trust_remote_code: bool = False, device: str | None = None):
    """(model, tokenizer) for any spec; a models/* dir with an adapter gives a PeftModel.

    `device=None` puts the model on the GPU when there is one, else the CPU.
    """
    from transformers import AutoModelForCausalLM

    check_trust_remote_code(trust_remote_code)
    path = Path(spec_or_path)
    meta = read_meta(path) if path.is_dir() else None
    if meta is not None:
        if meta.get("kind") == "reward":
            raise ModelSpecError(f"{path}: is a reward model; use load_reward_model")
        return load_model_dir(path, meta, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
    local = resolve_spec(spec_or_path, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(local, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        local, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=True
    )
    sync_pad(model, tokenizer)
    return model.to(resolve_device(device)), tokenizer


def load_reward_model(path_or_spec: str, *, dtype="auto", trust_remote_code: bool = False, device: str | None = None):
    """(AutoModelForSequenceClassification with num_labels=1, tokenizer).

    A models/reward dir loads with its trained head; any other spec (a causal LM, e.g. models/sft)
    gets a freshly initialised score head on top: that is how the reward stage starts.
    """
    from transformers import AutoModelForSequenceClassification

    check_trust_remote_code(trust_remote_code)
    path = Path(path_or_spec)
    meta = read_meta(path) if path.is_dir() else None
    if meta is not None and meta.get("backbone") == "embedding":  # a frozen encoder + a linear head; no tokenizer
        from alignflow.models.embedding_reward import EmbeddingRewardModel

        return EmbeddingRewardModel.load(path, meta), None
    if meta is not None and meta.get("kind") == "reward":
        return load_model_dir(path, meta, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
    # Merges a models/sft adapter into a cached copy.
    local = resolve_spec(path_or_spec, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(str(path) if meta is not None else local, trust_remote_code=trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        local, num_labels=1, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=True
    )
    sync_pad(model, tokenizer)
    return model.to(resolve_device(device)), tokenizer


def save_model_dir(model, tokenizer, out_dir: str | os.PathLike, meta: dict, *, merged: bool = False) -> Path:
    """Weights (or the PEFT adapter) + tokenizer with its chat template + alignflow_model.json.

    `meta` must name the `base` spec when the model is a PEFT adapter; `kind` defaults from the
    model class (causal_lm / reward). `merged=True` also writes the adapter merged into full
    weights under `out_dir/merged/` (a plain HF dir any tool can load).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_adapter = _is_peft(model)
    info = dict(meta)
    info.setdefault("kind", "reward" if _is_sequence_classifier(model) else "causal_lm")
    info["adapter"] = is_adapter
    if is_adapter and not info.get("base"):
        raise ValueError("save_model_dir: a PEFT adapter needs meta['base'] (the base model spec)")
    info.setdefault("architecture", type(_unwrap(model)).__name__)
    info["chat_template_default"] = tokenizer.chat_template == CHATML_TEMPLATE
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if merged and is_adapter:
        if model.active_peft_config.is_prompt_learning:
            raise ValueError(f"save_model_dir: a {model.active_peft_config.peft_type.value} adapter has no weights to "
                             "merge (learned virtual tokens); save it with merged=False")
        full = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        full.save_pretrained(str(out / "merged"), safe_serialization=True)
        tokenizer.save_pretrained(str(out / "merged"))
        info["merged_dir"] = "merged"
    (out / META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _unwrap(model):
    return model.get_base_model() if _is_peft(model) else model


def _is_sequence_classifier(model) -> bool:
    return type(_unwrap(model)).__name__.endswith("ForSequenceClassification")

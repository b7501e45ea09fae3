"""Loading and saving models and tokenizers the same way in every stage.

The tokenizer always carries a chat template (the model's own, else ChatML) and a pad token,
and `save_model_dir` writes that template next to the weights: the template a model was trained
with is the one it is sampled and evaluated with.

Secure by default (docs/SECURITY.md): weights load from safetensors only (`use_safetensors=True`;
a pickled `*.bin` checkpoint or adapter is refused, never unpickled), and a model's own Python code
runs only with `trust_remote_code=True`, which every loader takes as a keyword-only bool that
defaults to False; the stages pass the typed `model.trust_remote_code` param (default false).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from alignflow.models.specs import (
    META_FILE,
    ModelSpecError,
    check_base_digest,
    read_meta,
    resolve_base_ref,
    resolve_spec,
)

log = logging.getLogger(__name__)

# The documented default for models without a chat template of their own (ChatML, as used by
# SmolLM2, Qwen and OpenHermes). `<|im_end|>` ends each turn; for a tokenizer lacking these
# strings as special tokens they are plain text, which still round-trips.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DTYPES = {"float32", "bfloat16", "float16"}
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # what PeftModel.save_pretrained writes
_warned_remote_code = False


def check_trust_remote_code(trust_remote_code: Any) -> bool:
    """`trust_remote_code` as given, if it is a real bool: a string such as "false" is truthy and
    would quietly run the model repository's code, so anything else is refused."""
    global _warned_remote_code
    if not isinstance(trust_remote_code, bool):
        raise TypeError(f"trust_remote_code must be a bool (model.trust_remote_code), got {trust_remote_code!r}")
    if trust_remote_code and not _warned_remote_code:
        _warned_remote_code = True
        log.warning("trust_remote_code=True: the model repository's own Python code will run in this process")
    return trust_remote_code


def resolve_dtype(dtype: str | Any = "auto"):
    """"auto" = bf16 on a GPU that supports it, else fp32 (CPU kernels are fastest in fp32)."""
    import torch

    if not isinstance(dtype, str):
        return dtype
    if dtype == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of auto, {', '.join(sorted(DTYPES))}")
    return getattr(torch, dtype)


def _device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def prepare_tokenizer(tokenizer, padding_side: str = "left"):
    """Chat template (own, else ChatML) and pad token (else EOS); generation-side padding."""
    if not tokenizer.chat_template:
        log.info("%s has no chat template: using the default ChatML template", tokenizer.name_or_path)
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelSpecError(f"{tokenizer.name_or_path}: tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_tokenizer(spec_or_path: str, *, trust_remote_code: bool = False, padding_side: str = "left"):
    """The tokenizer of any model spec, with a chat template and a pad token."""
    from transformers import AutoTokenizer

    check_trust_remote_code(trust_remote_code)
    path = Path(spec_or_path)
    # A models/* dir carries the tokenizer (and template) it was trained with: prefer it.
    if path.is_dir() and (path / "tokenizer_config.json").exists():
        source = str(path)
    else:
        source = resolve_spec(spec_or_path, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    return prepare_tokenizer(tokenizer, padding_side)


def _sync_pad(model, tokenizer) -> None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def load_model_dir(path: Path, meta: dict, *, dtype="auto", trust_remote_code: bool = False, device: str | None = None):
    """A models/* dir: base (a spec) + PEFT adapter -> PeftModel, or full weights."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    check_trust_remote_code(trust_remote_code)
    kind = meta.get("kind", "causal_lm")
    if kind not in ("causal_lm", "reward"):
        raise ModelSpecError(f"{path}/{META_FILE}: kind {kind!r} is not a loadable model (causal_lm, reward)")
    auto = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    extra = {"num_labels": 1} if kind == "reward" else {}
    tokenizer = load_tokenizer(str(path), trust_remote_code=trust_remote_code)
    torch_dtype = resolve_dtype(dtype)
    if meta.get("adapter"):
        from peft import PeftModel

        if not meta.get("base"):
            raise ModelSpecError(f"{path}/{META_FILE}: an adapter needs its 'base' model spec")
        base_ref = resolve_base_ref(meta["base"], path)
        check_base_digest(meta, base_ref, path)
        if not (path / ADAPTER_WEIGHTS).exists():
            # PEFT would fall back to a pickled adapter_model.bin: safetensors only.
            raise ModelSpecError(f"{path}: no {ADAPTER_WEIGHTS} (only safetensors adapters are loaded)")
        base_dir = resolve_spec(base_ref, trust_remote_code=trust_remote_code)
        base = auto.from_pretrained(base_dir, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                    use_safetensors=True, **extra)
        _sync_pad(base, tokenizer)
        model = PeftModel.from_pretrained(base, str(path))
    else:
        model = auto.from_pretrained(str(path), dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                     use_safetensors=True, **extra)
        _sync_pad(model, tokenizer)
    return model.to(_device(device)), tokenizer


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
    _sync_pad(model, tokenizer)
    return model.to(_device(device)), tokenizer


def load_reward_model(path_or_spec: str, *, dtype="auto", trust_remote_code: bool = False, device: str | None = None):
    """(AutoModelForSequenceClassification with num_labels=1, tokenizer).

    A models/reward dir loads with its trained head; any other spec (a causal LM, e.g. models/sft)
    gets a freshly initialised score head on top: that is how the reward stage starts.
    """
    from transformers import AutoModelForSequenceClassification

    check_trust_remote_code(trust_remote_code)
    path = Path(path_or_spec)
    meta = read_meta(path) if path.is_dir() else None
    if meta is not None and meta.get("kind") == "reward":
        return load_model_dir(path, meta, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
    # Merges a models/sft adapter into a cached copy.
    local = resolve_spec(path_or_spec, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(str(path) if meta is not None else local, trust_remote_code=trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        local, num_labels=1, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=True
    )
    _sync_pad(model, tokenizer)
    return model.to(_device(device)), tokenizer


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

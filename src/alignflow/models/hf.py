"""Hugging Face objects from local directories: dtype, device, tokenizer preparation, pad sync.

Nothing here resolves a model spec (that is specs.py); the loaders in loading.py and the
adapter merge in specs.py both build on these helpers.
"""

from __future__ import annotations

import logging
from typing import Any

from alignflow.models.meta import ModelSpecError

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


def resolve_device(device: str | None) -> str:
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


def tokenizer_from_dir(source: str, *, trust_remote_code: bool = False, padding_side: str = "left"):
    """The tokenizer saved in a local directory, prepared (chat template, pad token)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    return prepare_tokenizer(tokenizer, padding_side)


def sync_pad(model, tokenizer) -> None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def cache_kwarg(model) -> str:
    """The name of the KV-cache argument of `model`'s forward (a PEFT wrapper passes it on): 5.24
    renamed transformers' `past_key_values` to `cache` (the old name deprecated, not gone); a
    pinned image may hold either release."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

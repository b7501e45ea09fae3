"""Model specs: embedded GGUF models, tiny random models, hub ids and local paths.

    from alignflow.models import load_causal_lm, load_reward_model, load_tokenizer, resolve_spec, save_model_dir

    model, tok = load_causal_lm("embedded:smollm2-135m-instruct")   # or "tiny:llama", "models/sft", a hub id
"""

from alignflow.models.hf import CHATML_TEMPLATE, prepare_tokenizer, resolve_dtype
from alignflow.models.loading import (
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    save_model_dir,
)
from alignflow.models.meta import META_FILE, ModelSpecError, UnmergeableAdapter, is_prompt_learning, read_meta
from alignflow.models.specs import cache_root, context_length, resolve_spec

__all__ = [
    "CHATML_TEMPLATE",
    "META_FILE",
    "ModelSpecError",
    "UnmergeableAdapter",
    "cache_root",
    "context_length",
    "load_causal_lm",
    "load_reward_model",
    "load_tokenizer",
    "prepare_tokenizer",
    "is_prompt_learning",
    "read_meta",
    "resolve_dtype",
    "resolve_spec",
    "save_model_dir",
]

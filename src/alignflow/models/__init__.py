"""Model specs: embedded GGUF models, tiny random models, hub ids and local paths.

    from alignflow.models import load_causal_lm, load_reward_model, load_tokenizer, resolve_spec, save_model_dir

    model, tok = load_causal_lm("embedded:smollm2-135m-instruct")   # or "tiny:llama", "models/sft", a hub id
"""

from alignflow.models.loading import (
    CHATML_TEMPLATE,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    prepare_tokenizer,
    resolve_dtype,
    save_model_dir,
)
from alignflow.models.specs import META_FILE, ModelSpecError, cache_root, context_length, read_meta, resolve_spec

__all__ = [
    "CHATML_TEMPLATE",
    "META_FILE",
    "ModelSpecError",
    "cache_root",
    "context_length",
    "load_causal_lm",
    "load_reward_model",
    "load_tokenizer",
    "prepare_tokenizer",
    "read_meta",
    "resolve_dtype",
    "resolve_spec",
    "save_model_dir",
]

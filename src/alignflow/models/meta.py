"""What a models/* directory says about itself (alignflow_model.json), and the spec error.

The bottom of alignflow.models: it imports nothing else from the package
(meta <- hf <- specs <- loading).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

META_FILE = "alignflow_model.json"
ADAPTER_CONFIG = "adapter_config.json"
# PEFT's prompt-learning types (PeftConfig.is_prompt_learning): learned virtual tokens, no weight delta.
PROMPT_LEARNING_TYPES = frozenset({"PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "CPT"})


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved; the message says what is accepted."""


class UnmergeableAdapter(ModelSpecError):
    """A prompt-learning adapter (prefix, prompt, P-tuning): it loads as base + PeftModel
    (`load_causal_lm`), but has no merged copy, so no engine that needs plain weights can run it."""


def read_meta(path: str | os.PathLike) -> dict | None:
    meta = Path(path) / META_FILE
    if not meta.exists():
        return None
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ModelSpecError(f"{meta}: not valid JSON ({err})") from None


def adapter_peft_type(path: str | os.PathLike) -> str | None:
    """PEFT's `peft_type` of the adapter saved in `path` (LORA, ADALORA, IA3, PROMPT_TUNING...), None without one."""
    config = Path(path) / ADAPTER_CONFIG
    if not config.exists():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("peft_type")
    except ValueError as err:
        raise ModelSpecError(f"{config}: not valid JSON ({err})") from None


def is_prompt_learning(path: str | os.PathLike) -> bool:
    """Whether `path` holds a prompt-learning adapter (virtual tokens: cannot be merged)."""
    return adapter_peft_type(path) in PROMPT_LEARNING_TYPES

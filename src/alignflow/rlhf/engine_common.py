"""What the CPU inference engines (ct2_engine, ov_engine) share: the key of a converted copy in
the model cache, the EOS ids a checkpoint's generation config adds, and CTranslate2's thread count."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# (path, size, mtime) of the weights -> digest: hashing 0.5 GB each time a generator is made is
# seconds eval pays four times over; a rewritten file changes its mtime and size.
_DIGESTS: dict[tuple, str] = {}


def weights_digest(model_dir: str | os.PathLike) -> str:
    """The content digest of a model dir's weights and configs: a converted copy's cache key."""
    from alignflow.models.specs import model_dir_digest

    path = Path(model_dir)
    stamp = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                         for p in path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file()))
    key = (str(path.resolve()), stamp)
    if key not in _DIGESTS:
        _DIGESTS[key] = model_dir_digest(path)
    return _DIGESTS[key]


def generation_config(model_dir: str):
    """The checkpoint's GenerationConfig (its EOS ids), or None without generation_config.json."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir)
    except OSError:  # no generation_config.json: the tokenizer's EOS is the only one
        return None


def engine_threads() -> int:
    """The intra-op threads this process was given (alignflow.threads sets torch's): an engine
    whose threads spin while they wait (CTranslate2's OpenMP) uses the same count (at least 1).
    OpenVINO's sleep, so it takes alignflow.threads.unshared() instead."""
    if importlib.util.find_spec("torch") is None:
        return 1
    import torch

    return max(1, torch.get_num_threads())

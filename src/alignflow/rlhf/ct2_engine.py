"""CTranslate2 generation: the CPU inference engine behind `sample.backend` / `eval.backend: ct2`.

Why CTranslate2: on a 2-core CPU it decodes the embedded 135M model ~1.7x faster than HF
`generate` at the *same* greedy tokens in float32 (bench/sample_throughput.py), installs as a
42 MB wheel beside the pinned torch, converts HF Llama/Qwen2/GPT-2 checkpoints itself, and batches
many sequences per step. The model being sampled is exactly the one trained: a PEFT adapter is
merged into its base first (`resolve_spec`), and the converted copy is cached under
`cache/models/ct2-<weights digest>-v<N>` so a re-run pays nothing. A prompt-learning adapter
(prefix, prompt, P-tuning) has no merged form: `UnsupportedModel`, so `auto` generates on HF.

The contract is the HF path's (`generation.generate_with_details`): the project's chat template,
the same EOS set, `n` samples per prompt, seeded, `Generation` records in prompt order.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

from alignflow.rlhf.engine_common import engine_threads, generation_config, weights_digest
from alignflow.rlhf.generation import Generation, Messages, UnsupportedModel, encode_prompts, eos_token_ids

log = logging.getLogger(__name__)

# Bump when the conversion changes: old cached conversions are then rebuilt, never reused.
CONVERSION_VERSION = 1
# Top-p sampling runs over the top NUCLEUS_TOPK tokens: sorting the whole 49k vocabulary every
# step costs more than the decoding. Measured on the embedded model: the 0.95 nucleus held a median
# of 5 tokens and at most 289 over 1,968 steps, so the cap does not change the distribution there.
NUCLEUS_TOPK = 1000
# Decoding on a CPU is memory-bound: a step over 64 rows costs little more than over 16, so the
# engine decodes at least this many rows per batch whatever the HF-sized batch_size says.
MIN_BATCH = 64


def installed() -> bool:
    return importlib.util.find_spec("ctranslate2") is not None


def convert(model_dir: str, out: Path, *, trust_remote_code: bool = False) -> None:
    """HF checkpoint -> CTranslate2 model dir (float32 weights; compute_type quantizes at load)."""
    from ctranslate2.converters import TransformersConverter

    try:
        converter = TransformersConverter(model_dir, low_cpu_mem_usage=True, trust_remote_code=trust_remote_code)
        converter.convert(str(out), force=True)
    except (ValueError, NotImplementedError) as err:
        # ct2 says "No conversion is registered for the model configuration X" for architectures it lacks
        raise UnsupportedModel(f"{type(err).__name__}: {err}") from err


class CT2Generator:
    """`generate_with_details` on a CTranslate2 copy of any model spec or models/* dir."""

    name = "ct2"

    def __init__(self, model_ref: str, *, trust_remote_code: bool = False, compute_type: str = "float32"):
        from alignflow.models import UnmergeableAdapter, load_tokenizer, resolve_spec

        self.model_ref, self.trust_remote_code = model_ref, trust_remote_code
        self.compute_type = compute_type
        try:
            self.local = resolve_spec(model_ref, trust_remote_code=trust_remote_code)  # adapters merged
        except UnmergeableAdapter as err:  # prefix/prompt/P-tuning: virtual tokens exist only in PEFT
            raise UnsupportedModel(str(err)) from err
        # A models/* dir carries the tokenizer and chat template it was trained with.
        self.tokenizer = load_tokenizer(model_ref, trust_remote_code=trust_remote_code)
        self.eos_ids = eos_token_ids(None, self.tokenizer, generation_config(self.local))
        self.model_dir = self.converted_dir()

    def converted_dir(self) -> Path:
        from alignflow.models.specs import materialize

        key = f"ct2-{weights_digest(self.local)}-v{CONVERSION_VERSION}"
        return materialize(key, lambda out: convert(self.local, out, trust_remote_code=self.trust_remote_code))

    def load(self, seed: int):
        """A fresh engine seeded with `seed`: `set_random_seed` does not reseed a running generator
        (OpenNMT/CTranslate2#1757), so the same seed gives the same samples only on a new one."""
        import ctranslate2

        from alignflow import threads

        threads.rebalance(every_s=0)  # the share of the cores as of now: the engine fixes it at load
        ctranslate2.set_random_seed(seed)
        return ctranslate2.Generator(str(self.model_dir), device="cpu", compute_type=self.compute_type,
                                     intra_threads=engine_threads())

    def generate_with_details(
        self,
        prompts: list[Messages],
        *,
        n: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
        batch_size: int = 8,
        max_prompt_tokens: int | None = None,
        progress: bool = True,
    ) -> list[list[Generation]]:
        """`n` generations per prompt, in prompt order, with EOS flags and token counts."""
        encoded = encode_prompts(self.tokenizer, prompts, max_prompt_tokens)
        # One row per (prompt, sample), longest first: rows of a batch share a length, as on HF.
        rows = sorted(((p, s) for p in range(len(prompts)) for s in range(n)), key=lambda ps: -len(encoded[ps[0]]))
        eos = set(self.eos_ids)
        tokens = {p: self.tokenizer.convert_ids_to_tokens(encoded[p]) for p in range(len(prompts))}
        options = dict(max_length=max_new_tokens, include_prompt_in_result=False, return_end_token=True,
                       end_token=self.eos_ids, **sampling_options(temperature, top_p))
        engine = self.load(seed)
        step = max(batch_size, MIN_BATCH)
        results: list[list[Generation | None]] = [[None] * n for _ in prompts]
        started, produced, shown = time.perf_counter(), 0, None
        if progress:
            from alignflow.progress import StepProgress

            shown = StepProgress("generate", -(-len(rows) // step), keys=("tok/s",), unit="batch")
        try:
            for b, start in enumerate(range(0, len(rows), step)):
                batch = rows[start : start + step]
                out = engine.generate_batch([tokens[p] for p, _ in batch], max_batch_size=step, **options)
                for (p, s), res in zip(batch, out):
                    ids = list(res.sequences_ids[0])
                    finished = bool(ids) and ids[-1] in eos
                    ids = ids[:-1] if finished else ids
                    text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                    results[p][s] = Generation(text, finished, len(ids) + int(finished), ids)
                    produced += len(ids) + int(finished)
                if shown is not None:
                    shown.update(b + 1, {"tok/s": produced / max(time.perf_counter() - started, 1e-9)})
        finally:
            if shown is not None:
                shown.close()
            del engine
        return results  # type: ignore[return-value]

    def score(self, rows: list[list[int]], *, batch_size: int = 16) -> list[list[float]]:
        """log p(row[i + 1] | row[: i + 1]) for every row of token ids (a prefill, no decoding):
        what eval's KL and implicit accuracy need; 1.2-1.9x faster than HF's forward on 2 cores."""
        engine = self.load(seed=0)
        try:
            results = engine.score_batch([self.tokenizer.convert_ids_to_tokens(r) for r in rows],
                                         max_batch_size=batch_size)  # compute-bound: no MIN_BATCH
        finally:
            del engine
        return [list(r.log_probs) for r in results]


def sampling_options(temperature: float, top_p: float) -> dict:
    """HF's sampling params in CTranslate2's terms: temperature 0 is greedy (top-1)."""
    if temperature <= 0:
        return dict(sampling_topk=1)
    return dict(sampling_topk=NUCLEUS_TOPK if top_p < 1 else 0, sampling_topp=top_p, sampling_temperature=temperature)

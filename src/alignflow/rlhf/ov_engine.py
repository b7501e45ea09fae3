"""OpenVINO generation: the CPU inference engine behind `sample.backend` / `eval.backend: openvino`.

Why OpenVINO GenAI: its continuous-batching pipeline (paged attention, a sequence leaves the batch
the step it ends, new ones join) decodes the embedded 135M model 3.2x faster than HF `generate` on
2 cores (95% CI 3.07-3.32, 96 prompts) at the *same* greedy tokens in float32, 1.5x CTranslate2
(bench/sample_throughput.py), from a 68 MB set of wheels beside the pinned torch. A sampled token's log-prob under the engine equals HF's log_softmax,
so KL and the RL math stay valid for its samples. It has no scorer: its IR returns logits at every
position, so eval's log-probs (KL, implicit accuracy) run on HF, which computes only the
completion's (10.7 s against 17.3 s for 48 rows of the embedded model).

The model being sampled is exactly the one trained: a PEFT adapter is merged into its base first
(`resolve_spec`). `convert` traces the HF model itself (torch -> OpenVINO IR, the KV cache made
model state, as optimum-intel's exporter does; that exporter pins an older transformers than the
project's) and the IR is cached under `cache/models/ov-<weights digest>-v<N>`, so a re-run pays
nothing. Architectures whose trace is tested here: `CONVERTIBLE`; any other (or a prompt-learning
adapter, which has no merged form) is `UnsupportedModel`, so `auto` generates elsewhere.

The contract is the HF path's (`generation.generate_with_details`): the project's chat template,
the same EOS set, `n` samples per prompt, seeded per row (the same seed gives the same samples
whatever the batch), `Generation` records in prompt order.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from alignflow.rlhf.engine_common import generation_config, weights_digest
from alignflow.rlhf.generation import Generation, Messages, UnsupportedModel, encode_prompts, eos_token_ids

log = logging.getLogger(__name__)

# Bump when the conversion changes: old cached conversions are then rebuilt, never reused.
CONVERSION_VERSION = 1
# HF model types whose cache is a DynamicCache of per-layer (keys, values) and whose trace the
# tests check against HF's greedy ids; others are refused rather than converted on trust.
CONVERTIBLE = ("llama", "qwen2")
# Sequences decoded together. On 2 cores 96 rows ran ~1.4x the tokens/s of 32 (decoding is
# memory-bound: one pass over the weights serves every row of a step).
MAX_SEQS = 128
# The paged KV cache: room for MAX_SEQS rows this long (prompt + answer) before the scheduler
# has to preempt (correct, only slower), within [1, MAX_CACHE_GB] GB.
CACHE_TOKENS_PER_SEQ = 640
MAX_CACHE_GB = 4


def installed() -> bool:
    return importlib.util.find_spec("openvino_genai") is not None


def convert(model_dir: str, out: Path, *, trust_remote_code: bool = False) -> None:
    """HF checkpoint -> stateful OpenVINO IR (float32): `openvino_model.xml/.bin` + the configs."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if config.model_type not in CONVERTIBLE:
        raise UnsupportedModel(f"no OpenVINO conversion for model_type {config.model_type!r} "
                               f"(converted here: {', '.join(CONVERTIBLE)})")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa",
                                                 trust_remote_code=trust_remote_code).eval()
    import openvino as ov
    from openvino.frontend import OpConversionFailure

    try:
        ov_model = _trace(model)
    except OpConversionFailure as err:  # e.g. a transformers release whose forward traces differently
        summary = next((line for line in str(err).splitlines() if "Conversion is failed for" in line), "")
        raise UnsupportedModel(f"OpenVINO could not convert {model_dir} under transformers "
                               f"{_transformers_version()}: {summary.strip(' -') or str(err)[:300]}") from err

    ov.save_model(ov_model, str(out / "openvino_model.xml"), compress_to_fp16=False)
    for name in ("config.json", "generation_config.json"):
        if (Path(model_dir) / name).exists():
            shutil.copy2(Path(model_dir) / name, out / name)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _flat_cache_module(model):
    """The traced signature: past keys/values as flat tensors in, presents as flat tensors out."""
    import torch
    from transformers import DynamicCache

    layers = model.config.num_hidden_layers
    from alignflow.models.hf import cache_kwarg

    cache_arg = cache_kwarg(model)  # the pinned image's transformers and a fresh venv's name it differently

    class FlatCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, past):
            cache = DynamicCache(config=model.config)
            for i in range(layers):  # set, not update(): a cat onto the empty start tensor does not trace
                layer = cache.layers[i]
                layer.lazy_initialization(past[2 * i], past[2 * i + 1])
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=True, **{cache_arg: cache})
            presents = [t for layer in cache.layers[:layers] for t in (layer.keys, layer.values)]
            return (out.logits, *presents)

    return FlatCache()


def _trace(model):
    """torch -> OpenVINO with the KV cache as model state (ReadValue/Assign) and a `beam_idx` input:
    the form OpenVINO GenAI's pipelines load and rewrite to paged attention."""
    import numpy as np
    import openvino as ov
    import torch
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    cfg = model.config
    layers, kv_heads = cfg.num_hidden_layers, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    batch, past_len, new = 2, 3, 4  # any small shapes: every dim is made dynamic below
    example = dict(input_ids=torch.ones(batch, new, dtype=torch.long),
                   attention_mask=torch.ones(batch, past_len + new, dtype=torch.long),
                   position_ids=torch.arange(past_len, past_len + new).expand(batch, new).clone(),
                   past=[torch.randn(batch, kv_heads, past_len, head_dim) for _ in range(2 * layers)])
    with torch.no_grad():
        ov_model = ov.convert_model(_flat_cache_module(model), example_input=example)

    kv = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    presents = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    for port, name in zip(ov_model.inputs, ["input_ids", "attention_mask", "position_ids", *kv], strict=True):
        port.get_tensor().set_names({name})
        shape = [-1, kv_heads, -1, head_dim] if name in kv else [-1, -1]
        port.get_node().set_partial_shape(ov.PartialShape(shape))
    for port, name in zip(ov_model.outputs, ["logits", *presents], strict=True):
        port.get_tensor().set_names({name})
    ov_model.validate_nodes_and_infer_types()

    # beam_idx reorders the cache rows (beam search) inside the model: Gather on every past input.
    beam_idx = opset13.parameter(name="beam_idx", dtype=ov.Type.i32, shape=ov.PartialShape([-1]))
    beam_idx.output(0).get_tensor().add_names({"beam_idx"})
    ov_model.add_parameters([beam_idx])
    for name in kv:
        port = ov_model.input(name)
        consumers = port.get_target_inputs()  # taken before the Gather becomes one of them
        gather = opset13.gather(port, beam_idx, opset13.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gather.output(0))
    ov_model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(ov_model, dict(zip(kv, presents, strict=True)))

    # Each state starts as zeros of [batch, kv_heads, 0, head_dim], the batch read from input_ids.
    rows = opset13.gather(opset13.shape_of(ov_model.input("input_ids"), output_type="i64"),
                          opset13.constant([0]), opset13.constant(0))
    for op in ov_model.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [d.min_length for d in op.get_output_partial_shape(0)]
            parts = [rows if i == 0 else opset13.constant(np.array([d], dtype=np.int64)) for i, d in enumerate(dims)]
            zeros = opset13.broadcast(opset13.constant(0.0, dtype=op.get_output_element_type(0)),
                                      opset13.concat(parts, axis=0))
            op.set_arguments([zeros])
    ov_model.validate_nodes_and_infer_types()
    return ov_model


class OVGenerator:
    """`generate_with_details` on an OpenVINO copy of any model spec or models/* dir."""

    name = "openvino"

    def __init__(self, model_ref: str, *, trust_remote_code: bool = False):
        from alignflow.models import UnmergeableAdapter, load_tokenizer, resolve_spec

        self.model_ref, self.trust_remote_code = model_ref, trust_remote_code
        try:
            self.local = resolve_spec(model_ref, trust_remote_code=trust_remote_code)  # adapters merged
        except UnmergeableAdapter as err:  # prefix/prompt/P-tuning: virtual tokens exist only in PEFT
            raise UnsupportedModel(str(err)) from err
        self.tokenizer = load_tokenizer(model_ref, trust_remote_code=trust_remote_code)
        self.eos_ids = eos_token_ids(None, self.tokenizer, generation_config(self.local))
        self.digest = weights_digest(self.local)
        self.model_dir = self.converted_dir()
        self._pipe, self._pipe_gb, self._pipe_threads = None, 0, 0

    def converted_dir(self) -> Path:
        from alignflow.models.specs import materialize

        key = f"ov-{self.digest}-v{CONVERSION_VERSION}"
        return materialize(key, lambda out: convert(self.local, out, trust_remote_code=self.trust_remote_code))

    def kv_bytes_per_token(self) -> int:
        import json

        cfg = json.loads((self.model_dir / "config.json").read_text())
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        return 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * head_dim * 4

    def pipeline(self, tokens_per_seq: int):
        """The continuous-batching pipeline, rebuilt only when a call needs a larger KV cache."""
        gb = min(MAX_CACHE_GB, max(1, math.ceil(self.kv_bytes_per_token() * MAX_SEQS * tokens_per_seq / 2**30)))
        from alignflow import threads

        # Every core, not the fair share (TBB's idle workers sleep: threads.unshared); fixed when
        # the pipeline compiles, so a changed count (the user's ALIGNFLOW_THREADS) rebuilds it.
        n_threads = threads.unshared()
        if self._pipe is None or gb > self._pipe_gb or n_threads != self._pipe_threads:
            import openvino_genai as ov_genai

            scheduler = ov_genai.SchedulerConfig()
            scheduler.cache_size, scheduler.max_num_seqs = gb, MAX_SEQS
            scheduler.max_num_batched_tokens = 4096  # prefill chunk: prompts join the batch in pieces
            # f32 compute and KV cache: the CPU plugin's defaults (u8 cache, bf16 on AMX) change tokens.
            props = {"KV_CACHE_PRECISION": "f32", "INFERENCE_PRECISION_HINT": "f32",
                     "INFERENCE_NUM_THREADS": n_threads}
            self._pipe = None  # free the old cache before allocating the new one
            self._pipe = ov_genai.ContinuousBatchingPipeline(str(self.model_dir), scheduler, "CPU", props)
            self._pipe_gb, self._pipe_threads = gb, n_threads
        return self._pipe

    def request_config(self, *, max_new_tokens: int, temperature: float, top_p: float, seed: int,
                       logprobs: bool = False):
        import openvino_genai as ov_genai

        config = ov_genai.GenerationConfig()
        config.max_new_tokens = max_new_tokens
        config.eos_token_id = self.eos_ids[0]
        config.stop_token_ids = set(self.eos_ids)
        if temperature <= 0:
            config.do_sample = False
        else:  # plain nucleus sampling, as on HF (top_k 0 = off)
            config.do_sample, config.temperature, config.top_p, config.top_k = True, temperature, top_p, 0
            config.rng_seed = seed
        config.logprobs = int(logprobs)
        return config

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
        """`n` generations per prompt, in prompt order, with EOS flags and token counts.
        `batch_size` is HF's knob: the engine schedules up to MAX_SEQS rows itself."""
        rows = [(p, s) for p in range(len(prompts)) for s in range(n)]
        outputs = self.generate_ids(encode_prompts(self.tokenizer, prompts, max_prompt_tokens),
                                    rows, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                    seed=seed, progress=progress)
        results: list[list[Generation | None]] = [[None] * n for _ in prompts]
        eos = set(self.eos_ids)
        for (p, s), out in zip(rows, outputs, strict=True):
            ids = list(out.ids)
            finished = bool(ids) and ids[-1] in eos
            ids = ids[:-1] if finished else ids
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            results[p][s] = Generation(text, finished, len(ids) + int(finished), ids)
        return results  # type: ignore[return-value]

    def generate_ids(self, encoded: list[list[int]], rows: list[tuple[int, int]], *, max_new_tokens: int,
                     temperature: float, top_p: float, seed: int, progress: bool = True,
                     logprobs: bool = False) -> list[RowOutput]:
        """One request per (prompt, sample) row, its own seed: each row's generated ids (EOS
        included when it stopped there) and, with `logprobs`, their log-probs."""
        import numpy as np
        import openvino as ov

        from alignflow import threads

        threads.rebalance(every_s=0)  # torch's share of the cores (the HF scoring after this call)
        longest = max((len(encoded[p]) for p, _ in rows), default=0)
        pipe = self.pipeline(max(CACHE_TOKENS_PER_SEQ, longest + max_new_tokens))
        handles = []
        for i, (p, s) in enumerate(rows):
            # Per-row seeds: a row's sample does not depend on which rows share its steps.
            config = self.request_config(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                         seed=(seed * 1_000_003 + p * 1_009 + s) % 2**32, logprobs=logprobs)
            handles.append(pipe.add_request(i, ov.Tensor(np.array([encoded[p]], dtype=np.int64)), config))
        outputs = [RowOutput([], []) for _ in rows]
        running = set(range(len(rows)))
        # Progress in tokens of the budget (rows x max_new_tokens; a finished row has spent all of
        # its own), so the ETA holds from the first step although most rows end together.
        shown, started, budget = None, time.perf_counter(), len(rows) * max_new_tokens
        if progress and rows:
            from alignflow.progress import StepProgress

            shown = StepProgress("generate", budget, keys=("tok/s",), unit="tok")
        try:
            while running:
                active = pipe.has_non_finished_requests()
                if active:
                    pipe.step()
                for i in list(running):
                    _read(handles[i], outputs[i])
                    if not active or _finished(handles[i]):  # nothing left to step: all are done
                        _read(handles[i], outputs[i])
                        running.discard(i)
                if shown is not None:
                    produced = sum(len(o.ids) for o in outputs)
                    spent = produced + sum(max_new_tokens - len(outputs[i].ids) for i in range(len(rows))
                                           if i not in running)
                    shown_at = spent // shown.every * shown.every  # on the grid its lines are due at
                    if shown_at > shown.step:
                        shown.update(shown_at, {"tok/s": produced / max(time.perf_counter() - started, 1e-9)})
        except BaseException:
            for handle in handles:  # an interrupt must not leave requests in the shared pipeline
                handle.cancel()
            raise
        finally:
            if shown is not None:
                shown.close()
        return outputs


@dataclass
class RowOutput:
    ids: list[int]
    log_probs: list[float]


def _read(handle, out: RowOutput) -> None:
    """Append what the row generated since the last read (the pipeline streams per step)."""
    while handle.can_read():
        for piece in handle.read().values():
            out.ids.extend(piece.generated_ids)
            out.log_probs.extend(piece.generated_log_probs)


def _finished(handle) -> bool:
    import openvino_genai as ov_genai

    return handle.get_status() != ov_genai.GenerationStatus.RUNNING

"""Fast batched generation for sample, rank (local LLM judge), best-of-N and eval.

Why it is fast on a CPU: sequences are sorted by prompt length so a batch wastes little on
padding, prompts are left-padded so every row's next token sits in the same column, the KV cache
is on, and a row stops at EOS (the batch stops when all rows have). Each prompt is expanded to
its `n` samples inside the batch, so K samples cost one prefill batch, not K loops.

Back ends: `generate` (HF `model.generate`, in-process: the reference), `ov_engine.OVGenerator`
(OpenVINO GenAI, continuous batching: the fastest on a CPU), `ct2_engine.CT2Generator`
(CTranslate2, a C++ engine), `generate_vllm` (vLLM, when installed and a GPU
is present), `generate_ray` (Ray Data `map_batches` over an actor pool of model replicas, for
`ray.num_workers > 1` or a cluster). `choose_backend` + `make_generator` pick one for a stage;
every back end returns the same `Generation` records for the same prompts and sampling params.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import dataclass, field

from alignflow import threads

log = logging.getLogger(__name__)

# The CPU engines, fastest first: what `auto` tries (bench/sample_throughput.py measures them).
CPU_ENGINES = ("openvino", "ct2")
ENGINE_PACKAGES = {"openvino": "openvino-genai", "ct2": "ctranslate2"}


class UnsupportedModel(ValueError):
    """An inference engine cannot run this model: no converter for its architecture, or a
    prompt-learning adapter with no merged weights to convert (auto then falls back)."""

Messages = list[dict]


@dataclass
class Generation:
    text: str
    finished: bool  # stopped at EOS (False = cut at max_new_tokens)
    num_tokens: int  # generated tokens, EOS included
    token_ids: list[int] = field(default_factory=list)  # generated ids, EOS excluded (fidelity checks)


def eos_token_ids(model, tokenizer, generation_config=None) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS, the generation config's, ChatML's <|im_end|>.

    `generation_config` stands in for the model's when there is no HF model (an engine's)."""
    ids: set[int] = set()
    config = generation_config if generation_config is not None else getattr(model, "generation_config", None)
    for source in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(i for i in source if isinstance(i, int))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(ids)


def encode_prompts(tokenizer, prompts: list[Messages], max_prompt_tokens: int | None = None) -> list[list[int]]:
    """Chat-template each conversation with the generation prompt; keep the last `max_prompt_tokens`."""
    out = []
    for messages in prompts:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_prompt_tokens and len(ids) > max_prompt_tokens:
            ids = ids[-max_prompt_tokens:]  # the end of the conversation is what the answer follows
        out.append(ids)
    return out


def left_pad(rows: list[list[int]], pad_id: int):
    """(input_ids, attention_mask) tensors, left-padded to the longest row."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def split_generated(row, eos_ids: set[int], pad_id: int) -> tuple[list[int], bool]:
    """Generated ids up to (excluding) the first EOS, and whether an EOS was produced."""
    tokens = []
    for t in row.tolist():
        if t in eos_ids:
            return tokens, True
        tokens.append(t)
    # HF pads finished rows with pad_id; a pad that is not an EOS id only follows an EOS.
    return tokens, False


def generate_with_details(
    model,
    tokenizer,
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
    import torch

    encoded = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    # One row per (prompt, sample); longest prompts first so the largest batch runs (and fails) first.
    rows = sorted(((p, s) for p in range(len(prompts)) for s in range(n)), key=lambda ps: -len(encoded[ps[0]]))
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    device = next(model.parameters()).device
    do_sample = temperature > 0
    gen_kwargs = dict(
        max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=True,
        eos_token_id=eos_ids, pad_token_id=pad_id,
    )
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)

    results: list[list[Generation | None]] = [[None] * n for _ in prompts]
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    virtual = virtual_token_inputs(model)
    was_training = model.training
    model.eval()
    started, produced = time.perf_counter(), 0
    shown = None
    if progress:  # a bar on a terminal, else a line every few batches (alignflow.progress)
        from alignflow.progress import StepProgress

        shown = StepProgress("generate", len(batches), keys=("tok/s",), unit="batch")
    try:
        for b, batch in enumerate(batches):
            threads.rebalance()  # another alignflow process started or ended: take a fair share
            ids, mask = left_pad([encoded[p] for p, _ in batch], pad_id)
            # Seeded per batch: the same prompts, params and seed give the same samples.
            torch.manual_seed(seed + b)
            with torch.inference_mode():
                if virtual:  # the base model on [pads, virtual tokens, prompt] embeddings: new tokens only
                    out = model.get_base_model().generate(**virtual(ids.to(device), mask.to(device)), **gen_kwargs)
                else:
                    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen_kwargs)
                    out = out[:, ids.shape[1]:]
            for (p, s), row in zip(batch, out.cpu()):
                tokens, finished = split_generated(row, set(eos_ids), pad_id)
                text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                results[p][s] = Generation(text, finished, len(tokens) + int(finished), tokens)
                produced += len(tokens) + int(finished)
            if shown is not None:
                shown.update(b + 1, {"tok/s": produced / max(time.perf_counter() - started, 1e-9)})
    finally:
        model.train(was_training)
        if shown is not None:
            shown.close()
    return results  # type: ignore[return-value]


def virtual_token_inputs(model):
    """For a PEFT prompt-tuning or P-tuning model: a function of a left-padded batch to the base
    model's generate() inputs, the learned virtual tokens placed between the pads and the prompt
    (where training saw them: first, at positions 0..V-1). Else None.

    PEFT's own generate() for these adapters gets only the first token right once the KV cache is
    on (huggingface/peft#1391: the cache and positions lose the virtual tokens' offset; the trained
    SmolLM2 P-tuning adapter wrote "AEME\n\n…" where use_cache=False writes the answer), and
    ignores position ids, so left padding shifted every position. As embeddings of a plain model,
    the cache and the positions (from the attention mask) are the model's usual ones."""
    config = getattr(model, "active_peft_config", None)
    if getattr(getattr(config, "peft_type", None), "value", None) not in ("PROMPT_TUNING", "P_TUNING"):
        return None

    def inputs(ids, mask):
        import torch

        embed = model.get_base_model().get_input_embeddings()
        prompt_embeds = embed(ids)
        soft = model.get_prompt(batch_size=ids.shape[0]).to(prompt_embeds.dtype)
        pads = (mask == 0).sum(dim=1).tolist()
        ones = torch.ones(soft.shape[1], dtype=mask.dtype, device=mask.device)
        rows = [torch.cat([prompt_embeds[i, :p], soft[i], prompt_embeds[i, p:]]) for i, p in enumerate(pads)]
        masks = [torch.cat([mask[i, :p], ones, mask[i, p:]]) for i, p in enumerate(pads)]
        return {"inputs_embeds": torch.stack(rows), "attention_mask": torch.stack(masks)}

    return inputs


def generate(
    model,
    tokenizer,
    prompts: list[Messages],
    *,
    n: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> list[list[str]]:
    """`n` responses per prompt (chat messages), in prompt order (the contract other stages call)."""
    details = generate_with_details(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size,
                                    progress=progress)
    return [[g.text for g in gens] for gens in details]


def token_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of positions where two decodings of the same prompts agree, up to each pair's first
    divergence (after which greedy decoding continues from different prefixes): the fidelity
    measure of an engine against HF greedy, 1.0 = identical."""
    same = total = 0
    for x, y in zip(a, b, strict=True):
        n = max(len(x), len(y))
        k = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        same, total = same + k, total + n
    return same / total if total else 1.0


class HFGenerator:
    """The reference back end: an in-process HF model (already loaded) behind the engine contract."""

    name = "hf"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def generate_with_details(self, prompts: list[Messages], **kwargs) -> list[list[Generation]]:
        return generate_with_details(self.model, self.tokenizer, prompts, **kwargs)


def engine_installed(name: str) -> bool:
    from alignflow.rlhf import ct2_engine, ov_engine

    return {"openvino": ov_engine.installed, "ct2": ct2_engine.installed}[name]()


def choose_backend(wanted: str, *, param: str, vllm_ok: bool = False) -> str:
    """The generation back end for a stage: `wanted` is the param's value, `param` its name (errors
    name it). auto = vLLM on a GPU (where the stage supports it), else HF on any other GPU (the
    engines here are CPU builds), else the first installed CPU engine (OpenVINO, CTranslate2),
    else HF with a log line."""
    from alignflow.config import ParamsError

    # ParamsError: the stage prints it as one line (alignflow <stage>: error: ...), exit 2
    if wanted == "vllm":
        if not vllm_available():
            raise ParamsError(f"{param}: vllm needs the vllm package and a CUDA GPU")
        return "vllm"
    if wanted in CPU_ENGINES:
        if not engine_installed(wanted):
            raise ParamsError(f"{param}: {wanted} needs the {ENGINE_PACKAGES[wanted]} package "
                               f"(pip install {ENGINE_PACKAGES[wanted]}), or set it to auto or hf")
        return wanted
    if wanted != "auto":
        return wanted
    if vllm_ok and vllm_available():
        return "vllm"
    if _cuda():
        return "hf"
    for engine in CPU_ENGINES:
        if engine_installed(engine):
            return engine
    log.info("%s: auto -> hf (no CPU inference engine is installed; pip install openvino-genai for ~3x faster "
             "CPU generation)", param)
    return "hf"


def make_generator(ref: str, backend: str, *, trust_remote_code: bool = False, dtype="auto",
                   compute_type: str = "float32", fallback: bool = False, param: str | None = None):
    """A generator for the model `ref` (any model spec or models/* dir) on `backend` (hf | openvino | ct2).

    `fallback`: a model the engine cannot run (an architecture it lacks, a prompt-learning adapter
    with no merged weights) runs on the next installed engine, else HF, with a warning instead of
    failing: what `auto` promises. Without it the error names `param` (the stage's backend param)."""
    if backend in CPU_ENGINES:
        try:
            return _engine_generator(backend, ref, trust_remote_code, compute_type)
        except UnsupportedModel as err:
            if not fallback:
                if param is None:
                    raise
                from alignflow.config import ParamsError

                detail = str(err).removeprefix(f"{ref}: ")
                raise ParamsError(f"{param}: {backend} cannot run {ref}: {detail}; set {param}: auto "
                                  "(falls back to another engine or hf) or hf") from err
            later = [e for e in CPU_ENGINES[CPU_ENGINES.index(backend) + 1 :] if engine_installed(e)]
            log.warning("%s: %s cannot run it (%s); generating with %s", ref, _ENGINE_NAMES[backend], err,
                        later[0] if later else "HF")
            if later:
                return make_generator(ref, later[0], trust_remote_code=trust_remote_code, dtype=dtype,
                                      compute_type=compute_type, fallback=True, param=param)
    from alignflow.models import load_causal_lm

    return HFGenerator(*load_causal_lm(ref, dtype=dtype, trust_remote_code=trust_remote_code))


_ENGINE_NAMES = {"openvino": "OpenVINO", "ct2": "CTranslate2"}


def _engine_generator(backend: str, ref: str, trust_remote_code: bool, compute_type: str):
    if backend == "openvino":
        from alignflow.rlhf.ov_engine import OVGenerator

        return OVGenerator(ref, trust_remote_code=trust_remote_code)
    from alignflow.rlhf.ct2_engine import CT2Generator

    return CT2Generator(ref, trust_remote_code=trust_remote_code, compute_type=compute_type)


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# vLLM (GPU)
# ---------------------------------------------------------------------------------------------


def vllm_available() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def generate_vllm(
    model_path: str,
    prompts: list[Messages],
    *,
    n: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
    trust_remote_code: bool = False,
    gpu_memory_utilization: float = 0.85,
) -> list[list[Generation]]:
    """vLLM's continuous batching + PagedAttention; `model_path` is a local HF dir (resolve_spec)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path, seed=seed, trust_remote_code=trust_remote_code,
              gpu_memory_utilization=gpu_memory_utilization)
    sampling = SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                              max_tokens=max_new_tokens, seed=seed)
    outputs = llm.chat(prompts, sampling, use_tqdm=False)
    return [
        [Generation(c.text.strip(), c.finish_reason == "stop", len(c.token_ids)) for c in out.outputs]
        for out in outputs
    ]


# ---------------------------------------------------------------------------------------------
# Ray Data: one model replica per actor
# ---------------------------------------------------------------------------------------------


class _GenerationActor:
    """A Ray Data actor holding one model replica; map_batches feeds it prompts."""

    def __init__(self, model_path: str, gen_kwargs: dict, trust_remote_code: bool = False):
        from alignflow.models import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(model_path, trust_remote_code=trust_remote_code)
        self.gen_kwargs = gen_kwargs

    def __call__(self, batch: dict) -> dict:
        prompts = [json.loads(p) for p in batch["prompt"]]
        # Offset the seed by the first row so different actors do not draw identical samples.
        kwargs = {**self.gen_kwargs, "seed": self.gen_kwargs.get("seed", 0) + int(batch["row"][0])}
        details = generate_with_details(self.model, self.tokenizer, prompts, progress=False, **kwargs)
        return {
            "row": batch["row"],
            "generations": [json.dumps([g.__dict__ for g in gens]) for gens in details],
        }


def generate_ray(
    model_path: str,
    prompts: list[Messages],
    *,
    num_workers: int,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    rows_per_call: int = 8,
    trust_remote_code: bool = False,
    **gen_kwargs,
) -> list[list[Generation]]:
    """Generation fanned out with Ray Data `map_batches` over an actor pool of `num_workers` replicas."""
    import ray

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    items = [{"row": i, "prompt": json.dumps(p, ensure_ascii=False)} for i, p in enumerate(prompts)]
    ds = ray.data.from_items(items).map_batches(
        _GenerationActor,
        fn_constructor_kwargs={"model_path": model_path, "gen_kwargs": gen_kwargs,
                               "trust_remote_code": trust_remote_code},
        batch_size=rows_per_call,
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker,
        batch_format="numpy",
    )
    out: list[list[Generation] | None] = [None] * len(prompts)
    for row in ds.iter_rows():
        out[int(row["row"])] = [Generation(**g) for g in json.loads(row["generations"])]
    return out  # type: ignore[return-value]

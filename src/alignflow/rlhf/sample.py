"""sample: K responses per training prompt from the SFT policy -> data/samples/samples.jsonl.

`sample.constraint_prompts` adds that many verifiable-constraint prompts (prompts_ifeval_train,
their `constraints` kept in the records) for rank's verifier judge.

InstructGPT step 2 starts here: the labelers (our judges) rank K samples of the current policy
for each prompt. Records keep the generation params so a ranking can be traced to how its
samples were drawn, plus `finished` (stopped at EOS) for the judges' truncation rule.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from alignflow import paths
from alignflow.io import InputError, atomic_dir, read_jsonl, write_jsonl
from alignflow.rlhf.generation import Generation

log = logging.getLogger(__name__)

PROMPTS_PATH = paths.PROMPTS_TRAIN
CONSTRAINED_PATH = paths.CONSTRAINT_PROMPTS_TRAIN
SFT_DIR = paths.SFT_MODEL
OUT_DIR = Path("data/samples")


def load_prompts(path: str | os.PathLike, limit: int | None = None) -> list[dict]:
    """Prompt records ({"id", "prompt": [messages], "reference"?}); bad records name file:line."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found (run the format stage first)")
    records = []
    for lineno, rec in enumerate(read_jsonl(path), 1):
        msgs = rec.get("prompt")
        if not rec.get("id") or not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in msgs
        ):
            raise InputError(f"{path}:{lineno}: a prompt record needs 'id' and 'prompt' as a list of {{role, content}}")
        records.append(rec)
        if limit and len(records) >= limit:
            break
    if not records:
        raise InputError(f"{path}: no prompts")
    return records


def choose_backend(params) -> str:
    """vllm (GPU + vllm installed), ray (several workers or a cluster), openvino or ct2 (a CPU engine),
    else hf in-process (generation.choose_backend says when and why)."""
    from alignflow.rlhf.generation import choose_backend as choose

    backend = choose(params.sample.backend, param="sample.backend", vllm_ok=True)
    if backend == "vllm":
        return backend
    if params.ray.num_workers > 1 or params.ray.address or os.environ.get("RAY_ADDRESS"):
        return "ray"
    return backend


def sample_prompts(params, prompts: list[list[dict]], model_dir: str | os.PathLike = SFT_DIR) -> tuple[list[list[Generation]], str]:
    cfg = params.sample
    seed = cfg.seed if cfg.seed is not None else params.seed
    gen = dict(n=cfg.k, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed)
    backend = choose_backend(params)
    trust = params.model.trust_remote_code
    from alignflow.models import is_prompt_learning

    if backend == "vllm" and cfg.backend == "auto" and is_prompt_learning(model_dir):
        log.info("sample.backend: auto -> hf (%s is a prompt-learning adapter: vLLM runs merged weights only)",
                 model_dir)
        backend = "hf"
    if backend == "vllm":
        from alignflow.models import resolve_spec
        from alignflow.rlhf.generation import generate_vllm

        return generate_vllm(resolve_spec(str(model_dir), trust_remote_code=trust), prompts,
                             trust_remote_code=trust, **gen), backend
    if backend == "ray":
        from alignflow.rlhf.generation import generate_ray

        workers = max(params.ray.num_workers, 1)
        res = params.ray.resources_per_worker
        return generate_ray(str(Path(model_dir).resolve()), prompts, num_workers=workers,
                            cpus_per_worker=res.get("CPU", 1), gpus_per_worker=res.get("GPU", 0.0) if params.ray.use_gpu else 0.0,
                            rows_per_call=max(1, cfg.batch_size // cfg.k), batch_size=cfg.batch_size,
                            trust_remote_code=trust, **gen), backend
    from alignflow.rlhf.generation import make_generator

    generator = make_generator(str(model_dir), backend, trust_remote_code=trust, dtype=params.model.dtype,
                               compute_type=params.model.engine_compute_type,
                               fallback=params.sample.backend == "auto", param="sample.backend")
    return generator.generate_with_details(prompts, batch_size=cfg.batch_size, **gen), generator.name


def run(params, tracker) -> dict:
    cfg = params.sample
    prompts = load_prompts(PROMPTS_PATH, cfg.max_prompts)
    if cfg.constraint_prompts:
        prompts += load_prompts(CONSTRAINED_PATH, cfg.constraint_prompts)
    if not SFT_DIR.exists():
        raise InputError(f"{SFT_DIR}: not found (run the sft stage first)")
    started = time.perf_counter()
    generations, backend = sample_prompts(params, [p["prompt"] for p in prompts])
    elapsed = time.perf_counter() - started
    seed = cfg.seed if cfg.seed is not None else params.seed
    gen_params = {"k": cfg.k, "temperature": cfg.temperature, "top_p": cfg.top_p,
                  "max_new_tokens": cfg.max_new_tokens, "seed": seed, "model": str(SFT_DIR), "backend": backend}
    records = []
    for prompt, gens in zip(prompts, generations):
        rec = {"prompt_id": prompt["id"], "prompt": prompt["prompt"], "responses": [g.text for g in gens],
               "finished": [g.finished for g in gens], "gen": gen_params}
        for key in ("reference", "task", "source", "constraints"):
            if prompt.get(key) is not None:
                rec[key] = prompt[key]
        records.append(rec)
    with atomic_dir(OUT_DIR) as tmp:
        write_jsonl(tmp / "samples.jsonl", records)
    flat = [g for gens in generations for g in gens]
    tokens = sum(g.num_tokens for g in flat)
    distinct = sum(len(set(g.text for g in gens)) for gens in generations) / max(len(flat), 1)
    metrics = {
        "prompts": len(records),
        "responses": len(flat),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / max(elapsed, 1e-9), 2),
        "mean_response_tokens": round(tokens / max(len(flat), 1), 2),
        "eos_rate": round(sum(g.finished for g in flat) / max(len(flat), 1), 4),
        "empty_rate": round(sum(not g.text for g in flat) / max(len(flat), 1), 4),
        "distinct_response_rate": round(distinct, 4),
        "generation_s": round(elapsed, 2),
    }
    tracker.set_tags({"sample.backend": backend})
    log.info("sampled %d responses for %d prompts with %s in %.1fs", len(flat), len(records), backend, elapsed)
    return metrics

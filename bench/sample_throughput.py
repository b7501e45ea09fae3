"""Generated tokens/s of every engine the sample/eval stages can use, side by side in one run.

Engines, on the same model, prompts and sampling params (temperature, top_p, max_new_tokens, EOS):
  hf        — `HFGenerator.generate_with_details`: today's batched HF path (length-sorted,
              left-padded batches, KV cache, EOS stop). The baseline: ratio 1.
  openvino  — `OVGenerator`: OpenVINO GenAI's continuous batching, the same weights in float32
              (auto's engine: every prompt's rows are scheduled together, up to MAX_SEQS).
  ct2       — `CT2Generator(compute_type="float32")`: CTranslate2, the same weights in float32.
  ct2-int8  — the same with int8 weights (quantized at load: faster, not the same outputs).
  llama.cpp — the embedded Q4_1 GGUF through llama-cpp-python, one prompt at a time (only when
              installed, and only for the embedded model spec).
  naive     — (--naive) one `model.generate` call per prompt, as a first script would.

How: each engine is built once (setup_s, not timed in the rounds: model load, ct2 conversion
cached on disk) and warmed up on 2 prompts. Then `--rounds` rounds; in each round every engine runs
once, one after the other, on the same prompts with the round's seed, so machine noise hits all
alike. tokens/s of a round = generated tokens (EOS included) / wall time. Reported per engine: the
mean tokens/s, the ratio to hf with a 95% CI over the per-round ratios (Student t), greedy token
agreement with hf (one extra temperature-0 pass, `token_agreement`), and a roofline share:
achieved GFLOP/s (2 x matmul params x tokens/s) over this machine's float32 matmul peak.

Goal: the default engine (openvino) >= 3x today's batched HF tokens/s at the same outputs (greedy
agreement ~1), decided on the lower bound of the 95% CI. The default 96 prompts are eval's and
sample's size (114 constraint prompts per model; 96 prompts x 4 samples).

    .venv/bin/python bench/sample_throughput.py                    # embedded SmolLM2-135M, 96 prompts, 5 rounds
    .venv/bin/python bench/sample_throughput.py --prompts 32 --rounds 3   # quicker, a wider CI
    .venv/bin/python bench/sample_throughput.py --model tiny:llama --prompts 8
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
GOAL_RATIO = 3.0
GOAL_ENGINE = "openvino"  # float32, auto's engine: the one that must keep today's outputs
LLAMA_CPP_MISSING = "not installed (pip install llama-cpp-python: a source build, ~11 min here)"
# Student t(0.975, df) for df 1..10, used when scipy is absent; larger df reuse df=10 (conservative).
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]

TOPICS = [
    "the water cycle", "photosynthesis", "how vaccines work", "the French revolution", "black holes",
    "compound interest", "recursion in programming", "the causes of inflation", "how to brew green tea",
    "the rules of chess", "plate tectonics", "machine translation", "the human immune system",
    "how bicycles stay upright", "the history of the printing press", "climate change", "sorting algorithms",
    "why the sky is blue", "how to write a cover letter", "the Pythagorean theorem", "volcanoes",
    "how a refrigerator works", "the Silk Road", "bread baking", "public key cryptography", "honeybees",
    "the stock market", "renewable energy", "how to learn a language", "the moon landing", "tides", "DNA",
]
TEMPLATES = ["Explain {} in simple terms.", "Give me three facts about {}.", "Write a short paragraph on {}.",
             "What should a beginner know about {}?"]


def bench_prompts(n: int, path: str | None) -> list[list[dict]]:
    if path and Path(path).exists():
        from alignflow.io import read_jsonl

        prompts = [r["prompt"] for r in read_jsonl(path)][:n]
        if len(prompts) >= n:
            return prompts
    # Varied lengths on purpose: length sorting is part of what is measured.
    return [[{"role": "user", "content": TEMPLATES[i % len(TEMPLATES)].format(TOPICS[i % len(TOPICS)])}]
            for i in range(n)]


# --- engines ------------------------------------------------------------------------------------

# run(prompts, temperature, seed, max_new_tokens) -> (generated tokens, generated ids per prompt)
RunFn = Callable[[list, float, int, int], tuple[int, list[list[int]]]]


@dataclass
class Engine:
    name: str
    run: RunFn
    setup_s: float
    fidelity: str = "token ids vs hf greedy"


def generator_run(generator, args: argparse.Namespace) -> RunFn:
    """The stage contract (`generate_with_details`) as a RunFn: hf and ct2 go through it alike."""
    def run(prompts, temperature, seed, max_new_tokens):
        gens = generator.generate_with_details(prompts, n=1, max_new_tokens=max_new_tokens, temperature=temperature,
                                               top_p=args.top_p, seed=seed, batch_size=args.batch_size,
                                               progress=False)
        return sum(g[0].num_tokens for g in gens), [g[0].token_ids for g in gens]
    return run


def hf_engine(model, tokenizer, load_s: float, args: argparse.Namespace) -> Engine:
    from alignflow.rlhf.generation import HFGenerator

    return Engine("hf", generator_run(HFGenerator(model, tokenizer), args), load_s)


def ct2_engine(name: str, compute_type: str, args: argparse.Namespace) -> Engine:
    from alignflow.rlhf.ct2_engine import CT2Generator

    # The constructor converts (once; cached on disk) — setup, not decoding speed. The generator
    # loads a fresh seeded engine on every call, as the stage does, so that load is in the rounds.
    t0 = time.perf_counter()
    generator = CT2Generator(args.model, compute_type=compute_type)
    return Engine(name, generator_run(generator, args), time.perf_counter() - t0)


def openvino_engine(args: argparse.Namespace) -> Engine:
    from alignflow.rlhf.ov_engine import OVGenerator

    # The constructor converts (once; cached on disk); the pipeline is built on the first call (warm-up).
    t0 = time.perf_counter()
    generator = OVGenerator(args.model)
    return Engine("openvino", generator_run(generator, args), time.perf_counter() - t0)


def naive_generate(model, tokenizer, prompts, max_new_tokens, temperature, top_p, seed) -> tuple[int, list[list[int]]]:
    """One prompt per model.generate call; returns generated tokens (EOS included) and ids (EOS excluded)."""
    import torch

    from alignflow.rlhf.generation import eos_token_ids

    eos = eos_token_ids(model, tokenizer)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    tokens, all_ids = 0, []
    for i, messages in enumerate(prompts):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        torch.manual_seed(seed + i)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        cut = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))
        tokens += cut
        all_ids.append(new[:cut - 1] if cut and new[cut - 1] in eos else new[:cut])
    return tokens, all_ids


def naive_engine(model, tokenizer, args: argparse.Namespace) -> Engine:
    def run(prompts, temperature, seed, max_new_tokens):
        return naive_generate(model, tokenizer, prompts, max_new_tokens, temperature, args.top_p, seed)
    return Engine("naive", run, 0.0)


def llama_cpp_engine(tokenizer, args: argparse.Namespace) -> Engine:
    """The embedded GGUF (Q4_1 weights) in llama.cpp, one chat completion per prompt."""
    import torch
    from llama_cpp import Llama

    from alignflow.models.specs import embedded_gguf

    t0 = time.perf_counter()
    llm = Llama(model_path=str(embedded_gguf(args.model.removeprefix("embedded:"))), n_ctx=2048,
                n_threads=torch.get_num_threads(), seed=args.seed, verbose=False)
    setup_s = time.perf_counter() - t0

    def run(prompts, temperature, seed, max_new_tokens):
        tokens, all_ids = 0, []
        for i, messages in enumerate(prompts):
            # top_k=0, min_p=0, repeat_penalty=1: plain top-p sampling, as on HF (llama.cpp's defaults differ).
            out = llm.create_chat_completion(messages, max_tokens=max_new_tokens, temperature=temperature,
                                             top_p=args.top_p, top_k=0, min_p=0.0, repeat_penalty=1.0, seed=seed + i)
            text = out["choices"][0]["message"]["content"] or ""
            tokens += out["usage"]["completion_tokens"]
            all_ids.append(tokenizer(text.strip(), add_special_tokens=False)["input_ids"])
        return tokens, all_ids

    return Engine("llama.cpp", run, setup_s, "approximate: its text re-tokenized with the HF tokenizer")


def build_engines(args: argparse.Namespace, model, tokenizer, load_s: float) -> tuple[list[Engine], dict[str, str]]:
    """Every engine that can run here, and why each other one is skipped."""
    engines, skipped = [hf_engine(model, tokenizer, load_s, args)], {}
    if importlib.util.find_spec("openvino_genai") is None:
        skipped["openvino"] = "not installed (pip install openvino-genai)"
    else:
        engines.append(openvino_engine(args))
    if importlib.util.find_spec("ctranslate2") is None:
        skipped["ct2"] = skipped["ct2-int8"] = "not installed (pip install ctranslate2)"
    else:
        engines += [ct2_engine("ct2", "float32", args), ct2_engine("ct2-int8", "int8", args)]
    if importlib.util.find_spec("llama_cpp") is None:
        skipped["llama.cpp"] = LLAMA_CPP_MISSING
    elif not args.model.startswith("embedded:"):
        skipped["llama.cpp"] = "only for an embedded:* model (the GGUF it ships)"
    else:
        engines.append(llama_cpp_engine(tokenizer, args))
    if args.naive:
        engines.append(naive_engine(model, tokenizer, args))
    for name, why in skipped.items():
        print(f"{name}: {why}", flush=True)
    return engines, skipped


# --- measuring ----------------------------------------------------------------------------------


def timed(engine: Engine, prompts, temperature: float, seed: int, max_new_tokens: int) -> tuple[int, float, list]:
    t0 = time.perf_counter()
    tokens, ids = engine.run(prompts, temperature, seed, max_new_tokens)
    return tokens, time.perf_counter() - t0, ids


def measure_rounds(engines: list[Engine], prompts, args: argparse.Namespace) -> dict[str, list[dict]]:
    """Per engine, per round: tokens, seconds, tok/s. Engines interleave within a round so a
    slow spell of the (shared) machine lands on all of them, not on one engine's block."""
    rounds: dict[str, list[dict]] = {e.name: [] for e in engines}
    for r in range(args.rounds):
        seed = args.seed + r  # differs per round, same across engines
        for engine in engines:
            tokens, seconds, _ = timed(engine, prompts, args.temperature, seed, args.max_new_tokens)
            rounds[engine.name].append({"seed": seed, "tokens": tokens, "seconds": round(seconds, 4),
                                        "tok_s": tokens / seconds})
            print(f"round {r + 1}/{args.rounds} {engine.name:9s} {tokens:6d} tok {seconds:7.2f} s "
                  f"{tokens / seconds:8.1f} tok/s", flush=True)
    return rounds


def greedy_agreement(engines: list[Engine], prompts, args: argparse.Namespace) -> dict[str, float]:
    """token_agreement of each engine's greedy ids with hf's (hf itself: 1 by definition)."""
    from alignflow.rlhf.generation import token_agreement

    greedy = {e.name: e.run(prompts, 0.0, args.seed, args.max_new_tokens)[1] for e in engines}
    return {name: token_agreement(greedy["hf"], ids) for name, ids in greedy.items()}


def t_975(df: int) -> float:
    if importlib.util.find_spec("scipy") is not None:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    return T_975[min(df, len(T_975)) - 1]


def ratio_ci(engine_tps: list[float], hf_tps: list[float]) -> tuple[float, float | None, float | None]:
    """Mean of the per-round ratios engine/hf and its 95% CI (None with one round: no spread)."""
    ratios = [e / h for e, h in zip(engine_tps, hf_tps, strict=True)]
    mean = statistics.fmean(ratios)
    if len(ratios) < 2:
        return mean, None, None
    half = t_975(len(ratios) - 1) * statistics.stdev(ratios) / math.sqrt(len(ratios))
    return mean, mean - half, mean + half


# --- roofline -----------------------------------------------------------------------------------


def matmul_peak_gflops(seconds: float, n: int = 2048) -> float:
    """float32 matmul GFLOP/s on this machine with torch's threads (the ceiling a decoder could reach)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool and kernel selection
    done, t0 = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        done += 1
    return 2 * n**3 * done / (time.perf_counter() - t0) / 1e9


def matmul_params_per_token(model) -> int:
    """Weights one generated token multiplies by: the non-embedding parameters plus the LM head
    (vocab x hidden), tied or not. Ignores attention's O(context) score/value products, which are
    small next to the weights at these prompt + 64-token lengths."""
    params = {id(p): p.numel() for p in model.parameters()}  # tied weights counted once
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    non_embedding = sum(params.values()) - embedding.numel() - (head.numel() if head is not embedding else 0)
    return non_embedding + head.numel()


# --- report -------------------------------------------------------------------------------------


def summarize(engines, rounds, agreement, flops_per_token: float, peak: float) -> dict[str, dict]:
    hf_tps = [r["tok_s"] for r in rounds["hf"]]
    out = {}
    for engine in engines:
        tps = [r["tok_s"] for r in rounds[engine.name]]
        ratio, lo, hi = ratio_ci(tps, hf_tps)
        achieved = flops_per_token * statistics.fmean(tps) / 1e9
        out[engine.name] = {
            "setup_s": round(engine.setup_s, 2), "rounds": rounds[engine.name],
            "tok_s": statistics.fmean(tps), "ratio": ratio, "ratio_ci95": [lo, hi] if lo is not None else None,
            "agreement": agreement[engine.name], "agreement_method": engine.fidelity,
            "achieved_gflops": achieved, "roofline": achieved / peak,
        }
    return out


def ratio_text(row: dict) -> str:
    if row["ratio_ci95"] is None:
        return f"{row['ratio']:.2f}x (1 round: no CI)"
    lo, hi = row["ratio_ci95"]
    return f"{row['ratio']:.2f}x [{lo:.2f}, {hi:.2f}]"


def print_table(summary: dict[str, dict], peak: float) -> None:
    print("\n| engine | tok/s | vs HF (95% CI) | greedy agreement | roofline | setup_s |")
    print("|---|---:|---|---:|---:|---:|")
    for name, row in summary.items():
        approx = " (approx.)" if row["agreement_method"].startswith("approximate") else ""
        print(f"| {name} | {row['tok_s']:.1f} | {ratio_text(row)} | {row['agreement']:.3f}{approx} | "
              f"{row['roofline']:.2%} | {row['setup_s']:.2f} |")
    print(f"\nfloat32 matmul peak: {peak:.1f} GFLOP/s (roofline = achieved 2*params*tok/s over it)")
    for name, row in summary.items():
        if row["agreement_method"].startswith("approximate"):
            print(f"{name} agreement is {row['agreement_method']}")


def goal_verdict(summary: dict[str, dict]) -> bool | None:
    """The goal engine's lower 95% bound >= 3x hf; None when it cannot be decided (not installed, one round)."""
    row = summary.get(GOAL_ENGINE)
    if row is None or row["ratio_ci95"] is None:
        return None
    return row["ratio_ci95"][0] >= GOAL_RATIO


def versions() -> dict[str, str | None]:
    import torch

    def version(module: str) -> str | None:
        return importlib.import_module(module).__version__ if importlib.util.find_spec(module) else None

    return {"torch": torch.__version__, "openvino": version("openvino"), "ctranslate2": version("ctranslate2")}


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--prompts-file", default="data/formatted/prompts_train.jsonl")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--naive", action="store_true", help="also time one model.generate call per prompt")
    parser.add_argument("--peak-seconds", type=float, default=2.0, help="how long to time the matmul peak")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 is steadier on a shared, busy machine")
    parser.add_argument("--out", default=str(ROOT / "bench/results/sample_throughput.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from alignflow.models import load_causal_lm

    t0 = time.perf_counter()
    model, tokenizer = load_causal_lm(args.model, device="cpu")
    model.eval()
    load_s = time.perf_counter() - t0
    prompts = bench_prompts(args.prompts, args.prompts_file)
    engines, skipped = build_engines(args, model, tokenizer, load_s)
    for engine in engines:  # first-call allocations, kernel selection, lazy imports: not timed
        engine.run(prompts[:2], args.temperature, args.seed, min(args.max_new_tokens, 8))

    rounds = measure_rounds(engines, prompts, args)
    agreement = greedy_agreement(engines, prompts, args)
    peak = matmul_peak_gflops(args.peak_seconds)
    flops_per_token = 2 * matmul_params_per_token(model)
    summary = summarize(engines, rounds, agreement, flops_per_token, peak)
    goal_met = goal_verdict(summary)

    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "args": vars(args),
        "prompts": len(prompts), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "versions": versions(), "matmul_peak_gflops": peak, "flops_per_token": flops_per_token,
        "engines": summary, "skipped": skipped,
        "goal": f"{GOAL_ENGINE} >= {GOAL_RATIO:g}x hf tokens/s (lower 95% bound)", "goal_met": goal_met,
    }
    print_table(summary, peak)
    verdict = {True: "met", False: "NOT met", None: f"undecided (needs {GOAL_ENGINE} and >= 2 rounds)"}[goal_met]
    print(f"goal {report['goal']}: {verdict}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()

"""Generated tokens/s of the sample stage's generator vs a naive one-prompt-at-a-time loop.

Same model, same prompts, same sampling params (temperature, top_p, max_new_tokens, EOS stop);
the naive side calls `model.generate` once per prompt (batch of 1, as a first script would), the
stage side is `alignflow.rlhf.generation.generate_with_details` (length-sorted left-padded batches,
KV cache, EOS stop). Goal: >= 4x on CPU.

    .venv/bin/python bench/sample_throughput.py                    # embedded SmolLM2-135M, 32 prompts
    .venv/bin/python bench/sample_throughput.py --model tiny:llama --prompts 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


def naive_generate(model, tokenizer, prompts, max_new_tokens, temperature, top_p, seed) -> int:
    """One prompt per model.generate call; returns generated tokens (EOS included)."""
    import torch

    from alignflow.rlhf.generation import eos_token_ids

    eos = eos_token_ids(model, tokenizer)
    tokens = 0
    for i, messages in enumerate(prompts):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        torch.manual_seed(seed + i)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                 top_p=top_p, top_k=0, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        cut = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))
        tokens += cut
    return tokens


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompts-file", default="data/formatted/prompts_train.jsonl")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 is steadier on a shared, busy machine")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from alignflow.models import load_causal_lm
    from alignflow.rlhf.generation import generate_with_details

    model, tokenizer = load_causal_lm(args.model, device="cpu")
    model.eval()
    prompts = bench_prompts(args.prompts, args.prompts_file)
    # Warm-up (first-call allocations and kernel selection) for both paths alike.
    generate_with_details(model, tokenizer, prompts[:2], max_new_tokens=4, batch_size=2, progress=False)

    t0 = time.perf_counter()
    gens = generate_with_details(model, tokenizer, prompts, n=1, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                 batch_size=args.batch_size, progress=False)
    stage_s = time.perf_counter() - t0
    stage_tokens = sum(g[0].num_tokens for g in gens)

    t0 = time.perf_counter()
    naive_tokens = naive_generate(model, tokenizer, prompts, args.max_new_tokens, args.temperature, args.top_p, args.seed)
    naive_s = time.perf_counter() - t0

    result = {
        "model": args.model,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "stage_tokens": stage_tokens,
        "stage_s": round(stage_s, 2),
        "stage_tokens_per_s": round(stage_tokens / stage_s, 1),
        "naive_tokens": naive_tokens,
        "naive_s": round(naive_s, 2),
        "naive_tokens_per_s": round(naive_tokens / naive_s, 1),
    }
    result["speedup"] = round(result["stage_tokens_per_s"] / result["naive_tokens_per_s"], 2)
    result["goal_met"] = result["speedup"] >= 4.0
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()

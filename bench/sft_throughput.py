"""SFT training throughput: a plain TRL script vs our sft stage on Ray Train, without and with packing.

Side by side in one run, same model, same Alpaca examples, same batch size, max length, LoRA
config and number of optimizer steps:
  (a) plain   — the script a user would write: SFTTrainer on conversational `messages`, LoRA;
  (b) stage   — `alignflow.training.sft.run` (Ray Train local mode, assistant-only masks, our
                callbacks: MLflow-free here, finite-loss guard, Ray reports, checkpoints);
  (c) packed  — the same stage with `sft.packing: true` (BFD packing into max_length blocks).
Measured: training tokens/s = non-pad input tokens / wall time of `trainer.train()` (HF's
`num_input_tokens_seen` with "non_padding"), plus each side's end-to-end wall time.
Goals: (b)/(a) >= 0.95 (the pipeline adds no real overhead), (c)/(a) >= 1.5 on Alpaca lengths.

    .venv/bin/python bench/sft_throughput.py                     # embedded SmolLM2-135M, 8 steps of 4
    .venv/bin/python bench/sft_throughput.py --model tiny:llama --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA_CANDIDATES = (ROOT / "data/sample/alpaca_2000.json",)


def alpaca_conversations(path: Path, n: int, seed: int) -> list[dict]:
    import random

    rows = json.loads(path.read_text(encoding="utf-8"))
    random.Random(seed).shuffle(rows)
    out = []
    for i, row in enumerate(rows[:n]):
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        out.append({"id": f"a{i}", "messages": [{"role": "user", "content": prompt},
                                                 {"role": "assistant", "content": row["output"]}],
                    "task": "alpaca", "source": "bench", "license": "CC-BY-NC-4.0"})
    return out


def plain_trl(model_spec: str, records: list[dict], args: argparse.Namespace, out: Path) -> dict:
    """(a) What a first script looks like: TRL on conversational data, LoRA, default collator."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from alignflow.models import resolve_spec

    started = time.perf_counter()
    path = resolve_spec(model_spec)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = SFTConfig(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        learning_rate=2e-4, max_length=args.max_length, packing=False, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False, activation_checkpointing=False,
        include_num_input_tokens_seen="non_padding", seed=args.seed, data_seed=args.seed, disable_tqdm=True,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in records])
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    tokens = int(trainer.state.num_input_tokens_seen)
    return {"tokens": tokens, "train_s": round(train_s, 2), "tokens_per_s": round(tokens / train_s, 2),
            "steps": trainer.state.global_step, "wall_s": round(time.perf_counter() - started, 2)}


def our_stage(model_spec: str, records: list[dict], args: argparse.Namespace, work: Path, packing: bool) -> dict:
    """(b)/(c) The sft stage itself (Ray Train local mode), in a scratch project dir."""
    from alignflow.config import load_params
    from alignflow.io import write_jsonl
    from alignflow.training import sft

    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "data/formatted/sft_train.jsonl", records)
    overrides = {
        "model.base": model_spec, "sft.max_steps": args.steps, "sft.per_device_batch_size": args.batch,
        "sft.gradient_accumulation_steps": 1, "sft.max_length": args.max_length, "sft.packing": packing,
        "sft.save_steps": 10_000, "sft.eval_steps": 10_000, "sft.learning_rate": 2e-4,
        "sft.lora.r": 16, "sft.lora.alpha": 32, "sft.lora.dropout": 0.05, "sft.lora.target_modules": "all-linear",
        "ray.num_workers": 0, "ray.storage_path": str(work / ".ray_results"), "seed": args.seed,
        "tracking.log_models": False,
    }
    params = load_params(ROOT / "params.yaml", overrides)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        started = time.perf_counter()
        metrics = sft.run(params, None)
        wall = time.perf_counter() - started
    finally:
        os.chdir(cwd)
    return {"tokens": metrics["train_tokens"], "train_s": metrics["train_runtime_s"],
            "tokens_per_s": metrics["tokens_per_s"], "steps": metrics["steps"], "wall_s": round(wall, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data", default=None, help="Alpaca JSON (default: data/sample/alpaca_2000.json)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/sft_throughput.json"))
    args = parser.parse_args(argv)

    import torch

    from alignflow.models import load_tokenizer, resolve_spec

    data = Path(args.data) if args.data else next((p for p in DATA_CANDIDATES if p.exists()), None)
    if data is None:
        print("no Alpaca data found (data/sample/alpaca_2000.json)", file=sys.stderr)
        return 2
    records = alpaca_conversations(data, args.examples, args.seed)
    t0 = time.perf_counter()
    resolve_spec(args.model)  # materialize once, outside the timings
    prepare_s = time.perf_counter() - t0
    tokenizer = load_tokenizer(args.model)
    lengths = sorted(len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
                     for r in records)

    torch.manual_seed(args.seed)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sft-bench-") as tmp:
        tmp = Path(tmp)
        print(f"(a) plain TRL SFTTrainer: {args.steps} steps x {args.batch}, max_length {args.max_length}", flush=True)
        results["a_plain_trl"] = plain_trl(args.model, records, args, tmp / "plain")
        print(f"    {results['a_plain_trl']}", flush=True)
        print("(b) alignflow sft stage on Ray Train (local mode)", flush=True)
        results["b_stage"] = our_stage(args.model, records, args, tmp / "stage", packing=False)
        print(f"    {results['b_stage']}", flush=True)
        print("(c) alignflow sft stage with packing", flush=True)
        results["c_stage_packed"] = our_stage(args.model, records, args, tmp / "packed", packing=True)
        print(f"    {results['c_stage_packed']}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)

    a = results["a_plain_trl"]["tokens_per_s"]
    ratios = {"b_over_a": round(results["b_stage"]["tokens_per_s"] / a, 3),
              "c_over_a": round(results["c_stage_packed"]["tokens_per_s"] / a, 3)}
    report = {
        "model": args.model, "data": str(data), "examples": len(records), "steps": args.steps, "batch": args.batch,
        "max_length": args.max_length, "median_tokens": lengths[len(lengths) // 2], "p90_tokens": lengths[int(len(lengths) * 0.9)],
        "model_prepare_s": round(prepare_s, 2), "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "results": results, "ratios": ratios,
        "goals": {"b_over_a": ">= 0.95", "c_over_a": ">= 1.5"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ntraining tokens/s (non-pad): plain {a}, stage {results['b_stage']['tokens_per_s']}, "
          f"stage+packing {results['c_stage_packed']['tokens_per_s']}")
    print(f"(b)/(a) = {ratios['b_over_a']}  (goal >= 0.95)")
    print(f"(c)/(a) = {ratios['c_over_a']}  (goal >= 1.5)")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

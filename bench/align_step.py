"""DPO step time: TRL's defaults vs the align stage's (micro-batches, no gradient checkpointing).

Side by side in one run, same model, same pairs, same seed (so every config sees the same 4
pairs at step k), same LoRA, loss and optimizer; only how a step is computed differs:
  (a) trl_default  — 4 pairs per forward, TRL's default gradient checkpointing (every forward
                     recomputed in the backward);
  (b) no_ckpt      — 4 pairs per forward, no checkpointing;
  (c) micro        — the stage's default: 4 forwards of 1 pair (gradients accumulated, so a pair
                     pads only to its own longer side), no checkpointing.
Measured: seconds per optimizer step (the first step, a warm-up, is left out), and the
per-step ratios a/c and b/c with a 95% t-interval over the paired steps. The losses of the
three runs are printed too: the same pairs give the same loss (up to float summation order).

    .venv/bin/python bench/align_step.py                          # embedded SmolLM2-135M, data/prefs/train.jsonl
    .venv/bin/python bench/align_step.py --model tiny:llama --steps 3 --pairs pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIGS = {  # name -> (pairs per forward, gradient checkpointing)
    "trl_default": (4, True),
    "no_ckpt": (4, False),
    "micro": (1, False),
}


def read_pairs(path: Path, n: int) -> list[dict]:
    from itertools import islice

    from alignflow.io import read_jsonl

    rows = [{k: rec[k] for k in ("prompt", "chosen", "rejected")} for rec in islice(read_jsonl(path), n)]
    if not rows:
        raise SystemExit(f"{path}: no preference pairs (run `alignflow run rank`, or pass --pairs)")
    return rows


def run_config(name: str, model_spec: str, pairs: list[dict], args: argparse.Namespace, out: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOTrainer

    from alignflow.config import validate
    from alignflow.models import load_causal_lm
    from alignflow.rlhf.trl_methods import dpo_config, lora_config, training_args

    per_forward, checkpointing = CONFIGS[name]
    params = validate({"model": {"base": model_spec}, "seed": args.seed,
                       "align": {"batch_size": 4, "micro_batch_size": per_forward, "max_steps": args.steps + 1,
                                 "gradient_checkpointing": checkpointing, "save_steps": 10_000}})
    align = params.align
    micro, forwards = align.forward_batch()
    model, tokenizer = load_causal_lm(model_spec, device="cpu")
    tokenizer.padding_side = "right"
    common = training_args(align, params, str(out / name), per_device_batch=micro, grad_accum=forwards)
    trainer = DPOTrainer(model=model, args=dpo_config(align, common, len(pairs), 4), train_dataset=Dataset.from_list(pairs),
                         processing_class=tokenizer, peft_config=lora_config(align))

    class StepClock(TrainerCallback):
        def __init__(self):
            self.started, self.seconds, self.losses = 0.0, [], []

        def on_step_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds.append(time.perf_counter() - self.started)

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "loss" in logs:
                self.losses.append(round(float(logs["loss"]), 4))

    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    steps = clock.seconds[1:]  # step 1 pays for first-call kernel selection and allocation
    return {"per_forward": micro, "forwards_per_step": forwards, "gradient_checkpointing": checkpointing,
            "s_per_step": round(statistics.fmean(steps), 3), "step_seconds": [round(s, 3) for s in steps],
            "losses": clock.losses}


def paired_ratio(slow: list[float], fast: list[float]) -> dict:
    from bench.sample_throughput import ratio_ci

    mean, low, high = ratio_ci(slow, fast)
    return {"mean": round(mean, 3), "ci_low": low and round(low, 3), "ci_high": high and round(high, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--pairs", default=str(ROOT / "data/prefs/train.jsonl"))
    parser.add_argument("--n-pairs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per config (after one warm-up step)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(ROOT / "bench/results/align_step.json"))
    args = parser.parse_args(argv)

    import torch

    from bench.sample_throughput import matmul_peak_gflops

    pairs = read_pairs(Path(args.pairs), args.n_pairs)
    results = {}
    with tempfile.TemporaryDirectory(prefix="alignflow-bench-") as tmp:
        for name in CONFIGS:
            print(f"[{name}] {args.steps + 1} DPO steps of 4 pairs on {args.model}", flush=True)
            results[name] = run_config(name, args.model, pairs, args, Path(tmp))
            print(f"    {results[name]['s_per_step']} s/step, losses {results[name]['losses']}", flush=True)
    micro = results["micro"]["step_seconds"]
    ratios = {"trl_default_over_micro": paired_ratio(results["trl_default"]["step_seconds"], micro),
              "no_ckpt_over_micro": paired_ratio(results["no_ckpt"]["step_seconds"], micro)}
    report = {"bench": "align_step", "model": args.model, "pairs": args.pairs, "timed_steps": args.steps,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "matmul_gflops": round(matmul_peak_gflops(2.0), 1), "results": results, "ratios": ratios}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ns/step: TRL defaults {results['trl_default']['s_per_step']}, no checkpointing "
          f"{results['no_ckpt']['s_per_step']}, micro-batches {results['micro']['s_per_step']}")
    for key, r in ratios.items():
        print(f"{key}: {r['mean']}x (95% CI {r['ci_low']}–{r['ci_high']})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

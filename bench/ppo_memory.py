"""Peak memory of our PPO layout vs the classic four-model layout, same model, same PPO step.

- shared (ours, alignflow.rlhf.ppo): one base with a LoRA policy adapter + value head; the
  reference is the adapter disabled; the reward model is a second LoRA adapter (+ its score
  head) on the same base. One copy of the weights.
- separate (the classic InstructGPT / DeepSpeed-Chat layout): policy, value model, reference
  and reward model as four full copies; policy and value fully trained (AdamW states for both).

Each layout runs in its own process (peak RSS is per process; on a GPU, peak allocated CUDA
memory), doing the same PPO steps (rollout, reward, KL-shaped GAE, clipped updates) through the
same PPOTrainer. The reward adapter is prepared in a third process so its creation does not
count. Goal: shared <= 0.5x separate.

    .venv/bin/python bench/ppo_memory.py                       # embedded SmolLM2-135M
    .venv/bin/python bench/ppo_memory.py --model tiny:llama --steps 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
PROMPTS = [
    "Explain photosynthesis in one paragraph.", "Give me three tips for learning to cook.",
    "What is the difference between weather and climate?", "Write a short poem about autumn.",
    "How do vaccines train the immune system?", "Summarize the plot of Romeo and Juliet.",
    "Why is the sky blue?", "What should I pack for a weekend hike?",
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def prepare_reward_adapter(model: str, out: str) -> None:
    """A LoRA sequence-classification adapter on the same base (what the reward stage writes)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from alignflow.models import load_reward_model, resolve_spec, save_model_dir

    torch.manual_seed(0)
    base_dir = resolve_spec(model)
    rm, tok = load_reward_model(base_dir, device="cpu")
    rm = get_peft_model(rm, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="SEQ_CLS"))
    save_model_dir(rm, tok, out, {"base": base_dir, "kind": "reward"})


def run_layout(layout: str, model: str, reward_dir: str, steps: int, max_new_tokens: int) -> dict:
    import torch

    from alignflow.config import validate
    from alignflow.models import resolve_spec
    from alignflow.rlhf.ppo import PPOTrainer, SeparateReward, build_policy, load_ppo_reward, make_value_head

    cuda = torch.cuda.is_available()
    base_dir = resolve_spec(model)
    params = validate({"model": {"base": model}, "align": {"method": "ppo", "max_new_tokens": max_new_tokens,
                                                           "ppo": {"rollout_batch_size": 8, "mini_batch_size": 4,
                                                                   "ppo_epochs": 1}}})
    cfg = params.align.ppo
    before = peak_rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if layout == "shared":
        policy, tok, value_head = build_policy(base_dir, params)
        reward = load_ppo_reward(policy, tok, reward_dir, base_dir, share=True)
        assert type(reward).__name__ == "SharedBaseReward", "the bench expects the shared reward adapter"
        trainer = PPOTrainer(policy, tok, value_head, reward, cfg, learning_rate=1e-5, max_new_tokens=max_new_tokens,
                             max_prompt_length=64)
    else:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        from alignflow.models import load_tokenizer

        device = "cuda" if cuda else "cpu"
        tok = load_tokenizer(base_dir)
        load = lambda auto, **kw: auto.from_pretrained(base_dir, dtype=torch.float32, **kw).to(device)  # noqa: E731
        policy = load(AutoModelForCausalLM)
        value_model = load(AutoModelForCausalLM)
        ref = load(AutoModelForCausalLM).requires_grad_(False)
        rm = load(AutoModelForSequenceClassification, num_labels=1)
        rm.config.pad_token_id = tok.pad_token_id
        trainer = PPOTrainer(policy, tok, make_value_head(policy), SeparateReward(rm, tok), cfg, learning_rate=1e-5,
                             max_new_tokens=max_new_tokens, max_prompt_length=64, ref_model=ref,
                             value_model=value_model)
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        stats = trainer.train_step(prompts)
        times.append(time.perf_counter() - t0)
    trainable = sum(p.numel() for p in trainer.params)
    out = {
        "layout": layout,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_models_mb": round(before, 1),
        "trainable_params": trainable,
        "step_s": [round(t, 2) for t in times],
        "rollout_s_last": round(stats["rollout_s"], 2),
        "response_length_last": stats["response_length"],
    }
    out["net_peak_mb"] = round(out["peak_rss_mb"] - before, 1)
    if cuda:
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=2, help="PPO steps per layout (the last one is timed)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", choices=["prepare", "shared", "separate"], help=argparse.SUPPRESS)
    parser.add_argument("--reward-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "prepare":
        prepare_reward_adapter(args.model, args.reward_dir)
        return {}
    if args.child:
        print(json.dumps(run_layout(args.child, args.model, args.reward_dir, args.steps, args.max_new_tokens)))
        return {}

    here = Path(__file__).resolve()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        reward_dir = str(Path(tmp, "reward"))
        common = [sys.executable, str(here), "--model", args.model, "--reward-dir", reward_dir,
                  "--steps", str(args.steps), "--max-new-tokens", str(args.max_new_tokens)]
        subprocess.run([*common, "--child", "prepare"], check=True)
        for layout in ("shared", "separate"):
            proc = subprocess.run([*common, "--child", layout], check=True, capture_output=True, text=True)
            results[layout] = json.loads(proc.stdout.strip().splitlines()[-1])
    shared, separate = results["shared"], results["separate"]
    key = "cuda_peak_mb" if "cuda_peak_mb" in shared else "net_peak_mb"
    summary = {
        "model": args.model,
        "measure": key,
        "shared_mb": shared[key],
        "separate_mb": separate[key],
        "ratio": round(shared[key] / separate[key], 3),
        "total_rss_ratio": round(shared["peak_rss_mb"] / separate["peak_rss_mb"], 3),
        "shared_step_s": shared["step_s"][-1],
        "separate_step_s": separate["step_s"][-1],
        "goal_met": shared[key] / separate[key] <= 0.5,
        "layouts": results,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()

"""GPU bench: tokens/s, MFU and peak memory of the CUDA training and generation steps alignflow runs.

Self-contained: imports torch, transformers and peft only (no ray, mlflow, dvc, trl, vllm, and no
installed alignflow), so it runs on a bare GPU box that has just this repo's files. Models are
randomly initialised from hand-written Qwen2 configs of real shapes (no downloads): "0.5b"
(Qwen2-0.5B: hidden 896, 24 layers, 14 heads, 2 kv heads, ffn 4864, vocab 151936, tied), "1.5b"
(Qwen2-1.5B: 1536, 28, 12, 2, 8960, 151936, tied) and "tiny" (CPU / --dry-run). bf16 weights on
CUDA (pure bf16: AdamW on bf16 parameters, no fp32 master copy), fp32 on CPU; attention is
flash_attention_2 when the flash_attn package imports, else sdpa (recorded per row).

Cases, and what each is compared against (the baseline is always a bare PyTorch loop on the HF
model; a variant that uses a library or alignflow code is reported next to it with the ratio):
  sft         padded batch (right-padded to the longest row), HF's own causal-LM loss, AdamW step.
              full = bare loop, full fine-tune (baseline); lora = the same loop on a peft LoRA model
              (r=16, all-linear, as alignflow's sft stage). Ratio lora/full.
  sft_packed  the same loop on packed rows: sequences laid end to end in seq_len rows, position_ids
              restarting per sequence, no attention mask (DataCollatorWithFlattening-style). HF turns
              that into varlen flash attention (flash_attention_2) or a block-diagonal mask (sdpa,
              transformers >= 4.5x); `packing_isolated` records a check that a packed sequence really
              does not see its neighbour (if false, packed rows attended across boundaries). Ratio
              packed/padded per variant, and the padding waste of both layouts for lognormal lengths.
  dpo         LoRA policy forward+backward on chosen+rejected concatenated, reference log-probs from
              the same model under `disable_adapter()`, sigmoid DPO loss. bare = sequence log-probs
              inline (fused cross-entropy); alignflow = alignflow.rlhf.core_algos.logprobs_from_logits
              + masked_sum (what its RL code uses). Interleaved steps, ratio alignflow/bare.
  ppo         one base with LoRA policy + a linear value head on the last hidden state, reference by
              adapter toggling (alignflow's shared PPO layout). A step = rollout (`generate`, sampled,
              fixed length) + scoring (old log-probs/values, reference log-probs; the reward is a random
              score: no reward-model forward) + one update (clipped policy + value loss, one minibatch).
              bare = KL-shaped rewards, GAE, whitening and both losses written inline; alignflow =
              core_algos.shape_token_rewards / compute_gae / masked_whiten / clipped_policy_loss /
              clipped_value_loss. Both updates run on the same rollout, ratio of update tokens/s.
  generate    plain `model.generate` (batched, sampling, min_new_tokens = max_new_tokens): no
              alignflow code involved, so no ratio.
alignflow's core_algos is imported from ./src at run time (it imports nothing but torch); if it
cannot be imported the alignflow variants are skipped and the report says so.

MFU = model FLOPs per second / the device's peak dense bf16 FLOP/s (a table keyed on the device
name: H100/H200 SXM 989e12, A100 312e12, L4 121e12, ...; otherwise a measured large bf16 matmul,
and on CPU a measured fp32 matmul; `peak_source` says which). Model FLOPs follow PaLM (Chowdhury
et al. 2022, app. B): N = parameters doing matmuls (the input embedding only when tied to the LM
head), per token of a sequence of length l: training 6N + 12*L*h*l, forward only 2N + 4*L*h*l
(attention counted non-causal, as PaLM does). LoRA counts the FLOPs actually done: frozen weights
4N (forward + activation gradients, no weight gradient), trainable adapter weights 6N. Only real
tokens count (padding is waste, it lowers MFU); `mfu_6n` is the same without the attention term.
Timing: warmup steps, then timed steps between torch.cuda.synchronize(); mean and 95% t-interval
over the timed steps. Goal (issue): SFT MFU >= 0.4 at 1.5B.

    python bench/gpu.py                                   # 0.5b and 1.5b, all cases, ~4-6 min on an H200
    python bench/gpu.py --shapes 1.5b --cases sft,sft_packed --steps 12
    .venv/bin/python bench/gpu.py --dry-run --out /tmp/gpu.json   # tiny shape, CPU, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # after the env defaults

warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 deprecation chatter from peft

ROOT = Path(__file__).resolve().parents[1]
CASES = ("sft", "sft_packed", "dpo", "ppo", "generate")
HEAVY_MODULES = ("ray", "mlflow", "dvc", "trl", "vllm")
SHAPES = {  # Qwen2 shapes; all tie the LM head to the input embedding, as the real models do
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=176, vocab_size=512),
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936),
}
# Peak dense bf16 FLOP/s by device name; the first matching substring wins, so specific names come first.
PEAK_BF16 = (
    ("H100 PCIe", 756e12), ("H200", 989e12), ("H100", 989e12), ("H800", 989e12), ("A100", 312e12),
    ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("RTX 4090", 165e12),
)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[gpu-bench +{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# FLOPs, peak, statistics
# --------------------------------------------------------------------------------------------


def train_flops(trainable: int, n_layers: int, hidden: int, lengths: list[int], frozen: int = 0) -> float:
    """Forward+backward FLOPs of a batch of sequences: 6N per token for trained weights, 4N for frozen
    ones (no weight gradient), plus PaLM's attention term 12*L*h*l per token of a length-l sequence."""
    tokens, squares = sum(lengths), sum(n * n for n in lengths)
    return float((6 * trainable + 4 * frozen) * tokens + 12 * n_layers * hidden * squares)


def forward_flops(params: int, n_layers: int, hidden: int, lengths: list[int]) -> float:
    """Forward-only FLOPs: 2N per token plus the attention term 4*L*h*l (a third of the training one)."""
    tokens, squares = sum(lengths), sum(n * n for n in lengths)
    return float(2 * params * tokens + 4 * n_layers * hidden * squares)


def mfu(flops: float, seconds: float, peak: float) -> float:
    return flops / seconds / peak


def peak_for_name(name: str) -> float | None:
    for key, value in PEAK_BF16:
        if key in name:
            return value
    return None


def measure_matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Best of a few square matmuls: the denominator when the device is not in the table."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(6):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if (value := peak_for_name(name)) is not None:
            return value, f"table: {name} dense bf16"
        return measure_matmul_peak(device, dtype), f"measured: 8192^3 bf16 matmul on {name} (not in the table)"
    return measure_matmul_peak(device, dtype), f"measured: 1024^3 fp32 matmul, {torch.get_num_threads()} threads"


def mean_ci(values: list[float]) -> dict:
    """Mean and half-width of the 95% t-interval (None below two values)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "ci95": None, "n": n}
    t = T975.get(n - 1) or T975[max(k for k in T975 if k <= n - 1)]
    return {"mean": mean, "ci95": t * statistics.stdev(values) / math.sqrt(n), "n": n}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# Models and batches
# --------------------------------------------------------------------------------------------


def attn_implementation(device: torch.device) -> str:
    import importlib.util

    return "flash_attention_2" if device.type == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"


def build_model(shape: str, device: torch.device, dtype: torch.dtype, attn: str, seed: int):
    """A randomly initialised Qwen2 causal LM of the given shape, created directly on the device."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(**SHAPES[shape], tie_word_embeddings=True, max_position_embeddings=32768)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    return model.to(dtype)


def add_lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))


def matmul_params(model) -> tuple[int, int]:
    """(trainable, frozen) parameters doing matmuls: the input embedding is a lookup, so it counts only
    when tied to the LM head (then `named_parameters` yields the shared weight once, as embed_tokens)."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    trainable = frozen = 0
    for name, p in model.named_parameters():
        if name.endswith("embed_tokens.weight") and not tied:
            continue
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return trainable, frozen


def sample_lengths(rng: random.Random, n: int, max_len: int, min_len: int = 8) -> list[int]:
    """Lognormal lengths (median max_len/4, sigma 0.8: Alpaca-like, long right tail), clipped."""
    mu = math.log(max(max_len / 4, min_len))
    return [int(min(max_len, max(min_len, rng.lognormvariate(mu, 0.8)))) for _ in range(n)]


def pack_lengths(rng: random.Random, rows: int, seq_len: int) -> list[list[int]]:
    """Fill `rows` rows of seq_len greedily from a stream of lengths; a sequence that does not fit
    starts the next row (no splitting), the row's tail stays padding."""
    out, row, used = [], [], 0
    while len(out) < rows:
        n = sample_lengths(rng, 1, seq_len)[0]
        if used + n > seq_len:
            out.append(row)
            row, used = [], 0
        row.append(n)
        used += n
    return out


def padding_waste(seed: int, batch: int, seq_len: int, batches: int = 500) -> dict:
    """Share of computed positions that are padding, over many simulated batches of the same lengths."""
    rng = random.Random(seed)
    real = longest = 0
    for _ in range(batches):
        lengths = sample_lengths(rng, batch, seq_len)
        real, longest = real + sum(lengths), longest + batch * max(lengths)
    packed = pack_lengths(random.Random(seed), batches * batch, seq_len)
    packed_real = sum(map(sum, packed))
    return {"padded_to_longest": round(1 - real / longest, 4),
            "padded_to_max_length": round(1 - real / (batches * batch * seq_len), 4),
            "packed": round(1 - packed_real / (len(packed) * seq_len), 4),
            "mean_length": round(real / (batches * batch), 1),
            "length_distribution": f"lognormal(median {seq_len // 4}, sigma 0.8), clipped to [8, {seq_len}]"}


def padded_batch(lengths: list[int], vocab: int, device: torch.device) -> dict:
    width = max(lengths)
    ids = torch.randint(0, vocab, (len(lengths), width), device=device)
    mask = (torch.arange(width, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def packed_batch(rows: list[list[int]], seq_len: int, vocab: int, device: torch.device) -> dict:
    """position_ids restart at every sequence (and for the padding tail); the first token of each
    sequence gets label -100 so no position learns to predict across a boundary."""
    positions, labels_on = [], []
    for row in rows:
        pos, on = [], []
        for n in row + ([seq_len - sum(row)] if sum(row) < seq_len else []):
            pos += range(n)
            on += [False] + [True] * (n - 1)
        on[sum(row):] = [False] * (seq_len - sum(row))
        positions.append(pos)
        labels_on.append(on)
    ids = torch.randint(0, vocab, (len(rows), seq_len), device=device)
    keep = torch.tensor(labels_on, device=device)
    return {"input_ids": ids, "position_ids": torch.tensor(positions, device=device),
            "labels": ids.masked_fill(~keep, -100)}


def packing_isolation(device: torch.device, dtype: torch.dtype, attn: str) -> dict:
    """Does a packed sequence see only itself? Logits of sequence B packed after A (position_ids
    restarting) vs B alone, against B packed after A with a full causal mask (attending across)."""
    dtype = torch.float32 if attn == "sdpa" else dtype  # fp32 where it can: no bf16 noise in the comparison
    model = build_model("tiny", device, dtype, attn, seed=1).eval()
    a = torch.randint(0, 512, (1, 5), device=device)
    b = torch.randint(0, 512, (1, 7), device=device)
    pos = torch.cat([torch.arange(5), torch.arange(7)]).to(device)[None]
    with torch.no_grad():
        alone = model(input_ids=b, position_ids=pos[:, 5:], use_cache=False).logits.float()
        ab = torch.cat([a, b], dim=1)
        packed = model(input_ids=ab, position_ids=pos, use_cache=False).logits[:, 5:].float()
        crossed = model(input_ids=ab, position_ids=pos, attention_mask=torch.ones_like(ab),
                        use_cache=False).logits[:, 5:].float()
    d_packed, d_cross = (packed - alone).abs().max().item(), (crossed - alone).abs().max().item()
    return {"packing_isolated": d_packed <= 0.05 * d_cross, "max_diff_packed": d_packed, "max_diff_crossed": d_cross}


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


class Case:
    """Collects per-step (seconds, tokens, flops) and turns them into a report row."""

    def __init__(self, device: torch.device, peak: float):
        self.device, self.peak = device, peak
        self.samples: dict[str, list[tuple[float, float, float, float]]] = {}

    def time(self, key: str, fn, tokens: float, flops: float, flops_6n: float, record: bool = True):
        sync(self.device)
        t = time.perf_counter()
        out = fn()
        sync(self.device)
        dt = time.perf_counter() - t
        if record:
            self.samples.setdefault(key, []).append((dt, tokens, flops, flops_6n))
        return out, dt

    def row(self, key: str, **extra) -> dict:
        steps = self.samples[key]
        summary = {
            "step_s": mean_ci([s for s, *_ in steps]),
            "tokens_per_s": mean_ci([n / s for s, n, *_ in steps]),
            "mfu": mean_ci([mfu(f, s, self.peak) for s, _, f, _ in steps]),
            "mfu_6n": statistics.fmean(mfu(f6, s, self.peak) for s, _, _, f6 in steps),
            "tokens_per_step": statistics.fmean(n for _, n, *_ in steps),
        }
        return {**summary, **extra}


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def make_optimizer(params, device: torch.device):
    return torch.optim.AdamW(params, lr=1e-6, fused=device.type == "cuda")


def shape_dims(model) -> tuple[int, int]:
    return model.config.num_hidden_layers, model.config.hidden_size


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def sft_step(model, optimizer, batch: dict) -> None:
    model(**batch, use_cache=False).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_sft(ctx: dict, shape: str, variant: str, packed: bool) -> dict:
    """One optimizer step per batch: HF forward with labels (its own shifted CE loss), backward, AdamW."""
    args, device = ctx["args"], ctx["device"]
    model = build_model(shape, device, ctx["dtype"], ctx["attn"], args.seed)
    if variant == "lora":
        model = add_lora(model)
    model.train()
    trainable, frozen = matmul_params(model)
    layers, hidden = shape_dims(model)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], device)
    rng = random.Random(args.seed)  # the same batches for every variant
    case = Case(device, ctx["peak"])
    positions = 0
    for i in range(args.warmup + args.steps):
        if packed:
            rows = pack_lengths(rng, args.batch, args.seq_len)
            lengths = [n for row in rows for n in row]
            batch = packed_batch(rows, args.seq_len, model.config.vocab_size, device)
        else:
            lengths = sample_lengths(rng, args.batch, args.seq_len)
            batch = padded_batch(lengths, model.config.vocab_size, device)

        timed = i >= args.warmup
        positions += batch["input_ids"].numel() if timed else 0
        case.time("step", partial(sft_step, model, optimizer, batch), sum(lengths), train_flops(trainable, layers, hidden, lengths, frozen),
                  6 * trainable * sum(lengths) + 4 * frozen * sum(lengths), record=timed)
    real = sum(case.samples["step"][k][1] for k in range(args.steps))
    return case.row("step", padding_frac=round(1 - real / positions, 4), trainable_params=trainable,
                    frozen_params=frozen, peak_mem_gib=peak_memory_gib(device))


def seq_logprobs_bare(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over masked positions, via the fused cross-entropy kernel."""
    lp = -torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(),
                                            reduction="none").view(ids.shape[0], -1)
    return (lp * mask[:, 1:]).sum(-1)


def seq_logprobs_alignflow(ca, logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ca.masked_sum(ca.logprobs_from_logits(logits[:, :-1], ids[:, 1:]), mask[:, 1:], dim=-1)


def dpo_batch(rng: random.Random, pairs: int, seq_len: int, vocab: int, device: torch.device):
    """chosen rows then rejected rows, right-padded to the longest; the first quarter of the shorter
    of each pair is the prompt (not scored)."""
    chosen, rejected = sample_lengths(rng, pairs, seq_len), sample_lengths(rng, pairs, seq_len)
    lengths = chosen + rejected
    batch = padded_batch(lengths, vocab, device)
    prompt = [min(c, r) // 4 for c, r in zip(chosen, rejected)] * 2
    scored = batch["attention_mask"].clone()
    for row, p in enumerate(prompt):
        scored[row, :p] = 0
    return batch, scored.float(), lengths


def dpo_step(model, optimizer, logprobs, ids, attention, scored, beta: float = 0.1) -> None:
    """Reference log-probs with the adapter off, policy log-probs with it on, sigmoid DPO loss."""
    with torch.no_grad(), model.disable_adapter():
        ref = logprobs(model(input_ids=ids, attention_mask=attention, use_cache=False).logits, ids, scored)
    policy = logprobs(model(input_ids=ids, attention_mask=attention, use_cache=False).logits, ids, scored)
    (pc, pr), (rc, rr) = policy.chunk(2), ref.chunk(2)
    loss = -torch.nn.functional.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_dpo(ctx: dict, shape: str) -> list[dict]:
    args, device, ca = ctx["args"], ctx["device"], ctx["core_algos"]
    model = add_lora(build_model(shape, device, ctx["dtype"], ctx["attn"], args.seed))
    model.train()
    trainable, frozen = matmul_params(model)
    layers, hidden = shape_dims(model)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], device)
    variants = {"bare": seq_logprobs_bare}
    if ca is not None:
        variants["alignflow"] = lambda logits, ids, mask: seq_logprobs_alignflow(ca, logits, ids, mask)
    rng = random.Random(args.seed)
    case = Case(device, ctx["peak"])
    for i in range(args.warmup + args.steps):
        batch, scored, lengths = dpo_batch(rng, args.batch, args.seq_len, model.config.vocab_size, device)
        ids, attention = batch["input_ids"], batch["attention_mask"]
        flops = (train_flops(trainable, layers, hidden, lengths, frozen)
                 + forward_flops(frozen, layers, hidden, lengths))  # + the reference forward
        flops_6n = (6 * trainable + 4 * frozen + 2 * frozen) * sum(lengths)
        order = list(variants) if i % 2 == 0 else list(reversed(variants))  # interleaved: no order bias
        for name in order:
            step = partial(dpo_step, model, optimizer, variants[name], ids, attention, scored)
            case.time(name, step, sum(lengths), flops, flops_6n, record=i >= args.warmup)
    rows = [case.row(name, variant=name, trainable_params=trainable, frozen_params=frozen) for name in variants]
    for row in rows:
        row["peak_mem_gib"] = peak_memory_gib(device)  # both variants share the process peak
    return rows


def gae_bare(rewards: torch.Tensor, values: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """GAE over fixed-length responses (every token real), inline."""
    advantages = torch.zeros_like(values)
    next_value = next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_adv
        advantages[:, t], next_value = next_adv, values[:, t]
    return advantages, advantages + values


def ppo_update(variant: str, ca, forward, optimizer, roll: dict, kl_coef=0.05, clip=0.2, vf_coef=0.1) -> None:
    """Advantages from the scored rollout, then one clipped policy + value update on the whole batch."""
    old_lp, ref_lp, old_values, scores, mask = (roll[k] for k in ("old_lp", "ref_lp", "old_values", "scores", "mask"))
    if variant == "alignflow":
        rewards, _ = ca.shape_token_rewards(scores, old_lp, ref_lp, mask, kl_coef, "k1")
        advantages, returns = ca.compute_gae(rewards, old_values, mask, gamma=1.0, lam=0.95)
        advantages = ca.masked_whiten(advantages, mask)
        logprob, values = forward(with_grad=True, variant=variant)
        pg_loss, _ = ca.clipped_policy_loss(old_lp, logprob, advantages, mask, clip)
        vf_loss, _ = ca.clipped_value_loss(values, old_values, returns, mask, clip)
    else:
        rewards = -kl_coef * (old_lp - ref_lp)
        rewards[:, -1] += scores
        advantages, returns = gae_bare(rewards, old_values)
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        logprob, values = forward(with_grad=True, variant=variant)
        ratio = torch.exp((logprob - old_lp).clamp(-20, 20))
        pg_loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)).mean()
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        vf_loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2).mean()
    (pg_loss + vf_coef * vf_loss).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def ppo_forward(inner, value_head, ca, seq: torch.Tensor, prompt_len: int, with_grad: bool, variant: str = "bare"):
    """Response log-probs and values from one backbone pass (logits only at response positions)."""
    response = seq[:, prompt_len:]
    with torch.set_grad_enabled(with_grad):
        h = inner.model(input_ids=seq, use_cache=False).last_hidden_state[:, prompt_len - 1:-1]
        logits = inner.lm_head(h)
        if variant == "alignflow":
            logprob = ca.logprobs_from_logits(logits, response)
        else:
            logprob = -torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), response.flatten(), reduction="none").view_as(response)
        return logprob, value_head(h).squeeze(-1).float()


def ppo_score(model, forward) -> dict:
    """Old log-probs and values (adapter on), reference log-probs (adapter off), a random score per
    sequence standing in for the reward model; every response token is real (fixed length)."""
    old_lp, old_values = forward(with_grad=False)
    with model.disable_adapter():
        ref_lp, _ = forward(with_grad=False)
    return {"old_lp": old_lp, "old_values": old_values, "ref_lp": ref_lp,
            "scores": torch.randn(old_lp.shape[0], device=old_lp.device), "mask": torch.ones_like(old_lp)}


def run_ppo(ctx: dict, shape: str) -> list[dict]:
    args, device, ca = ctx["args"], ctx["device"], ctx["core_algos"]
    model = add_lora(build_model(shape, device, ctx["dtype"], ctx["attn"], args.seed))
    inner = model.get_base_model()  # the LoRA layers are injected in place: backbone + lm_head see them
    value_head = torch.nn.Linear(inner.config.hidden_size, 1, device=device, dtype=ctx["dtype"])
    trainable, frozen = matmul_params(model)
    trainable += sum(p.numel() for p in value_head.parameters())
    layers, hidden = shape_dims(model)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad] + list(value_head.parameters()),
                               device)
    b, p_len, m = args.ppo_batch, args.prompt_len, args.new_tokens
    vocab = inner.config.vocab_size
    lengths = [p_len + m] * b
    gen_flops = forward_flops(trainable + frozen, layers, hidden, lengths)
    score_flops = 2 * forward_flops(trainable + frozen, layers, hidden, lengths)  # policy+value, reference
    update_flops = train_flops(trainable, layers, hidden, lengths, frozen)
    variants = ["bare"] + (["alignflow"] if ca is not None else [])
    case = Case(device, ctx["peak"])
    torch.manual_seed(args.seed)
    for i in range(args.warmup_gen + args.gen_steps):
        record = i >= args.warmup_gen
        prompts = torch.randint(0, vocab, (b, p_len), device=device)
        model.eval()
        seq, _ = case.time("generate", partial(sample, model, prompts, m), b * m, gen_flops,
                           2 * (trainable + frozen) * sum(lengths), record)
        forward = partial(ppo_forward, inner, value_head, ca, seq, p_len)
        roll, _ = case.time("score", partial(ppo_score, model, forward), b * (p_len + m), score_flops,
                            4 * (trainable + frozen) * sum(lengths), record)
        model.train()
        for name in variants if i % 2 == 0 else list(reversed(variants)):
            case.time(f"update_{name}", partial(ppo_update, name, ca, forward, optimizer, roll),
                      b * (p_len + m), update_flops, (6 * trainable + 4 * frozen) * sum(lengths), record)
    gen, scoring = case.row("generate"), case.row("score")
    rows = []
    for name in variants:
        update = case.row(f"update_{name}")
        step_s = [g[0] + s[0] + u[0] for g, s, u in zip(case.samples["generate"], case.samples["score"],
                                                          case.samples[f"update_{name}"])]
        step_flops = gen_flops + score_flops + update_flops
        step_flops_6n = (2 + 4) * (trainable + frozen) * sum(lengths) + (6 * trainable + 4 * frozen) * sum(lengths)
        rows.append({
            "variant": name, "step_s": mean_ci(step_s),
            "tokens_per_s": mean_ci([b * (p_len + m) / s for s in step_s]),  # prompt+response tokens of experience
            "mfu": mean_ci([mfu(step_flops, s, ctx["peak"]) for s in step_s]),
            "mfu_6n": statistics.fmean(mfu(step_flops_6n, s, ctx["peak"]) for s in step_s),
            "generation_tokens_per_s": gen["tokens_per_s"], "generation_mfu": gen["mfu"]["mean"],
            "scoring_s": scoring["step_s"]["mean"], "update_tokens_per_s": update["tokens_per_s"],
            "update_mfu": update["mfu"]["mean"], "update_s": update["step_s"],
            "rollout": f"{b} prompts x ({p_len} prompt + {m} new tokens)", "trainable_params": trainable,
            "frozen_params": frozen, "peak_mem_gib": peak_memory_gib(device),
        })
    return rows


def sample(model, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Batched multinomial sampling (top_k=0: the full distribution), exactly `new_tokens` each: an
    EOS id exists (the last token) but min_new_tokens masks it until the end."""
    vocab = model.config.vocab_size
    return model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=0,
                          temperature=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          eos_token_id=vocab - 1, pad_token_id=0)


def run_generate(ctx: dict, shape: str) -> dict:
    args, device = ctx["args"], ctx["device"]
    model = build_model(shape, device, ctx["dtype"], ctx["attn"], args.seed).eval()
    trainable, frozen = matmul_params(model)
    layers, hidden = shape_dims(model)
    b, p_len, m = args.gen_batch, args.prompt_len, args.new_tokens
    vocab = model.config.vocab_size
    lengths = [p_len + m] * b
    case = Case(device, ctx["peak"])
    torch.manual_seed(args.seed)
    for i in range(args.warmup_gen + args.gen_steps):
        prompts = torch.randint(0, vocab, (b, p_len), device=device)
        case.time("generate", partial(sample, model, prompts, m), b * m, forward_flops(trainable + frozen, layers, hidden, lengths), 2 * (trainable + frozen) * sum(lengths),
            record=i >= args.warmup_gen)
    return case.row("generate", variant="hf", batch=f"{b} prompts x ({p_len} prompt + {m} new tokens)",
                    peak_mem_gib=peak_memory_gib(device))


def run_case(ctx: dict, shape: str, case: str) -> list[dict]:
    if case in ("sft", "sft_packed"):
        rows = [dict(run_sft(ctx, shape, v, packed=case == "sft_packed"), variant=v) for v in ("full", "lora")]
        if case == "sft_packed":
            isolated = ctx["isolation"]["packing_isolated"]
            how = ("varlen flash attention" if ctx["attn"] == "flash_attention_2" else
                   "sdpa with a block-diagonal mask (computes the masked full row)" if isolated else
                   "causal over the whole row: attends ACROSS sequence boundaries")
            for row in rows:
                row.update(packing_isolated=isolated, packed_attention=how)
        return rows
    if case == "dpo":
        return run_dpo(ctx, shape)
    if case == "ppo":
        return run_ppo(ctx, shape)
    return [run_generate(ctx, shape)]


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def load_core_algos():
    """alignflow.rlhf.core_algos from ./src (torch-only module; its package __init__s are empty)."""
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    try:
        from alignflow.rlhf import core_algos
    except Exception as exc:  # noqa: BLE001 - the report says why the alignflow variants are missing
        return None, f"unavailable: {type(exc).__name__}: {exc}"
    return core_algos, str(Path(core_algos.__file__).resolve().relative_to(ROOT))


def ratios(results: list[dict]) -> dict:
    """lora/full, packed/padded, alignflow/bare tokens/s ratios per shape."""
    out: dict[str, float] = {}
    ok = {(r["shape"], r["case"], r["variant"]): r for r in results if "error" not in r}

    def tps(row: dict, key: str = "tokens_per_s") -> float:
        return row[key]["mean"]

    for (shape, case, variant), row in ok.items():
        if variant == "lora" and (shape, case, "full") in ok:
            out[f"{shape}/{case}/lora_over_full"] = tps(row) / tps(ok[shape, case, "full"])
        if case == "sft_packed" and (shape, "sft", variant) in ok:
            out[f"{shape}/{variant}/packed_over_padded"] = tps(row) / tps(ok[shape, "sft", variant])
        if variant == "alignflow" and (shape, case, "bare") in ok:
            key = "update_tokens_per_s" if case == "ppo" else "tokens_per_s"
            out[f"{shape}/{case}/alignflow_over_bare"] = tps(row, key) / tps(ok[shape, case, "bare"], key)
    return {k: round(v, 3) for k, v in out.items()}


def goal(results: list[dict]) -> dict:
    rows = [r for r in results if r["shape"] == "1.5b" and r["case"] in ("sft", "sft_packed") and "error" not in r]
    if not rows:
        return {"target": "SFT MFU >= 0.4 at 1.5b", "met": None, "why": "no successful 1.5b sft row"}
    best = max(rows, key=lambda r: r["mfu"]["mean"])
    return {"target": "SFT MFU >= 0.4 at 1.5b", "met": best["mfu"]["mean"] >= 0.4,
            "best": f"{best['case']}/{best['variant']}", "best_mfu": round(best["mfu"]["mean"], 3),
            "all": {f"{r['case']}/{r['variant']}": round(r["mfu"]["mean"], 3) for r in rows}}


def fmt(stat: dict, scale: float = 1.0, digits: int = 0) -> str:
    mean = f"{stat['mean'] * scale:,.{digits}f}"
    return mean if stat["ci95"] is None else f"{mean} ± {stat['ci95'] * scale:,.{digits}f}"


def markdown(results: list[dict]) -> str:
    lines = ["| shape | case | variant | tokens/s (95% CI) | MFU | MFU 6N | step ms | peak GiB | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['case']} | {r.get('variant', '')} | error | | | | | {r['error'][:80]} |")
            continue
        note = []
        if r["case"] == "ppo":
            note.append(f"gen {fmt(r['generation_tokens_per_s'])} tok/s, update {fmt(r['update_tokens_per_s'])} tok/s")
        if "padding_frac" in r:
            note.append(f"padding {r['padding_frac']:.0%}")
        if r.get("packing_isolated") is False:
            note.append("NOT isolated: attends across packed boundaries")
        mem = "" if r.get("peak_mem_gib") is None else r["peak_mem_gib"]
        lines.append(f"| {r['shape']} | {r['case']} | {r['variant']} | {fmt(r['tokens_per_s'])} | "
                     f"{fmt(r['mfu'], digits=3)} | {r['mfu_6n']:.3f} | "
                     f"{fmt(r['step_s'], 1000, 1)} | {mem} | {'; '.join(note)} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=None, help="comma list of " + ", ".join(SHAPES) + " (default 0.5b,1.5b)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma list of " + ", ".join(CASES))
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per case (default 8)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2)")
    parser.add_argument("--gen-steps", type=int, default=None, help="timed rollouts in ppo/generate (default 3)")
    parser.add_argument("--batch", type=int, default=None, help="sequences (sft) / pairs (dpo) per step (default 8)")
    parser.add_argument("--seq-len", type=int, default=None, help="max length / packed row length (default 1024)")
    parser.add_argument("--ppo-batch", type=int, default=None, help="prompts per PPO rollout (default 16)")
    parser.add_argument("--gen-batch", type=int, default=None, help="prompts per generate call (default 32)")
    parser.add_argument("--prompt-len", type=int, default=None, help="prompt tokens in ppo/generate (default 128)")
    parser.add_argument("--new-tokens", type=int, default=None, help="generated tokens per prompt (default 128)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--dry-run", action="store_true", help="tiny shape, 2 steps per case: checks the bench runs")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no new case after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench/results/gpu.json"))
    args = parser.parse_args(argv)
    full = dict(shapes="0.5b,1.5b", steps=8, warmup=2, gen_steps=3, batch=8, seq_len=1024, ppo_batch=16,
                gen_batch=32, prompt_len=128, new_tokens=128)
    dry = dict(shapes="tiny", steps=2, warmup=1, gen_steps=2, batch=2, seq_len=64, ppo_batch=2, gen_batch=2,
               prompt_len=8, new_tokens=8)
    for key, value in (dry if args.dry_run else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.warmup_gen = 1
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.cases = [c for c in args.cases.split(",") if c]
    for name, allowed in (("shapes", SHAPES), ("cases", CASES)):
        if bad := [x for x in getattr(args, name) if x not in allowed]:
            parser.error(f"unknown {name}: {', '.join(bad)}")
    if args.steps < 1 or args.gen_steps < 1:
        parser.error("--steps and --gen-steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.dry_run and device.type == "cpu":
        torch.set_num_threads(1)  # tiny ops: more threads only add sync cost, badly so on a shared box
    attn = attn_implementation(device)
    import peft
    import transformers

    log(f"device {device}, {dtype}, attention {attn}; shapes {args.shapes}; cases {args.cases}")
    peak, peak_source = device_peak(device, dtype)
    core_algos, core_algos_source = load_core_algos()
    isolation = packing_isolation(device, dtype, attn)
    log(f"peak {peak / 1e12:.2f} TFLOP/s ({peak_source}); alignflow core_algos: {core_algos_source}; "
        f"packing isolated: {isolation['packing_isolated']}")
    ctx = {"args": args, "device": device, "dtype": dtype, "attn": attn, "peak": peak,
           "core_algos": core_algos, "isolation": isolation}
    report = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "dtype": str(dtype).removeprefix("torch."), "attn_implementation": attn, "peak_flops": peak,
        "peak_source": peak_source, "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                                 "peft": peft.__version__, "cuda": torch.version.cuda,
                                                 "python": platform.python_version()},
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "dry_run": args.dry_run,
        "settings": {k: getattr(args, k) for k in ("steps", "warmup", "gen_steps", "warmup_gen", "batch", "seq_len",
                                                    "ppo_batch", "gen_batch", "prompt_len", "new_tokens", "seed")},
        "lora": LORA, "alignflow_core_algos": core_algos_source, "packing": isolation,
        "padding_waste": padding_waste(args.seed, args.batch, args.seq_len),
        "mfu_convention": "PaLM model FLOPs of real tokens: train 6N + 12*L*h*l per token (frozen weights 4N: no "
                          "weight gradient), forward 2N + 4*L*h*l; N = matmul parameters; mfu_6n drops the attention "
                          "term; peak = dense bf16 of the device (peak_source)",
        "results": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = False
    for shape in args.shapes:
        for name in args.cases:
            if time.perf_counter() - T0 > args.budget_s:
                report["results"].append({"shape": shape, "case": name, "error": f"skipped: past --budget-s {args.budget_s}"})
                continue
            log(f"{shape} {name} ...")
            reset_memory(device)
            error = None
            try:
                rows = run_case(ctx, shape, name)
            except Exception as exc:  # noqa: BLE001 - OOM or otherwise: record it, keep going
                error, rows = f"{type(exc).__name__}: {str(exc)[:400]}", []
                failed = True
            reset_memory(device)  # after the except block: the traceback no longer pins the case's tensors
            for row in rows:
                report["results"].append({"shape": shape, "case": name, "attn": attn, **row})
                log(f"  {row['variant']}: {row['tokens_per_s']['mean']:,.0f} tok/s, MFU {row['mfu']['mean']:.3f}")
            if error:
                report["results"].append({"shape": shape, "case": name, "error": error})
                log(f"  error: {error}")
            out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive a time-out
    report["ratios"] = ratios(report["results"])
    report["goal"] = goal(report["results"])
    report["modules"] = {"heavy_loaded": [m for m in HEAVY_MODULES if m in sys.modules],
                         "alignflow_loaded": sorted(m for m in sys.modules if m.startswith("alignflow"))}
    report["wall_s"] = round(time.perf_counter() - T0, 1)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(markdown(report["results"]))
    print(f"\npeak {peak / 1e12:.3g} TFLOP/s ({peak_source}); attention {attn}; packing isolated: "
          f"{isolation['packing_isolated']}; alignflow core_algos: {core_algos_source}")
    waste = report["padding_waste"]
    print(f"padding waste ({waste['length_distribution']}): padded to longest {waste['padded_to_longest']:.0%}, "
          f"packed {waste['packed']:.0%}")
    for key, value in report["ratios"].items():
        print(f"{key} = {value}")
    g = report["goal"]
    verdict = "not evaluated" if g["met"] is None else ("MET" if g["met"] else "NOT met")
    print(f"goal {g['target']}: {verdict}" + (f" (best {g['best']} {g['best_mfu']})" if g["met"] is not None else ""))
    print(f"written: {out} ({report['wall_s']} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""bench/gpu.py: the --dry-run end to end (tiny shape on CPU), its FLOPs/MFU helpers by hand, and
that it stays self-contained (the GPU box has torch, transformers and peft, nothing of ours).

Only the shape of the report is checked: CPU timings of a tiny model say nothing about a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "gpu.py"
CASES = ("sft", "sft_packed", "dpo", "ppo", "generate")
HEAVY = ("ray", "mlflow", "dvc", "trl", "vllm")


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_flops_and_mfu_match_a_hand_computation():
    bench = load_bench()
    # N = 1000 matmul params, L = 2 layers, h = 8, two sequences of 3 and 5 tokens:
    # tokens = 8, sum of squared lengths = 9 + 25 = 34.
    assert bench.train_flops(1000, 2, 8, [3, 5]) == 6 * 1000 * 8 + 12 * 2 * 8 * 34 == 54_528
    # LoRA: 10 trained adapter params (6 per token), 1000 frozen (4 per token: no weight gradient).
    assert bench.train_flops(10, 2, 8, [3, 5], frozen=1000) == 6 * 10 * 8 + 4 * 1000 * 8 + 12 * 2 * 8 * 34 == 39_008
    assert bench.forward_flops(1000, 2, 8, [3, 5]) == 2 * 1000 * 8 + 4 * 2 * 8 * 34 == 18_176
    assert bench.mfu(54_528, 2.0, 54_528) == 0.5
    # Qwen2-1.5B shape: ~1.54e9 params, 2048-token sequence; 6N dominates, attention adds ~10%.
    per_token = bench.train_flops(1_543_714_304, 28, 1536, [2048]) / 2048
    assert per_token == pytest.approx(6 * 1_543_714_304 + 12 * 28 * 1536 * 2048)
    assert 1.1 < per_token / (6 * 1_543_714_304) < 1.12


def test_peak_table_and_t_interval():
    bench = load_bench()
    assert bench.peak_for_name("NVIDIA H200") == 989e12
    assert bench.peak_for_name("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_for_name("NVIDIA H100 PCIe") == 756e12
    assert bench.peak_for_name("NVIDIA A100-SXM4-80GB") == 312e12
    assert bench.peak_for_name("NVIDIA L4") == 121e12
    assert bench.peak_for_name("NVIDIA L40S") == 362e12  # not L4's figure
    assert bench.peak_for_name("Some Future GPU") is None
    stat = bench.mean_ci([1.0, 2.0, 3.0])  # sd 1, t(0.975, df=2) = 4.303
    assert stat["mean"] == 2.0 and stat["ci95"] == pytest.approx(4.303 / math.sqrt(3))
    assert bench.mean_ci([5.0])["ci95"] is None


def test_matmul_params_counts_a_tied_embedding_once():
    torch = pytest.importorskip("torch")
    bench = load_bench()
    model = bench.build_model("tiny", torch.device("cpu"), torch.float32, "sdpa", seed=0)
    total = sum(p.numel() for p in model.parameters())  # the tied LM head is the embedding
    assert bench.matmul_params(model) == (total, 0)
    lora = bench.add_lora(model)
    trainable, frozen = bench.matmul_params(lora)
    assert frozen == total and 0 < trainable < total


def test_importing_the_bench_pulls_in_nothing_heavy():
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('bench_gpu', {str(BENCH)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY + ('alignflow',)!r})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


@pytest.mark.slow
def test_dry_run_reports_every_case(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] in ("cpu", "cuda") and report["device_name"]
    assert report["peak_flops"] > 0 and report["peak_source"]
    rows = report["results"]
    assert not [r for r in rows if "error" in r]
    assert {r["case"] for r in rows} == set(CASES)
    for row in rows:
        assert row["tokens_per_s"]["mean"] > 0, row
        assert math.isfinite(row["mfu"]["mean"]) and 0 < row["mfu"]["mean"] < 1.5, row
        assert row["step_s"]["n"] >= 1
    variants = {(r["case"], r["variant"]) for r in rows}
    assert {("sft", "full"), ("sft", "lora"), ("sft_packed", "full"), ("sft_packed", "lora"),
            ("dpo", "bare"), ("dpo", "alignflow"), ("ppo", "bare"), ("ppo", "alignflow"), ("generate", "hf")} <= variants
    ppo = next(r for r in rows if r["case"] == "ppo")
    assert ppo["generation_tokens_per_s"]["mean"] > 0 and ppo["update_tokens_per_s"]["mean"] > 0
    assert report["packing"]["packing_isolated"] is True  # transformers 5 masks packed sdpa rows
    assert 0 <= report["padding_waste"]["packed"] < report["padding_waste"]["padded_to_longest"] < 1
    assert "tiny/dpo/alignflow_over_bare" in report["ratios"]
    assert report["goal"]["met"] is None  # no 1.5b in a dry run
    assert report["modules"]["heavy_loaded"] == []
    assert report["alignflow_core_algos"] == "src/alignflow/rlhf/core_algos.py"
    assert "| tiny | sft |" in proc.stdout

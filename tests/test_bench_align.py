"""bench/align_step.py end to end at a tiny size: the three step configs run on the same pairs.

Only the report's shape and the configs' equivalence are checked (timings at this size say nothing).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_align_step", ROOT / "bench" / "align_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_run_compares_the_three_step_configs(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w") as fh:
        for i in range(8):
            fh.write(json.dumps({"prompt": [{"role": "user", "content": f"Say a word about {i}." * (1 + i % 3)}],
                                 "chosen": [{"role": "assistant", "content": "A fine word. " * (1 + i % 4)}],
                                 "rejected": [{"role": "assistant", "content": "No."}]}) + "\n")
    out = tmp_path / "r.json"
    load_bench().main(["--model", "tiny:llama", "--pairs", str(pairs), "--steps", "2", "--out", str(out)])
    report = json.loads(out.read_text())
    res = report["results"]
    assert (res["micro"]["per_forward"], res["micro"]["forwards_per_step"]) == (1, 4)
    assert res["trl_default"]["gradient_checkpointing"] and not res["micro"]["gradient_checkpointing"]
    assert all(len(r["step_seconds"]) == 2 for r in res.values())
    # the same 4 pairs per step whatever the split: the first step's loss agrees
    first = [r["losses"][0] for r in res.values()]
    assert max(first) - min(first) < 1e-3, first
    assert set(report["ratios"]) == {"trl_default_over_micro", "no_ckpt_over_micro"}

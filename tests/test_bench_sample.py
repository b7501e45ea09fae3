"""bench/sample_throughput.py end to end at a tiny size: every engine runs, the report holds up.

Only the shape of the report is checked (timings on a shared CPU say nothing at this size).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None, reason="ctranslate2 is a project dependency"),
]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_sample_throughput", ROOT / "bench" / "sample_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_run_reports_hf_openvino_and_ct2(tmp_path):
    out = tmp_path / "r.json"
    load_bench().main(["--model", "tiny:llama", "--prompts", "3", "--max-new-tokens", "4", "--rounds", "2",
                       "--peak-seconds", "0.2", "--out", str(out)])
    report = json.loads(out.read_text())
    engines = report["engines"]
    for name in ("hf", "openvino", "ct2"):
        assert engines[name]["tok_s"] > 0
        assert 0.0 <= engines[name]["agreement"] <= 1.0
        assert len(engines[name]["rounds"]) == 2
        assert engines[name]["ratio_ci95"] is not None
    assert engines["hf"]["ratio"] == 1.0
    assert engines["hf"]["agreement"] == 1.0
    assert engines["openvino"]["agreement"] == 1.0  # float32: the same greedy tokens as HF
    assert report["goal_met"] in (True, False)  # two rounds: a CI, so a verdict
    assert report["matmul_peak_gflops"] > 0

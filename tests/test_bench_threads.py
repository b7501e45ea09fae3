"""bench/threads.py end to end at a tiny size: workers start, generate in step and report.

Only the shape of the report and the thread counts are checked: timings at this size say nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["hf", "openvino"])
def test_alone_and_two_processes_on_each_backend(tmp_path, backend):
    if backend == "openvino" and importlib.util.find_spec("openvino_genai") is None:
        pytest.skip("openvino-genai is a project dependency")
    out = tmp_path / "threads.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench/threads.py"), "--model", "tiny:llama", "--prompts", "2", "--tokens", "4",
         "--rounds", "1", "--backend", backend, "--cases", "alone-alignflow,two-alignflow", "--timeout", "300",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "ALIGNFLOW_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["backend"] == backend
    cases = report["cases"]
    assert [len(run) for run in cases["two-alignflow"]["runs"]] == [2]
    for name in ("alone-alignflow", "two-alignflow"):
        assert all(w["tokens"] > 0 and w["tokens_per_s"] > 0 for run in cases[name]["runs"] for w in run)
    if report["cores"] >= 2:  # the second process sees the first: each takes its share, not every core
        alone = cases["alone-alignflow"]["runs"][0][0]["threads"]
        assert all(w["threads"] < alone for w in cases["two-alignflow"]["runs"][0])

"""Killed right after the gate: the champion moves only once DVC has committed eval's outputs.

A real `alignflow repro` is SIGKILLed (its whole process group: alignflow, dvc, the eval stage)
as soon as eval has written its verdict (reports/gate.json); then the user re-runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.scenarios.helpers import champion, dvc

pytestmark = [pytest.mark.slow, pytest.mark.scenario]


# Runs a command in its own process group and, on SIGTERM, SIGKILLs the whole group and reaps
# every process of it (as a child subreaper): a killed DVC's lock names its PID, and DVC treats
# an unreaped (zombie) PID as alive, which a shell or init would have reaped for a user.
KILLABLE = """
import ctypes, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
proc = subprocess.Popen(sys.argv[1:], start_new_session=True)
signal.signal(signal.SIGTERM, lambda *_: os.killpg(proc.pid, signal.SIGKILL))
done_at = None
while True:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break  # every process of the run is gone and reaped
    if pid == proc.pid:
        done_at = time.time()
    elif pid == 0:
        if done_at and time.time() - done_at > 30:
            break  # something left the group and lives on: not ours to wait for
        time.sleep(0.05)
"""


def repro_until_verdict(ws: Path, env: dict, timeout: float = 900) -> None:
    """Start `alignflow repro`; SIGKILL all of it the moment eval's new gate.json exists."""
    gate = ws / "reports/gate.json"
    before = gate.stat().st_mtime_ns if gate.exists() else 0
    cmd = [sys.executable, "-c", KILLABLE, str(Path(sys.executable).parent / "alignflow"), "repro", "--name", "killed"]
    proc = subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if gate.exists() and gate.stat().st_mtime_ns != before:
                proc.send_signal(signal.SIGTERM)
                proc.wait(90)
                return
            if proc.poll() is not None:
                pytest.fail(f"alignflow repro ended (rc {proc.returncode}) before eval wrote a verdict")
            time.sleep(0.05)
        pytest.fail("eval wrote no verdict in time")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(90)


def test_kill_after_gate_keeps_champion_until_eval_is_committed(user_workspace, scenario_env):
    ws = user_workspace
    v1 = champion().version
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["align"]["learning_rate"] *= 1.5  # a new recipe: align and eval re-run
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    repro_until_verdict(ws, env)
    verdict = json.loads((ws / "reports/gate.json").read_text())
    assert verdict["candidate_version"] != v1 and verdict["champion_at_eval"] == v1
    # the kill lands within ~50 ms of the verdict, seconds before DVC could commit eval
    assert "eval" in dvc(ws, "status", "eval").stdout
    assert champion().version == v1
    out = subprocess.run([str(Path(sys.executable).parent / "alignflow"), "promote"], cwd=ws, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "not committed in dvc.lock" in out.stderr, out.stderr[-2000:]
    assert champion().version == v1

    # The user re-runs the pipeline: eval is committed, then promote applies the verdict.
    out = subprocess.run([str(Path(sys.executable).parent / "alignflow"), "repro", "--name", "rerun"], cwd=ws,
                         env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    verdict = json.loads((ws / "reports/gate.json").read_text())
    assert "eval" not in dvc(ws, "status", "eval").stdout
    now = champion()
    assert now.version == (verdict["candidate_version"] if verdict["passed"] else v1)
    if verdict["passed"]:
        assert now.tags["alignflow.dvc_lock.eval"] and now.tags["alignflow.eval_run_id"] == verdict["eval_run_id"]

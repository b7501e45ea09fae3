"""Faults around training stages: outages fail fast, finished work survives, nothing leaks or hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignflow import scratch
from alignflow.config import validate
from alignflow.training.launcher import MetricsSink, TrainingError, run_training

from ..conftest import free_port, kill_server, start_mlflow_server, stop_server
from .conftest import ROOT, smoke_params


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **extra}


def _dead_pid() -> int:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(out.stdout)


def _wait_for(pattern: str, root: Path, proc, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if list(root.glob(pattern)):
            return
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    pytest.fail(f"no {pattern} within {seconds} s")


def test_mlflow_unreachable_at_stage_start_fails_in_seconds_naming_the_uri(project):
    root, _ = project(chdir=False)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "components.sft"], cwd=root, capture_output=True, text=True,
                          env=_env(MLFLOW_TRACKING_URI=uri), timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2
    assert elapsed < 30, f"took {elapsed:.0f} s (MLflow's own retries take ~254 s)"
    error = proc.stderr.strip().splitlines()[-1]
    assert uri in error and "MLFLOW_TRACKING_URI" in error and "unreachable" in error
    assert "Traceback" not in proc.stderr


def test_metrics_logging_does_not_block_when_mlflow_dies(tmp_path, monkeypatch):
    """Steps logged after the server died return at once; close() waits a bounded time and
    reports which steps did not reach MLflow."""
    import mlflow

    server, uri = start_mlflow_server(tmp_path / "mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    mlflow.set_tracking_uri(uri)
    try:
        run_id = mlflow.MlflowClient().create_run("0").info.run_id
        sink = MetricsSink(run_id)
        sink.log({"loss": 1.0}, 1)
        assert sink.close(timeout=30) == []
        kill_server(server)
        started = time.monotonic()
        for step in range(2, 12):
            sink.log({"loss": 1.0 / step}, step)
        assert time.monotonic() - started < 2.0  # ~4 min per step before (blocking retries)
        lost = sink.close(timeout=3)
        assert lost == list(range(2, 12))
        assert [row["step"] for row in sink.history] == list(range(1, 12))  # the curve is whole
    finally:
        kill_server(server)


def test_checkpoints_survive_a_tracking_failure_and_the_rerun_only_redoes_the_logging(project, tmp_path):
    """The tracking server dies near the end of training: the stage fails with one line, keeps its
    checkpoints, and once the server is back a re-run resumes at the last step (no step trained
    again) and logs and registers the model."""
    root, _ = project({"sft.max_steps": 6, "sft.save_steps": 2, "sft.eval_steps": 100}, chdir=False)
    port = free_port()
    server, uri = start_mlflow_server(tmp_path / "mlflow", port)
    # a dead server: waiting 30 s for its queued metrics would only slow the test
    env = _env(MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", ALIGNFLOW_MLFLOW_FLUSH_S="3")
    cmd = [sys.executable, "-m", "components.sft"]
    try:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait_for(".ray_results/sft-*/hf/checkpoint-4/trainer_state.json", root, proc)
        kill_server(server)
        out = proc.communicate(timeout=300)[0].decode()
        assert proc.returncode == 2, out[-4000:]
        assert "unreachable" in out.splitlines()[-1] and "re-run resumes" in out.splitlines()[-1]
        assert list(root.glob(".ray_results/sft-*/hf/checkpoint-6/trainer_state.json")), "checkpoints were deleted"

        server, uri = start_mlflow_server(tmp_path / "mlflow", port)
        rerun = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-4000:]
        metrics = json.loads((root / "metrics" / "sft.json").read_text())
        assert metrics["resumed_from_step"] == 6 and metrics["steps"] == 6  # nothing trained twice
        assert metrics["registered_version"] >= 1
        assert not list(root.glob(".ray_results/sft-*"))  # removed once everything succeeded
    finally:
        stop_server(server)


def test_killed_run_is_marked_killed_and_the_resumed_curve_is_whole(project, tracking_env):
    """kill -9 sft after its step-2 checkpoint: the re-run's MLflow run links the killed one
    (now KILLED, not RUNNING) and both its CSV and MLflow curves start at step 1."""
    import mlflow

    root, _ = project({"sft.max_steps": 6, "sft.save_steps": 2, "sft.eval_steps": 100,
                       "sft.logging_steps": 1, "tracking.log_models": False}, chdir=False)
    cmd = [sys.executable, "-m", "components.sft"]
    proc = subprocess.Popen(cmd, cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(".ray_results/sft-*/hf/checkpoint-2/trainer_state.json", root, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    killed_id = json.loads(next(root.glob(".ray_results/sft-*/owner.json")).read_text())["run_id"]
    client = mlflow.MlflowClient()
    assert client.get_run(killed_id).info.status == "RUNNING"  # what kill -9 leaves behind

    rerun = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    metrics = json.loads((root / "metrics" / "sft.json").read_text())
    assert metrics["resumed_from_step"] == 2
    killed = client.get_run(killed_id)
    assert killed.info.status == "KILLED"
    new_id = killed.data.tags["alignflow.resumed_by"]
    assert client.get_run(new_id).data.tags["alignflow.resumed_from"] == killed_id
    steps = [int(line.split(",")[0]) for line in (root / "plots" / "sft_loss.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [m.step for m in client.get_metric_history(new_id, "loss")] == [1, 2, 3, 4, 5, 6]


def test_concurrent_runs_of_a_stage_are_refused(project):
    """A second `alignflow run sft` in the same workspace stops at once, naming the holder."""
    root, _ = project(chdir=False)
    with scratch.stage_lock("sft", root):
        proc = subprocess.run([sys.executable, "-m", "components.sft"], cwd=root, capture_output=True,
                              text=True, env=_env(), timeout=120)
    assert proc.returncode == 2
    assert f"pid {os.getpid()}" in proc.stderr and "already running" in proc.stderr
    assert not (root / "models").exists()


def test_staging_dirs_are_per_process_and_killed_ones_are_cleaned(tmp_path):
    target = tmp_path / "models" / "sft"
    target.parent.mkdir()
    killed = target.with_name(f".sft.staging.{_dead_pid()}")
    other = target.with_name(f".sft.staging.{os.getppid()}")  # a live process's: never touched
    for path in (killed, other):
        (path / "x").mkdir(parents=True)
    mine = scratch.staging_dir(target)
    assert mine.name == f".sft.staging.{os.getpid()}"
    assert not killed.exists() and other.exists()


def test_temp_dirs_of_killed_runs_are_cleaned_on_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = tmp_path / f"alignflow-{_dead_pid()}-model-abc"
    dead.mkdir()
    mine = scratch.temp_dir("model")
    removed = scratch.sweep_temp()
    assert removed == [dead] and not dead.exists() and mine.exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_use_gpu_without_a_gpu_fails_at_once(tmp_path, workers):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    params = validate(smoke_params({"ray.storage_path": str(tmp_path / "ray"), "ray.use_gpu": True,
                                    "ray.num_workers": workers, "sft.peft": "lora"}))
    started = time.monotonic()
    with pytest.raises(TrainingError, match=r"ray.use_gpu is true but this host has no CUDA device"):
        run_training(lambda config: None, {"x": 1}, params, "gpu")
    assert time.monotonic() - started < 5

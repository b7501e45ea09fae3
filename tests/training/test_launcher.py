"""The Ray Train launcher: local mode, a real 2-worker gloo group, resume after kill -9, bad losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignflow.config import validate
from alignflow.training.launcher import (
    LOOP_DIR_KEY,
    RUN_ID_ENV,
    NonFiniteLossError,
    TrainingError,
    config_digest,
    discard_finished_runs,
    resume_checkpoint,
    run_training,
)

from .conftest import ROOT, smoke_params


def _params(tmp_path, **overrides):
    return validate(smoke_params({"ray.storage_path": str(tmp_path / "ray"), **overrides}))


def _report_loop(config):
    import ray.train

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    for step in range(config["steps"]):
        ray.train.report({"step": step, "rank": rank})
    return {"rank": rank, "world": world, "run_id": os.environ.get(RUN_ID_ENV), "run_dir": config[LOOP_DIR_KEY]}


def test_local_mode_runs_in_process_and_returns_rank_zero_value(tmp_path):
    params = _params(tmp_path)
    result = run_training(_report_loop, {"steps": 3}, params, "unit", tracking_run_id="abc123")
    value = result.return_value
    assert value["rank"] == 0 and value["world"] == 1
    assert value["run_id"] == "abc123"  # the MLflow run id reaches the loop
    # The run dir is named by a digest of the loop config (same config -> same dir -> resume) ...
    assert Path(value["run_dir"]).parent.name == f"unit-{config_digest({'steps': 3})}"
    assert result.metrics == {"step": 2, "rank": 0}
    # ... kept until the stage says its outputs and tracking succeeded, then removed.
    run_dir = Path(value["run_dir"]).parent
    assert run_dir.exists()
    killed = run_dir.with_name("unit-0123456789")  # the same training, other params, killed
    alive = run_dir.with_name("unit-abcdefabcd")   # ... and one another process is still running
    for other, pid in ((killed, _dead_pid()), (alive, os.getpid())):
        other.mkdir()
        (other / "owner.json").write_text(json.dumps({"pid": pid}))
    discard_finished_runs()
    assert not run_dir.exists() and not killed.exists() and alive.exists()


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _failing_loop(config):
    raise NonFiniteLossError("loss is nan at step 3")


def test_training_errors_keep_their_message(tmp_path):
    with pytest.raises(NonFiniteLossError, match="step 3"):
        run_training(_failing_loop, {}, _params(tmp_path), "unit")


def test_resume_checkpoint_skips_a_checkpoint_cut_off_mid_save(tmp_path):
    import ray.train  # noqa: F401  (resume_checkpoint asks Ray first; outside a run it has none)
    from ray.train.v2._internal.execution.train_fn_utils import LocalTrainFnUtils, set_train_fn_utils

    set_train_fn_utils(LocalTrainFnUtils(experiment_name="t"))
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-4").mkdir()  # no trainer_state.json: killed while saving
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{}")
    assert resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()
    assert resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert resume_checkpoint(tmp_path / "nothing") is None


@pytest.mark.slow
def test_nan_loss_stops_the_stage_naming_the_step(project, tmp_path):
    import torch

    from alignflow.models import load_causal_lm
    from alignflow.training import sft

    model, tok = load_causal_lm("tiny:llama", device="cpu")
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")  # a corrupted checkpoint: every logit becomes NaN
    model.save_pretrained(tmp_path / "broken")
    tok.save_pretrained(tmp_path / "broken")
    _, params = project({"model.base": str(tmp_path / "broken"), "sft.max_steps": 3, "sft.save_steps": 100,
                         "sft.eval_steps": 100, "tracking.log_models": False})
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 1\b") as err:
        sft.run(params, None)
    assert "lower the learning rate" in str(err.value)
    assert not Path("models/sft").exists()  # no bad model is left behind


@pytest.mark.slow
def test_two_cpu_workers_train_data_parallel_with_gloo(project):
    """A real Ray worker group: 2 processes, torch.distributed (gloo), DDP inside HF Trainer."""
    import ray

    from alignflow.training import sft

    _, params = project({"ray.num_workers": 2, "ray.resources_per_worker": {"CPU": 1}, "sft.max_steps": 2,
                         "sft.save_steps": 2, "sft.eval_steps": 2, "tracking.log_models": False}, n_train=8)
    try:
        metrics = sft.run(params, None)
    finally:
        ray.shutdown()
    assert metrics["world_size"] == 2 and metrics["steps"] == 2
    # 2 steps x 2 workers x batch 2: the workers saw different halves of the data.
    assert metrics["train_examples"] == 8
    meta = json.loads(Path("models/sft/alignflow_model.json").read_text())
    assert meta["adapter"] is True and meta["base"] == "tiny:llama"
    assert sum(1 for _ in open("plots/sft_loss.csv")) == 3  # header + 2 steps


@pytest.mark.slow
def test_killed_stage_resumes_at_the_saved_step(project, tracking_env):
    """kill -9 the sft stage after its step-2 checkpoint; the re-run continues from step 2."""
    root, params = project({"sft.max_steps": 6, "sft.save_steps": 2, "sft.eval_steps": 100,
                            "tracking.log_models": False}, chdir=False)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "components.sft"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if list(root.glob(".ray_results/sft-*/hf/checkpoint-2/trainer_state.json")):
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint-2 within 240 s")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (root / "models" / "sft").exists()

    rerun = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    metrics = json.loads((root / "metrics" / "sft.json").read_text())
    assert metrics["resumed_from_step"] >= 2 and metrics["steps"] == 6
    assert (root / "models" / "sft" / "adapter_model.safetensors").exists()
    assert not list(root.glob(".ray_results/sft-*"))  # scratch removed after success


def test_oom_is_reported_with_the_params_to_lower(tmp_path):
    import torch

    def oom_loop(config):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(TrainingError, match=r"Lower sft\.per_device_batch_size \(now 4"):
        run_training(oom_loop, {"_alignflow_oom_hint": "sft.per_device_batch_size (now 4), sft.max_length (now 512)"},
                     _params(tmp_path), "unit")


def test_run_id_does_not_leak_into_the_next_local_run(tmp_path):
    params = _params(tmp_path)
    assert run_training(_report_loop, {"steps": 1}, params, "a", tracking_run_id="first").return_value["run_id"] == "first"
    assert os.environ.get(RUN_ID_ENV) is None
    assert run_training(_report_loop, {"steps": 1}, params, "b", tracking_run_id="second").return_value["run_id"] == "second"
    assert run_training(_report_loop, {"steps": 1}, params, "c").return_value["run_id"] is None


def test_worker_errors_are_unwrapped_from_ray_wrappers():
    from ray.train import ControllerError, WorkerGroupError

    from alignflow.training.launcher import _reraise

    wrapped = WorkerGroupError("worker 1 failed", {1: NonFiniteLossError("loss is nan at step 7"), 0: ValueError("x")})
    err = _reraise("sft", wrapped)  # rank 1's NaN explains rank 0's knock-on failure
    assert isinstance(err, NonFiniteLossError) and str(err) == "loss is nan at step 7"
    err = _reraise("sft", WorkerGroupError("failed", {1: OSError("disk full"), 0: ValueError("x")}))
    assert type(err) is TrainingError and str(err) == "sft: training failed: ValueError: x"
    err = _reraise("reward", ControllerError(RuntimeError("placement group timed out")))
    assert type(err) is TrainingError and str(err) == "reward: training failed: RuntimeError: placement group timed out"

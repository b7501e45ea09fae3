"""Run a training loop on Ray Train (docs/ARCHITECTURE.md, "Execution"; docs/TRAINING.md).

`run_training(train_loop, loop_config, params, name)` wraps `ray.train.torch.TorchTrainer`:
- scaling from `params.ray` (`num_workers: 0` = Ray Train V2 local mode: the loop runs in this
  process, no Ray started — what unit tests and 2-core laptops use; N = N data-parallel workers
  with gloo on CPU / NCCL on GPU); `RAY_ADDRESS` or `ray.address` selects a running cluster;
- `RunConfig(name, storage_path)`, where the name carries a digest of the loop config: re-running
  a killed stage with the same params and data resumes from its last checkpoint, a changed one
  starts fresh. The scratch dir (checkpoints) is removed only by `discard_finished_runs()`, which
  the stage calls once its outputs *and* tracking succeeded: a stage that failed while logging
  the model resumes at its last step and only redoes the logging;
- a resumed run links the MLflow run of the killed attempt (marked KILLED) and replays the
  checkpoint's log history, so the loss curve stays whole in MLflow and in plots/;
- `ray.use_gpu` is checked before anything starts: no CUDA device here, or no GPU in the cluster
  within `ray.gpu_wait_s`, is an error naming the param (Ray would retry the workers for ever);
- rank 0 alone talks to MLflow (the stage's run id travels in the workers' environment), through
  `MetricsSink`: asynchronous, so a slow or dead server never stalls training; every worker calls
  `ray.train.report` the same number of times (on each save, and once at the end);
- the loop's return value on rank 0 (its metrics) comes back as `Result.return_value`.

Inside a loop, HF/TRL trainers use `prepare_hf_trainer` (Ray's `prepare_trainer` +
`RayTrainReportCallback` + our finite-loss and MLflow callbacks) and `resume_checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignflow.config import Params

log = logging.getLogger(__name__)

RUN_ID_ENV = "ALIGNFLOW_MLFLOW_RUN_ID"
# How long rank 0 waits at the end of training for metrics still queued for MLflow
# (ALIGNFLOW_MLFLOW_FLUSH_S overrides it, e.g. where the server is known to be far or down).
FLUSH_TIMEOUT_S = 30
FLUSH_TIMEOUT_ENV = "ALIGNFLOW_MLFLOW_FLUSH_S"
# Passed to the workers so they resolve models, the tracking server and the hub the same way.
PROPAGATED_ENV = (
    "MLFLOW_TRACKING_URI", "ALIGNFLOW_CACHE", "HF_HUB_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM",
    "ALIGNFLOW_LOG_LEVEL", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", FLUSH_TIMEOUT_ENV,
)
OWNER_FILE = "owner.json"  # in a run dir: the process training it and its MLflow run
LOOP_ENV_KEY = "_alignflow_env"
LOOP_DIR_KEY = "_alignflow_run_dir"
LOOP_HINT_KEY = "_alignflow_oom_hint"


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can act on (bad loss, OOM, a failed worker)."""


class NonFiniteLossError(TrainingError):
    pass


# --- driver side ------------------------------------------------------------------------------


# Per-process paths (the pid-named staging dir): not part of what makes two runs the same.
VOLATILE_KEYS = ("staging_dir",)


def config_digest(loop_config: dict) -> str:
    """Same params + same data -> same digest -> same run name -> resume."""
    stable = {k: v for k, v in loop_config.items() if k not in VOLATILE_KEYS}
    blob = json.dumps(stable, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def scaling_config(params: Params):
    from ray.train import ScalingConfig

    ray_params = params.ray
    resources = dict(ray_params.resources_per_worker or {})
    if ray_params.num_workers == 0:
        return ScalingConfig(num_workers=0)
    if ray_params.use_gpu:
        resources.setdefault("GPU", 1)
    return ScalingConfig(num_workers=ray_params.num_workers, use_gpu=ray_params.use_gpu, resources_per_worker=resources)


def _ray_address(params: Params) -> str | None:
    return os.environ.get("RAY_ADDRESS") or params.ray.address


def check_local_gpu(params: Params) -> None:
    """`ray.use_gpu` on a host without CUDA: an error now, not workers Ray retries for ever."""
    if not params.ray.use_gpu or _ray_address(params):
        return  # a cluster's GPUs are checked once connected (wait_for_gpus)
    import torch

    if not torch.cuda.is_available():
        raise TrainingError(
            "ray.use_gpu is true but this host has no CUDA device (torch.cuda.is_available() is false): "
            "set ray.use_gpu=false, or ray.address / RAY_ADDRESS to a Ray cluster with GPUs"
        )


def wait_for_gpus(params: Params) -> None:
    """On a cluster, wait up to `ray.gpu_wait_s` for the GPUs the workers need (an autoscaler
    may be adding nodes), then fail naming what is there."""
    import ray

    per = (params.ray.resources_per_worker or {}).get("GPU", 1)
    need = per * max(1, params.ray.num_workers)
    deadline = time.monotonic() + params.ray.gpu_wait_s
    while (have := ray.cluster_resources().get("GPU", 0)) < need:
        if time.monotonic() >= deadline:
            raise TrainingError(
                f"ray.use_gpu: the Ray cluster ({_ray_address(params) or 'local'}) has {have:g} GPU(s), "
                f"{need:g} needed ({max(1, params.ray.num_workers)} workers x {per:g}); none appeared within "
                f"ray.gpu_wait_s={params.ray.gpu_wait_s:g} s"
            )
        time.sleep(2)


def _ensure_ray(params: Params, env: dict[str, str]) -> None:
    import ray

    if ray.is_initialized():
        return
    address = _ray_address(params)
    # Job-wide env only; the stage's run id goes per run (worker_runtime_env + the loop wrapper).
    job_env = {k: v for k, v in env.items() if k != RUN_ID_ENV}
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": job_env}, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # A local Ray just big enough for the requested workers (+1 CPU for the controller).
        per = params.ray.resources_per_worker or {}
        cpus = max(os.cpu_count() or 1, int(math.ceil(per.get("CPU", 1) * params.ray.num_workers)) + 1)
        ray.init(num_cpus=cpus, include_dashboard=False, **kwargs)


def _worker_env(tracking_run_id: str | None) -> dict[str, str]:
    env = {k: os.environ[k] for k in PROPAGATED_ENV if os.environ.get(k)}
    if tracking_run_id:
        env[RUN_ID_ENV] = tracking_run_id
        if "MLFLOW_TRACKING_URI" not in env:
            import mlflow

            env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    return env


def _root_cause(err: BaseException) -> BaseException:
    """The worker's own exception inside Ray's TrainingFailedError/WorkerGroupError wrappers."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        failures = getattr(err, "worker_failures", None)  # WorkerGroupError: {rank: exception}
        if isinstance(failures, dict) and failures:
            # Prefer an error we raised on purpose (NaN loss, OOM) over its knock-on effects elsewhere.
            ours = [failures[r] for r in sorted(failures) if isinstance(failures[r], TrainingError)]
            inner = ours[0] if ours else failures[min(failures)]
        else:
            inner = getattr(err, "controller_failure", None) or getattr(err, "cause", None) or err.__cause__
        if not isinstance(inner, BaseException):
            return err
        err = inner
    return err


def _reraise(name: str, err: BaseException):
    cause = _root_cause(err)
    message = str(cause).strip()
    # Ray may wrap the worker's exception in a RayTaskError subclass: keep our class and message.
    for cls in (NonFiniteLossError, TrainingError):
        if isinstance(cause, cls):
            return cls(message.splitlines()[-1] if "Traceback" in message else message)
    return TrainingError(f"{name}: training failed: {type(cause).__name__}: {message}")


def run_training(
    train_loop: Callable[[dict], Any],
    loop_config: dict,
    params: Params,
    name: str,
    *,
    tracking_run_id: str | None = None,
):
    """Run `train_loop(config)` on every worker; returns the `ray.train.Result`.

    `loop_config` must be JSON-serializable (its digest names the run). The loop finds its
    scratch dir (HF checkpoints) in `config["_alignflow_run_dir"]`. `tracking_run_id` (the
    stage's MLflow run, `tracker.run_id`) is exported to the workers as ALIGNFLOW_MLFLOW_RUN_ID.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    check_local_gpu(params)
    run_name = f"{name}-{config_digest(loop_config)}"
    storage = Path(params.ray.storage_path).expanduser().resolve()
    run_dir = storage / run_name
    env = _worker_env(tracking_run_id)
    config = {**loop_config, LOOP_ENV_KEY: env, LOOP_DIR_KEY: str(run_dir / "hf")}
    local = params.ray.num_workers == 0
    if not local:
        _ensure_ray(params, env)
        if params.ray.use_gpu:
            wait_for_gpus(params)
    resumed = (run_dir / "hf").exists() and any((run_dir / "hf").glob("checkpoint-*"))
    _claim_run_dir(run_dir, tracking_run_id)
    log.info("%s: %s on Ray Train (%s)%s", name, run_name,
             "local mode" if local else f"{params.ray.num_workers} workers", ", resuming" if resumed else "")
    trainer = TorchTrainer(
        _worker_entry(train_loop),
        train_loop_config=config,
        scaling_config=scaling_config(params),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=0),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": env} if not local else None,
        ),
    )
    try:
        result = trainer.fit()
    except TrainingError:
        raise
    except Exception as err:
        raise _reraise(name, err) from err
    _FINISHED_RUNS.append(run_dir)
    return result


_FINISHED_RUNS: list[Path] = []
_RUN_DIR_NAME = re.compile(r"^(?P<name>.+)-[0-9a-f]{10}$")


def _claim_run_dir(run_dir: Path, tracking_run_id: str | None) -> None:
    """Record this process and MLflow run as the run dir's owner. When it resumes a killed
    attempt, that attempt's MLflow run is marked KILLED and both are linked by tags."""
    record = run_dir / OWNER_FILE
    previous = json.loads(record.read_text()).get("run_id") if record.exists() else None
    run_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"pid": os.getpid(), "run_id": tracking_run_id}) + "\n")
    if not previous or not tracking_run_id or previous == tracking_run_id:
        return
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        if client.get_run(previous).info.status == "RUNNING":
            client.set_terminated(previous, status="KILLED")
        client.set_tag(previous, "alignflow.resumed_by", tracking_run_id)
        client.set_tag(tracking_run_id, "alignflow.resumed_from", previous)
    except MlflowException as err:  # e.g. the killed attempt tracked to another server
        log.warning("could not link the killed attempt's MLflow run %s: %s", previous, err)


def _owner_pid(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / OWNER_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def discard_finished_runs() -> list[Path]:
    """Remove the scratch dirs of the training runs this process finished, and those of the same
    training (other params) whose process was killed. Called by the stage once its outputs and
    tracking succeeded; a run dir of a live process is never touched."""
    from alignflow.scratch import pid_alive

    removed = []
    while _FINISHED_RUNS:
        run_dir = _FINISHED_RUNS.pop()
        shutil.rmtree(run_dir, ignore_errors=True)
        removed.append(run_dir)
        match = _RUN_DIR_NAME.match(run_dir.name)
        for stale in run_dir.parent.glob(f"{match['name']}-*") if match else []:
            same = _RUN_DIR_NAME.match(stale.name)
            pid = _owner_pid(stale)
            if same and same["name"] == match["name"] and (pid is None or not pid_alive(pid)):
                log.info("removing %s: checkpoints of a killed run with other params", stale)
                shutil.rmtree(stale, ignore_errors=True)
                removed.append(stale)
    return removed


def _worker_entry(train_loop: Callable[[dict], Any]) -> Callable[[dict], Any]:
    def entry(config: dict) -> Any:
        # Set for this run only: in local mode the loop shares the driver's environment, and the
        # next stage in the same process must not inherit this stage's MLflow run id.
        env = config.get(LOOP_ENV_KEY) or {}
        previous = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        if RUN_ID_ENV not in env:
            previous.setdefault(RUN_ID_ENV, os.environ.pop(RUN_ID_ENV, None))
        try:
            # A Ray Train worker is a process of its own that never went through stage_main: our
            # log format, and torch on the CPUs Ray assigned it (in local mode: what the stage chose).
            from alignflow import logs, threads

            logs.setup()
            threads.apply()
            return train_loop(config)
        except Exception as err:
            if _is_oom(err):
                raise TrainingError(
                    f"out of memory on the accelerator: {err}. Lower {config.get(LOOP_HINT_KEY) or 'the batch size or max length'}"
                ) from err
            raise
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    entry.__name__ = getattr(train_loop, "__name__", "train_loop")
    return entry


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "CUDA out of memory" in str(err)


# --- worker side ------------------------------------------------------------------------------


def world() -> tuple[int, int]:
    """(rank, world size) of this worker (0, 1 in local mode)."""
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def is_rank_zero() -> bool:
    return world()[0] == 0


def resume_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The HF checkpoint to resume from: Ray's latest reported one, else the last on local disk.

    On a cluster Ray restores the checkpoint from `storage_path`; in local mode (no Ray storage
    behind it) the HF trainer's own `checkpoint-N` dirs in the run dir are the record.
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        path = Path(checkpoint.path) / "checkpoint"
        if path.is_dir() and (path / "trainer_state.json").exists():
            return str(path)
    # HF writes trainer_state.json last: a checkpoint without it was cut off mid-save (kill -9).
    complete = [
        d for d in Path(run_dir).glob("checkpoint-*")
        if d.name.split("-")[-1].isdigit() and (d / "trainer_state.json").exists()
    ]
    if not complete:
        return None
    return str(max(complete, key=lambda d: int(d.name.split("-")[-1])))


class MetricsSink:
    """Rank 0's per-step metrics: kept in `history` (what plots/ draws) and sent to the stage's
    MLflow run asynchronously (MLflow's async logging), so a slow or dead tracking server never
    stalls training. `close()` waits at most FLUSH_TIMEOUT_S for the queue, then warns with the
    number of steps that did not reach MLflow (the curve in plots/ is whole either way)."""

    def __init__(self, run_id: str | None, rank_zero: bool = True, prefix: str = ""):
        self.run_id = run_id if rank_zero else None
        self.rank_zero = rank_zero
        self.prefix = prefix
        self.history: list[dict] = []
        self._pending: list[tuple[int, Any]] = []
        self._client = None
        self._started = time.perf_counter()

    def log(self, metrics: dict[str, Any], step: int, timed: bool = True) -> dict[str, float]:
        """`timed`: the history row also gets `elapsed_s` since the sink started (the x axis of
        accuracy against training time); replayed rows of an earlier attempt have none."""
        if not self.rank_zero:
            return {}
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        numeric = {k: v for k, v in numbers.items() if math.isfinite(v)}
        if len(numeric) < len(numbers):  # MLflow and the CSV take no NaN: say so rather than drop silently
            log.warning("step %d: not logged (non-finite): %s", step,
                        ", ".join(f"{k}={v}" for k, v in numbers.items() if k not in numeric))
        timing = {"elapsed_s": round(time.perf_counter() - self._started, 2)} if timed else {}
        self.history.append({"step": step, **numeric, **timing})
        self._send(numeric, step)
        return numeric

    def replay(self, rows: list[dict]) -> None:
        """The steps logged before a resume (a checkpoint's log history): into the history and
        into this MLflow run, so the curve starts at step 1 whichever attempt logged it."""
        for row in rows:
            if isinstance(row.get("step"), int):
                self.log({k: v for k, v in row.items() if k != "step"}, row["step"], timed=False)

    def _send(self, numeric: dict[str, float], step: int) -> None:
        if not self.run_id or not numeric:
            return
        import mlflow
        from mlflow.entities import Metric

        if self._client is None:
            self._client = mlflow.MlflowClient()
        now = int(time.time() * 1000)
        metrics = [Metric(f"{self.prefix}{k}", v, now, step) for k, v in numeric.items()]
        try:
            self._pending.append((step, self._client.log_batch(self.run_id, metrics=metrics, synchronous=False)))
        except Exception as err:  # tracking is best effort: never kill a training run over it
            log.warning("MLflow logging failed at step %s: %s", step, err)

    def close(self, timeout: float | None = None) -> list[int]:
        """Wait (bounded: `timeout`, else FLUSH_TIMEOUT_S or its env override) for the queued
        batches; returns the steps that were not logged."""
        from concurrent.futures import wait

        if timeout is None:
            timeout = float(os.environ.get(FLUSH_TIMEOUT_ENV) or FLUSH_TIMEOUT_S)

        # RunOperations keeps its futures private; MLflow's own combine helper reads them too.
        futures = {f: step for step, ops in self._pending for f in getattr(ops, "_operation_futures", [])}
        done, not_done = wait(list(futures), timeout=timeout) if futures else (set(), set())
        lost = sorted({futures[f] for f in not_done} | {futures[f] for f in done if f.exception() is not None})
        self._pending.clear()
        if lost:
            log.warning("%d of %d logged steps did not reach MLflow run %s (steps %s); the whole curve is in "
                        "the stage's plots/ CSV", len(lost), len(futures), self.run_id,
                        ", ".join(map(str, lost[:10])) + (" ..." if len(lost) > 10 else ""))
        return lost


def prepare_hf_trainer(trainer, run_id: str | None = None, metrics_prefix: str = "", name: str = "train"):
    """Ray's `prepare_trainer` + `RayTrainReportCallback` + loss guard + rank-0 MLflow logging
    and progress (`name` heads its lines)."""
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import PrinterCallback
    from transformers import ProgressCallback as HFProgressCallback

    from alignflow import logs
    from alignflow.training.callbacks import FiniteLossCallback, ProgressCallback, StepMetricsCallback

    logs.adopt_library_loggers()  # Ray Train configured its loggers when the run started
    rank_zero = is_rank_zero()
    steps = StepMetricsCallback(run_id or os.environ.get(RUN_ID_ENV), rank_zero, metrics_prefix)
    trainer.add_callback(FiniteLossCallback())
    trainer.add_callback(RayTrainReportCallback())
    trainer.add_callback(steps)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(HFProgressCallback)
    trainer.add_callback(ProgressCallback(name))
    trainer = prepare_trainer(trainer)
    trainer.step_metrics = steps  # read by the stage for its CSV
    return trainer


def train_or_restore(trainer, checkpoint: str | None):
    """`trainer.train(resume_from_checkpoint=checkpoint)`, except when the checkpoint is the
    final step (the stage failed after training, e.g. while logging): then the final weights
    are loaded and no step runs again (HF's resume would train one step past max_steps)."""
    from transformers.trainer_utils import TrainOutput

    state_file = Path(checkpoint or "") / "trainer_state.json"
    if not checkpoint or not state_file.exists():
        return trainer.train(resume_from_checkpoint=checkpoint)
    state = json.loads(state_file.read_text())
    if not 0 < trainer.args.max_steps <= int(state.get("global_step", 0)):
        return trainer.train(resume_from_checkpoint=checkpoint)
    from transformers import TrainerState

    log.info("%s is the final step: loading it, no step is trained again", checkpoint)
    trainer._load_from_checkpoint(checkpoint)  # the weights (adapter or full) the finished run saved
    trainer.state = TrainerState.load_from_json(str(state_file))
    steps = getattr(trainer, "step_metrics", None)
    if steps is not None and not steps.history:
        steps.sink.replay(trainer.state.log_history)
    # HF's training_loss is the mean loss over all steps: the mean of the logged ones is its estimate
    losses = [row["loss"] for row in trainer.state.log_history if isinstance(row.get("loss"), (int, float))]
    return TrainOutput(trainer.state.global_step, sum(losses) / len(losses) if losses else None, {})


def report_final(metrics: dict[str, Any]) -> None:
    """Every worker reports once at the end (Ray needs the same number of reports per worker)."""
    import ray.train

    ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

"""Run a training loop on Ray Train (docs/TRAINING.md).

`run_training(train_loop, loop_config, params, name)` wraps `ray.train.torch.TorchTrainer`:
- scaling from `params.ray` (`num_workers: 0` = Ray Train V2 local mode: the loop runs in this
  process, no Ray started — what unit tests and 2-core laptops use; N = N data-parallel workers
  with gloo on CPU / NCCL on GPU); `RAY_ADDRESS` or `ray.address` selects a running cluster;
- `RunConfig(name, storage_path)`, where the name carries a digest of the loop config: re-running
  a killed stage with the same params and data resumes from its last checkpoint, a changed one
  starts fresh; a finished run's scratch directory is removed;
- rank 0 alone talks to MLflow (the stage's run id travels in the workers' environment); every
  worker calls `ray.train.report` the same number of times (on each save, and once at the end);
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
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignflow.config import Params

log = logging.getLogger(__name__)

RUN_ID_ENV = "ALIGNFLOW_MLFLOW_RUN_ID"
# Passed to the workers so they resolve models, the tracking server and the hub the same way.
PROPAGATED_ENV = (
    "MLFLOW_TRACKING_URI", "ALIGNFLOW_CACHE", "HF_HUB_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM",
    "ALIGNFLOW_LOG_LEVEL",
)
LOOP_ENV_KEY = "_alignflow_env"
LOOP_DIR_KEY = "_alignflow_run_dir"
LOOP_HINT_KEY = "_alignflow_oom_hint"


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can act on (bad loss, OOM, a failed worker)."""


class NonFiniteLossError(TrainingError):
    pass


# --- driver side ------------------------------------------------------------------------------


def config_digest(loop_config: dict) -> str:
    """Same params + same data -> same digest -> same run name -> resume."""
    blob = json.dumps(loop_config, sort_keys=True, default=str)
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
    keep_run_dir: bool = False,
):
    """Run `train_loop(config)` on every worker; returns the `ray.train.Result`.

    `loop_config` must be JSON-serializable (its digest names the run). The loop finds its
    scratch dir (HF checkpoints) in `config["_alignflow_run_dir"]`. `tracking_run_id` (the
    stage's MLflow run, `tracker.run_id`) is exported to the workers as ALIGNFLOW_MLFLOW_RUN_ID.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    run_name = f"{name}-{config_digest(loop_config)}"
    storage = Path(params.ray.storage_path).expanduser().resolve()
    run_dir = storage / run_name
    env = _worker_env(tracking_run_id)
    config = {**loop_config, LOOP_ENV_KEY: env, LOOP_DIR_KEY: str(run_dir / "hf")}
    local = params.ray.num_workers == 0
    if not local:
        _ensure_ray(params, env)
    resumed = (run_dir / "hf").exists() and any((run_dir / "hf").glob("checkpoint-*"))
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
    if not keep_run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


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


def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class FiniteLossCallback(_trainer_callback_base()):
    """Stop with an error naming the step when the training loss is NaN/inf.

    HF's `logging_nan_inf_filter` would hide it from the logs while the weights go bad.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                raise NonFiniteLossError(
                    f"{key} is {value} at step {state.global_step} (lr {logs.get('learning_rate')}): "
                    "lower the learning rate, check the data for empty or masked-out examples, or use float32"
                )


class StepMetricsCallback(_trainer_callback_base()):
    """Rank 0: per-step metrics into the stage's MLflow run (by id, from any process) and a CSV."""

    def __init__(self, run_id: str | None, rank_zero: bool, prefix: str = ""):
        self.run_id = run_id if rank_zero else None
        self.rank_zero = rank_zero
        self.prefix = prefix
        self.history: list[dict] = []
        self._client = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.rank_zero or not logs:
            return
        numeric = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        self.history.append({"step": state.global_step, **numeric})
        if not self.run_id:
            return
        from mlflow.entities import Metric

        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient()
        import time

        now = int(time.time() * 1000)
        metrics = [Metric(f"{self.prefix}{k}", v, now, state.global_step) for k, v in numeric.items()]
        try:
            self._client.log_batch(self.run_id, metrics=metrics)
        except Exception as err:  # tracking is best effort: never kill a training run over it
            log.warning("MLflow logging failed at step %s: %s", state.global_step, err)


def prepare_hf_trainer(trainer, run_id: str | None = None, metrics_prefix: str = ""):
    """Ray's `prepare_trainer` + `RayTrainReportCallback` + loss guard + rank-0 MLflow logging."""
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    rank_zero = is_rank_zero()
    steps = StepMetricsCallback(run_id or os.environ.get(RUN_ID_ENV), rank_zero, metrics_prefix)
    trainer.add_callback(FiniteLossCallback())
    trainer.add_callback(RayTrainReportCallback())
    trainer.add_callback(steps)
    trainer = prepare_trainer(trainer)
    trainer.step_metrics = steps  # read by the stage for its CSV
    return trainer


def report_final(metrics: dict[str, Any]) -> None:
    """Every worker reports once at the end (Ray needs the same number of reports per worker)."""
    import ray.train

    ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

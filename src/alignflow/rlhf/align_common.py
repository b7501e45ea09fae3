"""What every align method shares: one set of curve columns, per-step MLflow logging, checkpoints.

Curve columns (plots/align_curve.csv, MLflow metrics with step), the same names for every method:
- reward: PPO/GRPO/RLOO — the reward model's mean score of the step's samples; DPO/KTO — the
  implicit reward margin β·(log-ratio chosen − log-ratio rejected) on the step's pairs;
- kl: PPO — mean sequence KL(policy‖reference) of the rollout; GRPO/RLOO/KTO — the trainer's KL
  estimate; DPO — mean log-ratio log π/π_ref over the step's chosen and rejected responses
  (an offline proxy: the responses were not sampled from the policy);
- entropy: mean per-token entropy of the policy on the step's responses;
- response_length: mean response tokens of the step (sampled, or the preference data's).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CURVE_COLUMNS = ["reward", "kl", "entropy", "response_length", "loss", "accuracy", "kl_coef", "learning_rate"]


def normalize_logs(logs: dict[str, Any], method: str, beta: float | None = None) -> dict[str, float]:
    """The standard curve keys from one log entry of a TRL trainer (the rest is kept as is)."""
    out: dict[str, float] = {}
    get = logs.get
    if method in ("dpo", "kto"):
        if get("rewards/margins") is not None:
            out["reward"] = get("rewards/margins")
        if get("rewards/accuracies") is not None:
            out["accuracy"] = get("rewards/accuracies")
        if method == "dpo" and beta and get("rewards/chosen") is not None and get("rewards/rejected") is not None:
            out["kl"] = (get("rewards/chosen") + get("rewards/rejected")) / (2 * beta)
        elif get("kl") is not None:
            out["kl"] = get("kl")
    else:  # grpo, rloo
        for key in ("reward", "kl"):
            if get(key) is not None:
                out[key] = get(key)
        if get("completions/mean_length") is not None:
            out["response_length"] = get("completions/mean_length")
    if get("entropy") is not None:
        out["entropy"] = get("entropy")
    return out


class MetricsLogger:
    """Rank 0: per-step metrics into the stage's MLflow run (by id, from any worker) and a history."""

    def __init__(self, rank_zero: bool, run_id: str | None = None):
        from alignflow.training.launcher import RUN_ID_ENV

        self.rank_zero = rank_zero
        self.run_id = (run_id or os.environ.get(RUN_ID_ENV)) if rank_zero else None
        self.history: list[dict] = []
        self._client = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.rank_zero:
            return
        numeric = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        self.history.append({"step": step, **numeric})
        log.info("step %d: %s", step, ", ".join(f"{k}={numeric[k]:.4g}" for k in CURVE_COLUMNS if k in numeric))
        if not self.run_id:
            return
        try:
            import mlflow
            from mlflow.entities import Metric

            if self._client is None:
                self._client = mlflow.MlflowClient()
            now = int(time.time() * 1000)
            self._client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in numeric.items()])
        except Exception as err:  # tracking is best effort: never kill a training run over it
            log.warning("MLflow logging failed at step %s: %s", step, err)


def report_checkpoint(checkpoint_dir: str | os.PathLike | None, metrics: dict[str, Any]) -> None:
    """Every worker reports (Ray needs the same count); rank 0 attaches the checkpoint dir."""
    import ray.train

    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if checkpoint_dir is None:
        ray.train.report(numeric)
        return
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(checkpoint_dir, Path(tmp, "checkpoint"))  # the layout resume_checkpoint reads
        ray.train.report(numeric, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def curve_callback(method: str, beta: float | None, lengths: "LengthMeter | None" = None):
    """A TrainerCallback adding the standard keys to every log entry (before it is recorded)."""
    from transformers import TrainerCallback

    class AlignCurveCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if lengths is not None:
                lengths.consume(args.gradient_accumulation_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is None or "loss" not in logs and "reward" not in logs and "rewards/margins" not in logs:
                return
            logs.update(normalize_logs(logs, method, beta))
            if lengths is not None and "response_length" not in logs:
                mean = lengths.take_mean()
                if mean is not None:
                    logs["response_length"] = mean

    return AlignCurveCallback()


class LengthMeter:
    """Wraps a data collator to record the mean completion length of each batch it builds.

    The dataloader collates ahead of the step that uses a batch, so lengths queue up (FIFO);
    each optimizer step consumes its micro-batches' entries, each log averages what was consumed.
    """

    def __init__(self, collator):
        self.collator = collator
        self.queued: list[float] = []
        self.consumed: list[float] = []

    def __call__(self, features):
        batch = self.collator(features)
        mask = batch.get("completion_mask") if isinstance(batch, dict) else None
        if mask is not None:
            # DPO stacks chosen then rejected: the mean covers both.
            self.queued.append(float(mask.sum(-1).float().mean()))
        return batch

    def consume(self, n: int) -> None:
        self.consumed += self.queued[:n]
        del self.queued[:n]

    def take_mean(self) -> float | None:
        if not self.consumed:
            return None
        mean = sum(self.consumed) / len(self.consumed)
        self.consumed.clear()
        return mean

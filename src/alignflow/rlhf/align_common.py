"""What every align method shares: one set of curve columns, per-step MLflow logging, checkpoints.

Curve columns (plots/align_curve.csv, MLflow metrics with step), the same names for every method:
- reward: PPO/GRPO/RLOO/ReST — the reward model's mean score of the step's samples; DPO/KTO — the
  implicit reward margin β·(log-ratio chosen − log-ratio rejected) on the step's pairs; ORPO —
  λ·(mean log-prob chosen − rejected); SimPO — β·(mean log-prob chosen − rejected);
- kl: PPO — mean sequence KL(policy‖reference) of the rollout; GRPO/RLOO/KTO — the trainer's KL
  estimate; DPO — mean log-ratio log π/π_ref over the step's chosen and rejected responses
  (an offline proxy: the responses were not sampled from the policy); ORPO/SimPO/ReST train
  without a reference and log none (eval measures KL to SFT for every method);
- entropy: mean per-token entropy of the policy on the step's responses;
- response_length: mean response tokens of the step (sampled, or the preference data's).

Non-finite guard: a NaN/inf reward, loss or gradient norm stops every method with an error that
names the quantity and the step, before the optimizer step (PPO) or before the checkpoint (TRL),
so no run exits 0 with a NaN policy (`check_finite`, `finite_guard_callback`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from alignflow.training.launcher import RUN_ID_ENV, MetricsSink

log = logging.getLogger(__name__)

CURVE_COLUMNS = ["reward", "kl", "entropy", "response_length", "loss", "accuracy", "kl_coef", "learning_rate"]
# Logged quantities a TRL run must never carry as NaN/inf (other keys may be undefined on a step).
GUARDED_LOG_KEYS = ("loss", "grad_norm", "reward", "kl", "rewards/margins")
NONFINITE_HINT = ("lower align.learning_rate, check the reward model's scores (models/reward) and the data "
                  "for empty responses, or use model.dtype float32")


def check_finite(where: str, **values) -> None:
    """Raise NonFiniteLossError naming every given quantity (number or tensor) that holds NaN/inf."""
    import torch

    bad = []
    for name, value in values.items():
        if value is None:
            continue
        t = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value, dtype=torch.float64).flatten()
        nonfinite = ~torch.isfinite(t)
        if nonfinite.any():
            first = int(nonfinite.nonzero()[0])
            count = f"{name} non-finite at {int(nonfinite.sum())} of {t.numel()} (first: index {first}, "
            bad.append(f"{name} = {t[first].item()}" if t.numel() == 1 else f"{count}{t[first].item()})")
    if bad:
        raise nonfinite_error(where, bad)


def nonfinite_error(where: str, problems: list[str]):
    from alignflow.training.launcher import NonFiniteLossError  # kept by the launcher through Ray's wrappers

    return NonFiniteLossError(f"{where}: {'; '.join(problems)} — stopped before it reaches a checkpoint; "
                              f"{NONFINITE_HINT}")


def normalize_logs(logs: dict[str, Any], method: str, beta: float | None = None) -> dict[str, float]:
    """The standard curve keys from one log entry of a TRL trainer (the rest is kept as is)."""
    out: dict[str, float] = {}
    get = logs.get
    if method in ("dpo", "kto", "orpo", "simpo"):
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


class MetricsLogger(MetricsSink):
    """Rank 0 of a hand-written loop (PPO): the launcher's MetricsSink (history + asynchronous
    MLflow logging) and the same progress as the TRL methods (alignflow.progress.StepProgress:
    a bar with step, reward/KL and ETA on a terminal, else a line every few steps).

    `total_steps` defaults to the steps the stage announced (ALIGNFLOW_PLANNED_STEPS)."""

    def __init__(self, rank_zero: bool, run_id: str | None = None, total_steps: int | None = None,
                 name: str = "align ppo"):
        super().__init__(run_id or os.environ.get(RUN_ID_ENV), rank_zero)
        self.total_steps, self.name = total_steps, name
        self.progress = None
        self._replaying = False
        self._ready = time.monotonic()  # the first step's start (after a resume: after the replay)
        if rank_zero:
            from alignflow import logs

            logs.adopt_library_loggers()  # Ray Train configured its loggers when the run started

    def log(self, metrics: dict[str, Any], step: int, timed: bool = True) -> dict[str, float]:
        numeric = super().log(metrics, step, timed)
        if self.rank_zero and not self._replaying:
            if self.progress is None:  # created at the first live step: a resumed run starts there
                from alignflow.progress import StepProgress, planned_total

                self.progress = StepProgress(self.name, self.total_steps or planned_total(), initial=step - 1,
                                             elapsed=time.monotonic() - self._ready)
            self.progress.update(step, numeric)
        return numeric

    def replay(self, rows: list[dict]) -> None:
        self._replaying = True  # steps of the killed attempt: history and MLflow, not progress
        try:
            super().replay(rows)
        finally:
            self._replaying = False
            self._ready = time.monotonic()

    def close(self, timeout: float | None = None) -> list[int]:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        return super().close() if timeout is None else super().close(timeout)


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


def finite_guard_callback():
    """A TrainerCallback that stops a TRL run on a NaN/inf loss, grad norm, reward or KL, or on a
    trainable weight gone non-finite: at the step's end and log, both before its checkpoint."""
    import torch
    from transformers import TrainerCallback

    class FiniteGuardCallback(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            params = [(n, p) for n, p in (model.named_parameters() if model is not None else []) if p.requires_grad]
            if params and not torch.stack([torch.isfinite(p).all() for _, p in params]).all():  # one sync
                bad = next(n for n, p in params if not torch.isfinite(p).all())
                raise nonfinite_error(f"step {state.global_step}", [f"trainable weight {bad} holds NaN/inf"])

        def on_log(self, args, state, control, logs=None, **kwargs):
            values = {k: v for k, v in (logs or {}).items() if k in GUARDED_LOG_KEYS and isinstance(v, (int, float))}
            check_finite(f"step {state.global_step}", **values)

    return FiniteGuardCallback()


def example_tokens(row: dict) -> int:
    """Tokens an offline example adds to its batch's longest sequence: its prompt plus its longer
    completion (TRL's trainers name the columns prompt_ids / chosen_input_ids / completion_ids …)."""
    ids = {k: len(v) for k, v in row.items() if k.endswith("ids") and isinstance(v, list)}
    prompt = max((n for k, n in ids.items() if k.startswith("prompt")), default=0)
    return prompt + max((n for k, n in ids.items() if not k.startswith("prompt")), default=0)


class LengthBucketSampler:
    """Batches of examples of similar length, in a random order: each epoch sorts the examples by
    length (random tie-breaks), cuts them into batches and shuffles the batches. A batch pads to
    little, while which examples a run of max_steps sees, and in what order, stays random at the
    batch level (transformers' LengthGroupedSampler instead runs each mega-batch longest first)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        import torch

        self.lengths, self.batch_size = lengths, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch

        ties = torch.rand(len(self.lengths), generator=self.generator).tolist()
        order = sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], ties[i]))
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for j in torch.randperm(len(batches), generator=self.generator).tolist():
            yield from batches[j]


def group_by_length(trainer, batch_size: int, seed: int) -> bool:
    """Give an offline trainer length-bucketed batches (LengthBucketSampler): a step costs in
    proportion to the tokens its batch pads to. False (the trainer keeps its random order) when
    the dataset is not tokenized yet."""
    lengths = [example_tokens(row) for row in trainer.train_dataset]
    if not any(lengths):
        return False
    sampler = LengthBucketSampler(lengths, batch_size, seed)
    trainer._get_train_sampler = lambda dataset=None: sampler
    return True


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
        import torch

        batch = self.collator(features)
        if not isinstance(batch, dict):
            return batch
        mask = batch.get("completion_mask")
        if mask is not None:
            # DPO stacks chosen then rejected: the mean covers both.
            self.queued.append(float(mask.sum(-1).float().mean()))
        elif "chosen_labels" in batch:  # ORPO/CPO: each side padded on its own, labels -100 off the completion
            lengths = torch.cat([(batch[f"{side}_labels"] != -100).sum(-1) for side in ("chosen", "rejected")])
            self.queued.append(float(lengths.float().mean()))
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

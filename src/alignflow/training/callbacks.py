"""The HF trainer callbacks every training loop adds (`launcher.prepare_hf_trainer`): the loss
guard, rank 0's per-step metrics (MLflow + the stage's CSV) and progress.

Its own module because subclassing TrainerCallback imports transformers (seconds): the launcher's
stage-side helpers, which every stage runs, data stages included, stay light.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from alignflow.training.launcher import MetricsSink, NonFiniteLossError


class FiniteLossCallback(TrainerCallback):
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



class StepMetricsCallback(TrainerCallback):
    """Rank 0: per-step metrics into the stage's MLflow run (by id, from any process) and a CSV."""

    def __init__(self, run_id: str | None, rank_zero: bool, prefix: str = ""):
        self.sink = MetricsSink(run_id, rank_zero, prefix)
        self.history = self.sink.history

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed trainer restored the checkpoint's log history: its steps belong to this curve.
        if state.global_step > 0 and not self.history:
            self.sink.replay([row for row in state.log_history if row.get("step", 0) <= state.global_step])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.sink.log(logs, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.sink.close()


class ProgressCallback(TrainerCallback):
    """Rank 0's progress (alignflow.progress.StepProgress): a bar with step, loss and ETA on a
    terminal, else a concise line every few steps. Replaces HF's Printer/ProgressCallback, which
    print every log entry as a dict."""

    def __init__(self, name: str):
        self.name = name
        self.progress = None

    def on_train_begin(self, args, state, control, **kwargs):
        from alignflow.progress import StepProgress

        if state.is_world_process_zero:
            self.progress = StepProgress(self.name, state.max_steps, initial=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        from alignflow import threads

        threads.rebalance()  # another alignflow process started or ended: take a fair share
        if self.progress is not None:  # HF's flow callback, first in the list, has set should_log
            self.progress.advance(state.global_step, log_follows=control.should_log)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs:
            self.progress.log(state.global_step, logs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.close()
            self.progress = None

"""What a stage says while it runs: a start line (what it will do, how big, how long it took last
time), an end line (the headline result), and training progress — a tqdm bar with step, loss and
ETA on a terminal, a concise line every few steps elsewhere (Airflow task logs, CI).

`describe` and `summary` are pure; `StepProgress` is what the HF trainer callback
(training.callbacks.ProgressCallback), our PPO loop (align_common.MetricsLogger) and batched generation use.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("alignflow")

# Set by the stage's start line: what a loop that is not told its length (PPO's MetricsLogger)
# shows as the total (the loop runs in the stage's process in Ray's local mode).
PLANNED_STEPS_ENV = "ALIGNFLOW_PLANNED_STEPS"
# Logged values shown with the progress when a step has them.
KEYS = ("loss", "reward", "kl")
EVAL_KEYS = ("eval_loss", "eval_accuracy", "eval_margin")
LINES_PER_RUN = 10  # non-TTY: about this many progress lines per run

# The end line's numbers, per stage (the first ones present).
HEADLINES = {
    "collect": ("conversations", "preferences", "prompts"),
    "synthesize": ("records", "seconds_per_record"),
    "clean": ("kept_fraction", "rejected"),
    "format": ("sft_train", "prefs_train", "prompts_train"),
    "sft": ("eval_loss", "train_loss"),
    "sample": ("responses", "tokens_per_s"),
    "rank": ("pairs_train", "mean_margin"),
    "reward": ("eval_accuracy", "eval_loss"),
    "align": ("reward_last", "kl_last"),
    "eval": ("winrate_judge_vs_sft", "kl_vs_sft", "gate_passed"),
}


# --- start and end lines ----------------------------------------------------------------------


def _workers(params) -> int:
    return max(1, params.ray.num_workers)


def _adapter(section) -> str:
    peft = getattr(section, "peft", "lora")
    if peft == "none":
        return "full fine-tune"
    if peft == "adalora":
        return f"AdaLoRA r{section.adalora.init_r}→{section.adalora.target_r}"
    if peft == "ia3":
        return "IA³"
    prompt_learning = {"prefix": "prefix tuning", "prompt": "prompt tuning", "ptuning": "P-tuning"}
    if peft in prompt_learning:
        return f"{prompt_learning[peft]}, {getattr(section, peft).num_virtual_tokens} virtual tokens"
    return f"{'QLoRA' if peft == 'qlora' else 'LoRA'} r{section.lora.r}"


def planned_steps(stage: str, params) -> int | None:
    """Optimizer steps a training stage will run (None: not a training stage, or set by epochs)."""
    section = {"sft": params.sft, "reward": params.reward, "align": params.align}.get(stage)
    if section is None or (stage == "align" and params.align.method == "best_of_n"):
        return None
    if stage == "align" and params.align.method == "rest":
        return params.align.rest.rounds
    return section.max_steps if section.max_steps > 0 else None


def _size(stage: str, params) -> str:
    if stage == "reward" and params.reward.backbone == "embedding":
        emb = params.reward.embedding
        return f"embedding backbone ({emb.encoder or 'all-MiniLM-L6-v2'}, ≤{emb.max_seq_length} tokens) + a linear head"
    if stage in ("sft", "reward"):
        section = getattr(params, stage)
        per_step = section.per_device_batch_size * section.gradient_accumulation_steps * _workers(params)
        unit = "conversations" if stage == "sft" else "pairs"
        steps = f"{section.max_steps} steps" if section.max_steps > 0 else f"{section.num_epochs:g} epoch(s)"
        base = params.model.base if stage == "sft" else params.reward.base
        return f"{steps} × {per_step} {unit}, {_adapter(section)} on {base}"
    if stage == "align":
        align = params.align
        method = align.method
        if method == "best_of_n":
            return f"best_of_n, n={align.best_of_n.n}, no training"
        if method == "rest":
            rest = align.rest
            return (f"rest, {rest.rounds} rounds × ({rest.k} samples × {align.max_prompts or 'all'} prompts, "
                    f"{rest.steps_per_round} SFT steps × {align.batch_size} kept), {_adapter(align)}")
        if method == "ppo":
            size = f"{align.ppo.rollout_batch_size * _workers(params)} prompts"
        elif method in ("grpo", "rloo"):
            size = f"{align.batch_size * _workers(params)} prompts × {getattr(align, method).num_generations} samples"
        else:
            unit = "examples" if method == "kto" else "pairs"
            size = f"{align.batch_size * align.grad_accum * _workers(params)} {unit}"
        return f"{method}, {align.max_steps} steps × {size}, {_adapter(align)}"
    if stage == "sample":
        s = params.sample
        extra = f" + {s.constraint_prompts} constraint prompts" if s.constraint_prompts else ""
        return f"{s.k} samples × {s.max_prompts or 'all'} prompts{extra}, ≤{s.max_new_tokens} new tokens"
    if stage == "rank":
        return f"judge {'+'.join(params.rank.judge)}, pairs {params.rank.pairs}"
    if stage == "eval":
        e = params.eval
        seeds = f" × {len(e.seeds)} seeds" if e.seeds and len(e.seeds) > 1 else ""
        return (f"≤{e.max_prompts} prompts + ≤{e.max_harmful_prompts} harmful + ≤{e.max_ifeval_prompts} constraint"
                f"{seeds}, judge {e.judge}, ≤{e.max_new_tokens} new tokens")
    if stage == "collect":
        return f"{len(params.collect.sources)} sources"
    if stage == "synthesize":
        syn = params.synthesize
        if not syn.enabled:
            return "off (synthesize.enabled: false)"
        methods = [f"self_instruct → {syn.self_instruct.target} tasks"] if syn.self_instruct.enabled else []
        methods += [f"evol_instruct {syn.evol_instruct.rounds} rounds × ≤{syn.evol_instruct.max_inputs}"] if syn.evol_instruct.enabled else []
        return f"{', '.join(methods)}, teacher {syn.teacher.backend}:{syn.teacher.model}"
    return ""


def format_duration(seconds: float) -> str:
    """45 s, 9 min, 1.5 h: an estimate's precision."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_s(stage: str, params, last: dict[str, Any] | None) -> float | None:
    """The stage's wall time at the last run's speed: its fixed part (loading, logging) plus the
    planned steps at its s_per_step; None without a comparable last run."""
    if not last or not isinstance(last.get("wall_time_s"), (int, float)):
        return None
    if stage == "align" and last.get("method") not in (None, params.align.method):
        return None  # another method: another speed
    if stage == "reward" and last.get("backbone") != params.reward.backbone:
        return None  # the LM backbone's steps and the encoder's embedding pass: no guide to each other
    if stage == "synthesize" and last.get("enabled", False) != params.synthesize.enabled:
        return None  # a disabled run writes empty files in seconds: no guide to a real one (and back)
    steps = planned_steps(stage, params)
    s_per_step, done = last.get("s_per_step"), last.get("steps")
    if steps and isinstance(s_per_step, (int, float)) and isinstance(done, int):
        trained = done - int(last.get("resumed_from_step") or 0)
        fixed = max(0.0, last["wall_time_s"] - s_per_step * trained)
        return fixed + s_per_step * steps
    return float(last["wall_time_s"])


def describe(stage: str, params, last_metrics: dict[str, Any] | None = None) -> str:
    """The start line: `align: dpo, 40 steps × 4 pairs, LoRA r16, ~9 min at the last run's speed`."""
    parts = [p for p in (_size(stage, params),) if p]
    estimate = estimate_s(stage, params, last_metrics)
    if estimate is not None:
        parts.append(f"~{format_duration(estimate)} at the last run's speed")
    return f"{stage}: " + (", ".join(parts) if parts else "starting")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary(stage: str, metrics: dict[str, Any]) -> str:
    """The end line: `sft done in 212 s: eval_loss 1.83`."""
    head = f"{stage} done in {metrics.get('wall_time_s', 0):.0f} s"
    shown = [f"{k} {_number(metrics[k])}" for k in HEADLINES.get(stage, ())
             if isinstance(metrics.get(k), (int, float))]
    return f"{head}: {', '.join(shown)}" if shown else head


def last_metrics(stage: str, metrics_dir: Path = Path("metrics")) -> dict[str, Any] | None:
    """metrics/<stage>.json of the previous run (None when absent or unreadable)."""
    try:
        data = json.loads((metrics_dir / f"{stage}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def announce(stage: str, params) -> None:
    """Log the start line; record the planned steps for loops that are not told them."""
    log.info(describe(stage, params, last_metrics(stage)))
    steps = planned_steps(stage, params)
    if steps:
        os.environ[PLANNED_STEPS_ENV] = str(steps)
    else:
        os.environ.pop(PLANNED_STEPS_ENV, None)


def planned_total() -> int | None:
    value = os.environ.get(PLANNED_STEPS_ENV, "")
    return int(value) if value.isdigit() else None


# --- progress ---------------------------------------------------------------------------------


def is_tty(stream=None) -> bool:
    """tqdm's `disable=None` rule: bars only when stderr (where they go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def log_every(total: int | None) -> int:
    """Steps between two progress lines: about LINES_PER_RUN lines per run."""
    return max(1, round(total / LINES_PER_RUN)) if total else LINES_PER_RUN


def progress_line(name: str, step: int, total: int | None, values: dict[str, float],
                  s_per_step: float | None, unit: str = "step") -> str:
    """`sft: step 4/12 · loss 1.83 · 7.5 s/step · ETA 01:00`."""
    from tqdm import tqdm

    parts = [f"{name}: {unit} {step}/{total}" if total else f"{name}: {unit} {step}"]
    parts += [f"{k} {v:.4g}" for k, v in values.items()]
    if s_per_step:
        parts.append(f"{s_per_step:.3g} s/{unit}")
        if total:
            parts.append(f"ETA {tqdm.format_interval(s_per_step * max(0, total - step))}")
    return " · ".join(parts)


class StepProgress:
    """One rank's progress through `total` steps, shown by rank 0 only (construct it there).

    On a terminal: a tqdm bar (step/total, elapsed<ETA, s/step, the latest `keys`). Elsewhere: a log
    line on the first step, every `every` steps and on the last. A step that will log (HF's
    `control.should_log`) waits for `log()` so its line carries that step's loss. Evaluation
    results (eval_loss, …) get a line of their own either way."""

    def __init__(self, name: str, total: int | None, initial: int = 0, *, tty: bool | None = None,
                 every: int | None = None, keys: tuple[str, ...] = KEYS, unit: str = "step", elapsed: float = 0.0):
        """`elapsed`: seconds already spent since `initial` (a loop that starts showing after a step)."""
        self.name, self.total, self.initial, self.unit, self.keys = name, total or None, initial, unit, keys
        self.tty = is_tty() if tty is None else tty
        self.every = every or log_every(self.total)
        self.step = initial
        self.values: dict[str, float] = {}
        self.started = time.monotonic() - elapsed
        self._due: int | None = None
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=initial, desc=name, unit=unit, dynamic_ncols=True)
            self.bar.start_t -= elapsed  # tqdm's own clock: its rate and ETA count that time too

    def s_per_step(self) -> float | None:
        done = self.step - self.initial  # this process's steps: a resumed run's rate is its own
        return (time.monotonic() - self.started) / done if done > 0 else None

    def line(self) -> str:
        return progress_line(self.name, self.step, self.total, self.values, self.s_per_step(), self.unit)

    def _is_due(self, step: int) -> bool:
        return step == self.initial + 1 or step % self.every == 0 or step == self.total

    def advance(self, step: int, log_follows: bool = False) -> None:
        if self.bar is not None:
            self.bar.update(step - self.step)
        self.step = step
        if self.bar is None and self._is_due(step):
            self._due = step
            if not log_follows:
                self._emit()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        shown = {k: float(metrics[k]) for k in self.keys if _is_number(metrics.get(k))}
        self.values.update(shown)
        if self.bar is not None and shown:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in self.values.items()})
        evals = {k: float(metrics[k]) for k in EVAL_KEYS if _is_number(metrics.get(k))}
        if evals:
            log.info("%s: eval at %s %d: %s", self.name, self.unit, step,
                     ", ".join(f"{k} {v:.4g}" for k, v in evals.items()))
        if self._due == step:
            self._emit()

    def update(self, step: int, metrics: dict[str, Any] | None = None) -> None:
        """A step and its metrics at once (a hand-written loop)."""
        self.advance(step, log_follows=metrics is not None)
        if metrics is not None:
            self.log(step, metrics)

    def _emit(self) -> None:
        self._due = None
        log.info("%s", self.line())

    def close(self) -> None:
        if self._due is not None:
            self._emit()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

"""What a stage prints while it runs (alignflow.logs, alignflow.progress): one log format, no
library chatter or FutureWarnings, start/end lines, progress with ETA — a bar on a terminal, a
concise line every few steps in a non-TTY log (Airflow, CI)."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import warnings
from pathlib import Path

import pytest
import yaml

from alignflow import logs, progress
from alignflow.config import validate

from .training.conftest import ROOT, conversation, smoke_params, write_jsonl

TIMESTAMP = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")
OTHER_TIMESTAMP = re.compile(r"\d{4}[-/]\d\d[-/]\d\d[ T]\d\d:\d\d")  # Ray's and MLflow's formats
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _params(**overrides):
    return validate(smoke_params(overrides))


# --- start and end lines ----------------------------------------------------------------------


def test_describe_says_what_a_stage_will_do_and_how_long_at_the_last_runs_speed():
    params = _params(**{"align.max_steps": 40, "align.batch_size": 4, "align.lora.r": 16})
    last = {"method": "dpo", "steps": 2, "resumed_from_step": 0, "s_per_step": 12.0, "wall_time_s": 64.0}
    # 40 s of loading and logging + 40 steps at 12 s
    assert progress.describe("align", params, last) == "align: dpo, 40 steps × 4 pairs, LoRA r16, ~9 min at the last run's speed"
    assert progress.describe("align", params, {**last, "method": "ppo"}) == "align: dpo, 40 steps × 4 pairs, LoRA r16"
    assert progress.describe("sft", params) == "sft: 4 steps × 2 conversations, LoRA r4 on tiny:llama"
    assert progress.describe("sample", params, {"wall_time_s": 38.6}) == (
        "sample: 2 samples × 8 prompts + 64 constraint prompts, ≤16 new tokens, ~39 s at the last run's speed")
    assert progress.describe("reward", _params(**{"reward.backbone": "embedding"})) == \
        "reward: embedding backbone (all-MiniLM-L6-v2, ≤128 tokens) + a linear head"
    embedding_run = {"backbone": "embedding", "embed_s": 80.3, "wall_time_s": 84.0}
    assert progress.describe("reward", _params(**{"reward.backbone": "embedding"}), embedding_run).endswith(
        "~84 s at the last run's speed")
    assert "last run's speed" not in progress.describe("reward", _params(**{"reward.backbone": "lm"}), embedding_run)
    assert progress.describe("clean", params) == "clean: starting"
    on = _params(**{"synthesize.enabled": True})
    assert "last run's speed" not in progress.describe("synthesize", on, {"enabled": False, "wall_time_s": 3.0})
    assert progress.describe("synthesize", on, {"enabled": True, "wall_time_s": 300.0}).endswith(
        "~5 min at the last run's speed")


def test_summary_is_the_headline_result():
    assert progress.summary("sft", {"wall_time_s": 212.4, "eval_loss": 1.8312, "train_loss": 1.9}) == (
        "sft done in 212 s: eval_loss 1.831, train_loss 1.9")
    assert progress.summary("reward", {"wall_time_s": 15.9, "eval_accuracy": 0.75}) == "reward done in 16 s: eval_accuracy 0.75"
    assert progress.summary("clean", {"wall_time_s": 3.0}) == "clean done in 3 s"


def test_last_metrics_reads_the_previous_run(tmp_path):
    assert progress.last_metrics("sft", tmp_path) is None
    (tmp_path / "sft.json").write_text('{"wall_time_s": 44.8}')
    assert progress.last_metrics("sft", tmp_path) == {"wall_time_s": 44.8}
    (tmp_path / "sft.json").write_text("{not json")
    assert progress.last_metrics("sft", tmp_path) is None


# --- progress ---------------------------------------------------------------------------------


def test_progress_line_has_step_values_rate_and_eta():
    assert progress.progress_line("sft", 4, 12, {"loss": 1.8312}, 7.5) == "sft: step 4/12 · loss 1.831 · 7.5 s/step · ETA 01:00"
    assert progress.progress_line("align ppo", 3, None, {}, None) == "align ppo: step 3"


def test_non_tty_progress_logs_every_few_steps_with_the_steps_loss(caplog, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    caplog.set_level(logging.INFO, logger="alignflow")
    bar = progress.StepProgress("sft", 40, tty=False)
    assert bar.every == 4
    for step in range(1, 41):
        now[0] += 10  # 10 s per step
        bar.advance(step, log_follows=True)
        bar.log(step, {"loss": 2.0 - step / 100, "learning_rate": 1e-4})
        if step == 20:
            bar.log(step, {"eval_loss": 1.5})
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    steps = [int(m.group(1)) for line in lines if (m := re.match(r"sft: step (\d+)/40", line))]
    assert steps == [1, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert "sft: step 4/40 · loss 1.96 · 10 s/step · ETA 06:00" in lines  # the loss of step 4, not step 3
    assert "sft: eval at step 20: eval_loss 1.5" in lines


def test_a_resumed_run_counts_its_own_rate(caplog, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    caplog.set_level(logging.INFO, logger="alignflow")
    bar = progress.StepProgress("align dpo", 10, initial=6, tty=False)
    now[0] = 30.0
    bar.update(7, {"loss": 0.5})
    assert caplog.records[-1].getMessage() == "align dpo: step 7/10 · loss 0.5 · 30 s/step · ETA 01:30"


# --- logging setup ----------------------------------------------------------------------------


def test_expected_load_report_is_only_the_new_reward_head():
    head = ("LlamaForSequenceClassification LOAD REPORT from: models/sft\n"
            "Key          | Status  | \n-------------+---------+-\nscore.weight | MISSING | \n\n"
            "Notes:\n- MISSING:\tthose params were newly initialized because missing from the checkpoint.")
    assert logs.expected_load_report(head)
    assert logs.expected_load_report(head.replace("| MISSING |", "| \x1b[31mMISSING\x1b[0m |"))
    other = head.replace("score.weight | MISSING | ", "score.weight | MISSING | \nmodel.norm.weight | MISSING | ")
    assert not logs.expected_load_report(other)
    assert not logs.expected_load_report("some other warning")


@pytest.fixture
def own_logging(monkeypatch):
    """setup() and adopt_library_loggers() change process-wide state: keep it to the test."""
    for name in (*logs.LIBRARIES, "ray.train", ""):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))  # a copy: they clear it in place
        monkeypatch.setattr(logger, "propagate", logger.propagate)
        monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.setattr(logs, "_configured_level", logs._configured_level)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.setattr(os, "environ", dict(os.environ))
    yield
    logging.captureWarnings(False)
    logging.Logger.manager._clear_cache()


def test_setup_puts_libraries_at_warning_unless_debug(own_logging, monkeypatch):
    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)
    logs.setup()
    assert logging.getLogger("ray").level == logging.WARNING
    assert logging.getLogger("mlflow").level == logging.WARNING and logging.getLogger("mlflow").propagate
    assert os.environ["MLFLOW_CONFIGURE_LOGGING"] == "false"
    monkeypatch.setenv(logs.LEVEL_ENV, "DEBUG")
    logs.setup()
    assert logging.getLogger("transformers").level == logging.DEBUG


def test_the_reward_heads_load_report_is_dropped_and_others_are_not(own_logging, caplog):
    logs.adopt_library_loggers()
    report = ("LlamaForSequenceClassification LOAD REPORT from: models/sft\nKey | Status | \n----+--------+-\n"
              "{key} | MISSING | \n\nNotes:\n- MISSING:\tthose params were newly initialized")
    with caplog.at_level(logging.WARNING):
        logging.getLogger("transformers.modeling_utils").warning(report.format(key="score.weight"))
        logging.getLogger("transformers.modeling_utils").warning(report.format(key="lm_head.weight"))
    assert "score.weight" not in caplog.text and "lm_head.weight | MISSING" in caplog.text


# --- a real stage, as Airflow and a terminal see it ---------------------------------------------


def _tiny_project(root: Path) -> Path:
    write_jsonl(root / "data/formatted/sft_train.jsonl", [conversation(i) for i in range(8)])
    write_jsonl(root / "data/formatted/sft_val.jsonl", [conversation(i) for i in range(100, 104)])
    raw = smoke_params({"sft.max_steps": 4, "sft.eval_steps": 2, "sft.save_steps": 2, "tracking.log_models": False})
    (root / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return root


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_DATASETS_DISABLE", "HF_HUB_DISABLE", "TQDM_"))}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own sqlite store
    env.pop(logs.LEVEL_ENV, None)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "true"  # its start/stop lines must not show either
    return env


@pytest.mark.slow
def test_non_tty_stage_log_is_one_format_without_warnings_or_repeats(tmp_path):
    root = _tiny_project(tmp_path / "proj")
    proc = subprocess.run([sys.executable, "-m", "components.sft"], cwd=root, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    out = proc.stdout
    (tmp_path / "sft.log").write_text(out)
    assert proc.returncode == 0, out[-4000:]
    lines = out.splitlines()
    assert all(TIMESTAMP.match(line) for line in lines), "\n".join(line for line in lines if not TIMESTAMP.match(line))
    assert not [line for line in lines if OTHER_TIMESTAMP.search(line)]
    assert "FutureWarning" not in out and "Reported metrics" not in out and "{'loss'" not in out
    assert "%|" not in out  # no frozen progress bars
    assert re.search(r"INFO alignflow: sft: 4 steps × 2 conversations, LoRA r4 on tiny:llama$", out, re.M)
    progress_lines = [line for line in lines if re.search(r"sft: step \d/4 · loss [\d.]+ · [\d.]+ s/step · ETA \d\d:\d\d$", line)]
    assert [re.search(r"step (\d)/4", line).group(1) for line in progress_lines] == ["1", "2", "3", "4"]
    assert sum("eval at step 2" in line for line in lines) == 1
    assert re.search(r"INFO alignflow: sft done in \d+ s: eval_loss [\d.]+, train_loss [\d.]+$", out, re.M)


def _run_in_pty(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    """Run `cmd` with a 120x40 pseudo-terminal as stdin/stdout/stderr; returns what it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "TERM": "xterm", "COLUMNS": "120"},
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-4000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_tty_stage_shows_a_progress_bar_with_eta(tmp_path):
    root = _tiny_project(tmp_path / "proj")
    screen = _run_in_pty([sys.executable, "-m", "components.sft"], root, _env())
    (tmp_path / "sft.tty").write_text(screen)
    # tqdm redraws the bar in place (\r): each state of it is one segment
    states = [ANSI.sub("", s).strip() for s in re.split(r"[\r\n]", screen)]
    bars = [s for s in states if re.match(r"sft: +\d+%\|.*\| \d/4 \[\d\d:\d\d<(\d\d:\d\d|\?), [^\]]*\]$", s)]
    assert bars, "\n".join(states[-40:])
    assert any(b.startswith("sft: 100%") and "loss=" in b for b in bars)
    assert not [s for s in states if re.search(r"sft: step \d/4 ·", s)]  # the bar replaces the log lines
    assert "FutureWarning" not in screen and "Reported metrics" not in screen


def test_ppo_metrics_logger_shows_progress_from_its_first_live_step(own_logging, caplog, monkeypatch):
    """Our PPO loop's logger: the same lines as the TRL methods; a resumed run's replayed steps are
    history, not progress, and its rate counts only its own steps."""
    from alignflow.rlhf.align_common import MetricsLogger

    monkeypatch.delenv("ALIGNFLOW_MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv(progress.PLANNED_STEPS_ENV, "4")  # what the stage announced
    caplog.set_level(logging.INFO, logger="alignflow")
    logger = MetricsLogger(rank_zero=True)
    logger.replay([{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.2}])
    for step in (3, 4):
        logger.log({"reward": step / 10, "kl": 0.01, "loss": 0.5, "entropy": 2.0}, step)
    logger.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("align ppo:")]
    assert [line.split(" · ")[:4] for line in lines] == [
        ["align ppo: step 3/4", "loss 0.5", "reward 0.3", "kl 0.01"],
        ["align ppo: step 4/4", "loss 0.5", "reward 0.4", "kl 0.01"],
    ]
    assert all(re.search(r"s/step · ETA \d\d:\d\d$", line) for line in lines)
    assert [row["step"] for row in logger.history] == [1, 2, 3, 4]


def test_library_bars_are_off_when_stderr_is_not_a_terminal(monkeypatch):
    """Library bars, TRL's reference log-prob pass among them, are off in a non-TTY stage log."""
    from alignflow import progress

    for key in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(key, "")  # recorded, so the test's own settings are undone afterwards
        monkeypatch.delenv(key)
    monkeypatch.setattr(progress, "is_tty", lambda: False)
    logs._quiet_progress_bars()
    # TRL reads TQDM_DISABLE when its bar starts (tqdm's own env defaults are read at its import)
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"

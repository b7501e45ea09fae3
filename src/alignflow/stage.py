"""The glue every component shares: parse the CLI, validate params, track, write metrics.

A stage is a function `run(params, tracker) -> metrics`; `stage_main` does the rest, so each
`components/<stage>.py` is a few lines (docs/ARCHITECTURE.md, "Stages and their contracts").
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import yaml

from alignflow import threads
from alignflow.config import Params, ParamsError, load_params
from alignflow.io import InputError, write_metrics
from alignflow.scratch import StageBusyError
from alignflow.tracking import TrackingUnavailable

StageFn = Callable[[Params, Any], dict[str, Any]]
log = logging.getLogger("alignflow")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`-S key.sub=value` pairs (YAML-typed values), as DVC's `exp run -S`."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ParamsError(f"-S {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def setup_logging() -> None:
    """One log format, libraries at WARNING, known warnings filtered (alignflow.logs)."""
    from alignflow import logs

    logs.setup()


def run_stage(stage: str, fn: StageFn, params: Params, system_metrics: bool | None = None) -> dict[str, Any]:
    """Run one stage under its workspace lock and its MLflow run.

    Training checkpoints are discarded only here, after the outputs *and* the tracking
    succeeded: a stage that fails while logging resumes at its last step when re-run."""
    from alignflow import progress, scratch, tracking
    from alignflow.training import launcher

    seed_everything(params.seed)
    started = time.perf_counter()
    with scratch.stage_lock(stage):
        scratch.sweep_temp()
        progress.announce(stage, params)  # what it will do, how big, how long at the last run's speed
        try:
            with tracking.stage_run(params, stage, system_metrics=system_metrics) as tracker:
                metrics = fn(params, tracker) or {}
                metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
                write_metrics(stage, metrics)
                tracker.log_summary(metrics)
        except Exception as err:
            tracking.raise_if_unreachable(params, err)  # the server went away: say so in one line
            raise
        launcher.discard_finished_runs()
    log.info("%s", progress.summary(stage, metrics))
    return metrics


def stage_main(stage: str, fn: StageFn, argv: list[str] | None = None, system_metrics: bool | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"alignflow run {stage}", description=f"Run the {stage} stage.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        # Before torch loads (stages import it lazily): OpenMP reads its settings then. Logged,
        # hence after setup_logging.
        threads.configure_env()
        threads.apply()
        params = load_params(args.params, parse_overrides(args.set))
        run_stage(stage, fn, params, system_metrics=system_metrics)
    except (ParamsError, InputError, StageBusyError, TrackingUnavailable, threads.ThreadsError) as err:
        print(f"alignflow {stage}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        threads.release()

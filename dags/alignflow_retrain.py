"""alignflow_retrain: the DVC pipeline (dvc.yaml) as an Airflow 3 DAG, one task per stage.

    start_run -> dvc_pull -> collect -> synthesize -> clean -> ... -> eval -> promote -> dvc_push -> finish_run

- Tasks and dependencies come from dvc.yaml (alignflow.orchestration.dvc_graph), so the DAG
  and `dvc repro` cannot disagree; each stage task runs `dvc repro --single-item <stage>` in
  the project checkout, with the backend in params.yaml `orchestration.backend`
  (local | docker | kubernetes).
- Runs on `orchestration.schedule` (default weekly) and whenever the raw-data asset
  (`orchestration.raw_data_asset`) gets an event: new data -> a retraining run.
- start_run makes collect's deps in dvc.yaml follow `collect.sources` (new data in any source
  re-runs the pipeline; unchanged data re-runs nothing) and opens one MLflow parent run per DAG
  run; every stage's child run hangs under it (ALIGNFLOW_PARENT_RUN_ID).
- promote runs `alignflow promote` after eval's outputs are committed to dvc.lock: the gate's
  verdict moves `champion` only then. finish_run is a teardown: it runs even when a stage failed, tags
  the parent with the dvc.lock hashes and closes it FINISHED or FAILED.
- dvc_pull / dvc_push sync the checkout with `orchestration.dvc_remote` (skipped when unset).

Parsing reads two small YAML files; nothing heavy is imported here (no MLflow, DVC, torch).
Environment: ALIGNFLOW_PROJECT_DIR = the directory with dvc.yaml and params.yaml (default:
the parent of this file's folder).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

from alignflow.config import load_params
from alignflow.orchestration import run_tracking
from alignflow.orchestration.dvc_graph import load_pipeline
from alignflow.orchestration.operators import START_TASK, OperatorFactory, task_defaults
from alignflow.orchestration.operators import PROMOTE_TASK
from alignflow.orchestration.schedule import build_schedule

PROJECT = Path(os.environ.get("ALIGNFLOW_PROJECT_DIR") or Path(__file__).resolve().parents[1])
PARAMS = load_params(PROJECT / "params.yaml")
ORCH = PARAMS.orchestration
PIPELINE = load_pipeline(PROJECT / "dvc.yaml")
if ORCH.stages is not None:
    PIPELINE = PIPELINE.select(ORCH.stages)
CHECKOUT = Path(ORCH.checkout or PROJECT)


@dag(
    dag_id=ORCH.dag_id,
    schedule=build_schedule(ORCH),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    # One checkout per run and `dvc repro` holds the repo lock: stages run one at a time.
    max_active_tasks=1,
    default_args=task_defaults(ORCH),
    tags=["alignflow", "rlhf", ORCH.backend],
    doc_md=__doc__,
)
def alignflow_retrain():
    @task(task_id=START_TASK, multiple_outputs=True)
    def start_run() -> dict[str, str]:
        context = get_current_context()
        run_tracking.sync_collect_deps(PARAMS, CHECKOUT)
        return run_tracking.start_parent_run(PARAMS, CHECKOUT, context["dag"].dag_id, context["run_id"])

    @task
    def finish_run(parent_run_id: str, tracking_uri: str) -> str:
        context = get_current_context()
        states = context["ti"].get_task_states(dag_id=context["dag"].dag_id, run_ids=[context["run_id"]])
        failed = run_tracking.failed_tasks(states.get(context["run_id"], {}))
        return run_tracking.finish_parent_run(parent_run_id, tracking_uri, CHECKOUT, failed)

    factory = OperatorFactory(PARAMS, CHECKOUT)
    on_failure = {"on_failure_callback": run_tracking.record_failed_stage}

    parent = start_run()
    pull = factory.dvc_sync("pull", **on_failure)
    push = factory.dvc_sync("push", **on_failure)
    stages = {
        # Root stages also run when dvc_pull was skipped (no remote configured).
        name: factory.stage(name, trigger_rule="none_failed" if not PIPELINE.upstream[name] else "all_success",
                            **on_failure)
        for name in PIPELINE.order()
    }
    for name, upstream in PIPELINE.upstream.items():
        for up in sorted(upstream):
            stages[up] >> stages[name]
    parent >> pull >> [stages[name] for name in PIPELINE.roots()]
    if PROMOTE_TASK in stages:
        raise ValueError(f"dvc.yaml has a stage named {PROMOTE_TASK!r}: the DAG's own task has that id")
    if "eval" in stages:
        promote = factory.promote(**on_failure)
        [stages[name] for name in PIPELINE.leaves()] >> promote >> push
    else:
        [stages[name] for name in PIPELINE.leaves()] >> push
    if not stages:  # a selection of no stages still pulls, pushes and closes the run
        pull >> push
    push >> finish_run(parent["run_id"], parent["tracking_uri"]).as_teardown(setups=parent)


retrain_dag = alignflow_retrain()

"""The MLflow parent run of one Airflow DAG run (docs/ARCHITECTURE.md, "Tracking" and "Orchestration").

The start task creates it and hands its id to every stage (ALIGNFLOW_PARENT_RUN_ID), so the
stages' child runs and rolled-up metrics land under one run per retraining; the failure
callback tags it with the stage that failed; the end task tags it with the dvc.lock hashes
(alignflow.tracking.finish_pipeline_run) and closes it FINISHED or FAILED.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from alignflow import tracking
from alignflow.config import Params

log = logging.getLogger(__name__)

TAG_DAG_ID = "airflow.dag_id"
TAG_DAG_RUN = "airflow.run_id"
TAG_BACKEND = "airflow.backend"
TAG_FAILED_STAGE = "alignflow.failed_stage"
TAG_FAILED_ERROR = "alignflow.failed_stage.error"
FAILED_STATES = {"failed", "upstream_failed"}


def resolve_tracking_uri(params: Params, checkout: Path) -> str:
    """tracking.tracking_uri, with the sqlite default placed in the checkout (not the
    Airflow worker's working directory)."""
    with contextlib.chdir(checkout):
        uri = tracking.tracking_uri(params)
    backend = params.orchestration.backend
    if backend != "local" and uri.startswith(("sqlite:", "file:")):
        raise ValueError(
            f"backend {backend}: MLflow tracking URI {uri!r} is not reachable from the stage containers; "
            "set MLFLOW_TRACKING_URI on the Airflow worker or tracking.tracking_uri to the MLflow server"
        )
    return uri


def sync_collect_deps(params: Params, checkout: Path) -> None:
    """collect's deps in the checkout's dvc.yaml follow collect.sources (see data/source_deps.py);
    skipped when this worker does not see the checkout (the stage containers check it then)."""
    from alignflow.data import source_deps

    dvc_yaml = Path(checkout) / "dvc.yaml"
    if dvc_yaml.exists() and source_deps.sync(params, dvc_yaml):
        log.info("%s: the deps of collect now follow collect.sources", dvc_yaml)


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _in_checkout(checkout: Path):
    """Run in the checkout when this worker sees it (sqlite default URI, git commit)."""
    return contextlib.chdir(checkout) if Path(checkout).is_dir() else contextlib.nullcontext()


def start_parent_run(params: Params, checkout: Path, dag_id: str, dag_run_id: str) -> dict[str, str]:
    """Create (or, on a retry of the start task, find) the parent run of this DAG run."""
    uri = resolve_tracking_uri(params, Path(checkout))
    client = _client(uri)
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    if experiment is not None:
        existing = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{TAG_DAG_RUN}` = '{dag_run_id}' and tags.`{tracking.TAG_PIPELINE}` = 'parent'",
            max_results=1,
        )
        if existing:
            run_id = existing[0].info.run_id
            log.info("reusing MLflow parent run %s of DAG run %s", run_id, dag_run_id)
            return {"run_id": run_id, "tracking_uri": uri}
    tags = {TAG_DAG_ID: dag_id, TAG_DAG_RUN: dag_run_id, TAG_BACKEND: params.orchestration.backend}
    with _in_checkout(checkout), _env("MLFLOW_TRACKING_URI", uri):
        run_id = tracking.start_pipeline_run(params, name=tracking.parent_label(params, f"{dag_id}-{dag_run_id}"),
                                             tags=tags)
    log.info("MLflow parent run %s (%s) for DAG run %s", run_id, uri, dag_run_id)
    return {"run_id": run_id, "tracking_uri": uri}


@contextlib.contextmanager
def _env(name: str, value: str):
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def failed_tasks(states: dict[str, Any]) -> list[str]:
    return sorted(task for task, state in states.items() if str(state) in FAILED_STATES)


def finish_parent_run(run_id: str, tracking_uri: str, checkout: Path, failed: list[str]) -> str:
    """Tag the parent (and its children) with the run's dvc.lock hashes and close it."""
    import mlflow

    checkout = Path(checkout)
    status = "FAILED" if failed else "FINISHED"
    if failed:
        _client(tracking_uri).set_tag(run_id, "alignflow.failed_tasks", ",".join(failed))
    if not (checkout / "dvc.lock").exists():
        log.warning("no %s (no stage ran, or this worker does not see the checkout): no dvc.lock tags",
                    checkout / "dvc.lock")
    mlflow.set_tracking_uri(tracking_uri)  # finish_pipeline_run uses the default client
    tracking.finish_pipeline_run(run_id, status=status, lock_path=str(checkout / "dvc.lock"))
    log.info("MLflow parent run %s: %s%s", run_id, status, f" (failed: {', '.join(failed)})" if failed else "")
    return status


def record_failed_stage(context) -> None:
    """on_failure_callback of every command task: which stage failed, in the log and on the
    parent run. A callback must not raise (Airflow would only log it), so errors are logged."""
    ti = context["ti"]
    error = str(context.get("exception") or "")[:500]
    log.error("alignflow: task %s failed after %s tries in DAG run %s: %s",
              ti.task_id, ti.try_number, context.get("run_id"), error)
    try:
        from alignflow.orchestration.operators import START_TASK

        run_id = ti.xcom_pull(task_ids=START_TASK, key="run_id")
        uri = ti.xcom_pull(task_ids=START_TASK, key="tracking_uri")
        if not run_id:
            log.error("no MLflow parent run to tag (the start task did not finish)")
            return
        client = _client(uri or os.environ.get("MLFLOW_TRACKING_URI", ""))
        client.set_tag(run_id, TAG_FAILED_STAGE, ti.task_id)
        client.set_tag(run_id, TAG_FAILED_ERROR, error or "(no exception message)")
    except Exception:  # noqa: BLE001 - see docstring
        log.exception("could not record the failed stage on the MLflow parent run")

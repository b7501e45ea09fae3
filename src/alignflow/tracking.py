"""The MLflow facade: one parent run per pipeline run, one child run per stage.

Who creates the parent:
- `alignflow repro` (what `make run` calls) and the Airflow DAG start it and pass its id to
  every stage in ALIGNFLOW_PARENT_RUN_ID;
- under `dvc exp run` (no such variable) the first stage creates it, tagged with DVC's
  experiment name, and the later stages find it by that tag;
- a stage run on its own (`python -m components.clean`) gets a top-level run.

Everything else in the project talks to MLflow through this module, so the tracking URI,
run naming, tags and registry conventions (ARCHITECTURE.md §6) live in one place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignflow.config import Params, flatten

log = logging.getLogger(__name__)

PARENT_ENV = "ALIGNFLOW_PARENT_RUN_ID"
TAG_STAGE = "alignflow.stage"
TAG_PIPELINE = "alignflow.pipeline"
TAG_DVC_EXP = "alignflow.dvc_exp"
# The sections every stage's run records besides its own.
COMMON_SECTIONS = ("profile", "seed", "model", "ray")
REGISTERED_NAMES = {"sft": "alignflow-sft", "reward": "alignflow-reward", "align": "alignflow-policy"}


def _mlflow():
    import mlflow  # imported lazily: it takes ~1 s and most helpers here don't need it

    return mlflow


def tracking_uri(params: Params | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if params is not None and params.tracking.tracking_uri:
        return params.tracking.tracking_uri
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def configure(params: Params) -> str:
    mlflow = _mlflow()
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(params.tracking.experiment)
    return uri


def git_commit(cwd: str | os.PathLike = ".") -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def dvc_stage_hashes(lock_path: str | os.PathLike = "dvc.lock") -> dict[str, str]:
    """A short digest of each stage's dvc.lock entry (its deps, params and outs hashes)."""
    import yaml

    path = Path(lock_path)
    if not path.exists():
        return {}
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    return {
        name: hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:12]
        for name, entry in stages.items()
    }


def stage_params(params: Params, stage: str) -> dict[str, Any]:
    dumped = params.model_dump(mode="json")
    keep = {k: dumped[k] for k in COMMON_SECTIONS if k in dumped}
    if stage in dumped:
        keep[stage] = dumped[stage]
    return flatten(keep)


def _log_params(params: dict[str, Any]) -> None:
    mlflow = _mlflow()
    # MLflow caps a param value at 6000 chars; long lists (sources) are summarized as JSON.
    clean = {k: (json.dumps(v) if not isinstance(v, (str, int, float, bool, type(None))) else v) for k, v in params.items()}
    clean = {k: (str(v)[:5000]) for k, v in clean.items()}
    items = list(clean.items())
    for i in range(0, len(items), 90):  # log_params takes at most 100 per batch
        mlflow.log_params(dict(items[i : i + 90]))


def _find_or_create_dvc_exp_parent(params: Params, exp_name: str) -> str:
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TAG_DVC_EXP}` = '{exp_name}' and tags.`{TAG_PIPELINE}` = 'parent'",
        max_results=1,
    )
    if runs:
        return runs[0].info.run_id
    run = client.create_run(
        experiment.experiment_id,
        run_name=f"pipeline-{exp_name}",
        tags={TAG_PIPELINE: "parent", TAG_DVC_EXP: exp_name, "mlflow.source.git.commit": git_commit() or ""},
    )
    return run.info.run_id


def parent_run_id(params: Params) -> str | None:
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    if os.environ.get("DVC_EXP_NAME"):
        return _find_or_create_dvc_exp_parent(params, os.environ["DVC_EXP_NAME"])
    return None


class StageRun:
    """The handle a stage gets: log metrics (also rolled up to the parent), files, models."""

    def __init__(self, run, stage: str, parent_id: str | None):
        self.run = run
        self.stage = stage
        self.parent_id = parent_id

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            _mlflow().log_metrics(numeric, step=step)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        """Final metrics: on this run and, prefixed with the stage name, on the parent."""
        self.log_metrics(metrics)
        if self.parent_id:
            client = _mlflow().MlflowClient()
            numeric = {
                f"{self.stage}.{k}": float(v)
                for k, v in flatten(metrics).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            for key, value in numeric.items():
                client.log_metric(self.parent_id, key, value)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            _mlflow().log_artifacts(str(path), artifact_path=artifact_path)
        elif path.exists():
            _mlflow().log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        _mlflow().set_tags({k: str(v) for k, v in tags.items()})


@contextlib.contextmanager
def stage_run(params: Params, stage: str, system_metrics: bool = False) -> Iterator[StageRun]:
    """Start the stage's child run (params, git/DVC tags); end it FAILED if the stage raises."""
    mlflow = _mlflow()
    configure(params)
    parent = parent_run_id(params)
    tags = {TAG_STAGE: stage, TAG_PIPELINE: "stage"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    lock_hash = dvc_stage_hashes().get(stage)
    if lock_hash:
        tags["dvc.lock.previous"] = lock_hash
    with mlflow.start_run(run_name=stage, tags=tags, log_system_metrics=system_metrics) as run:
        _log_params(stage_params(params, stage))
        yield StageRun(run, stage, parent)


def start_pipeline_run(params: Params, name: str = "pipeline", tags: dict[str, str] | None = None) -> str:
    """Create the parent run (not made the process's active run: stages may run in-process)."""
    mlflow = _mlflow()
    configure(params)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    all_tags = {TAG_PIPELINE: "parent", "mlflow.runName": name, **(tags or {})}
    commit = git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    run = client.create_run(experiment.experiment_id, run_name=name, tags=all_tags)
    flat = flatten(params.model_dump(mode="json"))
    items = [mlflow.entities.Param(k, str(v)[:5000]) for k, v in flat.items()]
    for i in range(0, len(items), 90):
        client.log_batch(run.info.run_id, params=items[i : i + 90])
    return run.info.run_id


@contextlib.contextmanager
def pipeline_run(params: Params, name: str = "pipeline", tags: dict[str, str] | None = None) -> Iterator[str]:
    """The parent run, exported to stages (child processes too) via ALIGNFLOW_PARENT_RUN_ID."""
    run_id = start_pipeline_run(params, name, tags)
    previous = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = run_id
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    finally:
        if previous is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = previous
        finish_pipeline_run(run_id, status=status)


def finish_pipeline_run(parent_id: str, status: str = "FINISHED", lock_path: str = "dvc.lock") -> None:
    """Tag the parent and its children with the dvc.lock hashes the run produced; end it."""
    client = _mlflow().MlflowClient()
    hashes = dvc_stage_hashes(lock_path)
    for stage, digest in hashes.items():
        client.set_tag(parent_id, f"dvc.lock.{stage}", digest)
    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=200
    )
    for child in children:
        stage = child.data.tags.get(TAG_STAGE)
        if stage in hashes:
            client.set_tag(child.info.run_id, "dvc.lock", hashes[stage])
    client.set_terminated(parent_id, status=status)


def register_model(model_uri: str, stage: str, aliases: tuple[str, ...] = ("candidate",), tags: dict[str, str] | None = None):
    """Register a logged model (`models:/…` or a logged-model URI) and point the aliases at it."""
    mlflow = _mlflow()
    name = REGISTERED_NAMES[stage]
    version = mlflow.register_model(model_uri, name, tags=tags)
    _set_aliases(name, version.version, aliases)
    return version


def register_artifacts(run_id: str, artifact_path: str, stage: str, aliases: tuple[str, ...] = ("candidate",),
                       tags: dict[str, str] | None = None):
    """Register a run's plain artifact directory (a model dir our loaders read) as a version.

    MLflow 3 resolves `runs:/<id>/<path>` in `register_model` to a *logged model*, which plain
    artifacts are not; a version created from the artifact URI works for both."""
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    name = REGISTERED_NAMES[stage]
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # exists already
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(name, source, run_id=run_id, tags=tags)
    _set_aliases(name, version.version, aliases)
    return version


def _set_aliases(name: str, version: str, aliases: tuple[str, ...]) -> None:
    client = _mlflow().MlflowClient()
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)

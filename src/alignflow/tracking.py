"""The MLflow facade: one parent run per pipeline run, one child run per stage.

Who creates the parent, and who closes it:
- `alignflow repro` (what `make run` calls) and the Airflow DAG start it, pass its id to every
  stage in ALIGNFLOW_PARENT_RUN_ID and close it FINISHED or FAILED when the pipeline ends;
- under a plain `dvc exp run` (no such variable) the first stage creates it, tagged with DVC's
  experiment name, the later stages find it by that tag, and each stage closes it again when it
  ends (FINISHED, or FAILED when the stage raised): no parent stays RUNNING after DVC exits;
- a stage run on its own (`python -m components.clean`) gets a top-level run.

The parent is what people compare in the MLflow UI, so it carries a short headline (the
params that define the recipe, PARENT_METRICS, datasets, the eval report); everything else
is on the stage runs, named `<stage> · <method>` so chart legends tell them apart.

Everything else in the project talks to MLflow through this module, so the tracking URI,
run naming, tags and registry conventions (docs/ARCHITECTURE.md, "Tracking") live in one place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignflow.config import Params, flatten
from alignflow.secrets import redact_secrets, redact_text

log = logging.getLogger(__name__)

PARENT_ENV = "ALIGNFLOW_PARENT_RUN_ID"
TAG_STAGE = "alignflow.stage"
TAG_PIPELINE = "alignflow.pipeline"
TAG_DVC_EXP = "alignflow.dvc_exp"
# The sections every stage's run records besides its own.
COMMON_SECTIONS = ("profile", "seed", "model", "ray")
TAG_PARENT_OWNER = "alignflow.parent_owner"  # "stages": opened and closed by the stages (plain dvc exp run)
REGISTERED_NAMES = {"sft": "alignflow-sft", "reward": "alignflow-reward", "align": "alignflow-policy"}

# What the parent run shows, per stage: the numbers that answer "which run aligned better?".
PARENT_METRICS = {
    "sft": ("eval_loss",),
    "reward": ("eval_accuracy",),
    "eval": tuple(
        [f"winrate_judge_vs_{b}{s}" for b in ("sft", "champion") for s in ("", "_ci_low", "_ci_high")]
        + ["winrate_rm_vs_sft", "kl_vs_sft", "kl_vs_sft_k1", "rm_accuracy_heldout", "policy_implicit_accuracy",
           "refusal_rate_harmful", "overrefusal_rate_benign", "length_ratio_vs_sft", "gate_passed",
           "ifeval_strict_policy", "ifeval_strict_sft", "ifeval_delta_vs_sft", "ifeval_delta_vs_sft_ci_low"]
    ),
}
# The params that define a recipe, shown on the parent (plus the chosen method's own section).
PARENT_PARAMS = (
    "profile", "seed", "model.base", "sft.peft", "sft.max_steps", "sft.learning_rate", "sample.k",
    "rank.judge", "reward.max_steps", "align.method", "align.learning_rate", "align.max_steps",
    "align.batch_size", "eval.judge", "eval.max_prompts", "synthesize.enabled", "selection.enabled",
    "selection.keep_fraction",
)
# Sections a stage reads besides its own (its run logs them too).
EXTRA_SECTIONS = {"format": ("selection",)}
# Sampled often enough that a stage of 30 s draws a curve (MLflow's default is every 10 s);
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, when set, overrides it.
SYSTEM_METRICS_INTERVAL_S = 5
# Which process owns a RUNNING run: a run whose process died (kill -9) is marked KILLED by the next.
TAG_HOST, TAG_PID = "alignflow.host", "alignflow.pid"
# MLflow's own defaults retry a dead server for ~4 minutes per call (7 retries, backoff 2);
# these bound it to seconds. Set the variables to override.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
HEALTH_TIMEOUT_S = 5


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached: fail before any work starts."""


def _mlflow():
    import mlflow  # imported lazily: it takes ~1 s and most helpers here don't need it

    return mlflow


def tracking_uri(params: Params | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if params is not None and params.tracking.tracking_uri:
        return params.tracking.tracking_uri
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def artifact_root(uri: str) -> str | None:
    """Where a new experiment of a local sqlite store keeps its artifacts: beside the database
    (MLflow's default is ./mlruns of whatever the working directory was, e.g. a scratch
    workspace that is later deleted)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None


def check_reachable(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """A tracking server answers its /health endpoint within `timeout` s, or TrackingUnavailable
    (one line naming the URI and where it came from). Local stores (sqlite, files) need no check."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (e.g. 401 behind auth): reachable
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.tracking_uri"
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} ({source}) is unreachable within {timeout:g} s: {reason}. "
            "Start it, or point MLFLOW_TRACKING_URI at a running one"
        ) from None


def raise_if_unreachable(params: Params, err: BaseException) -> None:
    """After a stage failed: when its tracking server is down, raise that (one line) instead of
    the client's retry traceback. A training stage's checkpoints are kept (see stage.run_stage)."""
    if isinstance(err, TrackingUnavailable):
        return
    try:
        check_reachable(tracking_uri(params))
    except TrackingUnavailable as down:
        raise TrackingUnavailable(f"{down} (lost during the stage: {type(err).__name__}); finished training "
                                  "is kept, and a re-run resumes from it and redoes the logging") from err


def configure(params: Params) -> str:
    mlflow = _mlflow()
    uri = tracking_uri(params)
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    name = params.tracking.experiment
    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name, artifact_location=artifact_root(uri))
        except mlflow.exceptions.MlflowException:
            pass  # created meanwhile by another stage/process
    mlflow.set_experiment(name)
    return uri


def stage_label(stage: str, params: Params) -> str:
    """`<stage> · <method>`: what distinguishes this stage's run from the same stage of another
    pipeline run (MLflow chart legends and tables show run names)."""
    method = {
        "sft": params.sft.peft, "reward": params.reward.peft, "rank": "+".join(params.rank.judge),
        "sample": f"k{params.sample.k}", "align": params.align.method, "eval": params.align.method,
    }.get(stage, params.profile)
    return f"{stage} · {method}"


def parent_label(params: Params, name: str | None = None) -> str:
    """`<name> · <align.method>`: a parent run is named after its DVC experiment (or pipeline)."""
    return f"{name or 'pipeline-' + params.profile} · {params.align.method}"


def parent_params(params: Params) -> dict[str, Any]:
    """The recipe as the stages read it (after -S): PARENT_PARAMS and the method's own section."""
    flat = flatten(params.model_dump(mode="json"))
    method = params.align.method
    keep = {k: flat[k] for k in PARENT_PARAMS if k in flat}
    keep.update({k: v for k, v in flat.items() if k.startswith(f"align.{method}.")})
    return keep


def headline_metrics(stage: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The parent's `<stage>.<metric>` keys from a stage's final metrics (see PARENT_METRICS)."""
    flat = flatten(metrics)
    return {
        f"{stage}.{k}": float(flat[k]) for k in PARENT_METRICS.get(stage, ())
        if isinstance(flat.get(k), (int, float)) and not isinstance(flat.get(k), bool)
    }


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
    for section in (stage, *EXTRA_SECTIONS.get(stage, ())):
        if section in dumped:
            keep[section] = dumped[section]
    return flatten(keep)


def _log_params(params: dict[str, Any]) -> None:
    mlflow = _mlflow()
    params = redact_secrets(params)
    # MLflow caps a param value at 6000 chars; long lists (sources) are summarized as JSON.
    clean = {k: (json.dumps(v) if not isinstance(v, (str, int, float, bool, type(None))) else v) for k, v in params.items()}
    clean = {k: (str(v)[:5000]) for k, v in clean.items()}
    items = list(clean.items())
    for i in range(0, len(items), 90):  # log_params takes at most 100 per batch
        mlflow.log_params(dict(items[i : i + 90]))


def _log_parent_params(client, run_id: str, params: Params) -> None:
    items = [_mlflow().entities.Param(k, _param_value(v)) for k, v in redact_secrets(parent_params(params)).items()]
    for i in range(0, len(items), 90):
        client.log_batch(run_id, params=items[i : i + 90])
    # The whole effective params.yaml, for what the headline leaves out.
    import yaml

    client.log_text(run_id, yaml.safe_dump(redact_secrets(params.model_dump(mode="json")), sort_keys=False,
                                           allow_unicode=True), "params.yaml")


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:5000]  # MLflow caps a param value at 6000 chars


def _find_or_create_dvc_exp_parent(params: Params, exp_name: str) -> str:
    """The parent of a plain `dvc exp run`: found by DVC's experiment name, else created by the
    first stage that runs (which logs the recipe: params.yaml already holds the -S values)."""
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
        run_name=parent_label(params, exp_name),
        tags={TAG_PIPELINE: "parent", TAG_DVC_EXP: exp_name, TAG_PARENT_OWNER: "stages",
              "mlflow.source.git.commit": git_commit() or ""},
    )
    _log_parent_params(client, run.info.run_id, params)
    return run.info.run_id


def parent_run_id(params: Params) -> str | None:
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    if os.environ.get("DVC_EXP_NAME"):
        return _find_or_create_dvc_exp_parent(params, os.environ["DVC_EXP_NAME"])
    return None


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class StageRun:
    """The handle a stage gets: log metrics (the headline also on the parent), files, datasets."""

    def __init__(self, run, stage: str, parent_id: str | None):
        self.run = run
        self.stage = stage
        self.parent_id = parent_id

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        numeric = _numeric(metrics)
        if numeric:
            _mlflow().log_metrics(numeric, step=step)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        """Final metrics on this run; the headline ones (PARENT_METRICS), prefixed with the stage
        name, and the pipeline's running wall time on the parent."""
        self.log_metrics(metrics)
        if not self.parent_id:
            return
        client = _mlflow().MlflowClient()
        headline = headline_metrics(self.stage, metrics)
        if isinstance(metrics.get("wall_time_s"), (int, float)):
            previous = client.get_run(self.parent_id).data.metrics.get("wall_time_s", 0.0)
            headline["wall_time_s"] = round(previous + float(metrics["wall_time_s"]), 2)
        if headline:
            client.log_batch(self.parent_id, metrics=[
                _mlflow().entities.Metric(k, v, int(time.time() * 1000), 0) for k, v in headline.items()])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None, parent: bool = False) -> None:
        """A file or directory on this run (and on the parent when `parent`)."""
        path = Path(path)
        if not path.exists():
            return
        client = _mlflow().MlflowClient()
        for run_id in [self.run_id, *([self.parent_id] if parent and self.parent_id else [])]:
            upload = client.log_artifacts if path.is_dir() else client.log_artifact
            upload(run_id, str(path), artifact_path=artifact_path)

    def log_dataset(self, path: str | os.PathLike, context: str, name: str | None = None) -> None:
        """A JSONL/JSON data file as an MLflow dataset input of this run and of the parent, with
        DVC's hash of the file (md5 of its bytes) as the digest: the same data, the same digest
        in both tools. A missing or unreadable file is skipped (logging must not fail a stage)."""
        try:
            dataset = jsonl_dataset(Path(path), name)
        except (OSError, ValueError) as err:
            log.warning("dataset %s not logged: %s", path, err)
            return
        mlflow = _mlflow()
        mlflow.log_input(dataset, context=context)
        if self.parent_id:
            from mlflow.entities import DatasetInput, InputTag

            entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
            mlflow.MlflowClient().log_inputs(self.parent_id, datasets=[entity])

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str, parent: bool = False) -> None:
        """Rows as an MLflow table (the UI's evaluation/artifact view compares them across runs)."""
        if not rows:
            return
        import pandas as pd

        frame = pd.DataFrame(rows)
        _mlflow().log_table(frame, artifact_file=artifact_file)
        if parent and self.parent_id:
            _mlflow().MlflowClient().log_table(self.parent_id, frame, artifact_file=artifact_file)

    def set_tags(self, tags: dict[str, Any]) -> None:
        _mlflow().set_tags({k: redact_text(str(v)) for k, v in tags.items()})


def file_md5(path: Path) -> str:
    """DVC 3's hash of a file: the md5 of its bytes."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def jsonl_dataset(path: Path, name: str | None = None):
    """An mlflow.data dataset of a JSON Lines file (nested values as JSON strings)."""
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    from alignflow.io import read_jsonl

    rows = [{k: (v if isinstance(v, (str, int, float, bool, type(None))) else json.dumps(v, ensure_ascii=False))
             for k, v in rec.items()} for rec in read_jsonl(path) if isinstance(rec, dict)]
    # "formatted/sft_train", "prefs/train": the stage dir keeps same-named splits apart
    return from_pandas(pd.DataFrame(rows), source=str(path), name=name or f"{path.parent.name}/{path.stem}",
                       digest=file_md5(path))


def owner_tags() -> dict[str, str]:
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}


def reap_orphans(client, experiment_id: str, filter_string: str) -> list[str]:
    """Mark KILLED the RUNNING runs (matching `filter_string`) whose process on this host is gone:
    a run killed with -9 never closes itself. Returns their ids."""
    from alignflow.scratch import pid_alive

    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}' and {filter_string}"
    reaped = []
    for run in client.search_runs([experiment_id], filter_string=query, max_results=100):
        pid = run.data.tags.get(TAG_PID, "")
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            client.set_tag(run.info.run_id, "alignflow.killed", f"process {pid} on {host} died while the run was open")
            client.set_terminated(run.info.run_id, status="KILLED")
            reaped.append(run.info.run_id)
    if reaped:
        log.info("marked %d run(s) of killed processes KILLED: %s", len(reaped), ", ".join(reaped))
    return reaped


def _set_parent_status(client, parent_id: str, status: str) -> None:
    """Open/close a stage-owned parent (plain `dvc exp run`): RUNNING while a stage runs, then
    FINISHED/FAILED, so it never stays RUNNING after DVC exits, whichever stage was last."""
    if status == "RUNNING":
        for key, value in owner_tags().items():
            client.set_tag(parent_id, key, value)
        client.update_run(parent_id, status="RUNNING")
    else:
        client.set_terminated(parent_id, status=status)


@contextlib.contextmanager
def stage_run(params: Params, stage: str, system_metrics: bool | None = None) -> Iterator[StageRun]:
    """Start the stage's child run (params, git/DVC tags); end it FAILED if the stage raises.

    System metrics (CPU, memory, GPU) are sampled every SYSTEM_METRICS_INTERVAL_S unless
    MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false (or `system_metrics=False`)."""
    mlflow = _mlflow()
    configure(params)
    parent = parent_run_id(params)
    client = mlflow.MlflowClient()
    owned = bool(parent) and client.get_run(parent).data.tags.get(TAG_PARENT_OWNER) == "stages"
    experiment_id = mlflow.get_experiment_by_name(params.tracking.experiment).experiment_id
    reap_orphans(client, experiment_id, f"tags.`{TAG_STAGE}` = '{stage}'")
    tags = {TAG_STAGE: stage, TAG_PIPELINE: "stage", **owner_tags()}
    if parent:
        tags["mlflow.parentRunId"] = parent
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    lock_hash = dvc_stage_hashes().get(stage)
    if lock_hash:
        tags["dvc.lock.previous"] = lock_hash
    if system_metrics is None:
        system_metrics = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() not in ("false", "0")
    if system_metrics:
        if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):  # the user's interval wins
            mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
        mlflow.set_system_metrics_samples_before_logging(1)
    if owned:
        _set_parent_status(client, parent, "RUNNING")
    status = "FAILED"
    try:
        with mlflow.start_run(run_name=stage_label(stage, params), tags=tags, log_system_metrics=system_metrics) as run:
            _log_params(stage_params(params, stage))
            yield StageRun(run, stage, parent)
        status = "FINISHED"
    finally:
        if owned:
            _set_parent_status(client, parent, status)


def start_pipeline_run(params: Params, name: str = "pipeline", tags: dict[str, str] | None = None) -> str:
    """Create the parent run (not made the process's active run: stages may run in-process)."""
    mlflow = _mlflow()
    configure(params)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    reap_orphans(client, experiment.experiment_id, f"tags.`{TAG_PIPELINE}` = 'parent'")
    all_tags = {TAG_PIPELINE: "parent", "mlflow.runName": name, **(tags or {})}
    commit = git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    run = client.create_run(experiment.experiment_id, run_name=name, tags=all_tags)
    _log_parent_params(client, run.info.run_id, params)
    return run.info.run_id


@contextlib.contextmanager
def pipeline_run(params: Params, name: str = "pipeline", tags: dict[str, str] | None = None) -> Iterator[str]:
    """The parent run, exported to stages (child processes too) via ALIGNFLOW_PARENT_RUN_ID.
    This process owns it (its pid is on the run): if it is killed, the next pipeline run marks
    the parent KILLED. (The DAG's parent outlives the task that created it: not owned.)"""
    run_id = start_pipeline_run(params, name, {**owner_tags(), **(tags or {})})
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

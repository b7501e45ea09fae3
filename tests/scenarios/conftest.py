"""The three workflows as a user performs them, on the smoke profile.

One smoke pipeline, a user's first `alignflow repro` on a project with a data source of its own
(data/user/batch.jsonl), is shared by the scenarios; each works in a copy of that workspace (git
repo, DVC cache, outputs), against one MLflow server of the scenarios' own, so the registry's
`champion` v1 is the base run's and nothing else's."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import ROOT, run_in, serve_mlflow, use_tracking_server
from tests.scenarios.helpers import USER_SOURCE, append_rows, user_rows

@pytest.fixture(scope="session")
def scenario_mlflow(tmp_path_factory):
    yield from serve_mlflow(tmp_path_factory, "scenario-mlflow")


@pytest.fixture
def scenario_env(scenario_mlflow, monkeypatch):
    return use_tracking_server(scenario_mlflow, monkeypatch)


@pytest.fixture(scope="session")
def base_pipeline(tmp_path_factory, scenario_mlflow):
    """`alignflow repro` once, as a user's first run (system metrics on, as they are by default)."""
    from alignflow.smoke import make_workspace, merged_params

    sources = merged_params(ROOT, "smoke")["collect"]["sources"] + [USER_SOURCE]
    base = tmp_path_factory.mktemp("scenarios") / "base"
    ws = make_workspace(base, "smoke",
                        # every SFT conversation kept: new data always reaches training
                        overrides={"collect.sources": sources, "format.max_records.sft_train": 1000,
                                   # the DAG pulls from and pushes to it (a local DVC remote)
                                   "orchestration.dvc_remote": str(base.parent / "dvc-remote")}, root=ROOT)
    append_rows(ws / USER_SOURCE["path"], user_rows(0, 12))
    run_in(ws, "git", "add", "-A")
    run_in(ws, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "user data")
    # system metrics every second: on a fast host a stage's run is open for only a few seconds
    env = {"MLFLOW_TRACKING_URI": scenario_mlflow, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "true",
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    run_in(ws, "alignflow", "repro", "--name", "first-run", env=env, timeout=1500)
    # and commits the results, as DVC's convention has it (experiments are compared with this baseline)
    run_in(ws, "git", "add", "-A")
    run_in(ws, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first run")
    return ws


@pytest.fixture
def user_workspace(base_pipeline, tmp_path):
    """A copy of the base workspace: this scenario's project checkout."""
    dest = tmp_path / "project"
    shutil.copytree(base_pipeline, dest, symlinks=True)
    return dest

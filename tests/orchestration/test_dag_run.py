"""`dag.test()`: the whole DAG with the local backend against a real Airflow metadata DB
(sqlite, migrated here) and a real MLflow server, in a scratch workspace.

Each run is a subprocess with its own AIRFLOW_HOME, so Airflow's config is the test's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_in

RUN_DAG = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("alignflow_retrain", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
run = module.retrain_dag.test()
from airflow.utils.session import create_session
with create_session() as session:
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)}
print("DAG_RESULT=" + json.dumps({"run_id": run.run_id, "state": str(run.state), "tasks": states}))
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    run = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return home


def dag_test(project: Path, airflow_home: Path, tracking_uri: str, timeout: int = 900) -> dict:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(project / "dags"),
        "MLFLOW_TRACKING_URI": tracking_uri,
    }
    env.pop("ALIGNFLOW_PROJECT_DIR", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUN_DAG, str(project / "dags" / "alignflow_retrain.py")],
                          cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("DAG_RESULT=")]
    assert proc.returncode == 0 and lines, proc.stdout[-6000:] + proc.stderr[-6000:]
    result = json.loads(lines[-1].removeprefix("DAG_RESULT="))
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["log"] = proc.stdout + proc.stderr
    return result


def parent_run(tracking_uri: str, dag_run_id: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("alignflow")
    [run] = client.search_runs([experiment.experiment_id], filter_string=f"tags.`airflow.run_id` = '{dag_run_id}'")
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    return run, children


# The whole DAG on the nine stages, with a DVC remote, is the retraining scenario
# (tests/scenarios/test_retraining.py): new data, a retrain, a quiet week.


MINI_DVC = {
    "stages": {
        "prepare": {"cmd": "echo ready > prepared.txt", "outs": ["prepared.txt"]},
        "broken": {"cmd": "echo 'simulated training crash' >&2; exit 3", "deps": ["prepared.txt"], "outs": ["never.txt"]},
    }
}


def test_failed_stage_is_recorded(airflow_home, tracking_env, tmp_path):
    """A stage fails: the callback tags the parent run with it, the teardown still closes the
    parent run (FAILED), and the DAG run fails."""
    project = tmp_path / "mini"
    (project / "dags").mkdir(parents=True)
    shutil.copy(ROOT / "dags" / "alignflow_retrain.py", project / "dags")
    (project / "dvc.yaml").write_text(yaml.safe_dump(MINI_DVC, sort_keys=False))
    (project / "params.yaml").write_text(yaml.safe_dump({"orchestration": {"retries": 0}}))
    run_in(project, "git", "init", "-q")
    run_in(project, sys.executable, "-m", "dvc", "init", "-q")

    result = dag_test(project, airflow_home, tracking_env, timeout=300)
    assert result["tasks"] == {
        "start_run": "success", "dvc_pull": "skipped", "prepare": "success", "broken": "failed",
        "dvc_push": "upstream_failed", "finish_run": "success",
    }, result["log"][-6000:]
    assert result["state"] == "failed"
    parent, _ = parent_run(tracking_env, result["run_id"])
    assert parent.info.status == "FAILED"
    assert parent.data.tags["alignflow.failed_stage"] == "broken"
    assert "non-zero exit code" in parent.data.tags["alignflow.failed_stage.error"]
    assert parent.data.tags["alignflow.failed_tasks"] == "broken,dvc_push"
    assert parent.data.tags["dvc.lock.prepare"]  # the stage that ran is in dvc.lock

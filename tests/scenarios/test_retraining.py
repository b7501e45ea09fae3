"""Workflow 1, scheduled retraining: new data lands in a source, the Airflow DAG retrains what
changed, the gate compares with the champion, promote moves it only after DVC committed eval;
a run on unchanged data re-runs nothing. Real DVC, a real MLflow server, `dag.test()` on a real
(migrated sqlite) Airflow metadata DB."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml

from alignflow import STAGES
from tests.orchestration.test_dag_run import airflow_home, dag_test, parent_run  # noqa: F401 (fixture)
from tests.scenarios.helpers import USER_SOURCE, append_rows, champion, dvc, user_rows

pytestmark = [pytest.mark.slow, pytest.mark.scenario, pytest.mark.airflow]


def failure_log(result: dict, name: str) -> str:
    """The whole DAG log as a CI artifact (reports/ci/), and the failed tasks' errors for the message."""
    from tests.conftest import ROOT

    path = ROOT / "reports/ci" / f"dag-{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result["log"])
    errors = [line for line in result["log"].splitlines() if "error" in line.lower() and "site-packages" not in line]
    return f"{result['tasks']}\nfull log: {path}\n" + "\n".join(errors[-40:])


def stage_runs(parent_id: str) -> list:
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("alignflow")
    return client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_first_run_is_tracked_registered_and_promoted(base_pipeline, scenario_env):
    """`alignflow repro` (what `make run` does): every stage, one readable parent, champion v1."""
    ws = base_pipeline
    for stage in STAGES:
        assert (ws / "metrics" / f"{stage}.json").exists(), f"no metrics for {stage}"
    ev = json.loads((ws / "metrics/eval.json").read_text())
    for key in ("winrate_rm_vs_sft", "winrate_judge_vs_sft", "kl_vs_sft", "refusal_rate_harmful", "gate_passed",
                "ifeval_strict_policy", "ifeval_strict_sft", "ifeval_delta_vs_sft_ci_low"):
        assert key in ev, key
    assert ev["n_ifeval_prompts"] > 0  # format's held-out constraint prompts reached eval
    assert (ws / "reports/eval.html").stat().st_size > 1000
    assert "Running stage" not in dvc(ws, "repro").stdout  # everything cached

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("alignflow")
    [parent] = client.search_runs([exp.experiment_id], "attributes.run_name = 'first-run · dpo'")
    assert parent.info.status == "FINISHED" and parent.data.params["align.method"] == "dpo"
    # A short headline, the rest on the stage runs (MLflow's metric picker stays readable).
    assert {"eval.winrate_judge_vs_sft", "eval.winrate_judge_vs_sft_ci_low", "eval.kl_vs_sft",
            "eval.gate_passed", "reward.eval_accuracy", "wall_time_s"} <= set(parent.data.metrics)
    assert len(parent.data.metrics) <= 25 and len(parent.data.params) <= 40
    children = stage_runs(parent.info.run_id)
    assert sorted(c.data.tags["alignflow.stage"] for c in children) == sorted(STAGES)
    names = {c.data.tags["alignflow.stage"]: c.info.run_name for c in children}
    assert names["align"] == "align · dpo" and names["eval"] == "eval · dpo" and names["sft"] == "sft · lora"
    assert all(c.info.status == "FINISHED" and "dvc.lock" in c.data.tags for c in children)
    # Datasets with DVC's hash, the eval table and report on the parent.
    inputs = {d.dataset.name for d in client.get_run(parent.info.run_id).inputs.dataset_inputs}
    assert {"formatted/sft_train", "prefs/train", "formatted/prompts_test"} <= inputs, inputs
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id, "eval")}
    assert {"eval/eval.html", "eval/generations.json"} <= parent_files
    # System metrics draw a curve on stages that run for a while: one sample a second here (the
    # fixture's MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, which wins over alignflow's 5 s), so a run
    # open for 4 s has at least two whatever a loaded host does to the monitor's thread.
    long_runs = [c for c in children if (c.info.end_time - c.info.start_time) / 1000 > 4]
    assert long_runs, {c.info.run_name: (c.info.end_time - c.info.start_time) / 1000 for c in children}
    for child in long_runs:
        points = client.get_metric_history(child.info.run_id, "system/cpu_utilization_percentage")
        assert len(points) >= 2, (child.info.run_name, len(points))

    # Promoted after the pipeline, with the record of why on the version.
    gate = json.loads((ws / "reports/gate.json").read_text())
    # (read by version: a scenario that ran before this one may have promoted a later one since)
    v1 = mlflow.MlflowClient().get_model_version("alignflow-policy", gate["candidate_version"])
    assert gate["passed"] and v1.tags["alignflow.promoted_at"]
    assert "CI low" in gate["reasons"][0]  # the gate read the win rate's lower bound, and says so
    assert v1.tags["alignflow.gate"] == "passed" and v1.tags["alignflow.dvc_lock.eval"]
    assert v1.tags["alignflow.pipeline_run_id"] == parent.info.run_id


def test_new_data_retrains_downstream_and_a_quiet_week_retrains_nothing(
        user_workspace, airflow_home, scenario_env):  # noqa: F811
    ws = user_workspace
    v1 = champion().version
    lock_before = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    collected_before = json.loads((ws / "metrics/collect.json").read_text())["conversations"]

    # New records in the team's own source: DVC sees collect out of date.
    append_rows(ws / USER_SOURCE["path"], user_rows(12, 6))
    status = dvc(ws, "status").stdout
    assert "collect:" in status and USER_SOURCE["path"] in status

    # The scheduled DAG run retrains collect and everything downstream of it.
    result = dag_test(ws, airflow_home, scenario_env, timeout=1500)
    assert result["state"] == "success", failure_log(result, "retrain")
    assert set(result["tasks"].values()) <= {"success", "skipped"}, result["tasks"]
    parent, children = parent_run(scenario_env, result["run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name.endswith(" · dpo")
    ran = sorted(c.data.tags["alignflow.stage"] for c in children)
    assert ran == sorted(STAGES), ran  # every stage is downstream of collect
    lock_after = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    assert lock_after["collect"] != lock_before["collect"]
    assert json.loads((ws / "metrics/collect.json").read_text())["conversations"] == collected_before + 6
    remote = yaml.safe_load((ws / "params.yaml").read_text())["orchestration"]["dvc_remote"]
    assert result["tasks"]["dvc_push"] == "success" and any(Path(remote).rglob("*")), "dvc push sent nothing"

    # The gate judged the new candidate against champion v1; promote ran after eval's commit.
    gate = json.loads((ws / "reports/gate.json").read_text())
    assert gate["champion_at_eval"] == v1 and gate["baseline"] == "champion" and gate["baseline_version"] == v1
    version = mlflow.MlflowClient().get_model_version("alignflow-policy", gate["candidate_version"])
    assert version.tags["alignflow.gate"] == ("passed" if gate["passed"] else "failed")
    assert version.tags["alignflow.dvc_lock.eval"]
    assert champion().version == (gate["candidate_version"] if gate["passed"] else v1)

    # Next week, no new data: the DAG runs, no stage does, the champion stays.
    promoted = champion().version
    quiet = dag_test(ws, airflow_home, scenario_env, timeout=900)
    assert quiet["state"] == "success", failure_log(quiet, "quiet-week")
    _, quiet_children = parent_run(scenario_env, quiet["run_id"])
    assert quiet_children == [], [c.info.run_name for c in quiet_children]
    assert champion().version == promoted

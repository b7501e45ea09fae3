"""End to end: the whole nine-stage DAG on the smoke profile, tracked in a real MLflow server."""

import json

import mlflow
import pytest

from alignflow import STAGES
from tests.conftest import run_in

pytestmark = pytest.mark.slow


def test_smoke_pipeline_runs_all_stages_and_tracks_them(workspace, tracking_env):
    ws = workspace()
    run_in(ws, "alignflow", "repro", "--name", "e2e-smoke", timeout=1500)

    for stage in STAGES:
        assert (ws / "metrics" / f"{stage}.json").exists(), f"no metrics for {stage}"
    eval_metrics = json.loads((ws / "metrics/eval.json").read_text())
    for key in ("winrate_rm_vs_sft", "winrate_judge_vs_sft", "kl_vs_sft", "refusal_rate_harmful", "length_ratio_vs_sft"):
        assert key in eval_metrics, key
    assert (ws / "reports/eval.html").stat().st_size > 1000

    # A second repro changes nothing: every stage is cached.
    out = run_in(ws, "dvc", "repro").stdout
    assert "Running stage" not in out

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("alignflow")
    parent = client.search_runs([exp.experiment_id], "tags.`alignflow.pipeline` = 'parent' and attributes.run_name = 'e2e-smoke'")[0]
    assert parent.info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["alignflow.stage"] for c in children) == sorted(STAGES)
    assert all(c.info.status == "FINISHED" and "dvc.lock" in c.data.tags for c in children)
    assert "eval.winrate_judge_vs_sft" in parent.data.metrics
    for name in ("alignflow-sft", "alignflow-reward", "alignflow-policy"):
        assert client.get_model_version_by_alias(name, "candidate") is not None

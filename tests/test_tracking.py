"""The MLflow facade against a real `mlflow server`: parent/child runs, params, roll-up, registry."""

import mlflow
import pytest

from alignflow import tracking
from alignflow.config import validate
from alignflow.stage import run_stage


@pytest.fixture
def params():
    return validate({"tracking": {"experiment": "test-tracking"}, "model": {"base": "tiny:llama"}})


def test_pipeline_parent_and_stage_children(tracking_env, params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def fake_stage(p, tracker):
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.log_metrics({"loss": 0.5}, step=1)
        return {"kept": 3, "nested": {"ratio": 0.25}}

    with tracking.pipeline_run(params, name="pipe") as parent_id:
        metrics = run_stage("clean", fake_stage, params)
    assert metrics["kept"] == 3 and (tmp_path / "metrics/clean.json").exists()

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    assert parent.data.tags[tracking.TAG_PIPELINE] == "parent"
    assert parent.data.metrics["clean.kept"] == 3.0
    assert parent.data.metrics["clean.nested.ratio"] == 0.25
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert [c.data.tags[tracking.TAG_STAGE] for c in children] == ["clean"]
    child = children[0]
    assert child.data.params["model.base"] == "tiny:llama"
    assert [m.value for m in client.get_metric_history(child.info.run_id, "loss")] == [1.0, 0.5]


def test_failed_stage_marks_run_failed(tracking_env, params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def boom(p, tracker):
        raise RuntimeError("stage broke")

    with pytest.raises(RuntimeError):
        run_stage("format", boom, params)
    run = mlflow.MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("test-tracking").experiment_id],
        "tags.`alignflow.stage` = 'format'", max_results=1,
    )[0]
    assert run.info.status == "FAILED"
    assert not (tmp_path / "metrics/format.json").exists()


def test_dvc_exp_runs_share_one_parent(tracking_env, params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc")
    run_stage("collect", lambda p, t: {"n": 1}, params)
    run_stage("clean", lambda p, t: {"n": 2}, params)
    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name("test-tracking")
    parents = client.search_runs([exp.experiment_id], f"tags.`{tracking.TAG_DVC_EXP}` = 'exp-abc'")
    assert len(parents) == 1
    metrics = parents[0].data.metrics
    assert (metrics["collect.n"], metrics["clean.n"]) == (1.0, 2.0)

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

    def fake_eval(p, tracker):
        data = tmp_path / "prompts_test.jsonl"
        data.write_text('{"id": "a", "prompt": [{"role": "user", "content": "hi"}]}\n')
        tracker.log_dataset(data, context="eval")
        tracker.log_table([{"model": "sft", "response": "hello"}, {"model": "policy", "response": "hi!"}],
                          "eval/generations.json", parent=True)
        return {"winrate_judge_vs_sft": 0.6, "winrate_judge_vs_sft_ci_low": 0.4, "reward_std": 1.0}

    with tracking.pipeline_run(params, name=tracking.parent_label(params, "pipe")) as parent_id:
        metrics = run_stage("clean", fake_stage, params)
        run_stage("eval", fake_eval, params)
    assert metrics["kept"] == 3 and (tmp_path / "metrics/clean.json").exists()

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    assert parent.data.tags[tracking.TAG_PIPELINE] == "parent" and parent.info.run_name == "pipe · dpo"
    assert parent.data.params["align.method"] == "dpo" and "align.dpo.beta" in parent.data.params
    assert "align.ppo.clip_range" not in parent.data.params  # the headline recipe, not every param
    # Only the headline reaches the parent; the stage runs keep everything.
    assert parent.data.metrics["eval.winrate_judge_vs_sft"] == 0.6
    assert parent.data.metrics["eval.winrate_judge_vs_sft_ci_low"] == 0.4
    assert "clean.kept" not in parent.data.metrics and "eval.reward_std" not in parent.data.metrics
    assert parent.data.metrics["wall_time_s"] >= 0
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'",
                                  order_by=["attributes.start_time ASC"])
    assert [c.data.tags[tracking.TAG_STAGE] for c in children] == ["clean", "eval"]
    assert [c.info.run_name for c in children] == ["clean · default", "eval · dpo"]
    child = children[0]
    assert child.data.params["model.base"] == "tiny:llama"
    assert child.data.metrics["kept"] == 3.0
    assert [m.value for m in client.get_metric_history(child.info.run_id, "loss")] == [1.0, 0.5]
    # Datasets as MLflow inputs with DVC's md5 as digest, on the stage and the parent; the table too.
    for run_id in (children[1].info.run_id, parent_id):
        [ds] = client.get_run(run_id).inputs.dataset_inputs
        assert ds.dataset.name == f"{tmp_path.name}/prompts_test"
        assert ds.dataset.digest == tracking.file_md5(tmp_path / "prompts_test.jsonl")
        assert "eval/generations.json" in [a.path for a in client.list_artifacts(run_id, "eval")]


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
    # Named after the experiment and method, the recipe as params, closed after every stage.
    [parent] = parents
    assert parent.info.run_name == "exp-abc · dpo" and parent.data.params["align.method"] == "dpo"
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["wall_time_s"] >= 0

    def boom(p, t):
        raise RuntimeError("stage broke")

    with pytest.raises(RuntimeError):
        run_stage("align", boom, params)
    assert client.get_run(parent.info.run_id).info.status == "FAILED"


def test_secret_in_params_never_reaches_mlflow(tracking_env, tmp_path, monkeypatch):
    """A credential pasted into a param (here a URL with a password) is masked on the stage run,
    the parent's params and its params.yaml artifact."""
    monkeypatch.chdir(tmp_path)
    secret = "hunter2-very-secret"
    params = validate({"tracking": {"experiment": "test-tracking"}, "model": {"base": "tiny:llama"},
                       "rank": {"judge": ["llm"], "llm": {"base_url": f"https://bob:{secret}@llm.example/v1"}}})
    with tracking.pipeline_run(params, name="secrets") as parent_id:
        run_stage("rank", lambda p, tracker: {}, params)
    client = mlflow.MlflowClient()
    child = client.search_runs([client.get_run(parent_id).info.experiment_id],
                               f"tags.mlflow.parentRunId = '{parent_id}'")[0]
    assert child.data.params["rank.llm.base_url"].startswith("https://bob:")
    logged = [*child.data.params.values(), *client.get_run(parent_id).data.params.values(),
              mlflow.artifacts.load_text(f"runs:/{parent_id}/params.yaml")]
    assert not [value for value in logged if secret in value]

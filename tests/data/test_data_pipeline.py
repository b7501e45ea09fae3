"""Integration: collect -> synthesize (off) -> clean -> format with `dvc repro` (via `alignflow repro`) in a scratch git
repo on the bundled sample, MLflow runs checked on a real tracking server."""

from __future__ import annotations

import json

import yaml

from tests.conftest import run_in

STAGES = ("collect", "synthesize", "clean", "format")


def ran(proc) -> set[str]:
    out = proc.stdout + proc.stderr
    return {s for s in STAGES if f"Running stage '{s}'" in out}


def stage_children(client, experiment_id: str, parent_id: str) -> dict:
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.data.tags["alignflow.stage"]: r for r in runs}


def test_data_stages_under_dvc_and_mlflow(workspace, tracking_env):
    import mlflow

    ws = workspace()
    env = {"MLFLOW_TRACKING_URI": tracking_env}

    first = run_in(ws, "alignflow", "repro", "--name", "data-1", "format", env=env)
    assert ran(first) == set(STAGES)
    formatted = ws / "data" / "formatted"
    for name in ("sft_train", "sft_val", "prefs_train", "prompts_test", "prompts_harmful_test", "eval_prompts"):
        assert (formatted / f"{name}.jsonl").stat().st_size > 0, name
    clean_metrics = json.loads((ws / "metrics" / "clean.json").read_text())
    assert clean_metrics["input"]["conversations"] == 80 and clean_metrics["input"]["preferences"] == 60
    assert set(clean_metrics["steps"]) >= {"normalize", "quality", "safety", "exact_dedup", "near_dedup", "diversity", "decontamination"}
    assert (ws / "data" / "clean" / "rejects.jsonl").exists() and (ws / "data" / "clean" / "decontamination.json").exists()
    sft_train = [json.loads(line) for line in (formatted / "sft_train.jsonl").read_text().splitlines()]
    assert 0 < len(sft_train) <= 32 and {"messages", "task", "source", "license"} <= set(sft_train[0])

    # nothing changed: nothing runs
    second = run_in(ws, "alignflow", "repro", "--name", "data-2", "format", env=env)
    assert ran(second) == set(), second.stdout

    # a clean param that changes clean's output re-runs clean and format, not collect
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["clean"]["quality"]["min_chars"] = 200
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    third = run_in(ws, "alignflow", "repro", "--name", "data-3", "format", env=env)
    assert ran(third) == {"clean", "format"}, third.stdout
    after = json.loads((ws / "metrics" / "clean.json").read_text())
    assert after["steps"]["quality"]["reason.too_short"] > clean_metrics["steps"]["quality"].get("reason.too_short", 0)

    # MLflow: one parent per pipeline run, a child per stage that ran, params flattened, metrics
    client = mlflow.MlflowClient(tracking_env)
    exp = client.get_experiment_by_name(params["tracking"]["experiment"])
    # parent runs are named `<name> · <align.method>`
    parents = {r.info.run_name.removesuffix(" · dpo"): r
               for r in client.search_runs([exp.experiment_id], filter_string="tags.`alignflow.pipeline` = 'parent'")}
    assert {"data-1", "data-2", "data-3"} <= set(parents)
    children = stage_children(client, exp.experiment_id, parents["data-1"].info.run_id)
    assert set(children) == set(STAGES)
    assert set(stage_children(client, exp.experiment_id, parents["data-2"].info.run_id)) == set()
    assert set(stage_children(client, exp.experiment_id, parents["data-3"].info.run_id)) == {"clean", "format"}

    clean_run = children["clean"]
    assert clean_run.info.status == "FINISHED"
    assert clean_run.data.params["clean.near_dedup.threshold"] == "0.7"
    assert clean_run.data.params["model.base"] == "tiny:llama"
    assert clean_run.data.metrics["output.conversations"] == clean_metrics["output"]["conversations"]
    assert clean_run.data.metrics["steps.quality.in"] == 140
    assert children["collect"].data.params["collect.sources.0.format"] == "alpaca"
    assert children["format"].data.metrics["sft_train"] == len(sft_train)
    parent = client.get_run(parents["data-1"].info.run_id)
    # the parent carries the headline only (data stages have none) and the pipeline's wall time
    assert not any(k.startswith(("collect.", "synthesize.", "clean.", "format.")) for k in parent.data.metrics)
    assert parent.data.metrics["wall_time_s"] > 0

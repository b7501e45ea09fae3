"""A user compares two alignment runs in the MLflow UI (real `mlflow server`, headless Chromium).

The screenshot of the compare page is a CI artifact: reports/ci/mlflow-compare.png."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import ROOT
from tests.scenarios.mlflow_ui import browser_missing, compare_runs_in_ui

MISSING = browser_missing()  # a skip reason, checked before the mlflow_server fixture starts
SCREENSHOT = ROOT / "reports" / "ci" / "mlflow-compare.png"

RUNS = {  # as the pipeline logs them: one parent run per pipeline run, stage metrics rolled up
    "exp-dpo · dpo": {
        "params": {"align.method": "dpo", "align.lr": "5e-07", "align.dpo.beta": "0.1", "model.base": "smollm2-135m"},
        "metrics": {"eval.winrate_judge_vs_sft": 0.58, "eval.kl_vs_sft": 0.12},
    },
    "exp-ppo · ppo": {
        "params": {"align.method": "ppo", "align.lr": "1e-06", "align.ppo.kl_coef": "0.05", "model.base": "smollm2-135m"},
        "metrics": {"eval.winrate_judge_vs_sft": 0.47, "eval.kl_vs_sft": 0.31},
    },
}


def log_parent_runs(tracking_uri: str, experiment: str) -> dict[str, str]:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(experiment)
    ids = {}
    for name, data in RUNS.items():
        run = client.create_run(experiment_id, run_name=name, tags={"alignflow.pipeline": "parent"})
        now = int(time.time() * 1000)
        client.log_batch(run.info.run_id,
                         params=[Param(k, v) for k, v in data["params"].items()],
                         metrics=[Metric(k, v, now, 0) for k, v in data["metrics"].items()])
        client.set_terminated(run.info.run_id)
        ids[name] = run.info.run_id
    return ids


@pytest.mark.browser
@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
@pytest.mark.timeout(120, func_only=True)  # the server fixture is bounded on its own (120 s)
def test_compare_two_alignment_runs(mlflow_server):
    experiment = f"ui-compare-{uuid.uuid4().hex[:8]}"
    ids = log_parent_runs(mlflow_server, experiment)
    SCREENSHOT.unlink(missing_ok=True)

    text = compare_runs_in_ui(mlflow_server, experiment, list(RUNS), SCREENSHOT)

    assert f"Comparing {len(RUNS)} Runs" in text
    lines = text.splitlines()
    # Run details, Parameters and Metrics rows: "key\tvalue per run", runs in the order picked.
    assert "Run ID:\t" + "\t".join(ids.values()) in lines, text
    for name in RUNS:
        assert name in text
    for key in ("align.method", "align.lr", "model.base"):
        assert "\t".join([key, *(data["params"][key] for data in RUNS.values())]) in lines, text
    for key in ("eval.winrate_judge_vs_sft", "eval.kl_vs_sft"):
        assert "\t".join([key, *(str(data["metrics"][key]) for data in RUNS.values())]) in lines, text
    assert "eval.winrate_judge_vs_sft\t0.58\t0.47" in lines  # the numbers a user reads
    assert SCREENSHOT.stat().st_size > 10_000

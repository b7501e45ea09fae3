"""Workflows 2 and 3: sweep the alignment method with DVC experiments, compare them from the
terminal (`dvc exp show`, `dvc metrics diff`, `dvc plots diff`) and in the MLflow UI (a real
headless Chromium: select the two parent runs, Compare)."""

from __future__ import annotations

import json
import re

import mlflow
import pytest

from tests.conftest import ROOT
from tests.scenarios.test_readme import run_readme_commands
from tests.scenarios.helpers import champion, dvc

pytestmark = [pytest.mark.slow, pytest.mark.scenario]


def experiments(show: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json` -> {experiment name: {"metrics": flat, "params": flat}}."""
    out = {}

    def flat(files: dict) -> dict:
        merged = {}
        for content in (files or {}).values():
            merged.update((content or {}).get("data") or {})
        return merged

    for baseline in show:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                params = {}
                for content in (data.get("params") or {}).values():
                    params.update((content or {}).get("data") or {})
                out[rev.get("name") or rev["rev"]] = {"metrics": flat(data.get("metrics")), "params": params,
                                                     "error": rev.get("error") or data.get("error")}
    return out


def test_readme_sweep_then_compare_in_terminal_and_browser(user_workspace, scenario_env):
    ws = user_workspace
    v1 = champion().version
    # Every runnable README command, as printed: among them an experiment through alignflow (one
    # MLflow parent), one with plain `dvc exp run`, then dvc exp show / metrics diff / plots diff.
    commands = run_readme_commands(ws, scenario_env)
    assert "alignflow repro --exp --name sweep-ppo -S align.method=ppo" in commands
    assert "dvc exp run --name sweep-bon -S align.method=best_of_n" in commands
    other = "sweep-bon"

    shown = experiments(json.loads(dvc(ws, "exp", "show", "--json").stdout))
    assert set(shown) == {"sweep-ppo", other}, list(shown)
    for name, exp in shown.items():
        assert not exp["error"], (name, exp["error"])
        assert "winrate_judge_vs_sft" in exp["metrics"], (name, sorted(exp["metrics"]))
    assert shown["sweep-ppo"]["params"]["align"]["method"] == "ppo"
    assert shown[other]["params"]["align"]["method"] == "best_of_n"

    # the terminal view (make exps): every value there, none missing ("!")
    table = dvc(ws, "exp", "show", "--no-pager", "--only-changed", "--drop",
                "Created|.*_ci_|(data|models|src|components)/", env={"COLUMNS": "220"}).stdout
    assert "!" not in table and "…" not in table and "winrate_judge_vs_sft" in table, table[-3000:]
    assert "_ci_" not in table  # DVC's --drop matches from a column name's start: hence '.*_ci_'

    diff = dvc(ws, "metrics", "diff", "sweep-ppo", other, "--all", "--json").stdout
    assert "winrate_judge_vs_sft" in diff, diff[-2000:]
    html = (ws / "dvc_plots/index.html").read_text()  # written by the README's `dvc plots diff`
    assert "sweep-ppo" in html and not re.search(r"<script[^>]+src=[\"']?https?://", html)  # renders offline

    # MLflow: one parent per experiment, named after it and its method, with the swept params.
    client = mlflow.MlflowClient()
    exp_id = client.get_experiment_by_name("alignflow").experiment_id
    parents = {r.data.tags["alignflow.dvc_exp"]: r for r in client.search_runs(
        [exp_id], "tags.`alignflow.pipeline` = 'parent' and tags.`alignflow.dvc_exp` != ''")}
    assert {"sweep-ppo", other} <= set(parents), list(parents)
    ppo, bon = parents["sweep-ppo"], parents[other]
    assert ppo.info.run_name == "sweep-ppo · ppo" and bon.info.run_name == f"{other} · best_of_n"
    assert ppo.data.params["align.method"] == "ppo" and bon.data.params["align.method"] == "best_of_n"
    assert ppo.info.status == bon.info.status == "FINISHED"
    for run in (ppo, bon):
        assert "eval.winrate_judge_vs_sft" in run.data.metrics
        children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        assert {c.data.tags["alignflow.stage"] for c in children} == {"align", "eval"}
    # A sweep never moves the champion unless asked (eval.gate.promote_in_experiments).
    assert champion().version == v1

    # Workflow 3: the two runs side by side in the MLflow UI, in a real browser.
    from tests.scenarios.mlflow_ui import browser_missing, compare_runs_in_ui

    if browser_missing():
        pytest.skip(browser_missing())
    shot = ROOT / "reports/ci/mlflow-compare-sweep.png"
    text = compare_runs_in_ui(scenario_env, "alignflow", [ppo.info.run_name, bon.info.run_name], shot)
    assert "ppo" in text and "best_of_n" in text and "eval.winrate_judge_vs_sft" in text
    for run in (ppo, bon):
        value = run.data.metrics["eval.winrate_judge_vs_sft"]
        assert any(f"{value:.{d}f}".rstrip("0").rstrip(".") in text for d in (1, 2, 3, 4)), value
    assert shot.stat().st_size > 10_000

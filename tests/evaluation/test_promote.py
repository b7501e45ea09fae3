"""`alignflow promote`: champion moves only once DVC has committed eval's outputs.

A real DVC repo whose `eval` stage writes reports/gate.json (what the eval stage writes), a real
MLflow server and registry; the registered versions are tiny model dirs."""

from __future__ import annotations

import json
import sys

import mlflow
import pytest
import yaml

from alignflow.evaluation import gate as G
from alignflow.evaluation import promote as P
from tests.conftest import run_in
from tests.evaluation.test_gate import _register_version

EVAL_STAGE = {"stages": {"eval": {
    "cmd": f"{sys.executable} -c \"import shutil, os; os.makedirs('reports', exist_ok=True); "
           "shutil.copy('verdict.json', 'reports/gate.json')\"",
    "deps": ["verdict.json"], "outs": ["reports"]}}}


def verdict(version: str, passed: bool, champion_at_eval: str | None) -> dict:
    return {"passed": passed, "baseline": "champion" if champion_at_eval else "sft", "reasons": ["win rate 0.7 >= 0.55"],
            "checks": {}, "model": G.POLICY_MODEL, "candidate_version": version, "baseline_version": champion_at_eval,
            "champion_at_eval": champion_at_eval, "eval_run_id": "r-eval", "parent_run_id": None,
            "promotable": passed}


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(yaml.safe_dump(EVAL_STAGE))
    run_in(repo, "git", "init", "-q")
    run_in(repo, sys.executable, "-m", "dvc", "init", "-q")
    monkeypatch.chdir(repo)
    return repo


def champion() -> str | None:
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(G.POLICY_MODEL, "champion").version
    except mlflow.exceptions.MlflowException:
        return None


def test_champion_moves_only_after_dvc_commits_eval(dvc_repo, tracking_env, tmp_path):
    mlflow.set_experiment("promote-test")
    before = champion()
    v = _register_version(mlflow, tmp_path, "candidate")

    # Eval wrote its verdict, then the process was killed before DVC committed: no champion move.
    (dvc_repo / "verdict.json").write_text(json.dumps(verdict(v, True, before)))
    (dvc_repo / "reports").mkdir()
    (dvc_repo / "reports/gate.json").write_text((dvc_repo / "verdict.json").read_text())
    with pytest.raises(P.PromotionError, match="not committed in dvc.lock"):
        P.promote()
    assert champion() == before

    # The re-run commits eval (dvc.lock), then promote moves champion and records why.
    run_in(dvc_repo, sys.executable, "-m", "dvc", "repro")
    assert P.promote()["promoted"]
    assert champion() == v
    tags = mlflow.MlflowClient().get_model_version(G.POLICY_MODEL, v).tags
    assert tags["alignflow.gate"] == "passed" and tags["alignflow.eval_run_id"] == "r-eval"
    assert tags["alignflow.dvc_lock"] == P.lock_digest(dvc_repo / "dvc.lock") and tags["alignflow.dvc_lock.eval"]
    assert P.promote()["promoted"]  # idempotent: already the champion

    # A failing verdict keeps the champion and still records why on the candidate.
    w = _register_version(mlflow, tmp_path, "loser")
    (dvc_repo / "verdict.json").write_text(json.dumps(verdict(w, False, v)))
    run_in(dvc_repo, sys.executable, "-m", "dvc", "repro")
    assert not P.promote()["promoted"]
    assert champion() == v
    assert mlflow.MlflowClient().get_model_version(G.POLICY_MODEL, w).tags["alignflow.gate"] == "failed"

    # A verdict judged against a champion that has moved since is not applied.
    x = _register_version(mlflow, tmp_path, "stale")
    (dvc_repo / "verdict.json").write_text(json.dumps(verdict(x, True, before)))
    run_in(dvc_repo, sys.executable, "-m", "dvc", "repro")
    with pytest.raises(P.PromotionError, match="champion moved"):
        P.promote()
    assert champion() == v


def test_promote_without_eval_is_a_clear_error(dvc_repo, tracking_env):
    with pytest.raises(P.PromotionError, match="reports/gate.json: missing"):
        P.promote()

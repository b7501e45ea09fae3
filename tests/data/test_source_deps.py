"""collect's DVC deps follow collect.sources (real DVC: new data in a source makes collect stale)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import yaml

from alignflow.config import validate
from alignflow.data import source_deps as S
from tests.conftest import ROOT, run_in


def params(*sources):
    return validate({"collect": {"sources": list(sources)}})


def test_source_dep_of_files_dirs_and_globs():
    assert S.source_dep("data/new/batch.jsonl") == "data/new/batch.jsonl"
    assert S.source_dep("data/new/") == "data/new"
    assert S.source_dep("data/shards/part-*.jsonl") == "data/shards"
    assert S.source_dep("data/**/x?.json") == "data"
    p = params({"path": "data/a", "format": "alpaca"}, {"path": "data/a/b.json", "format": "alpaca"},
               {"hf": "tatsu-lab/alpaca", "format": "alpaca"})
    assert S.required_deps(p) == [*S.CODE_DEPS, "data/a"]  # b.json is inside data/a; hub: no path
    assert S.needs_always_changed(p)


def test_sync_rewrites_only_collect_and_check_agrees(tmp_path):
    dvc_yaml = tmp_path / "dvc.yaml"
    shutil.copy(ROOT / "dvc.yaml", dvc_yaml)
    p = params({"path": "data/sample/alpaca_2000.json", "format": "alpaca"},
               {"path": "data/mine/*.jsonl", "format": "alpaca"})
    assert S.check(p, dvc_yaml) == ["deps lacks data/mine"]
    before = yaml.safe_load(dvc_yaml.read_text())
    assert S.sync(p, dvc_yaml) and not S.sync(p, dvc_yaml)
    after = yaml.safe_load(dvc_yaml.read_text())
    assert after["stages"]["collect"]["deps"] == [*S.CODE_DEPS, "data/sample/alpaca_2000.json", "data/mine"]
    assert {k: v for k, v in after["stages"].items() if k != "collect"} == \
        {k: v for k, v in before["stages"].items() if k != "collect"}
    assert "# The alignflow DAG" in dvc_yaml.read_text()  # comments kept
    assert S.check(p, dvc_yaml) == []
    hub = params({"hf": "tatsu-lab/alpaca", "format": "alpaca"})
    assert S.sync(hub, dvc_yaml) and yaml.safe_load(dvc_yaml.read_text())["stages"]["collect"]["always_changed"]


@pytest.mark.slow
def test_new_records_in_a_user_source_make_collect_stale(workspace, tracking_env):
    """The workflow: a team appends records to its own source; dvc status must notice."""
    source = {"path": "data/user/batch.jsonl", "format": "alpaca", "task": "user", "weight": 1.0}
    ws = workspace({"collect.sources": [source], "format.max_records.sft_train": 8}, name="deps")
    rows = [{"instruction": f"Write one sentence about the number {i}.", "input": "",
             "output": f"The number {i} comes right after {i - 1}."} for i in range(1, 13)]
    (ws / "data/user").mkdir(parents=True)
    (ws / "data/user/batch.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_in(ws, sys.executable, "-m", "dvc", "repro", "collect")
    assert "up to date" in run_in(ws, sys.executable, "-m", "dvc", "status", "collect").stdout

    with open(ws / "data/user/batch.jsonl", "a") as fh:
        fh.write(json.dumps({"instruction": "Name a new colour.", "input": "", "output": "Teal is a colour."}) + "\n")
    status = run_in(ws, sys.executable, "-m", "dvc", "status", "collect").stdout
    assert "collect:" in status and "data/user/batch.jsonl" in status
    run_in(ws, sys.executable, "-m", "dvc", "repro", "collect")
    assert json.loads((ws / "metrics/collect.json").read_text())["conversations"] == 13


def test_collect_refuses_a_source_that_is_not_a_dep(tmp_path, monkeypatch):
    from alignflow.data.collect import _check_dvc_deps
    from alignflow.io import InputError

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    with pytest.raises(InputError, match="alignflow sync-deps"):
        _check_dvc_deps(params({"path": "elsewhere/more.json", "format": "alpaca"}))

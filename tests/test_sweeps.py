"""`alignflow sweep-plot`: a param against metrics over real DVC experiments (docs/EXPERIMENTS.md)."""

from __future__ import annotations

import csv
import re

import pytest
import yaml

from alignflow import sweeps
from tests.conftest import run_in
from tests.test_dvc_plots import scratch_repo


def test_rows_skip_baselines_and_experiments_missing_a_number(capsys):
    exps = [
        {"Experiment": None, "rev": "workspace", "typ": "baseline", "k": 0.5},
        {"Experiment": "a", "rev": "r1", "typ": "branch_commit", "k": 0.5},
        {"Experiment": "b", "rev": "r2", "typ": "branch_base", "params.yaml:k": 0.25},  # DVC's prefix on a clash
        {"Experiment": "c", "rev": "r3", "typ": "branch_commit", "k": 1.0},   # its file lacks the key
        {"Experiment": "d", "rev": "r4", "typ": "branch_commit"},             # no such param
    ]
    files = {("r1", "m.json"): {"s": {"x": 2}}, ("r2", "m.json"): {"s": {"x": 1.5}}, ("r3", "m.json"): {"s": {}}}
    rows = sweeps.sweep_rows(exps, "k", ["m.json:s.x"], lambda rev, path: files.get((rev, path)))
    assert rows == [{"experiment": "b", "k": 0.25, "m.json:s.x": 1.5}, {"experiment": "a", "k": 0.5, "m.json:s.x": 2}]
    err = capsys.readouterr().err
    assert "c has no number at m.json:s.x" in err and "d has no param k" in err
    only = sweeps.sweep_rows(exps, "k", ["m.json:s.x"], lambda rev, path: files.get((rev, path)), only=["a"])
    assert [r["experiment"] for r in only] == ["a"]
    named = sweeps.sweep_rows([{"Experiment": "p", "rev": "r1", "m": "ppo"}, {"Experiment": "d", "rev": "r2", "m": "dpo"}],
                              "m", ["m.json:s.x"], lambda rev, path: files.get((rev, path)))
    assert [r["m"] for r in named] == ["dpo", "ppo"]


def test_metric_spec_and_dotted_lookup():
    assert sweeps.parse_metric("metrics/sft.json:judge_eval.score") == ("metrics/sft.json", "judge_eval.score")
    assert sweeps.metric_column("metrics/sft.json:eval_loss") == "sft.eval_loss"
    assert sweeps.lookup({"a.b": 1, "a": {"b": 2}}, "a.b") == 1 and sweeps.lookup({"a": {"b": 2}}, "a.b") == 2
    assert sweeps.lookup({"a": 1}, "a.b") is None
    with pytest.raises(sweeps.SweepError, match="FILE:KEY"):
        sweeps.parse_metric("eval_loss")


def test_sweep_plot_over_real_experiments(tmp_path):
    repo = scratch_repo(tmp_path / "repo")
    (repo / "params.yaml").write_text("method: ppo\nselection:\n  keep_fraction: 1.0\n")
    (repo / "run.py").write_text(
        "import json, os, yaml\n"
        "k = yaml.safe_load(open('params.yaml'))['selection']['keep_fraction']\n"
        "os.makedirs('metrics', exist_ok=True)\n"
        "json.dump({'eval_loss': 2 - k, 'judge': {'mean': k / 2}}, open('metrics/sft.json', 'w'))\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"sft": {
        "cmd": "python run.py", "deps": ["run.py"], "params": ["selection.keep_fraction", "method"],
        "outs": [{"metrics/sft.json": {"cache": False}}]}}}))
    run_in(repo, "dvc", "repro", "-q")
    run_in(repo, "git", "add", "-A")
    run_in(repo, "git", "commit", "-qm", "init")
    for k in ("0.5", "0.25"):
        run_in(repo, "dvc", "exp", "run", "-q", "-S", f"selection.keep_fraction={k}", "-n", f"keep-{k}")

    out = run_in(repo, "alignflow", "sweep-plot", "selection.keep_fraction",
                 "metrics/sft.json:eval_loss", "metrics/sft.json:judge.mean").stdout
    lines = out.splitlines()
    assert lines[0].split("\t") == ["experiment", "selection.keep_fraction", "sft.eval_loss", "sft.judge.mean"]
    assert lines[1].split("\t") == ["keep-0.25", "0.25", "1.75", "0.125"]   # each experiment's own commit
    assert lines[2].split("\t") == ["keep-0.5", "0.5", "1.5", "0.25"]
    page_dir = repo / "dvc_plots/sweeps/selection.keep_fraction"
    with open(page_dir / "sft.eval_loss.csv") as fh:
        assert [r["experiment"] for r in csv.DictReader(fh)] == ["keep-0.25", "keep-0.5"]
    page = (page_dir / "index.html").read_text()
    assert page.count("vegaEmbed('#") == 2 and not re.search(r"<script[^>]*\bsrc\s*=", page)  # offline template
    assert "sft.judge.mean" in page
    assert not run_in(repo, "git", "status", "--porcelain", "dvc_plots").stdout  # gitignored: never in an experiment

    with pytest.raises(AssertionError, match="failed \\(2\\)") as bad:
        run_in(repo, "alignflow", "sweep-plot", "selection.keep_fraction", "metrics/sft.json:nope")
    assert "no experiment of HEAD has selection.keep_fraction" in str(bad.value)
    run_in(repo, "dvc", "exp", "run", "-q", "-S", "selection.keep_fraction=1.0", "-S", "method=dpo", "-n", "named")
    with pytest.raises(AssertionError, match="method is not a number"):
        run_in(repo, "alignflow", "sweep-plot", "method", "metrics/sft.json:eval_loss")

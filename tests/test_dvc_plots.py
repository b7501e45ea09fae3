"""DVC metrics and plots: git-tracked outputs that experiments carry, one drawing per figure, and
an HTML page that renders without internet (docs/EXPERIMENTS.md, docs/plots/README.md)."""

from __future__ import annotations

import configparser
import csv
import json
import re
import shutil
from pathlib import Path

import yaml

from tests.conftest import ROOT, run_in

TEMPLATE = ROOT / "docs/plots/offline.html"


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def entries(spec: dict, key: str) -> dict[str, dict]:
    """{path: options} of a stage's outs / metrics / plots list."""
    out = {}
    for entry in spec.get(key) or []:
        out.update({entry: {}} if isinstance(entry, str) else entry)
    return out


def scratch_repo(path: Path) -> Path:
    """A git + DVC repo with the project's .gitignore and .dvc/config (and the HTML template)."""
    path.mkdir(parents=True, exist_ok=True)
    run_in(path, "git", "init", "-q")
    run_in(path, "git", "config", "user.name", "alignflow")
    run_in(path, "git", "config", "user.email", "ci@alignflow")
    run_in(path, "dvc", "init", "-q")
    shutil.copy(ROOT / ".gitignore", path / ".gitignore")
    shutil.copy(ROOT / ".dvc/config", path / ".dvc/config")
    (path / "docs/plots").mkdir(parents=True)
    shutil.copy(TEMPLATE, path / "docs/plots/offline.html")
    return path


def test_only_the_headline_is_a_dvc_metric_and_figures_are_top_level():
    doc = dvc_yaml()
    metrics = {(name, path) for name, spec in doc["stages"].items() for path in entries(spec, "metrics")}
    assert metrics == {("eval", "metrics/headline.json")}  # the metric columns of `dvc exp show`
    assert not [name for name, spec in doc["stages"].items() if spec.get("plots")]  # no automatic plots
    outs = {path: opts for spec in doc["stages"].values() for key in ("outs", "metrics")
            for path, opts in entries(spec, key).items()}
    for stage in doc["stages"]:
        assert outs[f"metrics/{stage}.json"] == {"cache": False}, stage
    for path, opts in outs.items():
        if path.startswith(("metrics/", "plots/")):
            assert opts == {"cache": False}, path  # git-tracked, not in the DVC cache
    for figure in doc["plots"]:
        (name, spec), = figure.items()
        for path in spec["y"]:
            assert path in outs, (name, path)


def test_experiments_carry_metrics_and_plots(tmp_path):
    """With the project's .gitignore, `dvc exp run` commits the cache: false outputs."""
    repo = scratch_repo(tmp_path / "repo")
    (repo / "params.yaml").write_text("x: 1\n")
    (repo / "run.py").write_text(
        "import json, os, yaml\n"
        "x = yaml.safe_load(open('params.yaml'))['x']\n"
        "os.makedirs('metrics', exist_ok=True); os.makedirs('plots', exist_ok=True)\n"
        "json.dump({'score': x / 2}, open('metrics/headline.json', 'w'))\n"
        "json.dump({'steps': x}, open('metrics/stage.json', 'w'))\n"
        "open('plots/curve.csv', 'w').write(f'step,loss\\n1,{x}\\n2,{x / 2}\\n')\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": {
        "cmd": "python run.py", "deps": ["run.py"], "params": ["x"],
        "outs": [{"metrics/stage.json": {"cache": False}}, {"plots/curve.csv": {"cache": False}}],
        "metrics": [{"metrics/headline.json": {"cache": False}}],
    }}, "plots": [{"Loss": {"x": "step", "y": {"plots/curve.csv": "loss"}}}]}))
    run_in(repo, "git", "add", "-A")
    run_in(repo, "git", "commit", "-qm", "init")
    run_in(repo, "dvc", "exp", "run", "-q", "-S", "x=2", "-n", "two")
    run_in(repo, "dvc", "exp", "run", "-q", "-S", "x=4", "-n", "four")

    refs = run_in(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    named = [r for r in refs if r.rsplit("/", 1)[-1] in ("two", "four")]
    assert len(named) == 2
    for ref in named:
        files = run_in(repo, "git", "ls-tree", "-r", "--name-only", ref).stdout.split()
        assert {"metrics/headline.json", "metrics/stage.json", "plots/curve.csv", "dvc.lock"} <= set(files), ref

    diff = json.loads(run_in(repo, "dvc", "metrics", "diff", "two", "four", "--json").stdout)
    assert diff["metrics/headline.json"]["score"] == {"old": 1.0, "new": 2.0, "diff": 1.0}
    # a plain (non-metrics) JSON out is still comparable by naming it
    diff = json.loads(run_in(repo, "dvc", "metrics", "diff", "two", "four", "--targets", "metrics/stage.json",
                             "--json").stdout)
    assert diff["metrics/stage.json"]["steps"] == {"old": 2, "new": 4, "diff": 2}
    plots = json.loads(run_in(repo, "dvc", "plots", "diff", "two", "four", "--json").stdout)
    assert list(plots["data"]) == ["Loss"] and plots["data"]["Loss"][0]["revisions"] == ["two", "four"]
    assert not plots.get("errors")


def fake_plot_files(repo: Path, doc: dict) -> None:
    """Two rows in every file the figures read (a string for a bar chart's category axis)."""
    fields: dict[str, set[str]] = {}
    for figure in doc["plots"]:
        (_, spec), = figure.items()
        for path, ys in spec["y"].items():
            fields.setdefault(path, set()).update([spec["x"], *([ys] if isinstance(ys, str) else ys)])
    for path, cols in fields.items():
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(sorted(cols))
            for i in (1, 2):
                writer.writerow([f"{c} {i}" if c == "comparison" else str(i * 0.5) for c in sorted(cols)])


def test_plots_show_draws_each_figure_once_offline(tmp_path):
    doc = dvc_yaml()
    repo = scratch_repo(tmp_path / "repo")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    fake_plot_files(repo, doc)
    names = [next(iter(figure)) for figure in doc["plots"]]

    shown = json.loads(run_in(repo, "dvc", "plots", "show", "--json").stdout)
    assert list(shown["data"]) == names and not shown.get("errors")  # no automatic per-file plots

    run_in(repo, "dvc", "plots", "show")  # .dvc/config: plots.html_template
    page = (repo / "dvc_plots/index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"""src\s*=\s*["']?https?:""", page, re.I)
    for lib in ("vega@5.", "vega-lite@5.", "vega-embed@6."):
        assert f"/*! {lib}" in page, lib  # inlined, with its license header
    assert ".vegaEmbed=" in page and ".vegaLite={}" in page
    assert page.count("vegaEmbed('#") == len(names)
    assert "{plot_divs}" not in page and "{refresh_tag}" not in page


def test_template_is_what_the_build_script_writes(tmp_path):
    """The vendored versions the README names are the ones inlined; no DVC placeholder is lost."""
    text = TEMPLATE.read_text()
    readme = (ROOT / "docs/plots/README.md").read_text()
    script = (ROOT / "docs/plots/build_offline_template.py").read_text()
    versions = dict(re.findall(r'"(vega(?:-lite|-embed)?)": "(\d+\.\d+\.\d+)"', script.split("PACKAGES = ", 1)[1]))
    assert set(versions) == {"vega", "vega-lite", "vega-embed"}
    for name, version in versions.items():
        assert f"/*! {name}@{version} | BSD-3-Clause" in text
        assert re.search(rf"\| {re.escape(name)}\s+\| {re.escape(version)}\s+\|", readme), name
    assert text.count("{plot_divs}") == 1 and "{scripts}" not in text
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    assert (ROOT / ".dvc" / config["plots"]["html_template"]).resolve() == TEMPLATE.resolve()  # relative to .dvc/

"""A sweep's figure: one param against metrics over the DVC experiments of HEAD
(`alignflow sweep-plot`). `dvc exp show` puts a sweep's numbers side by side in a table; this
draws them, e.g. `selection.keep_fraction` against the SFT model's judge score and eval loss.

The params come from `dvc.api.exp_show()`. A metric is `FILE:KEY`, read from the experiment's own
commit (metrics/*.json are git-tracked outputs that every experiment carries, not only the
headline that `dvc exp show` lists); KEY may be dotted into nested JSON. The figure is `dvc plots
show` over one CSV per metric, so it uses the project's offline HTML template."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

# A view of experiments, not a pipeline output: beside DVC's own pages, gitignored, so an
# experiment never commits it.
OUT_DIR = Path("dvc_plots/sweeps")


class SweepError(ValueError):
    """Nothing to draw, or a metric that is not where it was named."""


def parse_metric(spec: str) -> tuple[str, str]:
    """'metrics/sft.json:judge_score_mean' -> (file, key)."""
    path, sep, key = spec.rpartition(":")
    if not sep or not path or not key:
        raise SweepError(f"metric {spec!r}: expected FILE:KEY, e.g. metrics/sft.json:eval_loss")
    return path, key


def lookup(doc: Any, key: str) -> Any:
    """`a.b` in nested dicts; None when absent. A key that itself holds a dot is tried whole first."""
    if isinstance(doc, dict) and key in doc:
        return doc[key]
    head, sep, rest = key.partition(".")
    if sep and isinstance(doc, dict) and head in doc:
        return lookup(doc[head], rest)
    return None


def param_value(row: dict, name: str) -> Any:
    """A param of an `exp_show()` row: DVC prefixes the file name only when two files share a key."""
    if name in row:
        return row[name]
    hits = [v for k, v in row.items() if k.endswith(f":{name}")]
    return hits[0] if len(hits) == 1 else None


def sweep_rows(exps: list[dict], param: str, metrics: list[str], read: Callable[[str, str], dict | None],
               only: list[str] | None = None) -> list[dict]:
    """One row per experiment (not the workspace or baselines) that has `param` and every metric:
    {experiment, param, metric...}, sorted by the param. `read(rev, file)` is a file's JSON at a
    commit, or None. Experiments missing something are skipped and said so on stderr."""
    rows = []
    for exp in exps:
        name = exp.get("Experiment")
        if not name or (only and name not in only):
            continue
        x = param_value(exp, param)
        if x is None:
            print(f"sweep-plot: {name} has no param {param}; skipped", file=sys.stderr)
            continue
        row: dict[str, Any] = {"experiment": name, param: x}
        docs: dict[str, dict] = {}  # each file read once per experiment, however many of its keys are asked
        for spec in metrics:
            path, key = parse_metric(spec)
            if path not in docs:
                docs[path] = read(exp["rev"], path) or {}
            value = lookup(docs[path], key)
            if not is_number(value):
                print(f"sweep-plot: {name} has no number at {spec}; skipped", file=sys.stderr)
                break
            row[spec] = value
        else:
            rows.append(row)
    return sorted(rows, key=lambda r: ((0, r[param]) if is_number(r[param]) else (1, str(r[param])), r["experiment"]))


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def git_json(rev: str, path: str) -> dict | None:
    done = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    if done.returncode:
        return None
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise SweepError(f"{rev}:{path}: not JSON ({err})") from None


def metric_column(spec: str) -> str:
    """'metrics/sft.json:judge_score_mean' -> 'sft.judge_score_mean' (a CSV column and a y label)."""
    path, key = parse_metric(spec)
    return f"{Path(path).stem}.{key}"


def write_csvs(rows: list[dict], param: str, metrics: list[str], out_dir: Path) -> list[Path]:
    """One CSV per metric (experiment, param, metric): `dvc plots show` draws the last column."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in metrics:
        path = out_dir / f"{metric_column(spec)}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["experiment", param, metric_column(spec)])
            writer.writerows([r["experiment"], r[param], r[spec]] for r in rows)
        paths.append(path)
    return paths


def plot(param: str, metrics: list[str], only: list[str] | None = None,
         out_dir: Path = OUT_DIR) -> tuple[list[dict], Path]:
    """The rows, their CSVs and `dvc plots show`'s page (out_dir/<param>/index.html)."""
    import dvc.api

    for spec in metrics:
        parse_metric(spec)
    rows = sweep_rows(dvc.api.exp_show(), param, metrics, git_json, only)
    if not rows:
        raise SweepError(f"no experiment of HEAD has {param} and {', '.join(metrics)} "
                         "(run some with `alignflow repro --exp -S ...`; `dvc exp show` lists them)")
    if not all(is_number(r[param]) for r in rows):
        raise SweepError(f"{param} is not a number in every experiment (a line needs numbers); compare named "
                         "variants with `make exps` and `dvc metrics diff A B --targets FILE`")
    page_dir = out_dir / param
    csvs = write_csvs(rows, param, metrics, page_dir)
    # y: each file's last column, the metric (dvc's default field)
    subprocess.run([sys.executable, "-m", "dvc", "plots", "show", *map(str, csvs), "--template", "linear",
                    "-x", param, "-o", str(page_dir)], check=True, stdout=subprocess.DEVNULL)
    return rows, page_dir / "index.html"

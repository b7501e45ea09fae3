"""What the scenarios do as a user would: add data to a source, run dvc, read the registry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import ROOT, run_in

USER_SOURCE = {"path": "data/user/batch.jsonl", "format": "alpaca", "task": "user", "weight": 1.0,
               "license": "CC0-1.0"}


def user_rows(start: int, n: int) -> list[dict]:
    """A team's own instruction data: real, varied Alpaca records the smoke profile never reads
    (it takes the first 60), so neither dedup nor decontamination drops them."""
    rows = json.loads((ROOT / "data/sample/alpaca_2000.json").read_text())
    return rows[1000 + start : 1000 + start + n]


def append_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def champion(name: str = "alignflow-policy"):
    import mlflow

    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        return None


def dvc(ws: Path, *args: str, timeout: int = 1500, env: dict | None = None):
    return run_in(ws, sys.executable, "-m", "dvc", *args, timeout=timeout, env=env)


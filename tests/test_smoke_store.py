"""`make smoke` tracks into the project's own store, so `make ui` and `alignflow chat` from the
project root see what it just ran (one store per checkout)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_smoke_runs_land_in_the_project_store(tmp_path):
    from alignflow.smoke import make_workspace

    project = make_workspace(tmp_path / "project", profile=None, root=ROOT)  # a checkout, default params
    shutil.copytree(ROOT / "profiles", project / "profiles")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(["alignflow", "smoke", "--until", "collect"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    db = project / "mlflow.db"
    assert db.exists() and not (project / ".smoke/mlflow.db").exists()
    with sqlite3.connect(db) as con:
        runs = dict(con.execute("select name, status from runs").fetchall())
        [location] = con.execute("select artifact_location from experiments where name = 'alignflow'").fetchone()
    assert runs["collect · smoke"] == "FINISHED" and runs["smoke · dpo"] == "FINISHED", runs
    # Artifacts beside the store, not in the scratch workspace (which --fresh deletes).
    assert location == (project / "mlartifacts").as_uri()

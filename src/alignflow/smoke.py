"""Scratch workspaces: a copy of the project with a merged params profile, its own git repo.

`make smoke` runs the whole DAG in `.smoke/` on the tiny profile (profiles/smoke.yaml over
params.yaml); the integration tests build the same kind of workspace in a temp dir, so what
they exercise is exactly `dvc repro` on the project's own dvc.yaml.

A smoke run tracks into the project's own store (its mlflow.db, unless MLFLOW_TRACKING_URI or
tracking.tracking_uri says otherwise): one store per checkout, so `make ui` and `alignflow chat`
run from the project root find what `make smoke` just made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from alignflow.config import deep_merge, set_dotted, validate
from alignflow.io import read_yaml  # rejects duplicate keys, naming file and lines

PROFILE_DIR = "profiles"


def project_root() -> Path:
    here = Path.cwd()
    for cand in (here, *here.parents):
        if (cand / "dvc.yaml").exists() and (cand / "params.yaml").exists():
            return cand
    raise FileNotFoundError("not inside an alignflow project (no dvc.yaml + params.yaml above the working directory)")


def project_files(root: Path) -> list[str]:
    """Tracked files plus untracked ones git does not ignore (the working tree as it is)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=root, capture_output=True, check=True,
        ).stdout.decode()
        return [f for f in out.split("\0") if f and (root / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", ".smoke", "data/raw", "models", "mlruns", ".dvc/cache"}
        return [
            str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not any(str(p.relative_to(root)).startswith(s) for s in skip)
        ]


def merged_params(root: Path, profile: str | None, overrides: dict | None = None) -> dict:
    raw = read_yaml(root / "params.yaml") or {}
    if profile:
        raw = deep_merge(raw, read_yaml(root / PROFILE_DIR / f"{profile}.yaml") or {})
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    validate(raw, f"{PROFILE_DIR}/{profile}.yaml over params.yaml")
    return raw


def _git(dest: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "alignflow", "GIT_AUTHOR_EMAIL": "ci@alignflow",
           "GIT_COMMITTER_NAME": "alignflow", "GIT_COMMITTER_EMAIL": "ci@alignflow"}
    subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True, env=env)


def make_workspace(dest: Path, profile: str | None = "smoke", overrides: dict | None = None,
                   root: Path | None = None, fresh: bool = False) -> Path:
    """Copy the project into `dest` with merged params; a git repo with one commit."""
    root = root or project_root()
    dest = Path(dest).resolve()
    if fresh and dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for rel in project_files(root):
        if rel == "params.yaml" or rel.startswith(PROFILE_DIR + "/"):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != (root / rel).read_bytes():
            shutil.copy2(root / rel, target)
    params = merged_params(root, profile, overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    _sync_collect_deps(dest)
    if not (dest / ".git").exists():
        _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    subprocess.run(["git", "-c", "user.name=alignflow", "-c", "user.email=ci@alignflow", "commit", "-qm", "workspace",
                    "--allow-empty"], cwd=dest, capture_output=True)
    if not (dest / ".dvc").exists():
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=dest, check=True)
    return dest


def _sync_collect_deps(dest: Path) -> None:
    from alignflow.config import load_params
    from alignflow.data import source_deps

    source_deps.sync(load_params(dest / "params.yaml"), dest / "dvc.yaml")


def project_store(root: Path) -> str:
    """The project's tracking store: MLFLOW_TRACKING_URI, tracking.tracking_uri, else its mlflow.db."""
    from alignflow import tracking
    from alignflow.config import load_params

    with contextlib.chdir(root):
        return tracking.tracking_uri(load_params(root / "params.yaml"))


def run_smoke(workdir: Path, stages: str | None = None, fresh: bool = False) -> int:
    root = project_root()
    store = project_store(root)
    dest = make_workspace(workdir, "smoke", overrides={"tracking.tracking_uri": store}, root=root, fresh=fresh)
    cmd = [sys.executable, "-m", "alignflow.cli", "repro", "--name", "smoke"]
    if stages:
        cmd.append(stages)
    print(f"smoke workspace: {dest}\ntracking: {store}\n$ {' '.join(cmd)}", flush=True)
    rc = subprocess.call(cmd, cwd=dest)
    if rc == 0:
        print("smoke: done. Browse the runs with `make ui`; chat with the smoke champion with "
              "`alignflow chat --model champion` (from the project root)", flush=True)
    return rc

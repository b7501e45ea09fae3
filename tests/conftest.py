"""Shared fixtures: a real `mlflow server` on localhost, scratch DVC workspaces."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
if str(ROOT) not in sys.path:  # `components` is importable from the project root
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, port: int | None = None):
    """A real MLflow tracking server (sqlite backend, local artifact store) on localhost:
    returns (process, uri) once /health answers. The same `root` and `port` restart it."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    log = open(root / "server.log", "a")
    # its own process group: kill_server takes the uvicorn workers down with it
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not become healthy in 120 s")


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def kill_server(proc) -> None:
    """An outage: SIGKILL to the server and its workers, no clean shutdown."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=20)


def serve_mlflow(tmp_path_factory, name: str):
    """A session fixture's body: a server in its own temp dir, stopped at the end."""
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp(name))
    yield uri
    stop_server(proc)


def use_tracking_server(uri: str, monkeypatch) -> str:
    """Point MLflow (in this process and in child processes) at a test server."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One MLflow server for the session (tests that need an empty registry start their own)."""
    yield from serve_mlflow(tmp_path_factory, "mlflow")


@pytest.fixture
def tracking_env(mlflow_server, monkeypatch):
    return use_tracking_server(mlflow_server, monkeypatch)


@pytest.fixture
def workspace(tmp_path):
    """Factory: a copy of the project (git repo + DVC) with the smoke profile and overrides."""
    from alignflow.smoke import make_workspace

    def _make(overrides: dict | None = None, profile: str = "smoke", name: str = "ws") -> Path:
        return make_workspace(tmp_path / name, profile=profile, overrides=overrides, root=ROOT)

    return _make


def run_in(cwd: Path, *cmd: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command in a workspace with the venv on PATH; fail with its output."""
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: only called under `pytest -n N` (make test)
def pytest_xdist_make_scheduler(config, log):
    """Every scenario on one worker, the other tests one by one wherever a worker is free.

    The scenarios share one session-scoped base pipeline (tests/scenarios/conftest.py) that would
    otherwise be built once per worker. (xdist's own `--dist loadgroup` cannot group them under
    pytest 9: it renames `item._nodeid`, which pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ScenariosTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tests/scenarios" if nodeid.startswith("tests/scenarios/") else nodeid

    return ScenariosTogether(config, log)


def pytest_collection_modifyitems(config, items):
    """Under xdist the scenarios (one long unit of work, see above) start first, so the other
    worker runs everything else meanwhile instead of the run ending on them alone."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # set in each xdist worker, which collects and reports the order
        items.sort(key=lambda item: not item.nodeid.startswith("tests/scenarios/"))  # stable

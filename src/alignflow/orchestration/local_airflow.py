"""A local Airflow 3 on this checkout (`make airflow`, `make airflow-test`).

    python -m alignflow.orchestration.local_airflow setup       # AIRFLOW_HOME=.airflow ready, DAG serialized
    python -m alignflow.orchestration.local_airflow standalone  # setup, then `airflow standalone`
    python -m alignflow.orchestration.local_airflow test        # the DAG once on the smoke profile, no servers

setup: `.airflow/airflow.cfg` is Airflow's own generated default config (secrets included) with
a few options set in place: dags_folder = this checkout's dags/, no example DAGs, 4 executor
workers (not 32: the DAG runs one stage at a time), the API server on 127.0.0.1 with the
simple auth manager letting everyone in as admin (a local, loopback-only server: no login),
the execution API URL to match. Then `airflow db migrate`
(sqlite in .airflow/airflow.db) and `airflow dags reserialize`: `airflow dags list` reads the
serialized DAGs from the DB (only `--local` parses files), so without it the list stays empty
until a dag-processor has run. New DAGs start paused (Airflow's default): nothing runs the
pipeline in this checkout until a user unpauses or triggers alignflow_retrain.

standalone: `airflow standalone` = api-server + scheduler + dag-processor + triggerer with
LocalExecutor, reading the same AIRFLOW_HOME; tasks run `dvc repro` in this checkout.

test: `airflow dags test alignflow_retrain` (in-process, no executor, no servers) in a smoke
workspace (`alignflow.smoke.make_workspace`: the project with profiles/smoke.yaml merged into
params.yaml, its own git + DVC) under .airflow/smoke/, with its own AIRFLOW_HOME beside it so
the workspace's DAG file never replaces this checkout's in the server's DB. Exits non-zero
when the DAG run fails. MLflow: the project's store (MLFLOW_TRACKING_URI, else its mlflow.db).

.airflow/ holds a `.gitignore` of `*`: git (and so make_workspace's copy of the project)
ignores it even before the project's .gitignore lists it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

DAG_ID = "alignflow_retrain"
DEFAULT_HOME = ".airflow"


def airflow_bin() -> Path:
    return Path(sys.executable).parent / "airflow"


def airflow_env(home: Path) -> dict[str, str]:
    """The environment of every airflow command: this AIRFLOW_HOME, the venv's bin first on PATH
    (`airflow standalone` starts its components as plain `airflow ...`)."""
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    env["PATH"] = f"{airflow_bin().parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("ALIGNFLOW_PROJECT_DIR", None)  # the DAG takes its project from its own file's location
    return env


def airflow(home: Path, *args: str, cwd: Path | None = None, quiet: bool = True) -> subprocess.CompletedProcess:
    """Run `airflow <args>`; on failure print its output and exit with its code."""
    proc = subprocess.run([str(airflow_bin()), *args], env=airflow_env(home), cwd=cwd,
                          capture_output=quiet, text=True)
    if proc.returncode != 0:
        if quiet:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"`airflow {' '.join(args)}` failed ({proc.returncode})")
    return proc


def set_options(text: str, options: dict[str, dict[str, str]]) -> str:
    """Set `options` ({section: {key: value}}) in an INI text in place, keeping comments and the
    rest: an active `key = ...` line is replaced, else a commented-out `# key = ...` line, else
    the key goes right under its section header (a missing section goes at the end)."""
    lines = text.splitlines()
    sections = [None] * len(lines)  # the section each line is in
    section = None
    for i, line in enumerate(lines):
        if header := re.match(r"^\[([^\]]+)\]\s*$", line):
            section = header.group(1)
        sections[i] = section
    setting = re.compile(r"^(#\s*)?([A-Za-z0-9_.-]+)\s*=")
    out = list(lines)
    for section, values in options.items():
        for key, value in values.items():
            hits = [(i, bool(m.group(1))) for i, line in enumerate(lines)
                    if sections[i] == section and (m := setting.match(line)) and m.group(2) == key]
            active = [i for i, commented in hits if not commented]
            if active:
                out[active[0]] = f"{key} = {value}"
                for i in active[1:]:
                    out[i] = None  # a duplicate would make configparser fail
            elif hits:
                out[hits[0][0]] = f"{key} = {value}"
            else:
                out.append(("__ADD__", section, f"{key} = {value}"))
    adds = [item for item in out if isinstance(item, tuple)]
    result: list[str] = []
    for i, line in enumerate(lines):
        if out[i] is not None:
            result.append(out[i])
        if re.match(r"^\[([^\]]+)\]\s*$", line):
            result += [a[2] for a in adds if a[1] == sections[i]]
            adds = [a for a in adds if a[1] != sections[i]]
    for section in dict.fromkeys(a[1] for a in adds):
        result += ["", f"[{section}]", *(a[2] for a in adds if a[1] == section)]
    return "\n".join(result) + "\n"


def local_options(dags_folder: Path, host: str, port: int) -> dict[str, dict[str, str]]:
    return {
        "core": {
            "dags_folder": str(dags_folder),
            "load_examples": "False",
            # LocalExecutor forks this many workers; the DAG runs one stage at a time anyway.
            "parallelism": "4",
            "simple_auth_manager_all_admins": "True",  # loopback-only dev server: no login
            "execution_api_server_url": f"http://{host}:{port}/execution/",
        },
        "api": {"host": host, "port": str(port)},
    }


def configure(home: Path, dags_folder: Path, host: str = "127.0.0.1", port: int = 8080) -> Path:
    """AIRFLOW_HOME with Airflow's default airflow.cfg (generated on first use) patched for
    this checkout; idempotent."""
    home.mkdir(parents=True, exist_ok=True)
    ignore = home / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# local Airflow state (make airflow / make airflow-test): never committed\n*\n")
    cfg = home / "airflow.cfg"
    if not cfg.exists():  # any airflow command writes the full default config (with fresh secrets)
        airflow(home, "config", "get-value", "core", "dags_folder")
    text = cfg.read_text()
    patched = set_options(text, local_options(dags_folder.resolve(), host, port))
    if patched != text:
        cfg.write_text(patched)
    return cfg


def setup(home: Path, project: Path, host: str = "127.0.0.1", port: int = 8080) -> None:
    started = time.perf_counter()
    cfg = configure(home, project / "dags", host, port)
    print(f"local_airflow: {cfg} (dags_folder = {project / 'dags'})", flush=True)
    airflow(home, "db", "migrate")
    print("local_airflow: database migrated", flush=True)
    airflow(home, "dags", "reserialize")
    listed = _json_tail(airflow(home, "dags", "list", "-o", "json").stdout)
    if DAG_ID not in {d["dag_id"] for d in listed}:
        errors = airflow(home, "dags", "list-import-errors").stdout
        raise SystemExit(f"{DAG_ID} is not in `airflow dags list` after reserialize:\n{errors}")
    print(f"local_airflow: {DAG_ID} serialized; ready in {time.perf_counter() - started:.0f} s\n"
          f"  export AIRFLOW_HOME={home}   # then `airflow dags list`, `airflow dags trigger {DAG_ID}`, ...",
          flush=True)


def _json_tail(stdout: str):
    """The JSON document a CLI printed (Airflow logs warnings to stdout before it)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(("[", "{")):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise ValueError(f"no JSON in: {stdout[-2000:]}")


def standalone(home: Path, project: Path, host: str, port: int) -> None:
    setup(home, project, host, port)
    print(f"local_airflow: `airflow standalone` -> http://{host}:{port} (no login; {DAG_ID} starts paused; "
          "Ctrl-C stops all components)", flush=True)
    os.execve(str(airflow_bin()), [str(airflow_bin()), "standalone"], airflow_env(home))


def smoke_test(home: Path, project: Path, overrides: dict, fresh: bool = False) -> int:
    """`airflow dags test` of the DAG on the smoke profile in .airflow/smoke/workspace."""
    from alignflow.smoke import make_workspace, project_store

    started = time.perf_counter()
    uri = project_store(project)  # the project's own store, as `make smoke`: `make ui` shows the run
    workspace = make_workspace(home / "smoke" / "workspace", profile="smoke",
                               overrides={"tracking.tracking_uri": uri, **overrides}, root=project, fresh=fresh)
    test_home = home / "smoke" / "home"
    configure(test_home, workspace / "dags")
    airflow(test_home, "db", "migrate")
    print(f"local_airflow: smoke workspace {workspace}\n  MLflow: {uri}\n"
          f"$ AIRFLOW_HOME={test_home} airflow dags test {DAG_ID}", flush=True)
    proc = subprocess.run([str(airflow_bin()), "dags", "test", DAG_ID], cwd=workspace, env=airflow_env(test_home))
    took = time.perf_counter() - started
    state = "succeeded" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    print(f"local_airflow: {DAG_ID} on the smoke profile {state} in {took:.0f} s", flush=True)
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alignflow.orchestration.local_airflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["setup", "standalone", "test"])
    parser.add_argument("--home", default=DEFAULT_HOME, help="AIRFLOW_HOME (default: .airflow in the project)")
    parser.add_argument("--host", default="127.0.0.1", help="API server address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="test: params override over the smoke profile, e.g. -S orchestration.stages=[collect]")
    parser.add_argument("--fresh", action="store_true", help="test: rebuild the smoke workspace from scratch")
    args = parser.parse_args(argv)

    from alignflow.smoke import project_root
    from alignflow.stage import parse_overrides

    project = project_root()
    home = Path(args.home)
    home = (home if home.is_absolute() else project / home).resolve()
    if args.command == "setup":
        setup(home, project, args.host, args.port)
    elif args.command == "standalone":
        standalone(home, project, args.host, args.port)
    else:
        return smoke_test(home, project, parse_overrides(args.set), fresh=args.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())

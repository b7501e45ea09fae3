"""`alignflow` console script: run a stage, the whole pipeline, the smoke profile, a chat."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

from alignflow import STAGES


def _cmd_run(args: argparse.Namespace, rest: list[str]) -> int:
    module = importlib.import_module(f"components.{args.stage}")
    module.main(rest)
    return 0


def _cmd_validate(args: argparse.Namespace, rest: list[str]) -> int:
    from alignflow.config import ParamsError, load_params
    from alignflow.stage import parse_overrides

    try:
        load_params(args.params, parse_overrides(args.set))
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"{args.params}: ok")
    return 0


def _cmd_repro(args: argparse.Namespace, rest: list[str]) -> int:
    """`dvc repro` (or `dvc exp run`) under one MLflow parent run."""
    from alignflow import tracking
    from alignflow.config import load_params

    params = load_params(args.params)
    dvc = [sys.executable, "-m", "dvc", *(["exp", "run"] if args.exp else ["repro"]), *rest]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with tracking.pipeline_run(params, name=args.name or f"pipeline-{params.profile}"):
        env[tracking.PARENT_ENV] = os.environ[tracking.PARENT_ENV]
        rc = subprocess.call(dvc, env=env)
        if rc:  # leaves the parent run FAILED
            raise SystemExit(rc)
    return 0


def _cmd_smoke(args: argparse.Namespace, rest: list[str]) -> int:
    from alignflow.smoke import run_smoke

    return run_smoke(Path(args.workdir), stages=args.until, fresh=args.fresh)


def _cmd_chat(args: argparse.Namespace, rest: list[str]) -> int:
    from alignflow.evaluation.chat import chat_main

    return chat_main(args.model, max_new_tokens=args.max_new_tokens)


def main(argv: list[str] | None = None) -> None:
    # Components live beside params.yaml; make them importable from the project root.
    sys.path.insert(0, os.getcwd())
    parser = argparse.ArgumentParser(prog="alignflow")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one stage (same as python -m components.<stage>)")
    p.add_argument("stage", choices=STAGES)
    p.set_defaults(fn=_cmd_run)

    p = sub.add_parser("validate", help="check params.yaml against the schema")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("-S", "--set", action="append", default=[])
    p.set_defaults(fn=_cmd_validate)

    p = sub.add_parser("repro", help="dvc repro under one MLflow parent run; extra args go to dvc")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--name", default=None, help="parent run name")
    p.add_argument("--exp", action="store_true", help="use `dvc exp run` (pass -S key=value after --)")
    p.set_defaults(fn=_cmd_repro)

    p = sub.add_parser("smoke", help="the whole DAG on a tiny model and tiny data, in a scratch workspace")
    p.add_argument("--workdir", default=".smoke")
    p.add_argument("--until", default=None, help="last stage to run (default: all)")
    p.add_argument("--fresh", action="store_true", help="recreate the workspace")
    p.set_defaults(fn=_cmd_smoke)

    p = sub.add_parser("chat", help="chat in the terminal with a trained or registered model")
    p.add_argument("--model", default="champion", help="registry alias (champion, candidate), models:/ URI or path")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.set_defaults(fn=_cmd_chat)

    args, rest = parser.parse_known_args(argv)
    raise SystemExit(args.fn(args, rest))


if __name__ == "__main__":
    main()

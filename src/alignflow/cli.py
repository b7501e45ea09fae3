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


def _split_dvc_args(rest: list[str]) -> tuple[list[str], list[str]]:
    """(-S values, the other args for dvc) from what follows `repro`; a `--` is dropped, so
    `alignflow repro --exp -S k=v` and `alignflow repro --exp -- -S k=v` mean the same."""
    sets, other, args = [], [], [a for a in rest if a != "--"]
    i = 0
    while i < len(args):
        if args[i] in ("-S", "--set") and i + 1 < len(args):
            sets.append(args[i + 1])
            i += 2
            continue
        if args[i].startswith("--set="):
            sets.append(args[i].split("=", 1)[1])
        else:
            other.append(args[i])
        i += 1
    return sets, other


def _exp_name(dvc_args: list[str]) -> tuple[str, list[str]]:
    """The DVC experiment's name (-n/--name given to dvc, else a fresh DVC-style one) and the
    dvc args that set it, so the MLflow parent can be named after the experiment up front."""
    for i, arg in enumerate(dvc_args):
        if arg in ("-n", "--name") and i + 1 < len(dvc_args):
            return dvc_args[i + 1], dvc_args
        if arg.startswith("--name="):
            return arg.split("=", 1)[1], dvc_args
    from dvc.repo.experiments.utils import gen_random_name

    name = gen_random_name()
    return name, ["--name", name, *dvc_args]


def _cmd_repro(args: argparse.Namespace, rest: list[str]) -> int:
    """`dvc repro` (or `dvc exp run`) under one MLflow parent run, then `alignflow promote`."""
    from alignflow import tracking
    from alignflow.config import ParamsError, load_params
    from alignflow.data import source_deps
    from alignflow.stage import parse_overrides

    extra_sets, dvc_args = _split_dvc_args(rest)
    sets = [*args.set, *extra_sets]
    try:
        if sets and not args.exp:
            raise ParamsError("-S needs --exp: `dvc repro` runs params.yaml as it is; `dvc exp run -S` applies "
                              "overrides in an experiment (alignflow repro --exp -S key=value)")
        # What the stages will read: params.yaml with the experiment's -S values applied.
        params = load_params(args.params, parse_overrides(sets))
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    if source_deps.sync(params, Path("dvc.yaml")):
        print("dvc.yaml: the deps of collect now follow collect.sources", flush=True)
    tags = {}
    if args.exp:
        # --name names the DVC experiment and its MLflow parent alike
        exp, dvc_args = _exp_name(["--name", args.name, *dvc_args] if args.name else dvc_args)
        name, tags = exp, {tracking.TAG_DVC_EXP: exp}
        dvc_args = [*dvc_args, *(a for kv in sets for a in ("-S", kv))]
    else:
        name = args.name or f"pipeline-{params.profile}"
    dvc = [sys.executable, "-m", "dvc", *(["exp", "run"] if args.exp else ["repro"]), *dvc_args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with tracking.pipeline_run(params, name=tracking.parent_label(params, name), tags=tags) as parent_id:
        env[tracking.PARENT_ENV] = parent_id
        print(f"$ {' '.join(['dvc', *dvc[3:]])}", flush=True)
        rc = subprocess.call(dvc, env=env)
        if rc:  # leaves the parent run FAILED
            raise SystemExit(rc)
        if args.exp and not params.eval.gate.promote_in_experiments:
            print("alignflow: an experiment does not move `champion` (eval.gate.promote_in_experiments: false); "
                  "`dvc exp apply` it and run `alignflow promote` to promote its candidate", flush=True)
        else:
            _promote_after_repro()
    return 0


def _promote_after_repro() -> None:
    """Promote when this pipeline's eval is committed; say why not otherwise (e.g. a repro of
    an earlier target left eval out of date), without failing the run."""
    from alignflow.evaluation import promote

    if not promote.GATE_FILE.exists():
        return
    if promote.eval_changes():
        print("alignflow: eval is not up to date with dvc.lock; champion unchanged", flush=True)
        return
    try:
        promote.promote()
    except promote.PromotionError as err:
        print(f"alignflow promote: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _cmd_promote(args: argparse.Namespace, rest: list[str]) -> int:
    from alignflow import tracking
    from alignflow.config import load_params
    from alignflow.evaluation import promote

    tracking.configure(load_params(args.params))
    try:
        promote.promote()
    except promote.PromotionError as err:
        print(f"alignflow promote: {err}", file=sys.stderr)
        return 2
    return 0


def _cmd_sync_deps(args: argparse.Namespace, rest: list[str]) -> int:
    from alignflow.config import load_params
    from alignflow.data import source_deps

    changed = source_deps.sync(load_params(args.params), Path("dvc.yaml"))
    print("dvc.yaml: the deps of collect now follow collect.sources" if changed else "dvc.yaml: collect deps up to date")
    return 0


def _cmd_sweep_plot(args: argparse.Namespace, rest: list[str]) -> int:
    from alignflow import sweeps

    if rest:
        print(f"alignflow sweep-plot: error: unrecognized arguments: {' '.join(rest)}", file=sys.stderr)
        return 2
    try:
        rows, page = sweeps.plot(args.param, args.metrics, only=args.exp or None)
    except sweeps.SweepError as err:
        print(f"alignflow sweep-plot: {err}", file=sys.stderr)
        return 2
    columns = ["experiment", args.param, *args.metrics]
    print("\t".join(["experiment", args.param, *map(sweeps.metric_column, args.metrics)]))
    for row in rows:
        print("\t".join(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    print(f"{page} (one figure per metric; the CSVs beside it)")
    return 0


def _cmd_rm_accuracy(args: argparse.Namespace, rest: list[str]) -> int:
    from alignflow.config import load_params
    from alignflow.evaluation import reward_accuracy as ra
    from alignflow.evaluation.judging import rm_pair_accuracy
    from alignflow.io import InputError

    if rest:
        print(f"alignflow rm-accuracy: error: unrecognized arguments: {' '.join(rest)}", file=sys.stderr)
        return 2
    try:
        params = load_params(args.params)
        files = [(Path(f), *ra.read_pairs(Path(f), args.format)) for f in args.files]
        rm, rm_tok = ra.load_trained_reward_model(Path(args.model), params)
    except InputError as err:
        print(f"alignflow rm-accuracy: {err}", file=sys.stderr)
        return 2
    print("file\tpairs\taccuracy\t95% CI")
    for path, pairs, skipped, first in files:
        if skipped:
            print(f"{path}: {skipped} rows skipped (first: {first})", file=sys.stderr)
        if not pairs:
            print(f"{path}\t0\t-\t-")
            continue
        est = rm_pair_accuracy(rm, rm_tok, pairs, params.eval, key="accuracy", seed=params.seed)
        print(f"{path}\t{est['accuracy_n']}\t{est['accuracy']:.3f}\t{est['accuracy_ci_low']:.3f}-{est['accuracy_ci_high']:.3f}")
    return 0


def _cmd_smoke(args: argparse.Namespace, rest: list[str]) -> int:
    from alignflow.smoke import run_smoke

    return run_smoke(Path(args.workdir), stages=args.until, fresh=args.fresh)


def _cmd_chat(args: argparse.Namespace, rest: list[str]) -> int:
    from alignflow.evaluation.chat import chat_main

    if rest:
        print(f"alignflow chat: error: unrecognized arguments: {' '.join(rest)}", file=sys.stderr)
        return 2
    return chat_main(args.model, max_new_tokens=args.max_new_tokens, compare=args.compare,
                     temperature=args.temperature, system=args.system)


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

    p = sub.add_parser("repro", help="dvc repro under one MLflow parent run, then promote; extra args go to dvc")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--name", default=None, help="parent run name (with --exp: also the DVC experiment's name)")
    p.add_argument("--exp", action="store_true", help="use `dvc exp run` (an experiment; -S key=value overrides)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --exp: override a param in the experiment (as dvc exp run -S)")
    p.set_defaults(fn=_cmd_repro)

    p = sub.add_parser("promote", help="move `champion` to the candidate eval passed, once DVC committed eval")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(fn=_cmd_promote)

    p = sub.add_parser("sync-deps", help="make the deps of collect in dvc.yaml follow collect.sources")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(fn=_cmd_sync_deps)

    p = sub.add_parser("sweep-plot", help="one param against metrics over the DVC experiments of HEAD: a table "
                       "and dvc_plots/sweeps/<param>/index.html (e.g. selection.keep_fraction metrics/sft.json:eval_loss)")
    p.add_argument("param", help="a params.yaml key, e.g. selection.keep_fraction")
    p.add_argument("metrics", nargs="+", metavar="FILE:KEY",
                   help="a number in an experiment's JSON file, e.g. metrics/eval.json:ifeval_strict_policy")
    p.add_argument("--exp", action="append", default=[], help="only these experiments (repeatable; default: all)")
    p.set_defaults(fn=_cmd_sweep_plot)

    p = sub.add_parser("rm-accuracy", help="a trained reward model's accuracy (+ 95%% CI) on held-out preference "
                       "pairs of any file, e.g. HH-RLHF's test split")
    p.add_argument("files", nargs="+", metavar="FILE", help="JSON Lines / JSON (.gz too) of preference pairs")
    p.add_argument("--model", default="models/reward", help="a reward stage's output dir (default: models/reward)")
    p.add_argument("--format", default="hh_rlhf", choices=["hh_rlhf", "preference"],
                   help="hh_rlhf (chosen/rejected transcripts) | preference (prompt/chosen/rejected)")
    p.add_argument("--params", default="params.yaml", help="eval.batch_size/max_length/bootstrap and the seed")
    p.set_defaults(fn=_cmd_rm_accuracy)

    p = sub.add_parser("smoke", help="the whole DAG on a tiny model and tiny data, in a scratch workspace")
    p.add_argument("--workdir", default=".smoke")
    p.add_argument("--until", default=None, help="last stage to run (default: all)")
    p.add_argument("--fresh", action="store_true", help="recreate the workspace")
    p.set_defaults(fn=_cmd_smoke)

    p = sub.add_parser("chat", help="chat in the terminal with a trained or registered model (replies stream; "
                       "Ctrl-C stops one, Ctrl-D leaves; /help lists the commands)")
    p.add_argument("--model", default="champion",
                   help="registry alias (champion, candidate), models:/ URI, model dir or spec (embedded:..., tiny:...)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="two models answering each prompt, one after the other "
                        "(e.g. --compare sft champion; sft = models/sft)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--system", default=None, help="system prompt (also /system <text> in the chat)")
    p.set_defaults(fn=_cmd_chat)

    args, rest = parser.parse_known_args(argv)
    from alignflow import logs

    logs.setup()  # the stages' log format, libraries at WARNING (alignflow.logs)
    raise SystemExit(args.fn(args, rest))


if __name__ == "__main__":
    main()

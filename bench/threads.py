"""Threads beside other processes: generation tokens/s per process, alone and two at once.

torch starts one OpenMP thread per core and those threads spin while they wait, so two torch
processes on a small machine slow each other down far more than sharing the CPUs explains.
`alignflow.threads` gives a process alone every core and the spinning default, and one beside
other alignflow processes its fair share and OMP_WAIT_POLICY=PASSIVE. Measured, per process, the
same model and prompts in:
  alone-default    one process, torch's defaults
  alone-passive    one process, OMP_WAIT_POLICY=PASSIVE
  two-default      two at once, torch's defaults
  two-passive      two at once, OMP_WAIT_POLICY=PASSIVE
  two-1thread      two at once, OMP_NUM_THREADS=1 each
  alone-alignflow  one process, alignflow.threads.configure_env() + apply()
  two-alignflow    two, each started once the one before registered (so it sees it)
Each worker is a fresh process (`--worker`): it loads the model, warms up, waits until every
worker of its case is ready, then times `generate_with_details` alone (so the generations of a
two-process case overlap). A case's workers share a private temp dir, hence their own alignflow
registry: alignflow processes running elsewhere on the machine do not count. The cases alternate
within each round (in reverse order every other round). Reported per case: mean tokens/s per
process with a 95 % t-interval over rounds x processes, and the total over its processes.

    .venv/bin/python bench/threads.py                      # embedded SmolLM2-135M, 16 prompts x 32 tokens, 2 rounds
    .venv/bin/python bench/threads.py --model tiny:llama --prompts 2 --tokens 4 --rounds 1   # does it run
    .venv/bin/python bench/threads.py --cases two-default,two-alignflow --rounds 4
    .venv/bin/python bench/threads.py --backend openvino --out bench/results/threads_openvino.json

`--backend ct2` or `openvino` measures the engine the stages generate on. CTranslate2 runs as
many threads as torch was given (intra_threads = torch.get_num_threads()); OpenVINO every core
the process may use (alignflow.threads.unshared: its TBB workers sleep when idle, and
OMP_WAIT_POLICY does not reach them). The report's `threads` column is torch's count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parents[1]
# Settings a worker must not inherit from the shell: each case sets its own.
THREAD_ENV = ("ALIGNFLOW_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "_ALIGNFLOW_THREADS_EXPORTED")
TOPICS = ("a lighthouse keeper", "the water cycle", "a robot learning to paint", "how bridges carry weight",
          "a city at night", "why the sky is blue", "a chess game", "the first day of school")
MESSAGE = "BENCH "  # prefix of the protocol lines a worker prints; anything else on stdout is ignored


@dataclass(frozen=True)
class Case:
    name: str
    procs: int
    env: dict = field(default_factory=dict)
    alignflow: bool = False


CASES = (
    Case("alone-default", 1),
    Case("alone-passive", 1, {"OMP_WAIT_POLICY": "PASSIVE"}),
    Case("two-default", 2),
    Case("two-passive", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    Case("two-1thread", 2, {"OMP_NUM_THREADS": "1"}),
    Case("alone-alignflow", 1, alignflow=True),
    Case("two-alignflow", 2, alignflow=True),
)


def prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Write a short paragraph about {TOPICS[i % len(TOPICS)]}."}] for i in range(n)]


# --- worker: one process of a case -------------------------------------------------------------


def say(event: str, payload: dict | None = None) -> None:
    print(f"{MESSAGE}{event} {json.dumps(payload or {})}", flush=True)


def worker(args: argparse.Namespace) -> int:
    if args.alignflow:
        from alignflow import logs, threads

        logs.setup()
        threads.configure_env()  # before torch loads: OpenMP reads the wait policy then
    say("configured")  # registered (alignflow cases): the next worker may start
    import torch

    from alignflow.rlhf.generation import make_generator

    if args.alignflow:
        threads.apply()
    generator = make_generator(args.model, args.backend)
    batch = prompts(args.prompts)
    generator.generate_with_details(batch[:1], max_new_tokens=2, progress=False)  # warm-up, untimed
    say("ready")
    if sys.stdin.readline().strip() != "go":
        return 1
    started = time.perf_counter()
    generations = generator.generate_with_details(batch, n=1, max_new_tokens=args.tokens, temperature=0.8, top_p=0.95,
                                                  seed=0, batch_size=16, progress=False)
    seconds = time.perf_counter() - started
    tokens = sum(g.num_tokens for row in generations for g in row)
    say("result", {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 2),
                   "threads": torch.get_num_threads(), "wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")})
    return 0


# --- driver: start a case's workers, in step ----------------------------------------------------


class Worker:
    """A worker process; its protocol lines arrive through a reader thread (waits with a timeout)."""

    def __init__(self, cmd: list[str], env: dict, log: Path):
        self.log = log
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=log.open("w"), text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(MESSAGE):
                self.lines.put(line[len(MESSAGE):])
        self.lines.put(None)  # exited

    def expect(self, event: str, timeout: float) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None or line.split(" ", 1)[0] != event:
            raise RuntimeError(f"worker {self.proc.pid}: no {event!r} (got {line!r}); its stderr ends:\n"
                               + self.log.read_text()[-3000:])
        return json.loads(line.split(" ", 1)[1])

    def send(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def worker_env(case: Case, tmp: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env.update(case.env)
    env["TMPDIR"] = tmp  # a registry of this case's workers alone
    return env


def run_case(case: Case, args: argparse.Namespace) -> list[dict]:
    """One run of a case: the result of each of its workers."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", args.model, "--backend", args.backend,
           "--prompts", str(args.prompts), "--tokens", str(args.tokens)] + (["--alignflow"] if case.alignflow else [])
    with tempfile.TemporaryDirectory(prefix="threads-bench-") as tmp:
        env = worker_env(case, tmp)
        workers: list[Worker] = []
        try:
            for i in range(case.procs):
                workers.append(Worker(cmd, env, Path(tmp) / f"worker{i}.log"))
                workers[-1].expect("configured", args.timeout)
            for w in workers:
                w.expect("ready", args.timeout)
            for w in workers:
                w.send("go")
            return [w.expect("result", args.timeout) for w in workers]
        finally:
            for w in workers:
                w.stop()


# --- statistics and report ----------------------------------------------------------------------

# two-sided 95 % Student t quantiles (scipy is not a dependency): df -> t
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 60: 2.000, 120: 1.980}


def t95(df: int) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:
        return T95[max(k for k in T95 if k <= df)] if df < 120 else 1.96  # the next smaller df: wider, safe


def summarize(samples: list[float]) -> dict:
    """Mean and the half-width of its 95 % t-interval (None from a single sample)."""
    n = len(samples)
    mean = sum(samples) / n
    half = None
    if n > 1:
        sd = math.sqrt(sum((x - mean) ** 2 for x in samples) / (n - 1))
        half = round(t95(n - 1) * sd / math.sqrt(n), 2)
    return {"mean": round(mean, 2), "ci95": half, "n": n, "samples": samples}


def fmt(stat: dict) -> str:
    return f"{stat['mean']:.1f}" + (f" ± {stat['ci95']:.1f}" if stat["ci95"] is not None else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32, help="max new tokens per prompt")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", default="hf", choices=("hf", "openvino", "ct2"), help="the generation engine")
    parser.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated subset")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a worker may take for each step")
    parser.add_argument("--out", default=str(ROOT / "bench/results/threads.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--alignflow", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    by_name = {c.name: c for c in CASES}
    unknown = [name for name in args.cases.split(",") if name not in by_name]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    cases = [by_name[name] for name in args.cases.split(",")]

    from alignflow.models import resolve_spec
    from alignflow.threads import _cpus

    from alignflow.rlhf.generation import make_generator

    resolve_spec(args.model)  # materialize (and convert, for an engine) once, not by two workers at once
    if args.backend != "hf":
        make_generator(args.model, args.backend)
    runs: dict[str, list[list[dict]]] = {c.name: [] for c in cases}
    for r in range(args.rounds):
        for case in cases if r % 2 == 0 else reversed(cases):
            results = run_case(case, args)
            runs[case.name].append(results)
            print(f"round {r + 1} {case.name:16s} " + "  ".join(
                f"{w['tokens_per_s']:7.2f} tok/s ({w['threads']} threads, {w['wait_policy']})" for w in results), flush=True)

    report_cases = {}
    for case in cases:
        per_process = [w["tokens_per_s"] for run in runs[case.name] for w in run]
        totals = [round(sum(w["tokens_per_s"] for w in run), 2) for run in runs[case.name]]
        report_cases[case.name] = {
            "procs": case.procs, "env": case.env, "alignflow": case.alignflow,
            "tokens_per_s_per_process": summarize(per_process), "total_tokens_per_s": summarize(totals),
            "threads": sorted({f"{w['threads']}/{w['wait_policy']}" for run in runs[case.name] for w in run}),
            "runs": runs[case.name],
        }
    import torch

    report = {
        "model": args.model, "backend": args.backend, "prompts": args.prompts, "max_new_tokens": args.tokens, "rounds": args.rounds,
        "cpus": os.cpu_count(), "cores": _cpus(), "machine": platform.machine(), "torch": torch.__version__,
        "cases": report_cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{'case':16s} {'procs':>5s}  {'threads/wait':24s} {'tok/s per process (95% CI)':>27s} {'total tok/s':>15s}")
    for name, row in report_cases.items():
        print(f"{name:16s} {row['procs']:5d}  {', '.join(row['threads']):24s} "
              f"{fmt(row['tokens_per_s_per_process']):>27s} {fmt(row['total_tokens_per_s']):>15s}")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

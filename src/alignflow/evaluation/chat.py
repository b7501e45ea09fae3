"""`alignflow chat --model champion`: talk to what you trained, in the terminal.

The model is a registry alias of alignflow-policy (`champion`, `candidate`), a `models:/` URI,
or a model directory (models/policy, models/sft). The conversation is rendered with the model's
own chat template and kept as history; `/reset` clears it, `/exit` (or EOF) leaves. Lines come
from stdin, so `printf 'hi\\n/exit\\n' | alignflow chat --model models/sft` works in scripts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

HELP = "commands: /reset (forget the conversation), /exit (leave); anything else is a message"


def _configure_tracking() -> None:
    """Same tracking URI rules as the stages: env var, params.yaml, else ./mlflow.db."""
    import mlflow

    from alignflow import tracking

    params = None
    if not os.environ.get("MLFLOW_TRACKING_URI") and Path("params.yaml").exists():
        from alignflow.config import ParamsError, load_params

        try:
            params = load_params("params.yaml")
        except ParamsError:
            params = None
    mlflow.set_tracking_uri(tracking.tracking_uri(params))


def resolve(model_ref: str) -> Path:
    from alignflow.evaluation.registry import resolve_model_ref

    if model_ref in ("champion", "candidate") or model_ref.startswith("models:/"):
        _configure_tracking()
    return resolve_model_ref(model_ref)


def load_chat_model(model_dir: Path):
    """(model, tokenizer); a best_of_n policy chats with its underlying policy model."""
    from alignflow.models import load_causal_lm, read_meta
    from alignflow.models.specs import resolve_base_ref

    meta = read_meta(model_dir) or {}
    if meta.get("kind") == "best_of_n":
        return load_causal_lm(str(resolve_base_ref(meta["policy"], model_dir)))
    return load_causal_lm(str(model_dir))


def repl(model, tokenizer, *, max_new_tokens: int = 256, temperature: float = 0.7, seed: int = 0,
         stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Read a line, answer it with the history so far; returns the number of answers given."""
    from alignflow.rlhf.generation import generate

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty()
    history: list[dict] = []
    answers = 0
    print(HELP, file=stdout, flush=True)
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # EOF
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history.clear()
            print("(conversation cleared)", file=stdout, flush=True)
            continue
        if text.startswith("/"):
            print(f"unknown command {text}; {HELP}", file=stdout, flush=True)
            continue
        history.append({"role": "user", "content": text})
        reply = generate(model, tokenizer, [history], n=1, max_new_tokens=max_new_tokens,
                         temperature=temperature, seed=seed + answers, progress=False)[0][0]
        history.append({"role": "assistant", "content": reply})
        answers += 1
        print(f"assistant> {reply}", file=stdout, flush=True)
    return answers


def chat_main(model: str = "champion", max_new_tokens: int = 256) -> int:
    """Entry point of `alignflow chat`; returns the process exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model_dir = resolve(model)
    except (LookupError, FileNotFoundError) as err:
        print(f"alignflow chat: error: {err}", file=sys.stderr)
        return 2
    print(f"loading {model} ({model_dir}) ...", file=sys.stderr, flush=True)
    lm, tokenizer = load_chat_model(model_dir)
    repl(lm, tokenizer, max_new_tokens=max_new_tokens)
    return 0

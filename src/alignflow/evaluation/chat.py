"""`alignflow chat --model champion`: talk to what you trained, in the terminal.

The model is a registry alias of alignflow-policy (`champion`, `candidate`), a `models:/` URI,
a model directory (models/policy, models/sft; `sft` for short) or a model spec (`embedded:smollm2-135m-instruct`,
`tiny:llama`). `--compare sft champion` asks two models the same thing, one after the other,
each reply labelled and streamed; each model keeps its own side of the conversation.

Replies are streamed as they are generated (transformers' `TextIteratorStreamer`, `generate` in a
thread). On a terminal, prompts are read with prompt_toolkit (line editing, up-arrow history;
`input()` with readline when prompt_toolkit is missing); Ctrl-C stops the current reply (a
stopping criterion polls a flag the SIGINT handler sets) and the session goes on, Ctrl-D leaves.
The conversation is rendered with the model's own chat template and kept as history; see HELP
for the commands. When stdin is not a terminal, prompts are read line by line and each reply is
printed, so `printf 'hi\\n' | alignflow chat --model models/sft` works in scripts.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

HELP = ("commands: /reset (forget the conversation), /system <text> (set the system prompt; /system alone "
        "removes it), /help, /exit (or Ctrl-D); Ctrl-C stops a reply; //text sends /text; anything else is a message")
COMMANDS = {"/reset": "reset", "/system": "system", "/help": "help", "/exit": "exit", "/quit": "exit"}
SPEC_PREFIXES = ("embedded:", "tiny:")  # model specs load_causal_lm takes as they are
PROMPT = "you> "
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ChatError(Exception):
    """A model reference that cannot be resolved or loaded; reported as one line, exit code 2."""


@dataclass(frozen=True)
class Command:
    kind: str  # message | reset | system | help | exit | empty | unknown
    arg: str = ""


def parse_command(line: str) -> Command:
    """What a line typed at the prompt asks for (a pure function)."""
    text = line.strip()
    if not text:
        return Command("empty")
    if text.startswith("//"):
        return Command("message", text[1:])
    if not text.startswith("/"):
        return Command("message", text)
    name, _, arg = text.partition(" ")
    kind = COMMANDS.get(name.lower())
    return Command(kind, arg.strip()) if kind else Command("unknown", name)


@dataclass
class Conversation:
    system: str | None = None
    turns: list[dict] = field(default_factory=list)

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.turns]


@dataclass
class Speaker:
    """One model in the chat, with its side of the conversation."""

    label: str
    model: object
    tokenizer: object
    conversation: Conversation = field(default_factory=Conversation)


# --- resolving and loading ---------------------------------------------------------------------


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


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _naming(ref: object, err: BaseException) -> str:
    """The error's first line, naming `ref` unless it already does."""
    line = _first_line(err)
    return line if str(ref) in line else f"{ref}: {line}"


def expand_ref(model_ref: str, is_dir: Callable[[Path], bool] = Path.is_dir) -> str:
    """`sft`, `policy`, ... name models/<name> when that is a dir and `model_ref` itself is not one."""
    short = model_ref and "/" not in model_ref and ":" not in model_ref and model_ref not in ("champion", "candidate")
    if short and not is_dir(Path(model_ref)) and is_dir(Path("models") / model_ref):
        return str(Path("models") / model_ref)
    return model_ref


def resolve(model_ref: str) -> Path | str:
    """A local model dir (or a model spec) for `model_ref`; ChatError when there is none."""
    from alignflow.evaluation.registry import resolve_model_ref

    model_ref = expand_ref(model_ref)
    if model_ref.startswith(SPEC_PREFIXES):
        return model_ref
    if model_ref not in ("champion", "candidate") and not model_ref.startswith("models:/"):
        try:
            return resolve_model_ref(model_ref)
        except (LookupError, OSError) as err:
            raise ChatError(_naming(model_ref, err)) from err
    _configure_tracking()
    from mlflow.exceptions import MlflowException

    try:
        return resolve_model_ref(model_ref)
    except (LookupError, OSError, MlflowException) as err:
        raise ChatError(_naming(model_ref, err)) from err


def load_chat_model(model_dir: Path | str):
    """(model, tokenizer) in eval mode; a best_of_n policy chats with its underlying policy model."""
    from alignflow.models import load_causal_lm, read_meta
    from alignflow.models.specs import resolve_base_ref

    meta = (read_meta(model_dir) if Path(model_dir).is_dir() else None) or {}
    spec = resolve_base_ref(meta["policy"], Path(model_dir)) if meta.get("kind") == "best_of_n" else model_dir
    try:
        model, tokenizer = load_causal_lm(str(spec))
    except (OSError, ValueError) as err:  # ModelSpecError is a ValueError
        raise ChatError(_naming(model_dir, err)) from err
    model.eval()
    return model, tokenizer


# --- streaming one reply -----------------------------------------------------------------------


def _flag_criterion(*events: threading.Event):
    """A StoppingCriteria that ends generation as soon as one of `events` is set."""
    import torch
    from transformers import StoppingCriteria

    class FlagSet(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stop = any(e.is_set() for e in events)
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return FlagSet()


def stream_reply(model, tokenizer, messages: list[dict], *, max_new_tokens: int, temperature: float,
                 seed: int, cancel: threading.Event, top_p: float = 0.95) -> Iterator[str]:
    """The reply to `messages`, in chunks as they are generated; stops early once `cancel` is set
    (or when the caller stops iterating)."""
    import torch
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    from alignflow.rlhf.generation import encode_prompts, eos_token_ids, virtual_token_inputs

    device = next(model.parameters()).device
    ids = torch.tensor(encode_prompts(tokenizer, [messages]), dtype=torch.long, device=device)
    eos = eos_token_ids(model, tokenizer)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    closing = threading.Event()
    sampling = dict(temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else \
        dict(temperature=None, top_p=None, top_k=None)
    virtual = virtual_token_inputs(model)  # prompt tuning / P-tuning: the base model on embeddings
    inputs = virtual(ids, torch.ones_like(ids)) if virtual else dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    generator = model.get_base_model() if virtual else model
    kwargs = dict(**inputs, max_new_tokens=max_new_tokens,
                  do_sample=temperature > 0, use_cache=True, eos_token_id=eos,
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
                  streamer=streamer, stopping_criteria=StoppingCriteriaList([_flag_criterion(cancel, closing)]),
                  **sampling)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            torch.manual_seed(seed)
            with torch.inference_mode():
                generator.generate(**kwargs)
        except BaseException as err:  # surfaced in the caller's thread below
            errors.append(err)
            streamer.end()

    worker = threading.Thread(target=run, name="alignflow-chat-generate", daemon=True)
    worker.start()
    try:
        yield from streamer
    finally:
        closing.set()
        worker.join()
    if errors:
        raise errors[0]


@contextmanager
def sigint_sets(event: threading.Event):
    """While inside, Ctrl-C (SIGINT) sets `event` instead of raising KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def answer(speaker: Speaker, text: str, out: TextIO, **gen) -> tuple[str, bool]:
    """Stream `speaker`'s reply to `text` to `out` and record the turn; (reply, stopped by Ctrl-C).
    A reply stopped before it said anything leaves no trace in the history."""
    turns = speaker.conversation.turns
    turns.append({"role": "user", "content": text})
    cancel = threading.Event()
    chunks: list[str] = []
    with sigint_sets(cancel):
        print(f"{speaker.label}> ", end="", file=out, flush=True)
        try:
            for chunk in stream_reply(speaker.model, speaker.tokenizer, speaker.conversation.messages(),
                                      cancel=cancel, **gen):
                if not chunks:  # a reply starts at its first visible character
                    chunk = chunk.lstrip()
                    if not chunk:
                        continue
                chunks.append(chunk)
                print(chunk, end="", file=out, flush=True)
        except Exception:
            turns.pop()
            print(file=out, flush=True)
            raise
        print(" [stopped]" if cancel.is_set() else "", file=out, flush=True)
    reply = "".join(chunks).strip()
    if reply:
        turns.append({"role": "assistant", "content": reply})
    else:
        turns.pop()
    return reply, cancel.is_set()


# --- the loop ----------------------------------------------------------------------------------


def line_reader(stdin: TextIO, interactive: bool) -> Callable[[], str | None]:
    """A function returning the next line typed (None at EOF / Ctrl-D). On a terminal: a
    prompt_toolkit session with history (readline's input() when prompt_toolkit is missing);
    Ctrl-C at the prompt raises KeyboardInterrupt."""
    if not interactive:
        return lambda: stdin.readline() or None
    try:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import InMemoryHistory

        session = PromptSession(history=InMemoryHistory())
        ask = session.prompt
    except ImportError:
        import readline  # noqa: F401  (line editing and history for input())

        def ask(prompt: str) -> str:
            try:
                return input(prompt)
            except KeyboardInterrupt:
                print()  # input() leaves the cursor on the abandoned line
                raise

    def read() -> str | None:
        try:
            return ask(PROMPT)
        except EOFError:
            return None

    return read


def repl(speakers: list[Speaker], *, max_new_tokens: int = 256, temperature: float = 0.7, seed: int = 0,
         system: str | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Read a line, have every speaker answer it with its history so far; returns the number of
    replies given. Ctrl-C at a terminal's prompt clears the line; elsewhere it propagates."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty() and stdout.isatty()
    read = line_reader(stdin, interactive)
    for s in speakers:
        s.conversation.system = system or None
    replies = 0
    if interactive:
        print(HELP, file=stdout, flush=True)
    while True:
        try:
            line = read()
        except KeyboardInterrupt:
            if not interactive:
                raise
            continue
        if line is None:  # EOF / Ctrl-D
            if interactive:
                print(file=stdout, flush=True)
            break
        cmd = parse_command(line)
        if cmd.kind == "exit":
            break
        if cmd.kind == "empty":
            continue
        if cmd.kind == "help":
            print(HELP, file=stdout, flush=True)
        elif cmd.kind == "unknown":
            print(f"unknown command {cmd.arg}; {HELP}", file=stdout, flush=True)
        elif cmd.kind == "reset":
            for s in speakers:
                s.conversation.turns.clear()
            print("(conversation cleared)", file=stdout, flush=True)
        elif cmd.kind == "system":
            for s in speakers:
                s.conversation.system = cmd.arg or None
            print(f"(system prompt set: {cmd.arg})" if cmd.arg else "(system prompt removed)", file=stdout, flush=True)
        else:
            for s in speakers:
                try:
                    _, stopped = answer(s, cmd.arg, stdout, max_new_tokens=max_new_tokens, temperature=temperature,
                                        seed=seed + replies)
                except Exception as err:  # a template or generation error ends the reply, not the session
                    print(f"alignflow chat: {s.label}: {type(err).__name__}: {_first_line(err)}", file=sys.stderr,
                          flush=True)
                    continue
                replies += 1
                if stopped:  # Ctrl-C: back to the prompt (with --compare, the other model does not answer)
                    break
    return replies


def chat_main(model: str = "champion", max_new_tokens: int = 256, *, compare: list[str] | None = None,
              temperature: float = 0.7, system: str | None = None) -> int:
    """Entry point of `alignflow chat`; returns the process exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    refs = list(compare) if compare else [model]
    try:
        dirs = [resolve(ref) for ref in refs]  # every reference is checked before any model loads
        speakers = []
        for ref, model_dir in zip(refs, dirs):
            print(f"loading {ref} ({model_dir}) ...", file=sys.stderr, flush=True)
            lm, tokenizer = load_chat_model(model_dir)
            speakers.append(Speaker(ref if compare else "assistant", lm, tokenizer))
        repl(speakers, max_new_tokens=max_new_tokens, temperature=temperature, system=system)
    except ChatError as err:
        print(f"alignflow chat: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0

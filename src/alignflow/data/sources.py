"""Readers: one per source format, each turning raw rows into canonical records (docs/ARCHITECTURE.md, "Records").

A reader is a pure function `row (dict) -> list[record]` that raises `RecordError(reason)` for a
row that does not fit its schema; `read_source` adds file reading, provenance and limits, and
yields `(record | None, origin, reason)` so the caller can write rejects with file:line.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alignflow.config.data import SourceParams
from alignflow.io import InputError, content_id, iter_json_lines, read_text, unicode_error

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
}
DATA_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
_HH_TURN_RE = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


class RecordError(ValueError):
    """A row that does not fit its format's schema; the message is the reject reason."""


# ------------------------------------------------------------------------------- record builders


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def conversation_record(messages: list[dict], **prov: Any) -> dict:
    return {"id": content_id("conversation", messages), "messages": messages, **prov}


def preference_record(prompt: list[dict], chosen: list[dict], rejected: list[dict], margin: float | None = None, **prov: Any) -> dict:
    rec = {"id": content_id("preference", prompt, chosen, rejected), "prompt": prompt, "chosen": chosen, "rejected": rejected}
    if margin is not None:
        rec["margin"] = float(margin)
    return {**rec, **prov}


def prompt_record(prompt: list[dict], reference: str | None = None, **prov: Any) -> dict:
    rec = {"id": content_id("prompt", prompt), "prompt": prompt}
    if reference is not None:
        rec["reference"] = reference
    return {**rec, **prov}


# --------------------------------------------------------------------------------- field helpers


def _text(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RecordError(f"missing field '{key}'")
        return ""
    if not isinstance(value, str):
        raise RecordError(f"field '{key}' must be a string, got {type(value).__name__}")
    return value


def _require_mapping(row: Any) -> dict:
    if not isinstance(row, dict):
        raise RecordError(f"expected a JSON object, got {type(row).__name__}")
    return row


def instruction_prompt(instruction: str, input_text: str = "") -> str:
    """Alpaca/Self-Instruct: the input, when there is one, follows the instruction after a blank line."""
    instruction, input_text = instruction.strip(), input_text.strip()
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def check_messages(messages: Any, field: str = "messages") -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"'{field}' must be a non-empty list of messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise RecordError(f"'{field}[{i}]' must be {{role: system|user|assistant, content: string}}")
        out.append(msg(m["role"], m["content"]))
    return out


def check_conversation(messages: list[dict]) -> list[dict]:
    if not any(m["role"] == "user" for m in messages):
        raise RecordError("conversation has no user turn")
    if messages[-1]["role"] != "assistant":
        raise RecordError("conversation does not end with an assistant turn")
    return messages


def _as_messages(value: Any, field: str, default_role: str) -> list[dict]:
    if isinstance(value, str):
        return [msg(default_role, value)]
    return check_messages(value, field)


# ----------------------------------------------------------------------------------------- readers


def read_alpaca(row: dict) -> list[dict]:
    row = _require_mapping(row)
    prompt = instruction_prompt(_text(row, "instruction"), _text(row, "input", required=False))
    return [{"messages": [msg("user", prompt), msg("assistant", _text(row, "output"))]}]


def read_self_instruct_seed(row: dict) -> list[dict]:
    row = _require_mapping(row)
    instruction = _text(row, "instruction")
    instances = row.get("instances")
    if not isinstance(instances, list) or not instances:
        raise RecordError("'instances' must be a non-empty list of {input, output}")
    out = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise RecordError(f"'instances[{i}]' must be an object")
        prompt = instruction_prompt(instruction, _text(inst, "input", required=False))
        out.append({"messages": [msg("user", prompt), msg("assistant", _text(inst, "output"))]})
    return out


def read_sharegpt(row: dict) -> list[dict]:
    row = _require_mapping(row)
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError("'conversations' must be a non-empty list of {from, value}")
    messages = []
    for i, t in enumerate(turns):
        role = SHAREGPT_ROLES.get(str(t.get("from", "")).lower()) if isinstance(t, dict) else None
        if role is None or not isinstance(t.get("value"), str):
            raise RecordError(f"'conversations[{i}]' must be {{from: human|gpt|system, value: string}}")
        messages.append(msg(role, t["value"]))
    return [{"messages": check_conversation(messages)}]


def read_messages(row: dict) -> list[dict]:
    row = _require_mapping(row)
    return [{"messages": check_conversation(check_messages(row.get("messages")))}]


def parse_hh_transcript(text: str) -> list[dict]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> messages."""
    parts = _HH_TURN_RE.split(text)
    if parts[0].strip():
        raise RecordError("transcript does not start with a 'Human:' turn")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [msg(roles[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def split_at_shared_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Two full conversations -> (shared prompt, chosen continuation, rejected continuation).

    The prompt is every turn both share, up to the last shared turn; it must end with a user turn
    so the continuations start with the assistant's answer (what TRL expects).
    """
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == len(chosen) and k == len(rejected):
        raise RecordError("chosen and rejected are identical")
    if k == 0:
        raise RecordError("chosen and rejected share no prompt")
    if chosen[k - 1]["role"] != "user":
        raise RecordError("chosen and rejected diverge after an assistant turn (expected them to differ in the answer)")
    chosen_cont, rejected_cont = chosen[k:], rejected[k:]
    if not chosen_cont or not rejected_cont:
        raise RecordError("chosen or rejected has no answer after the shared prompt")
    return chosen[:k], chosen_cont, rejected_cont


def read_hh_rlhf(row: dict) -> list[dict]:
    row = _require_mapping(row)
    chosen = parse_hh_transcript(_text(row, "chosen"))
    rejected = parse_hh_transcript(_text(row, "rejected"))
    prompt, c, r = split_at_shared_prompt(chosen, rejected)
    return [{"prompt": prompt, "chosen": c, "rejected": r}]


def read_preference(row: dict) -> list[dict]:
    row = _require_mapping(row)
    for key in ("chosen", "rejected"):
        if key not in row:
            raise RecordError(f"missing field '{key}'")
    if "prompt" in row:
        prompt = _as_messages(row["prompt"], "prompt", "user")
        chosen = _as_messages(row["chosen"], "chosen", "assistant")
        rejected = _as_messages(row["rejected"], "rejected", "assistant")
        if prompt[-1]["role"] != "user":
            raise RecordError("'prompt' must end with a user turn")
    else:  # implicit prompt (full conversations): split at the shared turns
        prompt, chosen, rejected = split_at_shared_prompt(
            check_messages(row["chosen"], "chosen"), check_messages(row["rejected"], "rejected")
        )
    out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if row.get("margin") is not None:
        if not isinstance(row["margin"], (int, float)):
            raise RecordError("'margin' must be a number")
        out["margin"] = row["margin"]
    return [out]


def read_prompts(row: dict) -> list[dict]:
    row = _require_mapping(row)
    if "prompt" not in row:
        raise RecordError("missing field 'prompt'")
    prompt = _as_messages(row["prompt"], "prompt", "user")
    if prompt[-1]["role"] != "user":
        raise RecordError("'prompt' must end with a user turn")
    out: dict[str, Any] = {"prompt": prompt}
    if row.get("reference") is not None:
        out["reference"] = _text(row, "reference")
    return [out]


READERS: dict[str, tuple[str, Callable[[dict], list[dict]]]] = {
    "alpaca": ("conversations", read_alpaca),
    "self_instruct_seed": ("conversations", read_self_instruct_seed),
    "sharegpt": ("conversations", read_sharegpt),
    "messages": ("conversations", read_messages),
    "hh_rlhf": ("preferences", read_hh_rlhf),
    "preference": ("preferences", read_preference),
    "prompts": ("prompts", read_prompts),
}
BUILDERS = {"conversations": conversation_record, "preferences": preference_record, "prompts": prompt_record}


def kind_of(fmt: str) -> str:
    return READERS[fmt][0]


# ------------------------------------------------------------------------------------ file access


def resolve_paths(path: str, where: str) -> list[Path]:
    """A file, a glob or a directory (its data files) -> sorted files; none is an error naming `where`."""
    if any(ch in path for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
    elif Path(path).is_dir():
        files = sorted(p for p in Path(path).rglob("*") if p.is_file() and p.name.endswith(DATA_SUFFIXES))
    elif Path(path).is_file():
        files = [Path(path)]
    else:
        raise InputError(f"{where}.path: {path}: no such file or directory (relative paths start at {os.getcwd()})")
    if not files:
        raise InputError(f"{where}.path: {path}: matches no data files ({', '.join(DATA_SUFFIXES)})")
    return files


def iter_rows(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    """(origin 'file:line', row, error) for a JSON Lines file or a JSON array (origin: file:record#).

    A bad line (not UTF-8, not JSON, a lone surrogate) or a bad array record comes back as its
    text with the error, so it is rejected alone; a JSON array that cannot be parsed is an error.
    """
    if path.name.endswith((".json", ".json.gz")):
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]}
        if not isinstance(data, list):
            raise InputError(f"{path}: a .json source must hold a list of records, got {type(data).__name__}")
        for i, row in enumerate(data, 1):
            bad = unicode_error(row)
            if bad:  # the reject keeps the row as ASCII JSON: its \u escape can be written
                yield f"{path}:{i}", json.dumps(row)[:2000], f"encoding: {bad}"
            else:
                yield f"{path}:{i}", row, None
        return
    for lineno, row, error, text in iter_json_lines(path):
        yield f"{path}:{lineno}", (text.rstrip("\r\n")[:2000] if error else row), error


def iter_hf_rows(src: SourceParams, where: str) -> Iterator[tuple[str, Any, str | None]]:
    try:
        import datasets

        ds = datasets.load_dataset(src.hf, src.hf_config, split=src.split)
    except Exception as err:  # noqa: BLE001 - any failure to reach/load the hub dataset
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = ("HF_HUB_OFFLINE=1 is set: only datasets already in the local Hugging Face cache load"
                if offline else "the Hugging Face Hub may be unreachable")
        raise InputError(
            f"{where}: hf dataset {src.hf!r} (split {src.split!r}) could not be loaded: {type(err).__name__}: "
            f"{str(err)[:300]}. {hint}; download the data and point `path` at the file instead."
        ) from None
    for i, row in enumerate(ds, 1):
        yield f"hf:{src.hf}:{src.split}:{i}", dict(row), None


def read_source(src: SourceParams, where: str) -> Iterator[tuple[dict | None, str, str | None, Any]]:
    """Yield (record, origin, reject_reason, raw_row) for every row of a source, up to `limit` records."""
    kind, reader = READERS[src.format]
    build = BUILDERS[kind]
    prov = {"task": src.task_name, "source": src.label, "license": src.license}
    rows = iter_hf_rows(src, where) if src.hf else (r for p in resolve_paths(src.path, where) for r in iter_rows(p))
    produced = 0
    for origin, row, error in rows:
        if error:
            yield None, origin, error, row
            continue
        try:
            parts = reader(row)
        except RecordError as err:
            yield None, origin, f"schema: {src.format}: {err}", row
            continue
        for part in parts:
            yield build(**part, **prov, origin=origin), origin, None, row
            produced += 1
            if src.limit and produced >= src.limit:
                return

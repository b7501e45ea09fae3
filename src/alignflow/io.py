"""Reading and writing the pipeline's files: JSON Lines, YAML, metrics, atomic outputs.

Every stage writes its outputs into a temporary sibling directory and renames it into place
at the end, so an interrupted stage never leaves a half-written output that DVC would cache.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

METRICS_DIR = Path("metrics")


class InputError(ValueError):
    """A bad input file or record; the message names the file (and line)."""


def _open_text(path: Path, mode: str):
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def unicode_error(value: Any) -> str | None:
    """Why `value` cannot be written as UTF-8, or None: JSON's "\\ud800" escape gives a lone
    surrogate, which json.loads accepts but every later write of the record would crash on."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        return f"lone surrogate \\u{ord(err.object[err.start]):04x} (not valid Unicode)"
    return None


def _bad_byte(err: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte 0x{err.object[err.start]:02x})"


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_text(path: str | os.PathLike) -> str:
    """A whole file (.gz or not) as text, a BOM dropped (utf-8-sig); bad bytes: InputError naming file:line."""
    path = Path(path)
    with _open_bytes(path) as fh:
        data = fh.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError(f"{path}:{line}: {_bad_byte(err)}") from None


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any, str | None, str]]:
    """(line number, value, error, text) for each non-blank line of a JSON Lines file (.gz or not).

    Lines are decoded one by one, so a line that is not UTF-8 is one bad line, not a crash of the
    whole read; a BOM before the first line is dropped (utf-8-sig). On error, value is None and
    error is 'reason: message' (encoding or malformed_json); text is the line, bytes escaped.
    """
    path = Path(path)
    with _open_bytes(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield lineno, None, f"encoding: {_bad_byte(err)}", raw.decode("utf-8", "backslashreplace")
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                yield lineno, None, f"malformed_json: not valid JSON ({err.msg})", text
                continue
            # only a \u escape gives a lone surrogate (surrogate bytes are not UTF-8): skip the rest
            bad = unicode_error(value) if "\\u" in text else None
            if bad:
                yield lineno, None, f"encoding: {bad}", text
            else:
                yield lineno, value, None, text


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of a JSONL file; a bad line raises InputError naming file:line."""
    for lineno, value, error, _ in iter_json_lines(path):
        if error:
            raise InputError(f"{path}:{lineno}: {error.partition(': ')[2]}")
        yield value


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a repeated mapping key is an error: PyYAML keeps the last one
    silently, so a second `model:` section would replace the first unnoticed."""

    def construct_mapping(self, node, deep=False):
        first: dict[Any, int] = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else []:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then an override is meant
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in first:
                    raise DuplicateKeyError(f"duplicate key {key!r} (first at line {first[key]})", line)
                first[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                break
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike) -> Any:
    """A YAML file's content; an error (a duplicate key included) is an InputError naming the file."""
    text = read_text(path)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKeyError as err:
        raise InputError(f"{path}:{err.line}: {err}: YAML keeps only the last, so the first would be ignored") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from None


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with _open_text(path, "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def content_id(*parts: Any) -> str:
    """A stable id from content: the same record always gets the same id."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_metrics(stage: str, metrics: dict[str, Any]) -> Path:
    """metrics/<stage>.json, the file DVC reads for `dvc metrics show/diff`."""
    path = METRICS_DIR / f"{stage}.json"
    write_json(path, metrics)
    return path


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp dir; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


class RejectWriter:
    """Collects rejected records ({record, stage, reason, detail}) and counts reasons."""

    def __init__(self, stage: str):
        self.stage = stage
        self.rows: list[dict] = []
        self.counts: dict[str, int] = {}

    def add(self, record: Any, reason: str, detail: str = "") -> None:
        self.rows.append({"record": record, "stage": self.stage, "reason": reason, "detail": detail})
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def __len__(self) -> int:
        return len(self.rows)

    def write(self, path: str | os.PathLike) -> int:
        return write_jsonl(path, self.rows)

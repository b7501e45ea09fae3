"""Reading and writing the pipeline's files: JSON Lines, metrics, atomic outputs.

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

METRICS_DIR = Path("metrics")


class InputError(ValueError):
    """A bad input file or record; the message names the file (and line)."""


def _open_text(path: Path, mode: str):
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of a JSONL file; a bad line raises InputError naming file:line."""
    path = Path(path)
    with _open_text(path, "r") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None


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

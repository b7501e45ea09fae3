"""Scratch space that a killed process cannot leak, and the per-stage workspace lock.

Every scratch dir carries the pid of the process that made it (`<name>.<pid>` / `alignflow-<pid>-…`):
the owner removes it when done (or at exit), and the next run removes those whose owner is
dead (kill -9, OOM killer, a lost node) — a dir of a live process is never touched, so two
processes never delete each other's work.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR = Path(".alignflow") / "locks"
TEMP_PREFIX = "alignflow-"
_PID_SUFFIX = re.compile(r"\.(\d+)$")
_TEMP_PID = re.compile(rf"^{TEMP_PREFIX}(\d+)-")


class StageBusyError(RuntimeError):
    """Another process is running the same stage in this workspace."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_dead(parent: Path, stem: str) -> list[Path]:
    """Remove `<parent>/<stem>.<pid>` entries whose process is gone; returns what was removed."""
    removed = []
    for path in parent.glob(f"{stem}.*") if parent.is_dir() else []:
        match = _PID_SUFFIX.search(path.name[len(stem):])
        if match and path.name == f"{stem}.{match.group(1)}" and not pid_alive(int(match.group(1))):
            _remove(path)
            removed.append(path)
    if removed:
        log.info("removed %d scratch dir(s) of killed runs: %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def staging_dir(target: Path) -> Path:
    """`.<target>.staging.<pid>` beside `target` (a fresh, empty dir path), after removing the
    staging dirs that killed runs left there."""
    stem = f".{target.name}.staging"
    sweep_dead(target.parent, stem)
    path = target.with_name(f"{stem}.{os.getpid()}")
    _remove(path)
    return path


def sweep_temp() -> list[Path]:
    """Remove `alignflow-<pid>-*` dirs of dead processes from the system temp dir."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        match = _TEMP_PID.match(path.name)
        if match and not pid_alive(int(match.group(1))):
            _remove(path)
            removed.append(path)
    return removed


def temp_dir(label: str) -> Path:
    """A temp dir removed when this process exits (and by `sweep_temp` if it is killed)."""
    path = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-{label}-"))
    atexit.register(shutil.rmtree, path, True)
    return path


@contextlib.contextmanager
def stage_lock(stage: str, root: Path = Path(".")) -> Iterator[Path]:
    """Hold `.alignflow/locks/<stage>.lock` while a stage runs in this workspace.

    An OS file lock (flock): the kernel releases it when the holder dies, so a killed run never
    leaves a stale lock. DVC holds its own repo lock for `dvc repro`; this one also covers
    `alignflow run <stage>` and `python -m components.<stage>` started by hand."""
    from filelock import FileLock, Timeout

    path = root / LOCK_DIR / f"{stage}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = path.with_suffix(".pid")
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = owner.read_text().strip() if owner.exists() else "unknown"
        raise StageBusyError(
            f"stage {stage} is already running in this workspace (pid {holder}, lock {path}): "
            "wait for it to finish, or stop it first"
        ) from None
    try:
        owner.write_text(f"{os.getpid()}\n")
        yield path
    finally:
        owner.unlink(missing_ok=True)
        lock.release()

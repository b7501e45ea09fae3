"""How many CPU threads this process's torch uses, so alignflow processes sharing a machine
do not slow each other down.

torch starts one OpenMP thread per CPU, and OpenMP threads busy-wait (spin) between parallel
regions. Two such processes on one small machine spend their time slices spinning while the
other needs the CPU: on 2 CPUs, eval generation fell from ~50 to 2-13 tokens/s per process;
with one thread each it ran at 32-37, with OMP_WAIT_POLICY=PASSIVE at 23-24 (bench/threads.py).
Passive waiting costs ~30 % alone, so a process alone keeps every CPU and the spinning default,
and one that finds other alignflow compute processes running takes its fair share of the CPUs
and passive waiting.

The count, first that applies: ALIGNFLOW_THREADS > the user's OMP_NUM_THREADS (configure_env) >
the CPUs Ray assigned to this worker > the physical cores this process may run on, divided among
the live alignflow compute processes (pid files in `registry_dir()`), at least 1.

Limits: the share is decided once, at start (a process that finishes does not give its threads
back to the others); the registry is per user and temp dir (containers with their own /tmp do not
see each other); OpenMP reads OMP_WAIT_POLICY when torch loads it, so `configure_env` must run
before `import torch` for passive waiting to apply to this process (its children get it anyway).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from alignflow.scratch import pid_alive

log = logging.getLogger(__name__)

THREADS_ENV = "ALIGNFLOW_THREADS"
# The variables configure_env exported, "KEY=VALUE;...": a value found there was set by alignflow
# (this process, or an alignflow parent it was inherited from), not by the user.
EXPORTED_ENV = "_ALIGNFLOW_THREADS_EXPORTED"


class ThreadsError(ValueError):
    """ALIGNFLOW_THREADS is not a positive integer."""


_registered: Path | None = None
_atexit_hooked = False
_configured: int | None = None  # what configure_env chose in this process
_torch_threads_before: int | None = None
_last_rebalance = 0.0


# --- registry of live compute processes -------------------------------------------------------


def registry_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"alignflow-compute-{os.getuid()}"


def _start_time(pid: int) -> str | None:
    """When the process started (/proc/<pid>/stat field 22): with the pid it names one process,
    so the file of a killed process whose pid was reused reads as stale. None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # after "(comm)", which may hold spaces


def register() -> Path:
    """Record this process as a running compute process (until `release`, or its exit)."""
    global _registered, _atexit_hooked
    directory = registry_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / str(os.getpid())
    path.write_text(f"{_start_time(os.getpid()) or ''}\n")
    _registered = path
    if not _atexit_hooked:
        atexit.register(release)
        _atexit_hooked = True
    return path


def _is_live(pid: int, path: Path) -> bool:
    if not pid_alive(pid):
        return False
    try:
        recorded = path.read_text().strip()
    except OSError:  # released meanwhile
        return False
    now = _start_time(pid)
    return not recorded or now is None or recorded == now


def others() -> int:
    """Live alignflow compute processes other than this one; files of dead ones are removed."""
    try:
        entries = list(registry_dir().iterdir())
    except OSError:
        return 0
    count = 0
    for path in entries:
        if not path.name.isdigit() or int(path.name) == os.getpid():
            continue
        if _is_live(int(path.name), path):
            count += 1
        else:
            path.unlink(missing_ok=True)
    return count


# --- the count --------------------------------------------------------------------------------


def _cpus() -> int:
    """The physical cores this process may run on. torch's own default is one thread per physical
    core (a hyperthread sibling adds little to matrix math), but it ignores the affinity mask
    (taskset, a cgroup cpuset). Logical CPUs where the topology is not readable."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            return len(allowed)
    return len(cores) or len(allowed)


def _env_threads() -> int | None:
    """ALIGNFLOW_THREADS as a positive int; unset or empty: None."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ThreadsError(f"{THREADS_ENV}={value!r}: expected a positive integer (CPU threads per process)")
    return int(value)


def _ray_cpus() -> int | None:
    """The CPUs Ray assigned to this worker, when this process is one."""
    ray = sys.modules.get("ray")  # never imported here: it costs seconds, and only a worker has it loaded
    if ray is None:
        return None
    try:
        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # the driver (assigned resources are a worker's), or another Ray API
        return None
    return max(1, int(cpus)) if cpus else None


def _plan(n_others: int) -> tuple[int, str]:
    """(threads, why) without the user's OMP_NUM_THREADS (configure_env weighs that)."""
    if (n := _env_threads()) is not None:
        return n, f"{n} ({THREADS_ENV})"
    if (n := _ray_cpus()) is not None:
        return n, f"{n} (CPUs Ray assigned to this worker)"
    cpus = _cpus()
    n = max(1, cpus // (n_others + 1))
    if n_others:
        running = f"{n_others} other alignflow process{'es' if n_others > 1 else ''} running"
    else:
        running = "no other alignflow process running"
    return n, f"{n} of {cpus} cores ({running})"


def budget() -> int:
    """The number of intra-op threads this process should use (see the module docstring)."""
    return _plan(others())[0]


def unshared() -> int:
    """The threads this process may use when it need not leave cores to other alignflow processes:
    ALIGNFLOW_THREADS > the user's OMP_NUM_THREADS > Ray's CPUs > every core it may run on.
    For a runtime whose idle workers sleep instead of spinning (OpenVINO's TBB): on 2 cores, two
    OpenVINO processes at 2 threads each generated 126 tok/s each, at 1 thread each 74
    (bench/threads.py --backend openvino)."""
    ours = "OMP_NUM_THREADS=" in os.environ.get(EXPORTED_ENV, "")  # configure_env's fair share
    user_n = None if ours else _first_int(os.environ.get("OMP_NUM_THREADS", ""))
    if user_n and _env_threads() is None:
        return user_n
    return _plan(0)[0]


# --- process setup ----------------------------------------------------------------------------


def _undo_exports() -> None:
    """Unset what configure_env exported (only variables that were unset), where it still holds
    our value: in this process, and in a child that inherited it (the child decides for itself)."""
    exported = dict(item.split("=", 1) for item in os.environ.pop(EXPORTED_ENV, "").split(";") if "=" in item)
    for key, value in exported.items():
        if os.environ.get(key) == value:  # else changed since: someone else's now
            del os.environ[key]


def _first_int(value: str) -> int | None:
    head = value.split(",")[0].strip()  # OpenMP allows a per-nesting-level list: "4,2"
    return int(head) if head.isdigit() and int(head) > 0 else None


def configure_env() -> int:
    """At process start, before torch loads: register this process, choose its thread count
    and export OMP_NUM_THREADS/MKL_NUM_THREADS (and OMP_WAIT_POLICY=PASSIVE when other alignflow
    processes run) unless the user set them. Returns the count; logs it and why."""
    global _configured
    _env_threads()  # a bad ALIGNFLOW_THREADS fails before anything is registered
    _undo_exports()
    register()  # before counting: two processes starting together then see each other
    n_others = others()
    n, why = _plan(n_others)
    exports = {}
    if "OMP_NUM_THREADS" in os.environ:  # the user's: respected (ALIGNFLOW_THREADS, ours, still wins)
        user_n = _first_int(os.environ["OMP_NUM_THREADS"])
        if user_n and _env_threads() is None:
            n, why = user_n, f"{user_n} (OMP_NUM_THREADS set by the user)"
    else:
        exports["OMP_NUM_THREADS"] = str(n)
        if "MKL_NUM_THREADS" not in os.environ:
            exports["MKL_NUM_THREADS"] = str(n)
    passive = n_others > 0 and "OMP_WAIT_POLICY" not in os.environ
    if passive:
        exports["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.update(exports)
    if exports:
        os.environ[EXPORTED_ENV] = ";".join(f"{k}={v}" for k, v in exports.items())
    _configured = n
    note = ""
    if passive:
        note = "; OpenMP passive" + (" (torch already loaded: for child processes only)" if "torch" in sys.modules else "")
    log.info("threads: %s%s", why, note)
    return n


def apply(n: int | None = None) -> int:
    """Set torch's intra-op threads to `n` (default: what configure_env chose in this process,
    else `budget()`); returns it. torch is imported only when needed: one not loaded yet reads
    OMP_NUM_THREADS when it loads. Inter-op threads are left alone: torch refuses to change them
    once any parallel work ran."""
    global _torch_threads_before
    n = n or _configured or budget()
    if "torch" not in sys.modules and os.environ.get("OMP_NUM_THREADS") == str(n):
        return n
    try:
        import torch
    except ImportError:
        return n
    current = torch.get_num_threads()
    if current != n:
        if _torch_threads_before is None:
            _torch_threads_before = current
        torch.set_num_threads(n)
    return n


def rebalance(every_s: float = 5.0) -> int | None:
    """Between batches, from the compute thread: shrink (or grow back) torch's threads to the fair
    share when alignflow processes started or ended since this one began, so the process that was
    first does not keep spinning on every core (its wait policy was fixed when torch loaded; one
    thread has no team to spin for). Cheap: counts the registry at most every `every_s` seconds.
    Only for a registered process whose count is ours to choose; returns the count it set."""
    global _configured, _last_rebalance
    if _registered is None or _configured is None or _env_threads() is not None or _ray_cpus() is not None:
        return None
    if EXPORTED_ENV not in os.environ or "OMP_NUM_THREADS=" not in os.environ[EXPORTED_ENV]:
        return None  # the user set OMP_NUM_THREADS: theirs to keep
    now = time.monotonic()
    if now - _last_rebalance < every_s:
        return None
    _last_rebalance = now
    n = _plan(others())[0]
    if n != _configured:
        log.info("threads: %d -> %d (alignflow processes started or ended)", _configured, n)
        _configured = n
        apply(n)
    return n


def release() -> None:
    """This process no longer computes: remove its pid file and put back the environment and
    torch threads as they were (a host running stages in-process, pytest or Airflow, goes on
    unchanged). Idempotent; also run at exit."""
    global _registered, _configured, _torch_threads_before
    # only our own file: a forked child inherits `_registered` and must not remove its parent's
    if _registered is not None and _registered.name == str(os.getpid()):
        _registered.unlink(missing_ok=True)
        _registered = None
    _undo_exports()
    _configured = None
    if _torch_threads_before is not None and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(_torch_threads_before)
    _torch_threads_before = None

"""alignflow.threads: the thread count of a compute process, alone and beside others.

Real processes and a real registry (in a per-test temp dir); only the environment is set per test.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from alignflow import threads

ROOT = Path(__file__).resolve().parents[1]
THREAD_ENV = ("ALIGNFLOW_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", threads.EXPORTED_ENV)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No thread settings from the caller; a private registry; os.environ as it was afterwards
    (configure_env writes it directly)."""
    saved = dict(os.environ)
    for key in THREAD_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # registry_dir() follows gettempdir()
    yield
    threads.release()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def other_process():
    """A live process registered as an alignflow compute process."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    threads.registry_dir().mkdir(parents=True, exist_ok=True)
    (threads.registry_dir() / str(proc.pid)).write_text("")
    yield proc
    proc.kill()
    proc.wait()


def test_alignflow_threads_wins(monkeypatch, other_process):
    monkeypatch.setenv("ALIGNFLOW_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads.budget() == 3
    assert threads.configure_env() == 3
    assert os.environ["OMP_NUM_THREADS"] == "5"  # the user's, left alone


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_alignflow_threads_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("ALIGNFLOW_THREADS", value)
    with pytest.raises(ValueError, match=f"ALIGNFLOW_THREADS={value!r}: expected a positive integer"):
        threads.budget()
    with pytest.raises(ValueError, match="ALIGNFLOW_THREADS"):
        threads.configure_env()
    assert not threads.registry_dir().exists() or not any(threads.registry_dir().iterdir())


def test_alone_takes_every_core_and_keeps_spinning(caplog):
    caplog.set_level(logging.INFO, logger="alignflow.threads")
    cores = threads._cpus()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert threads.configure_env() == cores
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == str(cores)
    assert "OMP_WAIT_POLICY" not in os.environ
    assert (threads.registry_dir() / str(os.getpid())).exists()
    assert f"threads: {cores} of {cores} cores (no other alignflow process running)" in caplog.text


def test_beside_another_process_takes_a_fair_share_and_waits_passively(caplog, other_process):
    caplog.set_level(logging.INFO, logger="alignflow.threads")
    assert threads.others() == 1
    share = max(1, threads._cpus() // 2)
    assert threads.budget() == share
    assert threads.configure_env() == share
    assert os.environ["OMP_NUM_THREADS"] == str(share)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "(1 other alignflow process running); OpenMP passive" in caplog.text


def test_a_child_process_sees_this_one_and_does_not_take_our_exports_for_the_users():
    """Across real processes: this one registered (and exported its settings); a child started
    from it counts it and decides for itself instead of inheriting our OMP_NUM_THREADS."""
    threads.configure_env()
    code = ("import json, os; from alignflow import threads; n = threads.configure_env(); "
            "print(json.dumps([n, threads.others(), os.environ.get('OMP_WAIT_POLICY')]))")
    env = {**os.environ, "TMPDIR": tempfile.gettempdir(), "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    n, others, policy = json.loads(out.stdout)
    assert (n, others, policy) == (max(1, threads._cpus() // 2), 1, "PASSIVE")


def test_a_dead_process_file_is_swept():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    threads.registry_dir().mkdir(parents=True)
    stale = threads.registry_dir() / str(dead.pid)
    stale.write_text("")
    assert threads.others() == 0
    assert not stale.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="start times come from /proc")
def test_a_reused_pid_is_swept(other_process):
    """A file of a killed process whose pid now names another process: its start time differs."""
    path = threads.registry_dir() / str(other_process.pid)
    path.write_text("1\n")
    assert threads.others() == 0
    assert not path.exists()


def test_the_users_omp_settings_are_respected(monkeypatch, other_process):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert threads.configure_env() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert "MKL_NUM_THREADS" not in os.environ


def test_configuring_again_forgets_our_own_exports(other_process):
    assert threads.configure_env() == max(1, threads._cpus() // 2)
    other_process.kill()
    other_process.wait()
    assert threads.configure_env() == threads._cpus()  # our OMP_NUM_THREADS is not "the user's"
    assert "OMP_WAIT_POLICY" not in os.environ


def test_release_removes_the_file_and_our_exports(other_process):
    threads.configure_env()
    mine = threads.registry_dir() / str(os.getpid())
    assert mine.exists()
    threads.release()
    threads.release()  # idempotent
    assert not mine.exists()
    assert not any(key in os.environ for key in THREAD_ENV)
    assert (threads.registry_dir() / str(other_process.pid)).exists()  # others' files untouched


def test_apply_sets_torch_threads_and_release_restores_them():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    assert threads.apply(1) == 1
    assert torch.get_num_threads() == 1
    threads.release()
    assert torch.get_num_threads() == before


def test_ray_assigned_cpus_come_before_the_fair_share(monkeypatch, other_process):
    """Inside a Ray worker the count is what Ray assigned it. (A stand-in `ray` module: starting
    Ray takes longer than this whole file.)"""
    class Context:
        def get_assigned_resources(self):
            return {"CPU": 3.0}

    class Ray:
        is_initialized = staticmethod(lambda: True)
        get_runtime_context = staticmethod(Context)

    monkeypatch.setitem(sys.modules, "ray", Ray)
    assert threads.budget() == 3

    class Driver(Context):
        def get_assigned_resources(self):
            raise AssertionError("only available in a worker")

    Ray.get_runtime_context = staticmethod(Driver)
    assert threads.budget() == max(1, threads._cpus() // 2)


def test_budget_does_not_import_ray():
    code = "import sys; from alignflow import threads; threads.budget(); print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.stdout.strip() == "False"


def test_the_first_process_shrinks_when_another_starts_and_grows_back(monkeypatch):
    """rebalance (called between batches and training steps): the process that started alone
    takes the fair share once another registers, and every core again when it is gone."""
    import torch

    monkeypatch.setattr(threads, "_cpus", lambda: 2)
    before = torch.get_num_threads()
    try:
        assert threads.configure_env() == 2
        threads.apply()
        assert threads.rebalance(every_s=0) == 2 and torch.get_num_threads() == 2
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            (threads.registry_dir() / str(other.pid)).write_text(threads._start_time(other.pid) or "")
            assert threads.rebalance(every_s=0) == 1 and torch.get_num_threads() == 1
            assert threads.rebalance(every_s=3600) is None  # throttled: no registry scan
        finally:
            other.kill()
            other.wait()
        assert threads.rebalance(every_s=0) == 2 and torch.get_num_threads() == 2
    finally:
        threads.release()
        torch.set_num_threads(before)


def test_rebalance_leaves_a_count_the_user_chose(monkeypatch, other_process):
    monkeypatch.setenv("ALIGNFLOW_THREADS", "2")
    threads.configure_env()
    assert threads.rebalance(every_s=0) is None
    threads.release()


def test_unshared_ignores_other_processes_but_not_the_users_count(monkeypatch, other_process):
    """For an engine whose idle threads sleep (OpenVINO): every core beside another alignflow
    process, even after configure_env exported the fair share; the user's counts still win."""
    monkeypatch.setattr(threads, "_cpus", lambda: 2)
    assert threads.configure_env() == 1  # torch's fair share beside the other process
    assert threads.unshared() == 2  # our own export is not the user's OMP_NUM_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv(threads.EXPORTED_ENV)
    assert threads.unshared() == 3
    monkeypatch.setenv("ALIGNFLOW_THREADS", "4")
    assert threads.unshared() == 4

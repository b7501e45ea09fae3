"""Fixtures of the RLHF tests: a stage tracker that records what a stage logs; the inference
engines' shared prompts, greedy-id helper and empty conversion cache."""

from __future__ import annotations

import pytest


class RecordingTracker:
    """Stands in for tracking.StageRun where a test calls a stage's run() directly."""

    def __init__(self):
        self.metrics: list[tuple[dict, int | None]] = []
        self.tags: dict = {}
        self.artifacts: list[str] = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(str(path))

    def log_summary(self, metrics):
        self.metrics.append((dict(metrics), None))


@pytest.fixture
def tracker():
    return RecordingTracker()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core box OpenMP's
    spin-waiting threads make them several times slower: run these tests single-threaded."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Chat prompts of different lengths and roles: what the engine tests generate from.
ENGINE_PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "A much longer prompt with many more words in it than the first one has."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Count: one two three four five six"}],
    [{"role": "user", "content": "Why?"}],
]


def greedy_ids(gens) -> list[list[int]]:
    return [g[0].token_ids for g in gens]


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty conversion cache (the tiny models are rebuilt there too, in a second)."""
    from alignflow.rlhf import engine_common

    monkeypatch.setenv("ALIGNFLOW_CACHE", str(tmp_path / "cache"))
    engine_common._DIGESTS.clear()
    return tmp_path / "cache"

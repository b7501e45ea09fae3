"""Fixtures of the RLHF tests: a stage tracker that records what a stage logs."""

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

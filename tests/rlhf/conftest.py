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

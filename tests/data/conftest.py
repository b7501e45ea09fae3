"""Helpers for the data-stage tests: run a stage's `run()` in a scratch project directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from alignflow.config import load_params

ROOT = Path(__file__).resolve().parents[2]


class NullTracker:
    """Stands in for the MLflow StageRun in unit tests (the integration test uses the real one)."""

    def __init__(self):
        self.artifacts: list[str] = []

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(str(path))

    def log_metrics(self, metrics, step=None):
        pass

    def set_tags(self, tags):
        pass


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A scratch project dir (cwd) with the bundled eval prompts; `.params(**sections)` writes params.yaml."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "sample").mkdir(parents=True)
    shutil.copy(ROOT / "data" / "sample" / "eval_prompts.jsonl", tmp_path / "data" / "sample" / "eval_prompts.jsonl")

    class Project:
        path = tmp_path

        @staticmethod
        def params(**sections):
            base = {"model": {"base": "tiny:llama"}}
            base.update(sections)
            (tmp_path / "params.yaml").write_text(yaml.safe_dump(base, allow_unicode=True), encoding="utf-8")
            return load_params(tmp_path / "params.yaml")

    return Project()

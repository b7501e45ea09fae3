"""Fixtures for the training tests: a scratch project with tiny formatted data and smoke params."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def conversation(i: int) -> dict:
    if i % 3 == 0:  # multi-turn
        messages = [
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            {"role": "user", "content": "And times two?"},
            {"role": "assistant", "content": f"That is {4 * i}."},
        ]
    else:
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Name colour number {i}."},
            {"role": "assistant", "content": ["Red.", "Blue is a calm colour.", "Green, like grass in spring."][i % 3]},
        ]
    return {"id": f"c{i}", "messages": messages, "task": "toy", "source": "test", "license": "CC0"}


def preference(i: int) -> dict:
    rec = {
        "id": f"p{i}",
        "prompt": [{"role": "user", "content": f"Is {i} an even number?"}],
        "chosen": [{"role": "assistant", "content": "Yes, it is even." if i % 2 == 0 else "No, it is odd."}],
        "rejected": [{"role": "assistant", "content": "I cannot help with that, sorry."}],
        "task": "toy",
        "source": "test",
    }
    if i % 2:
        rec["margin"] = 0.5
    return rec


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def smoke_params(overrides: dict | None = None) -> dict:
    """params.yaml merged with profiles/smoke.yaml (+ dotted overrides), as a dict."""
    from alignflow.config import deep_merge, set_dotted

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw = deep_merge(raw, yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text()))
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return raw


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Factory: a scratch project dir (cwd) with tiny formatted data and a params.yaml."""

    def make(overrides: dict | None = None, n_train: int = 16, chdir: bool = True):
        from alignflow.config import validate

        root = tmp_path / "proj"
        write_jsonl(root / "data/formatted/sft_train.jsonl", [conversation(i) for i in range(n_train)])
        write_jsonl(root / "data/formatted/sft_val.jsonl", [conversation(i) for i in range(100, 104)])
        write_jsonl(root / "data/formatted/prefs_train.jsonl", [preference(i) for i in range(n_train)])
        write_jsonl(root / "data/formatted/prefs_val.jsonl", [preference(i) for i in range(100, 106)])
        write_jsonl(root / "data/formatted/prompts_val.jsonl",
                    [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"Name colour number {i}."}],
                      "reference": "Blue is a calm colour."} for i in range(100, 104)])
        raw = smoke_params(overrides)
        (root / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
        if chdir:
            monkeypatch.chdir(root)
        return root, validate(raw)

    return make


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

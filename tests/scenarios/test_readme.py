"""Every command README.md prints in a block marked runnable (```bash runnable) works as printed.

The blocks run in order, in one copy of the scenarios' smoke workspace (a project after its first
`alignflow repro`), each line as a user would type it. Blocks without the marker are not run here,
and README.md says what they need (a cluster, Docker, a GPU, minutes of training: `make run`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.scenario]

BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def runnable_commands(markdown: str) -> list[str]:
    """The commands of ```bash runnable blocks: one per line, `\\` continuations joined, comments dropped."""
    commands = []
    for lang, info, body in BLOCK.findall(markdown):
        if lang not in ("bash", "sh", "console") or "runnable" not in info.split():
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_readme_marks_its_runnable_commands():
    commands = runnable_commands((ROOT / "README.md").read_text())
    assert any(c.startswith("alignflow repro --exp") for c in commands), commands
    assert any(c.startswith("dvc exp show") for c in commands), commands


def test_readme_commands_work_as_printed(user_workspace, scenario_env):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": scenario_env, "COLUMNS": "200"}
    for command in runnable_commands((ROOT / "README.md").read_text()):
        proc = subprocess.run(["bash", "-c", command], cwd=user_workspace, env=env, capture_output=True,
                              text=True, timeout=1200, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

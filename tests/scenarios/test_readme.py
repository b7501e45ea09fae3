"""Every command README.md prints in a block marked runnable (```bash runnable) works as printed.

test_sweep.py runs them in order, in a copy of the scenarios' smoke workspace (a project after
its first `alignflow repro`), each line as a user would type it, then checks what they made.
Blocks without the marker are not run: they need a cluster, Docker, a GPU, an interactive
terminal or the minutes of `make run` / `make test` themselves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


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
            line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()  # an explanatory comment
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_readme_marks_its_runnable_commands():
    commands = runnable_commands((ROOT / "README.md").read_text())
    assert any(c.startswith("alignflow repro --exp") for c in commands), commands
    assert any(c.startswith("dvc exp show") for c in commands), commands


def run_readme_commands(ws: Path, tracking_uri: str) -> list[str]:
    """Run every runnable README command in `ws`, in order, as a user would type it."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": tracking_uri, "COLUMNS": "200"}
    commands = runnable_commands((ROOT / "README.md").read_text())
    for command in commands:
        proc = subprocess.run(["bash", "-c", command], cwd=ws, env=env, capture_output=True, text=True,
                              timeout=1200, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return commands

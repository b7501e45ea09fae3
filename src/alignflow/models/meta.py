"""What a models/* directory says about itself (alignflow_model.json), and the spec error.

The bottom of alignflow.models: it imports nothing else from the package
(meta <- hf <- specs <- loading).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

META_FILE = "alignflow_model.json"


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved; the message says what is accepted."""


def read_meta(path: str | os.PathLike) -> dict | None:
    meta = Path(path) / META_FILE
    if not meta.exists():
        return None
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ModelSpecError(f"{meta}: not valid JSON ({err})") from None

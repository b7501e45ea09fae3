"""`alignflow rm-accuracy`: how often a trained reward model ranks the chosen answer of held-out
preference pairs above the rejected one, on any file of pairs (HH-RLHF transcripts, or
prompt/chosen/rejected records), with a bootstrap 95% CI over pairs.

Eval reports the same number on the formatted test split (`rm_accuracy_heldout`); a few dozen
pairs there leave a CI ±0.15 wide, so a team checks a reward model on every held-out pair it has.
Rows that do not parse are skipped and counted (the first reason names file:line); a pair whose
prompt was in the reward model's training data is the caller's business: pass held-out files only.
"""

from __future__ import annotations

from pathlib import Path

from alignflow.config import Params
from alignflow.data.sources import READERS, RecordError, iter_rows
from alignflow.io import InputError


def read_pairs(path: Path, fmt: str) -> tuple[list[dict], int, str | None]:
    """(pairs, rows skipped, the first skip's reason) of a JSON Lines / JSON file (.gz too)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    reader = READERS[fmt][1]
    pairs, skipped, first = [], 0, None
    for origin, row, error in iter_rows(path):
        try:
            if error:
                raise RecordError(error)
            pairs.extend(reader(row))
        except RecordError as err:
            skipped += 1
            first = first or f"{origin}: {err}"
    return pairs, skipped, first


def load_trained_reward_model(model_dir: Path, params: Params):
    """A reward stage's output (models/reward or a copy): anything else would score with a random head."""
    from alignflow.models import load_reward_model
    from alignflow.models.meta import read_meta

    meta = read_meta(model_dir) if model_dir.is_dir() else None
    if not meta or meta.get("kind") != "reward":
        raise InputError(f"{model_dir}: not a trained reward model (the reward stage writes models/reward)")
    return load_reward_model(str(model_dir), dtype=params.model.dtype, trust_remote_code=params.model.trust_remote_code)

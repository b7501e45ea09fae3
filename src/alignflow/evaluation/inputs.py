"""eval's inputs: the held-out prompts, harmful prompts, verifiable-constraint prompts and
preference pairs, checked record by record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignflow import paths
from alignflow.io import InputError, read_jsonl

HARMFUL_TEST = paths.HARMFUL_TEST
PREFS_TEST = paths.PREFS_TEST
SFT_DIR = paths.SFT_MODEL
REWARD_DIR = paths.REWARD_MODEL
POLICY_DIR = paths.POLICY_MODEL


def _check_messages(value: Any, where: str, key: str) -> list[dict]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                       for m in value)):
        raise InputError(f"{where}: '{key}' must be a non-empty list of {{role, content}} messages")
    return value


def load_prompts(path: Path, limit: int) -> list[dict]:
    """The first `limit` prompt records ({"id", "prompt": [messages], "reference"?})."""
    out = []
    for lineno, rec in enumerate(read_jsonl(path), 1):
        if len(out) >= limit:
            break
        if not isinstance(rec, dict):
            raise InputError(f"{path}:{lineno}: expected a prompt record (an object)")
        _check_messages(rec.get("prompt"), f"{path}:{lineno}", "prompt")
        ref = rec.get("reference")
        if ref is not None and not isinstance(ref, str):
            raise InputError(f"{path}:{lineno}: 'reference' must be a string")
        out.append(rec)
    return out


def load_constrained(path: Path, limit: int) -> list[dict]:
    """Prompt records that carry verifiable constraints ({"id", "prompt", "constraints": [{id, kwargs}]})."""
    from alignflow.verifiable import SUPPORTED

    out = load_prompts(path, limit)
    for lineno, rec in enumerate(out, 1):
        cons = rec.get("constraints")
        if (not isinstance(cons, list) or not cons
                or not all(isinstance(c, dict) and isinstance(c.get("kwargs", {}), dict) for c in cons)):
            raise InputError(f"{path}:{lineno}: 'constraints' must be a non-empty list of {{id, kwargs}} objects")
        unknown = [c.get("id") for c in cons if c.get("id") not in SUPPORTED]
        if unknown:
            raise InputError(f"{path}:{lineno}: unknown constraint id(s) {unknown}; supported: {', '.join(SUPPORTED)}")
    return out


def load_pairs(path: Path, limit: int) -> list[dict]:
    """Preference records ({"prompt", "chosen", "rejected"} as message lists)."""
    out = []
    for lineno, rec in enumerate(read_jsonl(path), 1):
        if len(out) >= limit:
            break
        for key in ("prompt", "chosen", "rejected"):
            _check_messages(rec.get(key) if isinstance(rec, dict) else None, f"{path}:{lineno}", key)
        out.append(rec)
    return out


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{path}: missing ({what}); run the earlier stages first (dvc repro)")


@dataclass
class EvalInputs:
    records: list[dict]  # benign held-out prompts (with references)
    harmful_records: list[dict]
    pairs: list[dict]  # held-out human preference pairs
    constrained_records: list[dict] = field(default_factory=list)  # verifiable-constraint prompts
    n_seeds: int = 1  # > 1: each prompt list is its prompts once per eval seed, seed-major

    def repeated(self, n_seeds: int) -> EvalInputs:
        """The prompts once per seed (seed-major: all prompts for the first seed, then the next),
        the layout of eval's generations with eval.seeds; the pairs are scored, not generated."""
        return EvalInputs(self.records * n_seeds, self.harmful_records * n_seeds, self.pairs,
                          self.constrained_records * n_seeds, self.n_seeds * n_seeds)

    @property
    def constrained(self) -> list[list[dict]]:
        return [r["prompt"] for r in self.constrained_records]

    @property
    def benign(self) -> list[list[dict]]:
        return [r["prompt"] for r in self.records]

    @property
    def harmful(self) -> list[list[dict]]:
        return [r["prompt"] for r in self.harmful_records]


def load_inputs(ep) -> EvalInputs:
    prompts_file = Path(ep.benign_prompts)
    for path, what in ((prompts_file, "held-out prompts, format stage"), (SFT_DIR, "SFT model, sft stage"),
                       (REWARD_DIR, "reward model, reward stage"), (POLICY_DIR, "aligned policy, align stage")):
        _require(path, what)
    records = load_prompts(prompts_file, ep.max_prompts)
    if not records:
        raise InputError(f"{prompts_file}: no prompt records")
    harmful = load_prompts(HARMFUL_TEST, ep.max_harmful_prompts) if HARMFUL_TEST.exists() else []
    pairs = load_pairs(PREFS_TEST, ep.max_pairs) if PREFS_TEST.exists() else []
    ifeval = Path(ep.ifeval_prompts)
    constrained = load_constrained(ifeval, ep.max_ifeval_prompts) if ep.max_ifeval_prompts and ifeval.exists() else []
    return EvalInputs(records, harmful, pairs, constrained)

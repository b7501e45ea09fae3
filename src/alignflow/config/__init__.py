"""params.yaml, validated by a typed schema.

One pydantic model per section, in the module of the stages that own it. A wrong key, type or
value fails before any work with a `ParamsError` that names the dotted key and what is allowed.
Sections may define `cross_check(self, params) -> list[str]` for rules that span sections
(e.g. qlora needs a GPU); those run after every section validated on its own.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError, ValidationInfo, model_validator

from alignflow.config.base import Section
from alignflow.config.common import ModelParams, RayParams, TrackingParams
from alignflow.config.data import CleanParams, CollectParams, FormatParams
from alignflow.config.evaluation import EvalParams
from alignflow.config.orchestration import OrchestrationParams
from alignflow.config.rlhf import AlignParams, RankParams, SampleParams
from alignflow.config.synthesis import SelectionParams, SynthesizeParams
from alignflow.config.training import RewardParams, SFTParams
from alignflow.io import InputError, read_yaml

PARAMS_FILE = "params.yaml"


class ParamsError(ValueError):
    """params.yaml (or an override) does not fit the schema."""


class Params(Section):
    profile: str = "default"
    seed: int = 42
    model: ModelParams = ModelParams()
    ray: RayParams = RayParams()
    tracking: TrackingParams = TrackingParams()
    collect: CollectParams = CollectParams()
    synthesize: SynthesizeParams = SynthesizeParams()
    clean: CleanParams = CleanParams()
    format: FormatParams = FormatParams()
    selection: SelectionParams = SelectionParams()
    sft: SFTParams = SFTParams()
    sample: SampleParams = SampleParams()
    rank: RankParams = RankParams()
    reward: RewardParams = RewardParams()
    align: AlignParams = AlignParams()
    eval: EvalParams = EvalParams()
    orchestration: OrchestrationParams = OrchestrationParams()

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> "Params":
        if (info.context or {}).get("cross_checks") is False:
            return self
        problems = []
        for name in type(self).model_fields:
            section = getattr(self, name)
            check = getattr(section, "cross_check", None)
            if callable(check):
                problems += [f"{name}.{p}" for p in check(self)]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid params"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            allowed = _allowed_keys(parent)
            msg = f"unknown key; allowed here: {', '.join(allowed)}" if allowed else "unknown key"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = Params
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return sorted(getattr(model, "model_fields", {}))


def deep_merge(base: dict, override: dict) -> dict:
    """Recursively merge `override` into a copy of `base` (lists are replaced, not merged)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def validate(raw: dict, source: str = PARAMS_FILE, *, cross_checks: bool = True) -> Params:
    """`cross_checks=False`: each section on its own only, for a training loop's config, which
    carries just its stage's sections (the stage checked the rules across sections on the whole
    params before it started the loop; the other sections would be defaults there)."""
    try:
        return Params.model_validate(raw or {}, context={"cross_checks": cross_checks})
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None


def load_params(path: str | os.PathLike = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate params.yaml; `overrides` maps dotted keys to values (as `-S` in DVC)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the project root, or pass --params)")
    try:
        raw = read_yaml(path) or {}
    except InputError as err:  # not YAML, not UTF-8, or a key given twice (the last would win silently)
        raise ParamsError(str(err)) from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return validate(raw, str(path))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists of mappings get their index in the key."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(tree, list) and any(isinstance(v, dict) for v in tree):
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = tree
    return out

"""Params of the evaluation stages (filled in by the issue that implements them)."""

from __future__ import annotations

from alignflow.config.base import Section


class EvalParams(Section):
    pass

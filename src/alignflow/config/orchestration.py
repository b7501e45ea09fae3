"""Params of the orchestration stages (filled in by the issue that implements them)."""

from __future__ import annotations

from alignflow.config.base import Section


class OrchestrationParams(Section):
    pass

"""Params of the data stages (filled in by the issue that implements them)."""

from __future__ import annotations

from alignflow.config.base import Section


class CollectParams(Section):
    pass


class CleanParams(Section):
    pass


class FormatParams(Section):
    pass

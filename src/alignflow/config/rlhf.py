"""Params of the rlhf stages (filled in by the issue that implements them)."""

from __future__ import annotations

from alignflow.config.base import Section


class SampleParams(Section):
    pass


class RankParams(Section):
    pass


class AlignParams(Section):
    pass

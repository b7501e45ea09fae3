"""Params of the training stages (filled in by the issue that implements them)."""

from __future__ import annotations

from alignflow.config.base import Section


class SFTParams(Section):
    pass


class RewardParams(Section):
    pass

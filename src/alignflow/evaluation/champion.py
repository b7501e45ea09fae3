"""The registry champion eval compares the candidate with: which one, and its files.

eval reads the `champion` alias once, when it starts (evaluate.run): that version is the one
compared here and the one recorded as `champion_at_eval` in reports/gate.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from alignflow.config import Params

if TYPE_CHECKING:
    from alignflow.evaluation.registry import RegisteredVersion

log = logging.getLogger(__name__)


def fetch_champion(mv: RegisteredVersion | None, params: Params, candidate_version: str | None, tmp: Path) -> tuple[str, Path] | None:
    """(version, local dir) of the registry champion `mv` (the `champion` alias as eval read it
    when it started), or None (none, or it is the candidate, or another profile's, or broken)."""
    from alignflow.evaluation import registry

    if mv is None:
        log.info("no champion in the registry yet: the candidate is compared with SFT")
        return None
    if candidate_version is not None and mv.version == candidate_version:
        log.info("the candidate (v%s) is already the champion", mv.version)
        return None
    champion_profile = mv.tags.get(registry.PROFILE_TAG)
    if champion_profile and champion_profile != params.profile:
        log.info("champion v%s was trained by the %r profile, not %r: the candidate is compared with SFT",
                 mv.version, champion_profile, params.profile)
        return None
    try:
        return mv.version, registry.download_version(mv.version, tmp / f"champion-v{mv.version}")
    except Exception as err:  # a broken champion must not block evaluating the candidate
        log.warning("champion v%s could not be downloaded (%s): compared with SFT only", mv.version, err)
        return None

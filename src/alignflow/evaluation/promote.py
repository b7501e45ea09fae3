"""`alignflow promote`: move `champion` to the candidate eval judged, once DVC committed eval.

Eval writes its verdict to reports/gate.json and never touches the `champion` alias: the alias
moves here, after the pipeline, and only when
- eval's outputs are the ones dvc.lock records (`dvc status eval` is clean: a kill between the
  gate and DVC's commit leaves the champion as it was, and a re-run finishes the job),
- the gate passed for a registered candidate, and
- the champion is still the one eval compared against (no other run promoted meanwhile).

The model version then carries why: the gate's verdict and reasons, the eval and pipeline run
ids, the dvc.lock hashes and the git commit. `alignflow repro` calls this after `dvc repro`
(after `dvc exp run` only with eval.gate.promote_in_experiments), the Airflow DAG in its
`promote` task; after a plain `dvc repro`, run `alignflow promote` yourself.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alignflow.evaluation.gate import CHAMPION, POLICY_MODEL

log = logging.getLogger(__name__)

GATE_FILE = Path("reports/gate.json")
EVAL_STAGE = "eval"


class PromotionError(RuntimeError):
    """The champion cannot be moved now (eval not run or not committed, champion moved)."""


def eval_changes(repo_dir: str | Path = ".") -> dict[str, Any]:
    """What `dvc status eval` reports: empty when dvc.lock records exactly the outputs on disk."""
    from dvc.repo import Repo

    with Repo(str(repo_dir)) as repo:
        return repo.status(targets=[EVAL_STAGE])


def lock_digest(lock_path: Path) -> str:
    return hashlib.sha256(lock_path.read_bytes()).hexdigest()[:12] if lock_path.exists() else ""


def read_gate(path: Path = GATE_FILE) -> dict[str, Any]:
    if not path.exists():
        raise PromotionError(f"{path}: missing; run the eval stage first (dvc repro)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PromotionError(f"{path}: not valid JSON ({err})") from None


def promote(repo_dir: str | Path = ".") -> dict[str, Any]:
    """Apply eval's committed gate decision to the registry; returns what was done."""
    import mlflow

    from alignflow import tracking
    from alignflow.evaluation.registry import get_alias

    root = Path(repo_dir)
    record = read_gate(root / GATE_FILE)
    changes = eval_changes(root)
    if changes:
        raise PromotionError(
            f"eval's outputs are not committed in dvc.lock (dvc status eval: {json.dumps(changes, default=str)[:300]}); "
            "the champion stays. Run `dvc repro` (or `dvc commit eval` for outputs you trust), then `alignflow promote`")
    version = record.get("candidate_version")
    result = {"candidate_version": version, "passed": bool(record.get("passed")), "promoted": False}
    if not version:
        print("alignflow promote: the candidate is not registered; the registry is unchanged", flush=True)
        return result

    client = mlflow.MlflowClient()
    lock = root / "dvc.lock"
    why = {
        "alignflow.gate": "passed" if record.get("passed") else "failed",
        "alignflow.gate_reasons": "; ".join(record.get("reasons", []))[:4900],
        "alignflow.gate_baseline": str(record.get("baseline")),
        "alignflow.eval_run_id": record.get("eval_run_id") or "",
        "alignflow.pipeline_run_id": record.get("parent_run_id") or "",
        "alignflow.dvc_lock": lock_digest(lock),
        "alignflow.dvc_lock.eval": tracking.dvc_stage_hashes(lock).get(EVAL_STAGE, ""),
        "alignflow.git_commit": tracking.git_commit(root) or "",
    }
    for key, value in why.items():
        client.set_model_version_tag(POLICY_MODEL, version, key, value)

    current = get_alias(CHAMPION)
    current_version = current.version if current else None
    if not record.get("passed"):
        print(f"alignflow promote: gate failed for {POLICY_MODEL} v{version}; champion stays "
              f"{'v' + current_version if current_version else '(none)'}", flush=True)
        return result
    if current_version == str(version):
        print(f"alignflow promote: {POLICY_MODEL} v{version} is already the champion", flush=True)
        return {**result, "promoted": True}
    at_eval = record.get("champion_at_eval")
    if current_version != at_eval:
        raise PromotionError(
            f"the champion moved since eval ran (v{at_eval} then, v{current_version} now): "
            f"re-run eval (dvc repro -f eval) so v{version} is judged against the current champion")
    client.set_model_version_tag(POLICY_MODEL, version, "alignflow.promoted_at",
                                 datetime.now(timezone.utc).isoformat(timespec="seconds"))
    client.set_registered_model_alias(POLICY_MODEL, CHAMPION, version)
    if record.get("parent_run_id"):
        try:
            client.set_tag(record["parent_run_id"], "gate.promoted", f"v{version}")
        except mlflow.exceptions.MlflowException as err:  # the parent may live in another store
            log.warning("could not tag the pipeline run %s: %s", record["parent_run_id"], err)
    print(f"alignflow promote: {POLICY_MODEL} v{version} is now champion "
          f"(was {'v' + current_version if current_version else 'none'}; dvc.lock {why['alignflow.dvc_lock']})",
          flush=True)
    return {**result, "promoted": True}

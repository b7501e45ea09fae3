"""collect: every source in `collect.sources` -> canonical records with provenance in data/raw/.

Outputs (atomic): conversations.jsonl, preferences.jsonl, prompts.jsonl, rejects.jsonl (malformed
lines, lines that are not UTF-8 or hold a lone surrogate, rows that do not fit their format, with
file:line) and sources.json (each source's task, weight, license and counts: format reads the
weights from it for mixing). Every source is read and checked before anything is written: a
failed collect leaves the previous data/raw as it was.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from alignflow.config import Params
from alignflow.config.data import KINDS, SourceParams
from alignflow.io import InputError, RejectWriter, atomic_dir, write_json, write_jsonl
from alignflow.data.sources import kind_of, read_source

log = logging.getLogger(__name__)
RAW_DIR = Path("data/raw")


def split_reason(reason: str) -> tuple[str, str]:
    """'schema: alpaca: missing field' -> ('schema', 'alpaca: missing field')."""
    head, _, rest = reason.partition(": ")
    return head, rest


def collect_source(src: SourceParams, where: str, out: dict[str, list[dict]], rejects: RejectWriter) -> dict[str, Any]:
    kind = kind_of(src.format)
    kept, bad = 0, Counter()
    for record, origin, reason, row in tqdm(read_source(src, where), desc=f"collect {src.label}", unit="rec", leave=False):
        if record is None:
            short, detail = split_reason(reason)
            rejects.add(row, short, f"{origin}: {detail}")
            bad[short] += 1
            continue
        out[kind].append(record)
        kept += 1
    return {"kind": kind, "records": kept, "rejected": sum(bad.values()), "reject_reasons": dict(bad)}


def source_manifest(src: SourceParams, counts: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": src.label, "task": src.task_name, "weight": src.weight, "license": src.license,
        "format": src.format, "location": src.path or f"hf:{src.hf}:{src.split}", **counts,
    }


def _check_dvc_deps(params: Params, dvc_yaml: Path = Path("dvc.yaml")) -> None:
    """Under DVC, every source must be a dep of collect, or new data would go unnoticed."""
    from alignflow.data import source_deps

    if not dvc_yaml.exists():
        return
    problems = source_deps.check(params, dvc_yaml)
    if problems:
        raise InputError(f"{dvc_yaml}: stage collect does not follow collect.sources ({'; '.join(problems)}): "
                         "run `alignflow sync-deps` (alignflow repro and the Airflow DAG do it for you)")


def empty_source_error(i: int, m: dict[str, Any], first_reject: dict | None) -> InputError:
    """A source that yields nothing is a configuration error, not an empty dataset. It is raised
    before anything is written, so the previous data/raw stays; the first reject shows why."""
    reasons = ", ".join(f"{k}: {v}" for k, v in m["reject_reasons"].items()) or "no rows"
    first = f"; first reject: {first_reject['detail']}" if first_reject else ""
    return InputError(f"collect.sources[{i}] ({m['name']}, {m['location']}): yielded no records ({reasons}){first}; "
                      f"{RAW_DIR} was left as it was")


def run(params: Params, tracker) -> dict[str, Any]:
    sources = params.collect.sources
    if not sources:
        raise InputError("collect.sources is empty: list at least one {path|hf, format} entry in params.yaml")
    _check_dvc_deps(params)
    rejects = RejectWriter("collect")
    out: dict[str, list[dict]] = {k: [] for k in KINDS}
    manifest = []
    for i, src in enumerate(sources):
        start = len(rejects)
        counts = collect_source(src, f"collect.sources[{i}] ({src.label})", out, rejects)
        manifest.append(source_manifest(src, counts))
        log.info("collect %s: %d records, %d rejected", src.label, counts["records"], counts["rejected"])
        if counts["records"] == 0:
            raise empty_source_error(i, manifest[-1], rejects.rows[start] if len(rejects) > start else None)

    with atomic_dir(RAW_DIR) as tmp:
        for kind in KINDS:
            write_jsonl(tmp / f"{kind}.jsonl", out[kind])
        rejects.write(tmp / "rejects.jsonl")
        write_json(tmp / "sources.json", manifest)

    metrics: dict[str, Any] = {f"{k}": len(out[k]) for k in KINDS}
    metrics["rejected"] = len(rejects)
    metrics["sources"] = {m["name"]: {"records": m["records"], "rejected": m["rejected"]} for m in manifest}
    metrics["reject_reasons"] = dict(rejects.counts)
    tracker.log_artifact(RAW_DIR / "sources.json")
    return metrics

"""synthesize: seed tasks (data/raw, sources marked `seeds: true`) -> synthetic conversations in data/synth/.

Outputs (atomic): conversations.jsonl (canonical records with `synthetic` provenance: method,
teacher, round, parents), rejects.jsonl (every dropped candidate with its reason) and
sources.json (the synthetic tasks' weight and license, which clean passes on to format's mix).
Disabled (the default) it writes the same files, empty, in a moment: the DAG keeps its shape.
The teacher's answers are cached outside data/synth (synthesize.teacher.cache_dir), so a re-run
or a run resumed after a kill asks the teacher only what it has not answered yet.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

from alignflow.config import Params
from alignflow.data.synthesis import evol_instruct, self_instruct
from alignflow.data.synthesis.teacher import Teacher
from alignflow.io import InputError, RejectWriter, atomic_dir, read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)
RAW_DIR, SYNTH_DIR = Path("data/raw"), Path("data/synth")


def read_seeds(params: Params) -> list[dict]:
    labels = sorted(s.label for s in params.collect.sources if s.seeds)
    path = RAW_DIR / "conversations.jsonl"
    if not path.exists():
        raise InputError(f"{path}: missing (run the collect stage first)")
    seeds = [r for r in read_jsonl(path) if r.get("source") in labels]
    if not seeds:
        raise InputError(f"synthesize: no conversations from the seed sources {labels} in {path}")
    return seeds


def write_outputs(records: list[dict], rejects: RejectWriter, manifest: list[dict]) -> None:
    with atomic_dir(SYNTH_DIR) as tmp:
        write_jsonl(tmp / "conversations.jsonl", records)
        rejects.write(tmp / "rejects.jsonl")
        write_json(tmp / "sources.json", manifest)


def evol_inputs(seeds: list[dict], si_records: list[dict], inputs: str, limit: int, rng: random.Random) -> list[dict]:
    pool = {"seeds": seeds, "self_instruct": si_records, "both": seeds + si_records}[inputs]
    return rng.sample(pool, min(limit, len(pool)))


def run(params: Params, tracker) -> dict[str, Any]:
    p = params.synthesize
    rejects = RejectWriter("synthesize")
    if not p.enabled:
        write_outputs([], rejects, [])
        return {"enabled": False, "records": 0}
    seeds = read_seeds(params)
    teacher = Teacher(p.teacher, "synthesize.teacher")
    rng = random.Random(params.seed)
    started = time.perf_counter()
    records: list[dict] = []
    metrics: dict[str, Any] = {"enabled": True, "teacher": teacher.label, "seeds": len(seeds)}
    si_records: list[dict] = []
    if p.self_instruct.enabled:
        si = self_instruct.SelfInstruct([self_instruct.seed_task(r) for r in seeds], p.self_instruct, teacher, rng,
                                        rejects, p.license)
        si_records = si.run()
        records += si_records
        metrics["self_instruct"] = si.metrics()
    if p.evol_instruct.enabled:
        e = p.evol_instruct
        ev = evol_instruct.EvolInstruct(evol_inputs(seeds, si_records, e.inputs, e.max_inputs, rng), e, teacher, rng,
                                        rejects, p.license)
        records += ev.run()
        metrics["evol_instruct"] = ev.metrics()
    seconds = time.perf_counter() - started

    manifest = [{"name": m.SOURCE, "task": m.SOURCE, "weight": p.weight, "license": p.license, "format": "synthetic",
                 "location": f"teacher:{teacher.label}", "records": sum(r["source"] == m.SOURCE for r in records)}
                for m in (self_instruct, evol_instruct) if m.METHOD in metrics]
    write_outputs(records, rejects, manifest)
    candidates = sum(metrics[m]["candidates"] for m in ("self_instruct", "evol_instruct") if m in metrics)
    metrics.update({
        "candidates": candidates, "records": len(records), "rejected": len(rejects),
        "kept_fraction": round(len(records) / max(1, candidates), 4), "reject_reasons": dict(sorted(rejects.counts.items())),
        "teacher_calls": teacher.stats["calls"], "cache_hits": teacher.stats["cache_hits"],
        "teacher_failed": teacher.stats["failed"], "teacher_retries": teacher.stats["retries"],
        "teacher_seconds": round(teacher.stats["seconds"], 2), "synthesis_seconds": round(seconds, 2),
        "seconds_per_record": round(seconds / max(1, len(records)), 3),
    })
    log.info("synthesize: %d records from %d candidates (%d teacher calls, %d cached)", len(records), candidates,
             teacher.stats["calls"], teacher.stats["cache_hits"])
    return metrics

"""clean: data/raw and data/synth -> data/clean, step by step, every drop written to rejects.jsonl with its reason.

Steps (each switchable in params `clean.*`), per record kind (conversations, preferences, prompts):
normalize (unicode, HTML, whitespace) -> PII masking -> quality -> safety blocklist -> exact dedup
-> near dedup (MinHash LSH) -> diversity (ROUGE-L) -> decontamination against the eval sets.
data/synth holds the synthesize stage's records (none unless it is enabled): they pass every
step like collected ones. Outputs: the three kinds, rejects.jsonl, decontamination.json (what matched), sources.json
(passed through for format) and eval_prompts.jsonl (the eval sets as prompt records).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from alignflow.config import Params
from alignflow.config.data import KINDS, CleanParams, SourceParams
from alignflow.data import dedup, filters
from alignflow.data.decontam import EvalIndex
from alignflow.data.diversity import diversity_filter
from alignflow.data.sources import kind_of, read_source
from alignflow.io import InputError, RejectWriter, atomic_dir, read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)
RAW_DIR, SYNTH_DIR, CLEAN_DIR = Path("data/raw"), Path("data/synth"), Path("data/clean")
STEPS = ("normalize", "pii", "quality", "safety", "exact_dedup", "near_dedup", "diversity", "decontamination")


class Step:
    """Counts of one step: how many records it saw, changed and dropped (by reason)."""

    def __init__(self) -> None:
        self.seen = self.changed = 0
        self.dropped: Counter = Counter()
        self.extra: Counter = Counter()

    def as_dict(self) -> dict[str, Any]:
        out = {"in": self.seen, "dropped": sum(self.dropped.values())}
        if self.changed:
            out["changed"] = self.changed
        out.update({f"reason.{k}": v for k, v in sorted(self.dropped.items())})
        out.update(dict(sorted(self.extra.items())))
        return out


class Cleaner:
    def __init__(self, p: CleanParams, rejects: RejectWriter, eval_index: EvalIndex | None, eval_refs: list[dict]):
        self.p, self.rejects = p, rejects
        self.eval_index, self.eval_refs = eval_index, eval_refs
        self.steps = {s: Step() for s in STEPS}
        self.by_kind: dict[str, dict[str, int]] = {}
        self.matches: list[dict] = []

    def drop(self, step: str, kind: str, record: dict, reason: str, detail: str) -> None:
        self.steps[step].dropped[reason] += 1
        self.by_kind.setdefault(kind, Counter())[step] += 1
        self.rejects.add(record, f"{step}.{reason}" if reason != step else step, detail)

    # -- per-record steps ------------------------------------------------------------------

    def per_record(self, step: str, kind: str, records: list[dict], fn: Callable[[dict], tuple[dict | None, tuple | None]]) -> list[dict]:
        kept = []
        self.steps[step].seen += len(records)
        for rec in tqdm(records, desc=f"clean {step} {kind}", unit="rec", leave=False, mininterval=2):
            new, verdict = fn(rec)
            if verdict:
                self.drop(step, kind, rec, *verdict)
            else:
                kept.append(new)
        return kept

    def normalize(self, kind: str, records: list[dict]) -> list[dict]:
        def fn(rec):
            new, changed = filters.normalize_record(rec, kind, self.p.normalize)
            for name in changed:
                self.steps["normalize"].extra[f"changed.{name}"] += 1
            self.steps["normalize"].changed += bool(changed)
            return new, None

        return self.per_record("normalize", kind, records, fn)

    def pii(self, kind: str, records: list[dict]) -> list[dict]:
        def fn(rec):
            new, found = filters.mask_record_pii(rec, kind, self.p.safety.pii_kinds)
            if found:
                self.steps["pii"].changed += 1
                for k, v in found.items():
                    self.steps["pii"].extra[f"masked.{k}"] += v
            return new, None

        return self.per_record("pii", kind, records, fn) if self.p.safety.pii_masking else records

    def quality(self, kind: str, records: list[dict]) -> list[dict]:
        if not self.p.quality.enabled:
            return records
        return self.per_record("quality", kind, records, lambda r: (r, filters.quality_check(r, kind, self.p.quality)))

    def safety(self, kind: str, records: list[dict]) -> list[dict]:
        if not self.p.safety.enabled:
            return records
        return self.per_record("safety", kind, records, lambda r: (r, filters.safety_check(r, kind, self.p.safety)))

    # -- whole-set steps -------------------------------------------------------------------

    def drop_marked(self, step: str, kind: str, records: list[dict], partner: Any, detail: Callable[[int, int], str]) -> list[dict]:
        self.steps[step].seen += len(records)
        kept = []
        for i, rec in enumerate(records):
            j = int(partner[i])
            if j >= 0:
                self.drop(step, kind, rec, step, detail(i, j))
            else:
                kept.append(rec)
        return kept

    def exact_dedup(self, kind: str, records: list[dict]) -> list[dict]:
        if not self.p.exact_dedup.enabled:
            return records
        dup_of = dedup.exact_duplicates([filters.view(r, kind).all_text for r in records])
        return self.drop_marked("exact_dedup", kind, records, dup_of, lambda i, j: f"same normalized text as {records[j]['id']}")

    def near_dedup(self, kind: str, records: list[dict]) -> list[dict]:
        p = self.p.near_dedup
        if not p.enabled:
            return records
        res = dedup.near_duplicates(
            [filters.view(r, kind).all_text for r in records], p.threshold, p.num_perm, p.word_ngram, p.char_ngram,
            p.min_tokens, p.seed,
        )
        self.steps["near_dedup"].extra["exact_only_short"] += int((~res.eligible).sum())
        self.steps["near_dedup"].extra["candidate_pairs"] += res.candidates
        return self.drop_marked(
            "near_dedup", kind, records, res.dup_of,
            lambda i, j: f"near-duplicate of {records[j]['id']} (estimated Jaccard {res.similarity[i]:.2f})",
        )

    def diversity(self, kind: str, records: list[dict]) -> list[dict]:
        p = self.p.diversity
        if not p.enabled or kind not in p.kinds:
            return records
        similar_to, score, n_cand = diversity_filter(
            [filters.view(r, kind).prompt for r in records], p.max_similarity, p.candidate_recall, p.num_perm, p.max_tokens,
        )
        self.steps["diversity"].extra["candidate_pairs"] += n_cand
        return self.drop_marked(
            "diversity", kind, records, similar_to,
            lambda i, j: f"instruction ROUGE-L {score[i]:.2f} > {p.max_similarity} with kept {records[j]['id']}",
        )

    def decontaminate(self, kind: str, records: list[dict]) -> list[dict]:
        if self.eval_index is None:
            return records
        texts = [filters.view(r, kind).all_text for r in records]
        partner = [-1] * len(records)
        for m in self.eval_index.find(texts):
            ref = self.eval_refs[m.eval_index]
            partner[m.index] = m.eval_index
            self.matches.append({
                "id": records[m.index]["id"], "kind": kind, "match": m.kind, "eval_set": ref["set"], "eval_id": ref["id"],
                "train_text": texts[m.index][:300], "eval_text": ref["text"][:300],
            })
        return self.drop_marked(
            "decontamination", kind, records, partner,
            lambda i, j: f"overlaps eval set {self.eval_refs[j]['set']} record {self.eval_refs[j]['id']}",
        )

    def run(self, kind: str, records: list[dict]) -> list[dict]:
        for step in (self.normalize, self.pii, self.quality, self.safety, self.exact_dedup, self.near_dedup,
                     self.diversity, self.decontaminate):
            records = step(kind, records)
        return records


# ------------------------------------------------------------------------------------- eval sets


def load_eval_sets(p: CleanParams) -> tuple[list[dict], list[dict]]:
    """(eval prompt records, refs for matching: {set, id, text}) of `clean.decontamination.eval_sets`."""
    prompts, refs = [], []
    for i, es in enumerate(p.decontamination.eval_sets):
        where = f"clean.decontamination.eval_sets[{i}]"
        src = SourceParams(path=es.path, format=es.format, name=es.name, task="eval")
        n = 0
        for rec, origin, reason, _ in read_source(src, where):
            if rec is None:
                raise InputError(f"{where}: {origin}: {reason}")
            n += 1
            rec = to_prompt_record(rec, kind_of(es.format))
            prompts.append(rec)
            texts = [rec["prompt"][-1]["content"]]
            if p.decontamination.include_references and rec.get("reference"):
                texts.append(rec["reference"])
            refs += [{"set": src.label, "id": rec["id"], "text": t} for t in texts]
        if n == 0:
            raise InputError(f"{where}: {es.path}: no records")
    return prompts, refs


def to_prompt_record(rec: dict, kind: str) -> dict:
    """Any canonical record -> a prompt record (prompt messages + reference answer when there is one)."""
    if kind == "prompts":
        return rec
    from alignflow.data.sources import prompt_record

    prov = {k: rec[k] for k in ("task", "source", "license", "origin") if k in rec}
    if kind == "conversations":
        msgs = rec["messages"]
        return prompt_record(msgs[:-1], msgs[-1]["content"], **prov)
    return prompt_record(rec["prompt"], rec["chosen"][-1]["content"], **prov)


# ----------------------------------------------------------------------------------------- stage


def read_raw(kind: str) -> list[dict]:
    path = RAW_DIR / f"{kind}.jsonl"
    if not path.exists():
        raise InputError(f"{path}: missing (run the collect stage first)")
    return list(read_jsonl(path))


def read_synthetic(kind: str) -> list[dict]:
    """The synthesize stage's records of this kind (none when it is off or was not run): they go
    through every step like collected ones."""
    path = SYNTH_DIR / f"{kind}.jsonl"
    return list(read_jsonl(path)) if path.exists() else []


def merged_sources() -> str:
    """collect's manifest, plus synthesize's tasks when it made any (format mixes by task weight).
    Without synthetic tasks it is collect's file as it was, byte for byte."""
    raw = (RAW_DIR / "sources.json").read_text(encoding="utf-8") if (RAW_DIR / "sources.json").exists() else "[]\n"
    synth = json.loads((SYNTH_DIR / "sources.json").read_text(encoding="utf-8")) if (SYNTH_DIR / "sources.json").exists() else []
    if not synth:
        return raw
    return json.dumps(json.loads(raw) + synth, indent=2, ensure_ascii=False) + "\n"


def run(params: Params, tracker) -> dict[str, Any]:
    p = params.clean
    eval_prompts, eval_refs = load_eval_sets(p) if p.decontamination.enabled else ([], [])
    index = EvalIndex([r["text"] for r in eval_refs], p.decontamination.ngram, p.decontamination.substring_chars) if eval_refs else None
    rejects = RejectWriter("clean")
    cleaner = Cleaner(p, rejects, index, eval_refs)
    inputs, outputs, synthetic = {}, {}, 0
    for kind in KINDS:
        extra = read_synthetic(kind)
        synthetic += len(extra)
        records = read_raw(kind) + extra
        inputs[kind] = len(records)
        outputs[kind] = cleaner.run(kind, records)
        log.info("clean %s: %d -> %d", kind, inputs[kind], len(outputs[kind]))
    if sum(len(v) for v in outputs.values()) == 0:
        raise InputError(f"clean: every record was dropped ({dict(rejects.counts)}); check the clean.* params")

    sources = merged_sources()
    report = {
        "eval_sets": [e.model_dump() for e in p.decontamination.eval_sets],
        "ngram": p.decontamination.ngram, "substring_chars": p.decontamination.substring_chars,
        "eval_texts": len(eval_refs), "matched": len(cleaner.matches),
        "by_match": dict(Counter(m["match"] for m in cleaner.matches)), "matches": cleaner.matches,
    }
    with atomic_dir(CLEAN_DIR) as tmp:
        for kind in KINDS:
            write_jsonl(tmp / f"{kind}.jsonl", outputs[kind])
        rejects.write(tmp / "rejects.jsonl")
        write_json(tmp / "decontamination.json", report)
        write_jsonl(tmp / "eval_prompts.jsonl", eval_prompts)
        (tmp / "sources.json").write_text(sources, encoding="utf-8")

    tracker.log_artifact(CLEAN_DIR / "decontamination.json")
    metrics = {
        "input": inputs, "output": {k: len(v) for k, v in outputs.items()}, "rejected": len(rejects),
        "kept_fraction": round(sum(len(v) for v in outputs.values()) / max(1, sum(inputs.values())), 4),
        "steps": {s: cleaner.steps[s].as_dict() for s in STEPS},
        "dropped_by_kind": {k: dict(v) for k, v in cleaner.by_kind.items()},
    }
    if synthetic:  # how many synthetic records survived dedup, diversity and decontamination
        kept = sum(str(r.get("source", "")).startswith("synthetic:") for v in outputs.values() for r in v)
        metrics["synthetic"] = {"input": synthetic, "output": kept}
    return metrics

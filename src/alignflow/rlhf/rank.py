"""rank: judges score each prompt's K samples; rankings become preference pairs -> data/prefs/.

InstructGPT §3.5 turns each labeler ranking of K responses into all K-choose-2 comparisons (and
trains on all pairs of a prompt together); `rank.pairs: best_vs_worst` keeps only the clearest
one per prompt. Pairs whose judge score gap is below `rank.min_margin` are dropped (gaps at or
below `rank.tie_tolerance` count as ties; both in judge units), and so are pairs whose chosen
response was cut off at sample.max_new_tokens (`rank.finished_chosen_only`). Human preference
pairs from the format stage are mixed in at `rank.human_weight` human pairs per judge pair (null: all). With
two judges the second one's agreement with the first is reported (a cheap check on the judge).
A judge pair's `margin` is written in reward-model logits, the unit the reward stage's Bradley–Terry
loss subtracts it in: the score gap divided by the judge's `compare_scale` (reference: 0.1 ≈ 1 logit).

Outputs: data/prefs/{train,val}.jsonl (preference records), data/prefs/kto.jsonl (unpaired
{"prompt","completion","label"} for KTO), data/prefs/labelstudio_tasks.json (+ the labeling config).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import random
import time
from collections import Counter
from pathlib import Path

from alignflow import paths
from alignflow.io import InputError, RejectWriter, atomic_dir, content_id, read_jsonl, write_jsonl
from alignflow.rlhf import labelstudio

log = logging.getLogger(__name__)

SAMPLES_PATH = Path("data/samples/samples.jsonl")
HUMAN_PREFS_PATH = paths.PREFS_TRAIN_HUMAN
OUT_DIR = Path("data/prefs")
JUDGE_SOURCE = "judge:"  # + the judge's name: the `source` of pairs a judge made from policy samples


def pair_source(record: dict) -> str:
    """'judge' for pairs the rank stage's judge made from policy samples, else 'human'."""
    return "judge" if str(record.get("source", "")).startswith(JUDGE_SOURCE) else "human"


def make_pairs(scores: list[float], mode: str = "all", min_margin: float = 0.0, tie_tolerance: float = 1e-6,
               can_be_chosen: list[bool] | None = None) -> tuple[list[tuple[int, int, float]], Counter]:
    """(chosen index, rejected index, margin) from one prompt's scores; NaN scores take no part.

    `can_be_chosen[i] = False` keeps response i off the chosen side (a sample cut off at
    max_new_tokens: DPO closes every completion with EOS, so it would learn the cut text as a
    whole answer — and, the judge preferring longer text, to ramble past the budget).
    Returns the kept pairs and counts of candidates, ties, pairs dropped below the margin and
    pairs dropped for an unfinished chosen response.
    """
    valid = [i for i, s in enumerate(scores) if not math.isnan(s)]
    choosable = can_be_chosen or [True] * len(scores)
    stats = Counter()
    if mode == "all":
        candidates = list(itertools.combinations(valid, 2))
    elif mode == "best_vs_worst":
        if len(valid) < 2:
            return [], stats
        best = max(valid, key=lambda i: (choosable[i], scores[i]))  # the best response that may be chosen
        worst = min(valid, key=lambda i: scores[i])
        candidates = [(best, worst)] if best != worst else [(valid[0], valid[1])]
    else:
        raise ValueError(f"rank.pairs: {mode!r} is not 'all' or 'best_vs_worst'")
    kept = []
    for i, j in candidates:
        stats["candidates"] += 1
        gap = scores[i] - scores[j]
        if abs(gap) <= tie_tolerance:
            stats["ties"] += 1
            continue
        if abs(gap) < min_margin:
            stats["below_margin"] += 1
            continue
        chosen, rejected = (i, j) if gap > 0 else (j, i)
        if not choosable[chosen]:
            stats["unfinished_chosen"] += 1
            continue
        kept.append((chosen, rejected, abs(gap)))
    return kept, stats


def pairwise_agreement(first: list[float], second: list[float], tie_tolerance: float = 1e-6) -> tuple[int, int]:
    """(agreeing, compared): pairs both judges order strictly, counted when they order them the same."""
    agree = total = 0
    for i, j in itertools.combinations(range(len(first)), 2):
        a, b = first[i] - first[j], second[i] - second[j]
        if any(math.isnan(x) for x in (a, b)) or abs(a) <= tie_tolerance or abs(b) <= tie_tolerance:
            continue
        total += 1
        agree += (a > 0) == (b > 0)
    return agree, total


def in_val_split(key: str, fraction: float) -> bool:
    """A stable split by prompt: all pairs of a prompt land on the same side."""
    digest = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < fraction


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def load_samples(path: Path) -> list[dict]:
    if not path.exists():
        raise InputError(f"{path}: not found (run the sample stage first)")
    out = []
    for lineno, rec in enumerate(read_jsonl(path), 1):
        if not isinstance(rec.get("prompt"), list) or not isinstance(rec.get("responses"), list) or "prompt_id" not in rec:
            raise InputError(f"{path}:{lineno}: a sample record needs prompt_id, prompt (messages) and responses")
        out.append(rec)
    return out


def load_human_pairs(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for lineno, rec in enumerate(read_jsonl(path), 1):
        if not all(isinstance(rec.get(k), list) and rec.get(k) for k in ("prompt", "chosen", "rejected")):
            raise InputError(f"{path}:{lineno}: a preference record needs prompt, chosen and rejected message lists")
        out.append(rec)
    return out


def with_demonstration(rec: dict) -> dict:
    """A constraint prompt's sample record with its demonstration (format's checked rewrite of the
    reference, in `reference`) appended as one more finished candidate; other records unchanged."""
    if not rec.get("constraints") or not rec.get("reference"):
        return rec
    finished = rec.get("finished") or [True] * len(rec["responses"])
    return {**rec, "responses": [*rec["responses"], rec["reference"]], "finished": [*finished, True],
            "demonstration": len(rec["responses"])}


def score_all(judge, samples: list[dict]) -> list[list[float]]:
    out = []
    name = getattr(judge, "name", "")
    for rec in samples:
        kwargs = {"finished": rec.get("finished")} if name in ("reference", "verifier") else {}
        if name == "verifier":
            kwargs["constraints"] = rec.get("constraints")
        out.append(judge.score(rec["prompt"], rec["responses"], rec.get("reference"), **kwargs))
    return out


def run(params, tracker) -> dict:
    from alignflow.rlhf.judges import build_judge, margin_in_logits

    cfg = params.rank
    samples = load_samples(SAMPLES_PATH)
    started = time.perf_counter()
    rejects = RejectWriter("rank")  # malformed human annotations, each with its reason
    judges = [build_judge(name, params, samples, rejects) for name in cfg.judge]
    candidates = samples  # the samples, plus each constraint prompt's demonstration for the verifier
    if judges[0].name == "verifier" and cfg.verifier.demonstrations:
        candidates = [with_demonstration(rec) for rec in samples]
    all_scores = [score_all(j, candidates) for j in judges]
    judge_s = time.perf_counter() - started

    stats: Counter = Counter()
    judge_pairs, kto = [], []
    for rec, scores in zip(candidates, all_scores[0]):
        finished = rec.get("finished") if cfg.finished_chosen_only else None
        kept, counts = make_pairs(scores, cfg.pairs, cfg.min_margin, cfg.tie_tolerance, can_be_chosen=finished)
        stats.update(counts)
        source = f"{JUDGE_SOURCE}{judges[0].name}"
        for i, j, gap in kept:
            chosen, rejected = assistant(rec["responses"][i]), assistant(rec["responses"][j])
            judge_pairs.append({
                "id": content_id(rec["prompt"], chosen, rejected), "prompt": rec["prompt"], "chosen": chosen,
                "rejected": rejected, "margin": round(margin_in_logits(judges[0], gap), 6),  # in logits
                "task": rec.get("task", "general"), "source": source,
            })
        stats["demonstration_pairs"] += sum(i == rec.get("demonstration") for i, _, _ in kept)
        if kept:  # KTO: the prompt's best response is desirable, its worst undesirable
            used = {i for p in kept for i in p[:2]}
            best, worst = max(used, key=lambda i: scores[i]), min(used, key=lambda i: scores[i])
            kto.append({"prompt": rec["prompt"], "completion": assistant(rec["responses"][best]), "label": True})
            kto.append({"prompt": rec["prompt"], "completion": assistant(rec["responses"][worst]), "label": False})

    human_available = load_human_pairs(HUMAN_PREFS_PATH) if cfg.human_weight != 0 else []
    every = not judge_pairs or cfg.human_weight is None
    want = len(human_available) if every else round(cfg.human_weight * len(judge_pairs))
    human = [
        {**r, "margin": r.get("margin", 0.0), "source": r.get("source", "human")}
        for r in random.Random(params.seed).sample(human_available, min(want, len(human_available)))
    ]
    for rec in human:
        kto.append({"prompt": rec["prompt"], "completion": rec["chosen"], "label": True})
        kto.append({"prompt": rec["prompt"], "completion": rec["rejected"], "label": False})

    train, val = [], []
    for rec in judge_pairs + human:
        (val if in_val_split(content_id(rec["prompt"]), cfg.val_fraction) else train).append(rec)
    if not train:
        raise InputError(
            f"rank: no preference pairs left (judge {cfg.judge[0]}, min_margin {cfg.min_margin}); "
            "lower rank.min_margin, sample more prompts, or add human preferences"
        )
    random.Random(params.seed).shuffle(train)

    with atomic_dir(OUT_DIR) as tmp:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "val.jsonl", val)
        write_jsonl(tmp / "kto.jsonl", kto)
        rejects.write(tmp / "rejects.jsonl")
        labelstudio.write_tasks(labelstudio.export_tasks(samples, cfg.labelstudio_mode), tmp / "labelstudio_tasks.json")
        (tmp / "labelstudio_config.xml").write_text(labelstudio.LABEL_CONFIG[cfg.labelstudio_mode] + "\n")

    margins = [p["margin"] for p in judge_pairs]
    metrics = {
        "prompts": len(samples),
        "pairs_candidate": stats["candidates"],
        "pairs_judge": len(judge_pairs),
        "ties": stats["ties"],
        "dropped_below_margin": stats["below_margin"],
        "dropped_unfinished_chosen": stats["unfinished_chosen"],
        "pairs_human": len(human),
        "pairs_train": len(train),
        "pairs_val": len(val),
        "kto_examples": len(kto),
        "rejected_annotations": len(rejects),
        "mean_margin": round(sum(margins) / len(margins), 4) if margins else 0.0,
        "judge_s": round(judge_s, 2),
    }
    if candidates is not samples:
        metrics["pairs_demonstration"] = stats["demonstration_pairs"]
    for judge in judges:
        for key, value in getattr(judge, "stats", {}).items():
            metrics[f"{judge.name}.{key}"] = value
    if len(judges) == 2:
        agree = total = 0
        for first, second in zip(*all_scores):
            a, t = pairwise_agreement(first, second, cfg.tie_tolerance)
            agree, total = agree + a, total + t
        metrics["judge_agreement"] = round(agree / total, 4) if total else None
        metrics["judge_agreement_pairs"] = total
    log.info("rank: %d judge pairs (%d ties, %d below margin) + %d human -> %d train / %d val",
             len(judge_pairs), stats["ties"], stats["below_margin"], len(human), len(train), len(val))
    return metrics

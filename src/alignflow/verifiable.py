"""Verifiable instruction constraints (IFEval; Zhou et al. 2023): make them, check them.

An instruction gets one or more constraints a program can check ("answer in lowercase", "end
with 'Any other questions?'", "no commas", "at least 2 bullet points"…). The constraint texts and
the checkers are IFEval's own, from the `if-verifiable` package (Google's checker code, maintained
as a library), not a rewrite; this module only picks constraints per record, deterministically,
and scores responses: strict (the response as written) and loose (IFEval's variants without the
first/last line or markdown asterisks).

Two adjustments, both because of where they run:
- IFEval draws word/sentence/paragraph counts for answers of hundreds of words; the pipeline
  generates at most a few hundred tokens, so those counts are drawn from ranges such an answer can
  meet either way (`BUDGET_KWARGS`). Everything else is IFEval's draw.
- IFEval counts sentences with NLTK's pretrained Punkt, a data download this project cannot make
  at run time; the sentence count uses Punkt's algorithm without the pretrained abbreviation list
  (so "Dr. Smith" counts as two sentences). The constraints that need NLTK's word tokenizer
  (`change_case:capital_word_frequency`) are not offered.
"""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The constraints a response of ≤ a few hundred tokens in English can meet, in IFEval's ids.
SUPPORTED = (
    "punctuation:no_comma",
    "change_case:english_lowercase",
    "change_case:english_capital",
    "startend:end_checker",
    "startend:quotation",
    "detectable_format:title",
    "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections",
    "detectable_format:json_format",
    "detectable_content:postscript",
    "detectable_content:number_placeholders",
    "length_constraints:number_words",
    "length_constraints:number_sentences",
    "length_constraints:number_paragraphs",
    "keywords:existence",
    "keywords:forbidden_words",
    "keywords:frequency",
    "keywords:letter_frequency",
)

BUDGET_KWARGS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "length_constraints:number_words": lambda r: {"num_words": r.randint(15, 60),
                                                  "relation": r.choice(("less than", "at least"))},
    "length_constraints:number_sentences": lambda r: {"num_sentences": r.randint(2, 5),
                                                      "relation": r.choice(("less than", "at least"))},
    "length_constraints:number_paragraphs": lambda r: {"num_paragraphs": r.randint(2, 3)},
    "detectable_format:number_bullet_lists": lambda r: {"num_bullets": r.randint(2, 4)},
    "detectable_format:number_highlighted_sections": lambda r: {"num_highlights": r.randint(1, 2)},
    "detectable_content:number_placeholders": lambda r: {"num_placeholders": r.randint(1, 2)},
    "keywords:frequency": lambda r: {"frequency": r.randint(1, 2)},
}

_RANDOM_LOCK = threading.Lock()  # IFEval draws with the module-level `random`


class UnknownConstraintError(ValueError):
    """A constraint id that is not one of SUPPORTED."""


@dataclass(frozen=True)
class Constraint:
    id: str
    kwargs: dict[str, Any]
    description: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kwargs": self.kwargs}


@functools.cache
def _ifeval():
    """IFEval's registry and scorer, with the sentence tokenizer that needs no download."""
    import langdetect
    from if_verifiable.common import evaluate_instructions
    from if_verifiable.ifeval import instructions_registry, instructions_util
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    langdetect.DetectorFactory.seed = 0  # langdetect samples: the same text, the same language
    instructions_util._get_sentence_tokenizer = PunktSentenceTokenizer  # untrained Punkt (docstring)
    return instructions_registry, evaluate_instructions


def make_constraint(type_id: str, seed: int) -> Constraint:
    """One constraint of `type_id` with its parameters drawn from `seed` (the same seed, the same
    constraint): the description is IFEval's text for those parameters."""
    if type_id not in SUPPORTED:
        raise UnknownConstraintError(f"unknown constraint {type_id!r}; supported: {', '.join(SUPPORTED)}")
    registry, _ = _ifeval()
    rng = random.Random(seed)
    wanted = BUDGET_KWARGS[type_id](rng) if type_id in BUDGET_KWARGS else {}
    checker = registry.INSTRUCTION_DICT[type_id](type_id)
    with _RANDOM_LOCK:
        state = random.getstate()
        random.seed(seed)
        try:
            description = checker.build_description(**wanted)
            kwargs = checker.get_instruction_args() or {}
        finally:
            random.setstate(state)
    return Constraint(type_id, {k: v for k, v in kwargs.items() if v is not None}, description)


def pick_constraints(types: Sequence[str], n: int, seed: int) -> list[Constraint]:
    """n constraints of different, non-conflicting types (IFEval's conflict table), from `seed`."""
    registry, _ = _ifeval()
    rng = random.Random(seed)
    order = list(types)
    rng.shuffle(order)
    chosen: list[Constraint] = []
    for type_id in order:
        if len(chosen) == n:
            break
        conflicts = registry.INSTRUCTION_CONFLICTS.get(type_id, set())
        if any(c.id in conflicts or type_id in registry.INSTRUCTION_CONFLICTS.get(c.id, set()) for c in chosen):
            continue
        chosen.append(make_constraint(type_id, rng.randrange(2**31)))
    return chosen


def constrained_text(instruction: str, constraints: Sequence[Constraint]) -> str:
    return " ".join([instruction.rstrip(), *(c.description for c in constraints)])


@dataclass(frozen=True)
class Verdict:
    """One response against its constraints: per constraint, strict and loose pass."""

    ids: tuple[str, ...]
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]

    @property
    def all_strict(self) -> bool:
        return bool(self.strict) and all(self.strict)

    @property
    def all_loose(self) -> bool:
        return bool(self.loose) and all(self.loose)

    @property
    def fraction_strict(self) -> float:
        return sum(self.strict) / len(self.strict) if self.strict else 0.0


def verify(response: str, constraints: Sequence[dict[str, Any]], prompt: str = "") -> Verdict:
    """Check `response` against constraint records ({"id", "kwargs"}, as stored in the data).

    An empty response follows no constraint (IFEval's rule)."""
    registry, evaluate = _ifeval()
    ids = [c["id"] for c in constraints]
    unknown = [i for i in ids if i not in registry.INSTRUCTION_DICT]
    if unknown:
        raise UnknownConstraintError(f"unknown constraint(s) {', '.join(unknown)}")
    results, _ = evaluate(response, ids, [dict(c.get("kwargs") or {}) for c in constraints], prompt,
                          registry.INSTRUCTION_DICT)
    if not results:  # empty response
        return Verdict(tuple(ids), (False,) * len(ids), (False,) * len(ids))
    return Verdict(tuple(r.instruction_id for r in results), tuple(r.strict_pass for r in results),
                   tuple(r.loose_pass for r in results))

"""Constraint demonstrations: an instruction's reference answer rewritten to follow the IFEval
constraints its constraint prompt adds, kept only when the checkers (alignflow.verifiable) pass it.

A 135M model almost never writes in all lowercase, wraps its answer in quotes or ends on an
asked phrase, so its own samples rarely contain a correct answer to prefer (the verifier judge
finds pairs on a quarter of the constraint prompts). A demonstration gives the preference a
correct chosen side, as a verified reference (Tülu 3's verifiable-constraint data; AutoIF keeps
only what the checker passes). Each rewrite is a plain text transform of the reference; a type
without one (keyword inclusion: no faithful transform adds words to an answer) keeps the text as
it is, and the checkers decide.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

PLACEHOLDERS = ("[name]", "[date]", "[place]", "[contact]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_BULLET_LINE = re.compile(r"^\s*(?:[*\-•]|\d+[.)])\s+", re.MULTILINE)


def sentences(text: str) -> list[str]:
    """The text's sentences (split after . ! ? and at line breaks), list markers removed."""
    flat = _BULLET_LINE.sub("", text)
    return [s.strip() for line in flat.splitlines() for s in _SENTENCE_END.split(line) if s.strip()]


def _groups(items: list[str], n: int) -> list[list[str]] | None:
    """`items` in `n` consecutive non-empty groups of near-equal size (None when fewer than n)."""
    if len(items) < n:
        return None
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def _title(instruction: str) -> str:
    words = re.findall(r"[A-Za-z0-9']+", instruction)[:5]
    return " ".join(words).lower() or "answer"


def _bullets(text: str, kw: dict, _: str) -> str | None:
    groups = _groups(sentences(text), int(kw["num_bullets"]))
    return "\n".join("* " + " ".join(g) for g in groups) if groups else None


def _paragraphs(text: str, kw: dict, _: str) -> str | None:
    groups = _groups(sentences(text), int(kw["num_paragraphs"]))
    return "\n\n***\n\n".join(" ".join(g) for g in groups) if groups else None


def _highlights(text: str, kw: dict, _: str) -> str | None:
    parts = sentences(text)
    n = int(kw["num_highlights"])
    if len(parts) < n or any("*" in p for p in parts[:n]):
        return None
    return " ".join([f"*{p}*" for p in parts[:n]] + parts[n:])


def _keep_sentences(text: str, n: int) -> str | None:
    parts = sentences(text)[:n]
    return " ".join(parts) if parts else None


def _sentence_count(text: str, kw: dict, _: str) -> str | None:
    if kw["relation"] == "less than":
        return _keep_sentences(text, int(kw["num_sentences"]) - 1)
    return text  # "at least": the checkers decide whether the answer already has enough


def _word_count(text: str, kw: dict, _: str) -> str | None:
    limit = int(kw["num_words"])
    if kw["relation"] != "less than" or len(text.split()) < limit:
        return text
    kept: list[str] = []
    for sentence in sentences(text):  # whole sentences while they fit
        if len(" ".join([*kept, sentence]).split()) >= limit:
            break
        kept.append(sentence)
    return " ".join(kept) or None


def _without_words(text: str, words: Sequence[str]) -> str:
    for word in words:
        text = re.sub(rf"\s*\b{re.escape(word)}\b", "", text, flags=re.IGNORECASE)
    return text


REWRITES: dict[str, Callable[[str, dict, str], str | None]] = {
    "punctuation:no_comma": lambda t, kw, _: re.sub(r",\s*", " ", t).replace("  ", " "),
    "change_case:english_lowercase": lambda t, kw, _: t.lower(),
    "change_case:english_capital": lambda t, kw, _: t.upper(),
    "startend:end_checker": lambda t, kw, _: f"{t.rstrip()}\n\n{kw['end_phrase']}",
    "startend:quotation": lambda t, kw, _: f'"{t.strip()}"',
    "detectable_format:title": lambda t, kw, instruction: f"<<{_title(instruction)}>>\n\n{t}",
    "detectable_format:json_format": lambda t, kw, _: json.dumps({"answer": t}, ensure_ascii=False),
    "detectable_content:postscript": lambda t, kw, _: f"{t.rstrip()}\n\n{kw['postscript_marker']} I hope this helps.",
    "detectable_format:number_bullet_lists": _bullets,
    "detectable_format:number_highlighted_sections": _highlights,
    "length_constraints:number_paragraphs": _paragraphs,
    "length_constraints:number_sentences": _sentence_count,
    "length_constraints:number_words": _word_count,
    "keywords:forbidden_words": lambda t, kw, _: _without_words(t, kw["forbidden_words"]),
    # a template's fill-in fields, as IFEval's examples use them ("[address]")
    "detectable_content:number_placeholders":
        lambda t, kw, _: f"{t.rstrip()}\n\n" + " ".join(PLACEHOLDERS[: int(kw["num_placeholders"])]),
}

# The order rewrites apply in: first what cuts or restructures the text, then what decorates it
# (a postscript is not cut off by a sentence limit, an end phrase is lower-cased with the rest),
# then what wraps the whole answer (quotes, JSON).
_ORDER = ("length_constraints:number_words", "length_constraints:number_sentences", "keywords:forbidden_words",
          "punctuation:no_comma", "detectable_format:number_bullet_lists", "length_constraints:number_paragraphs",
          "detectable_format:number_highlighted_sections", "detectable_content:number_placeholders",
          "detectable_content:postscript", "startend:end_checker",
          "detectable_format:title", "change_case:english_lowercase", "change_case:english_capital",
          "startend:quotation", "detectable_format:json_format")


def demonstrate(reference: str, constraints: Sequence[dict[str, Any]], instruction: str) -> str | None:
    """`reference` rewritten to follow every constraint, or None when the checkers do not pass the
    result (a rewrite the type has not, or one that cannot work: too few sentences for 3 bullets)."""
    from alignflow.verifiable import verify

    text: str | None = reference.strip()
    rank = {t: i for i, t in enumerate(_ORDER)}
    for c in sorted(constraints, key=lambda c: rank.get(c["id"], -1)):
        rewrite = REWRITES.get(c["id"])
        if rewrite is not None and text is not None:
            text = rewrite(text, c.get("kwargs") or {}, instruction)
    if not text:
        return None
    return text if verify(text, constraints, instruction).all_strict else None

"""The filters of Self-Instruct and the elimination rules of Evol-Instruct, as pure functions.

Each check returns None when the text passes, or `(reason, detail)` when the candidate is
dropped (the reason becomes `<method>.<reason>` in data/synth/rejects.jsonl), like the clean
stage's rules in data/filters.py.
"""

from __future__ import annotations

import re

from alignflow.data.diversity import rouge_l
from alignflow.data.filters import punctuation_only
from alignflow.data.text import normalize_for_match, tokens

Verdict = tuple[str, str] | None
TEACHER_FAILED: Verdict = ("teacher_failed", "no reply after retries")  # not cached: the next run asks again

# A short English stop-word list (function words): elimination rule 3 drops an answer made of
# these and punctuation only; the English check wants some of them in any sentence.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
him his how i if in into is it its itself just me more most my no nor not now of off on once only or other our
out over own same she should so some such than that the their them then there these they this those through to
too under until up very was we were what when where which while who whom why will with would you your yes ok
okay
""".split())
# Elimination rule 4: the evolved instruction copied the evolving prompt's own words.
PROMPT_WORDS = ("#given prompt#", "#rewritten prompt#", "#created prompt#", "given prompt", "rewritten prompt",
                "created prompt", "#the given prompt#")
_LATIN_LETTER = re.compile(r"[A-Za-z]")
_LETTER = re.compile(r"[^\W\d_]")


# ------------------------------------------------------------------------------- Self-Instruct


def most_similar(candidate: list[str], pool: list[list[str]]) -> tuple[float, int]:
    """(the highest ROUGE-L F of the candidate's tokens with any pool entry, its index; -1 if none)."""
    best, where = 0.0, -1
    for i, other in enumerate(pool):
        score = rouge_l(candidate, other)
        if score > best:
            best, where = score, i
    return best, where


def rouge_check(candidate: list[str], pool: list[list[str]], max_similarity: float) -> tuple[Verdict, int]:
    """Self-Instruct keeps an instruction only if its ROUGE-L with every pool task is below the limit."""
    score, where = most_similar(candidate, pool)
    if score > max_similarity:
        return ("rouge_l", f"ROUGE-L {score:.2f} > {max_similarity} with a pool task"), where
    return None, where


def blocklist_check(text: str, words: list[str], prefixes: list[str] = ()) -> Verdict:
    """Tasks a text model cannot do (images, files, ...): whole words or phrases, case-insensitive."""
    low = " ".join(tokens(text))
    for word in words:
        if re.search(rf"(?<!\w){re.escape(' '.join(tokens(word)))}(?!\w)", low):
            return "blocklist", f"mentions {word!r}"
    for prefix in prefixes:
        if low.startswith(" ".join(tokens(prefix))):
            return "blocklist", f"starts with {prefix!r}"
    return None


def length_check(text: str, min_words: int, max_words: int, what: str = "instruction") -> Verdict:
    n = len(tokens(text))
    if n < min_words:
        return f"{what}_too_short", f"{n} words (min {min_words})"
    if n > max_words:
        return f"{what}_too_long", f"{n} words (max {max_words})"
    return None


def is_english(text: str, min_latin: float = 0.9) -> bool:
    """Mostly Latin letters and, for a sentence of 5+ words, at least one English function word
    (a dependency-free stand-in for a language identifier; good enough to drop other scripts
    and token soup)."""
    letters = _LETTER.findall(text)
    if not letters:
        return False
    if sum(bool(_LATIN_LETTER.match(ch)) for ch in letters) / len(letters) < min_latin:
        return False
    words = tokens(text)
    return len(words) < 5 or any(w in STOPWORDS for w in words)


def language_check(text: str, what: str = "instruction") -> Verdict:
    if not text.strip():
        return f"empty_{what}", "nothing left after parsing"
    if not is_english(text):
        return f"non_english_{what}", repr(text[:80])
    return None


def start_check(instruction: str) -> Verdict:
    """The paper drops instructions that start with punctuation or a non-ASCII character."""
    first = instruction.lstrip()[:1]
    if first and (not first.isascii() or not first.isalnum()):
        return "bad_start", f"starts with {first!r}"
    return None


def instance_check(instruction: str, inp: str, output: str, max_output_words: int) -> Verdict:
    """An instance worth learning: a non-empty English output that is not its input, not too long."""
    if not output.strip():
        return "empty_output", "the teacher gave no output"
    if normalize_for_match(output) == normalize_for_match(inp) and inp.strip():
        return "output_equals_input", "the output repeats the input"
    if len(tokens(output)) > max_output_words:
        return "output_too_long", f"{len(tokens(output))} words (max {max_output_words})"
    if not is_english(output) and not _numeric(output):
        return "non_english_output", repr(output[:80])
    return None


def _numeric(text: str) -> bool:
    """Numbers and punctuation only ("42", "1, 2, 5, 9"): a valid output with no letters at all."""
    return not _LETTER.search(text) and any(ch.isdigit() for ch in text)


# ------------------------------------------------------------------------------- Evol-Instruct


def copies_prompt_words(text: str) -> Verdict:
    """Rule 4: the evolved instruction repeats the rewriting prompt's own words."""
    low = text.lower()
    found = next((w for w in PROMPT_WORDS if w in low), None)
    return ("copied_prompt_words", f"contains {found!r}") if found else None


def no_information_gain(parent: str, child: str) -> Verdict:
    """Rule 1 by rules: the same text, or no word the parent lacks (the LLM check is optional)."""
    if normalize_for_match(parent) == normalize_for_match(child):
        return "no_information_gain", "the same instruction"
    if not set(tokens(child)) - set(tokens(parent)):
        return "no_information_gain", "adds no new word"
    return None


def cannot_answer(response: str, max_words: int) -> Verdict:
    """Rule 2: a short answer with "sorry" in it: the evolved instruction is too hard or unclear."""
    n = len(tokens(response))
    if "sorry" in response.lower() and n < max_words:
        return "teacher_cannot_answer", f"'sorry' in a {n}-word answer"
    return None


def stopwords_only(response: str) -> Verdict:
    """Rule 3: an answer of punctuation and stop words only (or nothing)."""
    if not response.strip():
        return "empty_output", "the teacher gave no answer"
    if punctuation_only(response) or all(w in STOPWORDS for w in tokens(response)):
        return "stopwords_only", repr(response[:80])
    return None

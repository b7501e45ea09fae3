"""Per-record cleaning: text normalization, quality rules, safety blocklist, PII masking.

Each check is a small pure function of text (or of a `RecordView`) that returns None when the
record passes, or `(reason, detail)` when it is dropped; `clean.py` chains them and writes every
drop to the rejects file.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from alignflow.config.data import NormalizeParams, QualityParams, RepetitionParams, SafetyParams
from alignflow.data.text import normalize_for_match, tokens

Verdict = tuple[str, str] | None

# -------------------------------------------------------------------------------- record access


def map_contents(record: dict, kind: str, fn: Callable[[str, str], str]) -> dict:
    """A copy of `record` with fn(role, content) applied to every message (and the reference)."""
    out = dict(record)
    fields = {"conversations": ("messages",), "preferences": ("prompt", "chosen", "rejected"), "prompts": ("prompt",)}[kind]
    for field in fields:
        out[field] = [{**m, "content": fn(m["role"], m["content"])} for m in record[field]]
    if kind == "prompts" and isinstance(record.get("reference"), str):
        out["reference"] = fn("assistant", record["reference"])
    return out


@dataclass(frozen=True)
class RecordView:
    """The texts the rules look at, whatever the record kind."""

    prompt: str  # the last user turn
    responses: tuple[str, ...]  # what the model is taught to say (SFT answer / chosen / reference)
    others: tuple[str, ...]  # other texts (system/earlier turns, rejected answers)

    @property
    def all_text(self) -> str:
        return "\n".join((self.prompt, *self.responses, *self.others))


def view(record: dict, kind: str) -> RecordView:
    if kind == "conversations":
        msgs = record["messages"]
        last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        answers = tuple(m["content"] for m in msgs[last_user + 1 :] if m["role"] == "assistant")
        others = tuple(m["content"] for i, m in enumerate(msgs) if i < last_user)
        return RecordView(msgs[last_user]["content"], answers, others)
    if kind == "preferences":
        prompt = record["prompt"]
        return RecordView(
            prompt[-1]["content"],
            tuple(m["content"] for m in record["chosen"]),
            tuple(m["content"] for m in prompt[:-1]) + tuple(m["content"] for m in record["rejected"]),
        )
    prompt = record["prompt"]
    ref = record.get("reference")
    return RecordView(prompt[-1]["content"], (ref,) if isinstance(ref, str) else (), tuple(m["content"] for m in prompt[:-1]))


# --------------------------------------------------------------------------------- normalization

_HTML_TAGS = (
    "a|abbr|b|blockquote|body|br|center|code|div|em|font|h[1-6]|head|hr|html|i|iframe|img|li|link|meta|"
    "ol|p|pre|script|small|span|strong|style|sub|sup|table|tbody|td|th|thead|title|tr|u|ul"
)
_TAG_RE = re.compile(rf"</?(?:{_HTML_TAGS})\b[^<>]*/?>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_ENTITY_RE = re.compile(r"&(?:[a-zA-Z]{2,8}|#\d{2,6}|#x[0-9a-fA-F]{2,6});")
_BLOCK_END_RE = re.compile(r"(</(?:p|div|li|h[1-6]|tr|table|ul|ol|blockquote|pre|title)\s*>|<br\s*/?>|<hr\s*/?>)", re.IGNORECASE)
# Odd spaces -> space; zero-width characters removed (ZWJ U+200D kept: it joins emoji sequences).
_ODD_SPACE_RE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_ZERO_WIDTH_RE = re.compile("[\u200b\u200c\u2060\ufeff]")
_INNER_SPACES_RE = re.compile(r"(?<=\S)[ \t]{2,}")  # keep leading indentation (code)
_TRAILING_RE = re.compile(r"[ \t]+\n")
_BLANK_LINES_RE = re.compile(r"\n{3,}")


@functools.lru_cache(maxsize=1)
def _ftfy_config():
    import ftfy

    # Full-width CJK punctuation (，。) is correct text, not a width problem: keep it.
    return ftfy.TextFixerConfig(fix_character_width=False)


def fix_unicode(text: str) -> str:
    import ftfy

    return ftfy.fix_text(text, config=_ftfy_config())


def strip_html(text: str) -> str:
    """Remove HTML tags/comments and decode entities; plain text (even with '<' in it) is kept as is."""
    if not _TAG_RE.search(text):
        if _ENTITY_RE.search(text):
            import html

            return html.unescape(text)
        return text
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(_BLOCK_END_RE.sub(r"\1\n", text))
    tree.strip_tags(["script", "style"])
    root = tree.body or tree.root
    return root.text(separator="").strip() if root is not None else ""


def normalize_whitespace(text: str) -> str:
    text = _ZERO_WIDTH_RE.sub("", _ODD_SPACE_RE.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n")))
    text = _INNER_SPACES_RE.sub(" ", text)
    text = _TRAILING_RE.sub("\n", text)
    return _BLANK_LINES_RE.sub("\n\n", text).strip()


def mentions_markup(prompt: str, words: list[str]) -> bool:
    low = prompt.lower()
    return any(w.lower() in low for w in words)


def normalize_record(record: dict, kind: str, p: NormalizeParams) -> tuple[dict, set[str]]:
    """Apply the enabled normalizations; also return which of them changed something."""
    changed: set[str] = set()
    keep_html = mentions_markup(view(record, kind).prompt, p.html_skip_if_prompt_mentions)

    def fix(role: str, text: str) -> str:
        for name, enabled, fn in (
            ("unicode", p.unicode, fix_unicode),
            ("html", p.html and not keep_html, strip_html),
            ("whitespace", p.whitespace, normalize_whitespace),
        ):
            if enabled:
                new = fn(text)
                if new != text:
                    changed.add(name)
                    text = new
        return text

    return map_contents(record, kind, fix), changed


# ----------------------------------------------------------------------------------------- quality

_HAS_WORD_RE = re.compile(r"\w")


def length_check(text: str, p: QualityParams) -> Verdict:
    chars, words = len(text), len(tokens(text))
    if chars < p.min_chars or words < p.min_words:
        return "too_short", f"{chars} chars, {words} words (min {p.min_chars} chars, {p.min_words} words)"
    if chars > p.max_chars or words > p.max_words:
        return "too_long", f"{chars} chars, {words} words (max {p.max_chars} chars, {p.max_words} words)"
    return None


def punctuation_only(text: str) -> bool:
    """No letter or digit at all (punctuation, symbols, emoji only)."""
    return bool(text.strip()) and not _HAS_WORD_RE.search(text)


def top_ngram_fraction(words: list[str], n: int) -> float:
    """Share of characters covered by the most frequent n-gram (Gopher)."""
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0.0
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    total = sum(len(w) for w in words)
    return count * sum(len(w) for w in gram) / total if total else 0.0


def duplicate_ngram_fraction(words: list[str], n: int) -> float:
    """Share of characters inside repeated occurrences of n-grams (overlaps counted once; Gopher)."""
    total = sum(len(w) for w in words)
    if not total or len(words) < n:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    dup_chars, i = 0, 0
    while i <= len(words) - n:
        gram = tuple(words[i : i + n])
        if gram in seen:
            dup_chars += sum(len(w) for w in gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return dup_chars / total


def repetition_check(text: str, p: RepetitionParams) -> Verdict:
    words = tokens(text)
    if not p.enabled or len(words) < p.min_words:
        return None
    for n, limit in sorted(p.top_ngram_max_frac.items()):
        frac = top_ngram_fraction(words, n)
        if frac > limit:
            return "repetition", f"top {n}-gram covers {frac:.2f} of the text (max {limit})"
    for n, limit in sorted(p.dup_ngram_max_frac.items()):
        frac = duplicate_ngram_fraction(words, n)
        if frac > limit:
            return "repetition", f"repeated {n}-grams cover {frac:.2f} of the text (max {limit})"
    return None


def find_refusal(text: str, phrases: list[str]) -> str | None:
    low = text.lower().replace("\u2019", "'")
    return next((ph for ph in phrases if ph.lower() in low), None)


def input_block(prompt: str) -> str | None:
    """The input part of an instruction prompt (after the first blank line), if there is one."""
    head, sep, rest = prompt.partition("\n\n")
    return rest if sep and rest.strip() else None


def output_equals_input(prompt: str, response: str) -> bool:
    out = normalize_for_match(response)
    if not out:
        return False
    block = input_block(prompt)
    return out == normalize_for_match(prompt) or (block is not None and out == normalize_for_match(block))


def colon_without_input(prompt: str) -> bool:
    """Self-Instruct: an instruction ending with ':' promises an input that is not there."""
    return input_block(prompt) is None and prompt.rstrip().endswith((":", "："))


def has_empty_turn(record: dict, kind: str) -> bool:
    v = view(record, kind)
    required = [v.prompt]
    if kind == "conversations":
        required += list(v.responses)
    elif kind == "preferences":
        required += [m["content"] for m in record["chosen"] + record["rejected"]]
    return not required[1:] and kind != "prompts" or any(not t.strip() for t in required)


def quality_check(record: dict, kind: str, p: QualityParams) -> Verdict:
    v = view(record, kind)
    if has_empty_turn(record, kind):
        return "empty", "an empty prompt or answer"
    verdict = length_check(v.all_text, p)
    if verdict:
        return verdict
    if p.punctuation_only:
        for text in (v.prompt, *v.responses):
            if punctuation_only(text):
                return "punctuation_only", repr(text[:80])
    for text in v.responses:
        verdict = repetition_check(text, p.repetition)
        if verdict:
            return verdict
    if p.refusal and kind in p.refusal_kinds:
        for text in v.responses:
            phrase = find_refusal(text, p.refusal_phrases)
            if phrase:
                return "refusal", f"answer contains {phrase!r}"
    if kind != "prompts" and p.output_equals_input and any(output_equals_input(v.prompt, r) for r in v.responses):
        return "output_equals_input", "the answer repeats the instruction/input"
    if kind == "conversations" and p.colon_without_input and colon_without_input(v.prompt):
        return "colon_without_input", "instruction ends with ':' but has no input"
    return None


# ------------------------------------------------------------------------------------------ safety


@functools.lru_cache(maxsize=8)
def _blocklist_patterns(words: tuple[str, ...], patterns: tuple[str, ...]) -> tuple[re.Pattern, ...]:
    # Whole words for space-delimited text; CJK has no word boundaries, so substrings there.
    alts = [rf"\b{re.escape(w.strip())}\b" if w.isascii() else re.escape(w.strip()) for w in words if w.strip()]
    compiled = [re.compile("|".join(alts), re.IGNORECASE)] if alts else []
    # User patterns are compiled one by one: each may carry its own inline flags.
    return tuple(compiled + [re.compile(p) for p in patterns])


def blocklist_match(text: str, p: SafetyParams) -> str | None:
    for pattern in _blocklist_patterns(tuple(p.blocklist_words), tuple(p.blocklist_regex)):
        m = pattern.search(text)
        if m:
            return m.group(0)
    return None


def safety_check(record: dict, kind: str, p: SafetyParams) -> Verdict:
    v = view(record, kind)
    texts = v.responses if p.check == "assistant" else (v.prompt, *v.responses, *v.others)
    for text in texts:
        hit = blocklist_match(text, p)
        if hit:
            return "blocklist", f"matched {hit!r}"
    return None


PII_PATTERNS: dict[str, tuple[re.Pattern, str]] = {
    "email": (re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), "[EMAIL]"),
    "ip": (re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\w|\.\d)"), "[IP]"),
    "phone": (
        re.compile(
            r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)\s?|\d{3}[\s.-])\d{3,4}[\s.-]\d{4}(?![\w])"  # (555) 123-4567, 555-123-4567
            r"|(?<!\d)(?:\+?86[\s-]?)?1[3-9]\d{9}(?!\d)"  # Chinese mobile numbers
        ),
        "[PHONE]",
    ),
}


def mask_pii(text: str, kinds: list[str]) -> tuple[str, Counter]:
    found: Counter = Counter()
    for kind in ("email", "ip", "phone"):  # e-mails first: their digits must not look like phones
        if kind not in kinds:
            continue
        pattern, token = PII_PATTERNS[kind]
        text, n = pattern.subn(token, text)
        if n:
            found[kind] += n
    return text, found


def mask_record_pii(record: dict, kind: str, kinds: list[str]) -> tuple[dict, Counter]:
    total: Counter = Counter()

    def fix(role: str, text: str) -> str:
        new, found = mask_pii(text, kinds)
        total.update(found)
        return new

    return map_contents(record, kind, fix), total

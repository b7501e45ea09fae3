"""Text helpers shared by clean and eval: normalization, CJK detection, tokens and n-gram hashes.

Two levels:
- per-text functions (`normalize_for_match`, `tokens`, `is_cjk`, ...) for filters and metrics;
- batch functions (`encode_batch`, `token_hashes`, `ngram_hashes`) that turn a whole corpus into
  numpy arrays of n-gram hashes without a Python loop per token: the corpus is joined into one
  string, lower-cased and stripped of punctuation in single C-level calls, viewed as UTF-32 code
  points and hashed with vectorized 64-bit mixing. This is what makes MinHash dedup fast once
  the MinHash itself is compiled (rensa): shingling in Python is the bottleneck otherwise.

Space-delimited text is tokenized into words; CJK text (Chinese, Japanese, Korean: no spaces
between words) into characters.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np

# Han, kana, hangul, CJK punctuation-free blocks (code point ranges, inclusive).
CJK_RANGES: tuple[tuple[int, int], ...] = (
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x3400, 0x4DBF),  # CJK ext A
    (0x4E00, 0x9FFF),  # CJK unified
    (0xAC00, 0xD7AF),  # hangul syllables
    (0xF900, 0xFAFF),  # CJK compatibility
    (0x20000, 0x2FA1F),  # CJK ext B..
)
_CJK_CLASS = "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in CJK_RANGES)
# A token: one CJK character, or a run of other word characters.
_TOKEN_RE = re.compile(f"[{_CJK_CLASS}]|[^\\W{_CJK_CLASS}]+")
_CJK_RE = re.compile(f"[{_CJK_CLASS}]")
# Everything that is not a word character (punctuation, symbols, emoji, whitespace); \x00 separates texts.
_NON_WORD_RE = re.compile(r"[^\w\x00]+")
_SPACE_RE = re.compile(r"\s+")

DEFAULT_CJK_RATIO = 0.3


def is_cjk_char(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


def cjk_ratio(text: str) -> float:
    """Fraction of the non-space characters that are CJK."""
    chars = len(text) - sum(1 for c in text if c.isspace())
    return len(_CJK_RE.findall(text)) / chars if chars else 0.0


def is_cjk(text: str, threshold: float = DEFAULT_CJK_RATIO) -> bool:
    return cjk_ratio(text) >= threshold


def normalize_for_match(text: str) -> str:
    """The key two texts are compared on: NFKC, lower case, punctuation and extra spaces removed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _NON_WORD_RE.sub(" ", text).strip()


def tokens(text: str) -> list[str]:
    """Words of space-delimited text and single characters of CJK text, lower-cased."""
    return _TOKEN_RE.findall(text.lower())


def word_count(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


def char_ngrams(text: str, n: int) -> list[str]:
    text = _SPACE_RE.sub("", text)
    return [text[i : i + n] for i in range(len(text) - n + 1)]


def word_ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


# ------------------------------------------------------------------------------ vectorized batch

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_POLY = np.uint64(0x100000001B3)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, elementwise on uint64 (wrapping arithmetic is intended)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


def _is_cjk_cp(cps: np.ndarray) -> np.ndarray:
    mask = np.zeros(cps.shape, dtype=bool)
    for lo, hi in CJK_RANGES:
        mask |= (cps >= lo) & (cps <= hi)
    return mask


@dataclass
class EncodedBatch:
    """A corpus as one UTF-32 code point array; texts separated by 0, normalized for matching."""

    cps: np.ndarray  # uint32 code points (0 = separator between texts, 32 = the only space)
    starts: np.ndarray  # int64 start of each text in cps
    ends: np.ndarray  # int64 end (exclusive) of each text
    cjk: np.ndarray  # bool per text: tokenize into characters

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts


def encode_batch(texts: list[str], cjk_threshold: float = DEFAULT_CJK_RATIO) -> EncodedBatch:
    """Normalize all texts at once (lower case, punctuation -> one space) and view them as code points."""
    joined = "\x00".join(t.replace("\x00", " ") for t in texts)
    joined = _NON_WORD_RE.sub(" ", unicodedata.normalize("NFKC", joined).lower())
    cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    seps = np.flatnonzero(cps == 0)
    if len(seps) != len(texts) - 1:  # NFKC never produces \x00, but be defensive
        raise ValueError("text separator lost during normalization")
    starts = np.concatenate([[0], seps + 1]).astype(np.int64)
    ends = np.concatenate([seps, [len(cps)]]).astype(np.int64)
    if not texts:
        starts = ends = np.zeros(0, dtype=np.int64)
    cjk_chars = _is_cjk_cp(cps).astype(np.int64)
    text_chars = (cps != 32).astype(np.int64)
    cjk_count = _segment_sum(cjk_chars, starts, ends)
    char_count = _segment_sum(text_chars, starts, ends)
    cjk = cjk_count >= cjk_threshold * np.maximum(char_count, 1)
    cjk &= cjk_count > 0
    return EncodedBatch(cps=cps, starts=starts, ends=ends, cjk=cjk)


def _segment_sum(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    csum = np.concatenate([[0], np.cumsum(values)])
    return csum[ends] - csum[starts]


@dataclass
class TokenStream:
    """Token hashes of many texts, flat, with the text each token belongs to."""

    hashes: np.ndarray  # uint64
    doc: np.ndarray  # int64 text index per token
    n_docs: int

    def counts(self) -> np.ndarray:
        return np.bincount(self.doc, minlength=self.n_docs)


def token_hashes(batch: EncodedBatch, cjk_chars: bool = True) -> TokenStream:
    """One uint64 hash per token: a word (run of non-space code points) or, in CJK texts, a character.

    A word's hash sums a per-(code point, position-in-word) hash, so it is order-aware and needs
    no Python loop; CJK texts contribute each non-space character as a token.
    """
    cps = batch.cps
    n_docs = len(batch.starts)
    if n_docs == 0 or len(cps) == 0:
        return TokenStream(np.zeros(0, np.uint64), np.zeros(0, np.int64), n_docs)
    doc_of_pos = np.repeat(np.arange(n_docs, dtype=np.int64), batch.lengths + 1)[: len(cps)]
    is_char = (cps != 32) & (cps != 0)
    char_mode = batch.cjk[doc_of_pos] if cjk_chars else np.zeros(len(cps), dtype=bool)
    # A token starts at a text character whose predecessor is a space/separator, or anywhere in char mode.
    prev_is_char = np.concatenate([[False], is_char[:-1]])
    starts_token = is_char & (~prev_is_char | char_mode)
    token_id = np.cumsum(starts_token) - 1
    pos = np.flatnonzero(is_char)
    tid = token_id[pos]
    first_pos = np.flatnonzero(starts_token)
    pos_in_token = (pos - first_pos[tid]).astype(np.uint64)
    with np.errstate(over="ignore"):
        per_char = mix64(cps[pos].astype(np.uint64) ^ (pos_in_token << np.uint64(32)))
    if len(first_pos) == 0:
        return TokenStream(np.zeros(0, np.uint64), np.zeros(0, np.int64), n_docs)
    # Every token has >= 1 character and tid is sorted: a segmented (wrapping) sum per token.
    boundaries = np.flatnonzero(np.concatenate([[True], tid[1:] != tid[:-1]]))
    hashes = np.add.reduceat(per_char, boundaries)
    return TokenStream(mix64(hashes), doc_of_pos[first_pos], n_docs)


def ngram_hashes(stream: TokenStream, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the token n-grams of each text: (flat uint64 hashes, row offsets of len n_docs+1).

    Texts with fewer than n tokens get no n-grams (callers treat them as short texts).
    """
    h, doc = stream.hashes, stream.doc
    m = len(h) - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64), np.zeros(stream.n_docs + 1, np.int64)
    acc = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * _POLY + h[k : k + m]
    valid = doc[:m] == doc[n - 1 :]
    grams = mix64(acc[valid] ^ _GOLD)
    counts = np.bincount(doc[:m][valid], minlength=stream.n_docs)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return grams, offsets


def char_window_hashes(batch: EncodedBatch, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every `width`-character window (spaces kept) of each normalized text."""
    cps = batch.cps.astype(np.uint64)
    doc = np.repeat(np.arange(len(batch.starts), dtype=np.int64), batch.lengths + 1)[: len(cps)]
    stream = TokenStream(mix64(cps), doc, len(batch.starts))
    # Separators are not part of any text: drop them so windows never cross texts.
    keep = batch.cps != 0
    stream = TokenStream(stream.hashes[keep], stream.doc[keep], stream.n_docs)
    return ngram_hashes(stream, width)

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

import functools
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
    """splitmix64 finalizer, elementwise on uint64 (wrapping arithmetic is intended); returns a new array."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


@functools.lru_cache(maxsize=1)
def _cjk_bmp_table() -> np.ndarray:
    table = np.zeros(0x10000, dtype=bool)
    for lo, hi in CJK_RANGES:
        if lo < 0x10000:
            table[lo : min(hi, 0xFFFF) + 1] = True
    return table


def _is_cjk_cp(cps: np.ndarray) -> np.ndarray:
    mask = _cjk_bmp_table()[cps & 0xFFFF] & (cps < 0x10000)
    for lo, hi in CJK_RANGES:
        if hi >= 0x10000:
            mask |= (cps >= lo) & (cps <= hi)
    return mask


def _segment_count(mask: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    csum = np.zeros(len(mask) + 1, dtype=np.int32 if len(mask) < 2**31 - 1 else np.int64)
    np.cumsum(mask, out=csum[1:])
    return csum[ends] - csum[starts]


@functools.lru_cache(maxsize=1)
def _char_tables() -> tuple[np.ndarray, np.ndarray]:
    """Tabulation hashing: a fixed random 64-bit value per code point (mod 2^16) and an odd
    multiplier per position in the token. Space and separator map to 0, so they add nothing."""
    rng = np.random.default_rng(0x5EED)
    values = rng.integers(1, 2**63, size=0x10000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    values[[0, 32]] = 0
    position = rng.integers(1, 2**63, size=64, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return values, position


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

    def doc_of_position(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.starts), dtype=np.int64), self.lengths + 1)[: len(self.cps)]


@functools.lru_cache(maxsize=1)
def _fold_table() -> np.ndarray:
    """BMP code point -> its match form: NFKC + lower case when that is one word character, else space.

    A lookup table makes normalization one numpy gather instead of per-character Python; the
    rare NFKC expansions to several characters (ligatures) are kept as they are.
    """
    chars = [chr(c) if not 0xD800 <= c <= 0xDFFF else " " for c in range(0x10000)]
    table = np.full(0x10000, 32, dtype=np.uint32)
    for c, ch in enumerate(chars):
        folded = unicodedata.normalize("NFKC", ch).lower()
        if len(folded) != 1:
            folded = ch.lower() if len(ch.lower()) == 1 else ch
        if folded.isalnum() or folded == "_" or unicodedata.category(folded) in ("Mn", "Mc"):
            table[c] = ord(folded)
    return table


def encode_batch(texts: list[str], cjk_threshold: float = DEFAULT_CJK_RATIO, compact: bool = True) -> EncodedBatch:
    """Normalize all texts at once (NFKC, lower case, punctuation/symbols -> space) as code points.

    compact=True leaves exactly one space between words and none at the edges (character windows
    depend on it); tokenization alone does not care, and skips those passes with compact=False.
    """
    if not texts:
        empty = np.zeros(0, dtype=np.int64)
        return EncodedBatch(np.zeros(0, dtype=np.uint32), empty, empty, np.zeros(0, dtype=bool))
    raw = np.frombuffer("\x00".join(texts).encode("utf-32-le"), dtype=np.uint32)
    seps = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))[:-1] + 1) - 1
    cps = _fold_table()[raw & 0xFFFF]
    astral = np.flatnonzero(raw > 0xFFFF)  # rare: CJK extensions are kept, emoji etc. become spaces
    if len(astral):
        cps[astral] = np.where(_is_cjk_cp(raw[astral]), raw[astral], 32)
    cps[seps] = 0
    if compact:
        sp = cps == 32
        edge = np.empty_like(sp)
        edge[0], edge[1:] = True, sp[:-1] | (cps[:-1] == 0)
        cps = cps[~(sp & edge)]
        trailing = np.empty(len(cps), dtype=bool)
        trailing[-1:], trailing[:-1] = cps[-1:] == 32, (cps[:-1] == 32) & (cps[1:] == 0)
        cps = cps[~trailing]
        seps = np.flatnonzero(cps == 0)
    starts = np.concatenate([[0], seps + 1]).astype(np.int64)
    ends = np.concatenate([seps, [len(cps)]]).astype(np.int64)
    cjk_count = _segment_count(_is_cjk_cp(cps), starts, ends)
    char_count = _segment_count(cps > 32, starts, ends)
    cjk = (cjk_count > 0) & (cjk_count >= cjk_threshold * np.maximum(char_count, 1))
    return EncodedBatch(cps=cps, starts=starts, ends=ends, cjk=cjk)


@dataclass
class TokenStream:
    """Token hashes of many texts, flat, with the text each token belongs to."""

    hashes: np.ndarray  # uint64
    doc: np.ndarray  # int64 text index per token (sorted)
    n_docs: int
    _counts: np.ndarray | None = None

    def counts(self) -> np.ndarray:
        if self._counts is None:
            self._counts = np.bincount(self.doc, minlength=self.n_docs)
        return self._counts


def token_hashes(batch: EncodedBatch, cjk_chars: bool | str = True) -> TokenStream:
    """One uint64 hash per token: a word (run of non-space code points) or, in CJK texts, a character.

    A token's hash is the wrapping sum of value[code point] * multiplier[position in token] over
    its characters (tabulation hashing), then mixed: order-aware, stable across runs, and a
    handful of whole-array numpy passes instead of a Python loop per token.
    """
    cps = batch.cps
    n_docs = len(batch.starts)
    if n_docs == 0 or len(cps) == 0:
        return TokenStream(np.zeros(0, np.uint64), np.zeros(0, np.int64), n_docs)
    is_char = cps > 32  # after encode_batch: 0 = separator, 32 = space, the rest are word characters
    starts_token = is_char.copy()
    # A token starts at a character after a space/separator, or at every character in CJK mode.
    cont = is_char[1:] & is_char[:-1]
    if cjk_chars == "always":
        cjk = _is_cjk_cp(cps)
        cont &= ~(cjk[1:] | cjk[:-1])
    elif cjk_chars and batch.cjk.any():
        cont &= ~np.repeat(batch.cjk, batch.lengths + 1)[1 : len(cps)]
    starts_token[1:] &= ~cont
    first_pos = np.flatnonzero(starts_token)
    if len(first_pos) == 0:
        return TokenStream(np.zeros(0, np.uint64), np.zeros(0, np.int64), n_docs)
    # int32 indices when they fit: half the memory traffic of int64 on these full-length passes
    itype = np.int32 if len(cps) < 2**31 - 1 else np.int64
    tid = np.cumsum(starts_token, dtype=itype)
    tid -= 1
    # positions before the first token (tid -1) are separators, whose value is 0 anyway
    pos_in_token = np.arange(len(cps), dtype=itype)
    pos_in_token -= first_pos.astype(itype)[tid]
    pos_in_token &= 63
    values, position = _char_tables()
    with np.errstate(over="ignore"):
        per_char = values[cps & 0xFFFF]
        per_char *= position[pos_in_token]
        # segments run from one token start to the next: spaces/separators inside them add 0
        hashes = np.add.reduceat(per_char, first_pos)
    # tokens per text from the running token count at the text boundaries
    before = np.concatenate([[0], tid + 1])  # tokens started before each position
    counts = before[batch.ends] - before[batch.starts]
    doc = np.repeat(np.arange(n_docs, dtype=np.int64), counts)
    return TokenStream(mix64(hashes), doc, n_docs, counts)


def ngram_hashes(stream: TokenStream, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the token n-grams of each text: (flat uint64 hashes, row offsets of len n_docs+1).

    Texts with fewer than n tokens get no n-grams (callers treat them as short texts).
    """
    h, doc = stream.hashes, stream.doc
    m = len(h) - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64), np.zeros(stream.n_docs + 1, np.int64)
    acc = h[:m].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):  # polynomial rolling hash, in place
            acc *= _POLY
            acc += h[k : k + m]
    valid = doc[:m] == doc[n - 1 :]
    grams = mix64(acc[valid] ^ _GOLD)
    counts = np.maximum(stream.counts() - (n - 1), 0)  # a text with t tokens has t-n+1 n-grams
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return grams, offsets

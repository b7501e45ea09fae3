"""Decontamination: find training texts that overlap the eval sets.

A training text is contaminated when it shares with an eval text
- a word n-gram (13 words; an eval text shorter than that but with >= `min_words_whole` words
  is matched as a whole, as in GPT-3's decontamination), or
- a character substring of `substring_chars` (50) characters, which also covers CJK text
  (no word boundaries there); shorter CJK eval texts are matched whole from `min_chars_whole`.
Both run on normalized text (lower case, punctuation -> space) with vectorized hashing: the eval
side becomes a sorted hash array, the training side is probed with np.isin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alignflow.data.text import EncodedBatch, TokenStream, encode_batch, mix64, ngram_hashes, token_hashes

MIN_WORDS_WHOLE = 8
MIN_CHARS_WHOLE = 20


@dataclass
class _Probe:
    kind: str  # "13-gram" / "50-char" / "whole-prompt"
    size: int
    hashes: np.ndarray  # sorted unique hashes of the eval side
    owner: dict[int, int] = field(default_factory=dict)  # hash -> eval text index


@dataclass
class Match:
    index: int  # training text
    eval_index: int
    kind: str


def _char_stream(batch: EncodedBatch) -> TokenStream:
    """Code points as tokens (spaces included, separators dropped): windows are substrings."""
    cps = batch.cps
    doc = np.repeat(np.arange(len(batch.starts), dtype=np.int64), batch.lengths + 1)[: len(cps)]
    keep = cps != 0
    return TokenStream(mix64(cps[keep].astype(np.uint64)), doc[keep], len(batch.starts))


def _strip_edges(stream: TokenStream, batch: EncodedBatch) -> TokenStream:
    """Drop leading/trailing spaces of each text so a whole short eval text matches inside a longer one."""
    space = mix64(np.array([32], dtype=np.uint64))[0]
    is_space = stream.hashes == space
    # first/last non-space position per text
    idx = np.arange(len(stream.hashes))
    non = ~is_space
    first = np.full(stream.n_docs, np.iinfo(np.int64).max)
    last = np.full(stream.n_docs, -1)
    np.minimum.at(first, stream.doc[non], idx[non])
    np.maximum.at(last, stream.doc[non], idx[non])
    keep = (idx >= first[stream.doc]) & (idx <= last[stream.doc])
    return TokenStream(stream.hashes[keep], stream.doc[keep], stream.n_docs)


def _owners(hashes: np.ndarray, offsets: np.ndarray) -> dict[int, int]:
    doc = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    uniq, first = np.unique(hashes, return_index=True)
    return dict(zip(uniq.tolist(), doc[first].tolist()))


def _whole_text_hashes(stream: TokenStream, sizes: np.ndarray, lo: int, hi: int) -> dict[int, tuple[np.ndarray, dict]]:
    """For eval texts with lo <= len < hi tokens: their whole token sequence as one n-gram, by length."""
    out = {}
    counts = stream.counts()
    for n in sorted(set(counts[(counts >= lo) & (counts < hi) & sizes].tolist())):
        hashes, offsets = ngram_hashes(stream, n)
        own = np.repeat(np.arange(stream.n_docs), np.diff(offsets))
        pick = (counts[own] == n) & sizes[own]
        out[n] = (np.unique(hashes[pick]), dict(zip(hashes[pick].tolist(), own[pick].tolist())))
    return out


class EvalIndex:
    """The hashed n-grams and substrings of the eval texts."""

    def __init__(self, eval_texts: list[str], ngram: int = 13, substring_chars: int = 50,
                 min_words_whole: int = MIN_WORDS_WHOLE, min_chars_whole: int = MIN_CHARS_WHOLE):
        self.ngram, self.substring_chars = ngram, substring_chars
        batch = encode_batch(eval_texts)
        words = token_hashes(batch, cjk_chars=False)
        chars = _strip_edges(_char_stream(batch), batch)
        self.probes: list[_Probe] = []
        h, off = ngram_hashes(words, ngram)
        self.probes.append(_Probe(f"{ngram}-gram", ngram, np.unique(h), _owners(h, off)))
        h, off = ngram_hashes(chars, substring_chars)
        self.probes.append(_Probe(f"{substring_chars}-char", substring_chars, np.unique(h), _owners(h, off)))
        everyone = np.ones(len(eval_texts), dtype=bool)
        for n, (hs, own) in _whole_text_hashes(words, everyone & ~batch.cjk, min_words_whole, ngram).items():
            self.probes.append(_Probe("whole-text", n, hs, own))
        self._char_whole = _whole_text_hashes(chars, batch.cjk, min_chars_whole, substring_chars)
        for n, (hs, own) in self._char_whole.items():
            self.probes.append(_Probe("whole-text-chars", n, hs, own))

    def find(self, texts: list[str]) -> list[Match]:
        """The first eval overlap of each contaminated training text."""
        batch = encode_batch(texts)
        streams = {"words": token_hashes(batch, cjk_chars=False), "chars": _char_stream(batch)}
        found: dict[int, Match] = {}
        for probe in self.probes:
            stream = streams["chars" if probe.kind.endswith(("char", "chars")) else "words"]
            hashes, offsets = ngram_hashes(stream, probe.size)
            hit = np.isin(hashes, probe.hashes, assume_unique=False)
            if not hit.any():
                continue
            doc = np.repeat(np.arange(len(texts)), np.diff(offsets))
            for pos in np.flatnonzero(hit).tolist():
                i = int(doc[pos])
                if i not in found:
                    found[i] = Match(i, probe.owner[int(hashes[pos])], probe.kind)
        return [found[i] for i in sorted(found)]

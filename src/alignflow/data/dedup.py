"""Exact and near-duplicate detection.

- exact: xxhash of the normalized text (lower case, punctuation and extra spaces removed).
- near: MinHash + LSH. Shingles are word n-grams for space-delimited text and character
  n-grams for CJK text, hashed for the whole corpus at once with numpy (`alignflow.data.text`);
  signatures come from rensa's compiled R-MinHash over that flat buffer; rensa's native LSH
  flags the rows that share a band with another row, and only those go through the exact
  banding below, which yields candidate pairs that are verified on the estimated Jaccard.
  Texts shorter than `min_tokens` are left to exact dedup: a handful of shingles gives a
  meaningless signature (and texts shorter than n would all collapse onto one).

Both return `dup_of[i]`: the index of the kept text that i duplicates, or -1 (keep the first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xxhash

from alignflow.data.text import _POLY, TokenStream, encode_batch, mix64, ngram_hashes, normalize_for_match, token_hashes


def exact_duplicates(texts: list[str]) -> np.ndarray:
    """dup_of per text: the first text with the same normalized content, or -1."""
    first: dict[int, int] = {}
    dup_of = np.full(len(texts), -1, dtype=np.int64)
    for i, text in enumerate(texts):
        key = xxhash.xxh3_64_intdigest(normalize_for_match(text).encode("utf-8"))
        j = first.setdefault(key, i)
        if j != i:
            dup_of[i] = j
    return dup_of


# ------------------------------------------------------------------------------------- LSH params


def _collision_prob(s: np.ndarray, bands: int, rows: int) -> np.ndarray:
    return 1.0 - (1.0 - s**rows) ** bands


def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands*rows == num_perm minimizing weighted false positive + negative mass
    (datasketch's criterion, restricted to exact divisors so every permutation is used)."""
    best, best_err = (num_perm, 1), float("inf")
    lo, hi = np.linspace(0.0, threshold, 512), np.linspace(threshold, 1.0, 512)
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        fp = np.trapezoid(_collision_prob(lo, bands, rows), lo)
        fn = np.trapezoid(1.0 - _collision_prob(hi, bands, rows), hi)
        err = fp_weight * fp + fn_weight * fn
        if err < best_err:
            best, best_err = (bands, rows), err
    return best


# -------------------------------------------------------------------------------------- shingling


@dataclass
class Shingles:
    hashes: np.ndarray  # uint64, flat
    offsets: np.ndarray  # int64, len(rows)+1
    rows: np.ndarray  # index of the text of each row (texts that are long enough)


def shingle(texts: list[str], word_ngram: int, char_ngram: int, min_tokens: int) -> Shingles:
    """Word n-grams (space-delimited texts) / character n-grams (CJK texts) of texts with >= min_tokens tokens."""
    batch = encode_batch(texts)
    stream = token_hashes(batch)
    n_tok = stream.counts()
    need = np.where(batch.cjk, max(min_tokens, char_ngram), max(min_tokens, word_ngram))
    eligible = n_tok >= need
    parts_h, parts_doc = [], []
    for cjk_mode, n in ((False, word_ngram), (True, char_ngram)):
        keep = batch.cjk[stream.doc] == cjk_mode
        sub = TokenStream(stream.hashes[keep], stream.doc[keep], stream.n_docs)
        grams, offsets = ngram_hashes(sub, n)
        parts_h.append(grams)
        parts_doc.append(np.repeat(np.arange(stream.n_docs), np.diff(offsets)))
    doc = np.concatenate(parts_doc)
    order = np.argsort(doc, kind="stable")
    hashes, doc = np.concatenate(parts_h)[order], doc[order]
    take = eligible[doc]
    hashes, doc = hashes[take], doc[take]
    rows = np.flatnonzero(eligible)
    counts = np.bincount(doc, minlength=len(texts))[rows]
    return Shingles(hashes, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), rows)


# ------------------------------------------------------------------------------ signatures + LSH


def digest_matrix(sh: Shingles, num_perm: int, seed: int):
    import rensa

    return rensa.RMinHash.digest_matrix_from_flat_token_hashes(
        np.ascontiguousarray(sh.hashes, dtype=np.uint64), sh.offsets.astype(np.uint64), num_perm, seed
    )


def signatures(sh: Shingles, num_perm: int, seed: int) -> np.ndarray:
    """(rows x num_perm) uint32 MinHash signatures (rensa R-MinHash)."""
    if len(sh.rows) == 0:
        return np.zeros((0, num_perm), dtype=np.uint32)
    return np.asarray(digest_matrix(sh, num_perm, seed).to_rows(), dtype=np.uint32)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n x bands) uint64: one hash per band of each signature."""
    keys = np.zeros((sig.shape[0], bands), dtype=np.uint64)
    s = sig.astype(np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows):
            keys = mix64(keys * _POLY + s[:, np.arange(bands) * rows + r])  # band b = columns [b*rows, (b+1)*rows)
    return keys


def candidate_pairs(sig: np.ndarray, bands: int, rows: int, max_bucket_pairs: int = 64) -> np.ndarray:
    """(k x 2) int64 unique pairs (i < j) that share at least one band.

    Within a bucket each member is paired with up to `max_bucket_pairs` members before it, so a
    huge bucket (many copies of one boilerplate text) stays linear, not quadratic.
    """
    n = sig.shape[0]
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    keys = band_keys(sig, bands, rows)
    found = []
    for b in range(bands):
        order = np.argsort(keys[:, b], kind="stable")
        k = keys[order, b]
        for d in range(1, max_bucket_pairs + 1):
            same = k[d:] == k[:-d]
            if not same.any():
                break
            a, c = order[:-d][same], order[d:][same]
            found.append(np.minimum(a, c) * n + np.maximum(a, c))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // n, codes % n], axis=1)


def estimated_jaccard(sig: np.ndarray, pairs: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    out = np.empty(len(pairs), dtype=np.float64)
    for s in range(0, len(pairs), chunk):
        p = pairs[s : s + chunk]
        out[s : s + chunk] = (sig[p[:, 0]] == sig[p[:, 1]]).mean(axis=1)
    return out


def keep_first(n: int, pairs: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy, in input order: j is a duplicate of the first kept i < j it is paired with.

    Same semantics as streaming dedup (query the index of kept texts, insert if new): a text
    similar only to a dropped duplicate is kept.
    """
    dup_of = np.full(n, -1, dtype=np.int64)
    score = np.zeros(n, dtype=np.float64)
    if len(pairs) == 0:
        return dup_of, score
    order = np.lexsort((pairs[:, 0], pairs[:, 1]))  # by later index j, then earlier i
    for (i, j), s in zip(pairs[order].tolist(), scores[order].tolist()):
        if dup_of[j] == -1 and dup_of[i] == -1 and i < j:
            dup_of[j], score[j] = i, s
    return dup_of, score


@dataclass
class NearDedupResult:
    dup_of: np.ndarray  # -1 = keep
    similarity: np.ndarray  # estimated Jaccard to the kept text
    eligible: np.ndarray  # bool: long enough for near dedup
    candidates: int  # candidate pairs verified


def near_duplicates(
    texts: list[str], threshold: float = 0.8, num_perm: int = 128, word_ngram: int = 5, char_ngram: int = 5,
    min_tokens: int = 15, seed: int = 1,
) -> NearDedupResult:
    import rensa

    n = len(texts)
    sh = shingle(texts, word_ngram, char_ngram, min_tokens)
    eligible = np.zeros(n, dtype=bool)
    eligible[sh.rows] = True
    dup_of, score = np.full(n, -1, dtype=np.int64), np.zeros(n)
    if len(sh.rows) < 2:
        return NearDedupResult(dup_of, score, eligible, 0)
    bands, rows = lsh_params(threshold, num_perm)
    matrix = digest_matrix(sh, num_perm, seed)
    # rensa's native LSH flags rows sharing a band with any other row; only those need Python-side work.
    flags = np.asarray(rensa.RMinHashLSH(threshold, num_perm, bands).insert_matrix_and_query_duplicate_flags(matrix), dtype=bool)
    flagged = np.flatnonzero(flags)
    if len(flagged) < 2:
        return NearDedupResult(dup_of, score, eligible, 0)
    sub = Shingles(*_subset_rows(sh, flagged))
    sig = signatures(sub, num_perm, seed)
    pairs = candidate_pairs(sig, bands, rows)
    sims = estimated_jaccard(sig, pairs)
    ok = sims >= threshold
    local_dup, local_score = keep_first(len(flagged), pairs[ok], sims[ok])
    texts_idx = sub.rows
    hit = local_dup >= 0
    dup_of[texts_idx[hit]] = texts_idx[local_dup[hit]]
    score[texts_idx[hit]] = local_score[hit]
    return NearDedupResult(dup_of, score, eligible, int(len(pairs)))


def _subset_rows(sh: Shingles, take: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shingles of rows `take` (sorted) only."""
    counts = np.diff(sh.offsets)[take]
    starts = sh.offsets[:-1][take]
    idx = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
    return sh.hashes[idx], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), sh.rows[take]

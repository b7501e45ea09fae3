"""Exact and near-duplicate detection.

- exact: xxhash of the normalized text (lower case, punctuation and extra spaces removed).
- near: MinHash + LSH. Shingles are word n-grams for space-delimited text and character
  n-grams for CJK text, hashed for the whole corpus at once with numpy (`alignflow.data.text`);
  signatures come from rensa's compiled R-MinHash over that flat buffer in one call; rensa's
  native LSH flags the rows that share a band with another row, and only those are pulled into
  numpy, where banding (sort the band hashes, pair equal neighbours) yields candidate pairs that
  are verified on the estimated Jaccard before a text is dropped.
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


def shingle(texts: list[str], word_ngram: int, char_ngram: int, min_tokens: int, row_offset: int = 0) -> Shingles:
    """Word n-grams (space-delimited texts) / character n-grams (CJK texts) of texts with >= min_tokens tokens."""
    batch = encode_batch(texts, compact=False)
    stream = token_hashes(batch)
    n_tok = stream.counts()
    need = np.where(batch.cjk, max(min_tokens, char_ngram), max(min_tokens, word_ngram))
    eligible = n_tok >= need
    if word_ngram == char_ngram or batch.cjk.all() or not batch.cjk.any():
        n = char_ngram if batch.cjk.all() else word_ngram
        hashes, offsets = ngram_hashes(stream, n)
    else:
        hashes, offsets = _merge_modes(stream, batch.cjk, word_ngram, char_ngram)
    keep_rows = np.repeat(eligible, np.diff(offsets))
    hashes = hashes[keep_rows]
    rows = np.flatnonzero(eligible)
    counts = np.diff(offsets)[rows]
    return Shingles(hashes, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), rows + row_offset)


def _merge_modes(stream: TokenStream, cjk: np.ndarray, word_n: int, char_n: int) -> tuple[np.ndarray, np.ndarray]:
    """n-grams with n depending on each text's mode, merged back into text order (linear gather)."""
    parts = []
    for mode, n in ((False, word_n), (True, char_n)):
        keep = cjk[stream.doc] == mode
        parts.append(ngram_hashes(TokenStream(stream.hashes[keep], stream.doc[keep], stream.n_docs), n))
    (h0, o0), (h1, o1) = parts
    counts = np.where(cjk, np.diff(o1), np.diff(o0))
    src_start = np.where(cjk, o1[:-1] + len(h0), o0[:-1])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    idx = np.repeat(src_start - offsets[:-1], counts) + np.arange(offsets[-1])
    return np.concatenate([h0, h1])[idx], offsets


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
    texts: list[str], threshold: float = 0.7, num_perm: int = 128, word_ngram: int = 5, char_ngram: int = 5,
    min_tokens: int = 15, seed: int = 1, chunk_size: int = 4096,
) -> NearDedupResult:
    """dup_of[i] = the kept text that text i nearly duplicates (estimated Jaccard >= threshold), or -1.

    Texts are shingled in chunks (the numpy arrays stay small and their memory is reused), then
    sketched in one rensa call; rensa's native LSH flags the rows that share a band with another
    row, and only those are materialized for exact banding and verification.
    """
    import rensa

    n = len(texts)
    dup_of, score = np.full(n, -1, dtype=np.int64), np.zeros(n)
    sh = concat_shingles([
        shingle(texts[start : start + chunk_size], word_ngram, char_ngram, min_tokens, row_offset=start)
        for start in range(0, n, chunk_size)
    ])
    eligible = np.zeros(n, dtype=bool)
    eligible[sh.rows] = True
    if len(sh.rows) < 2:
        return NearDedupResult(dup_of, score, eligible, 0)
    bands, rows = lsh_params(threshold, num_perm)
    matrix = digest_matrix(sh, num_perm, seed)
    lsh = rensa.RMinHashLSH(threshold, num_perm, bands)
    flagged = np.flatnonzero(np.asarray(lsh.insert_matrix_and_query_duplicate_flags(matrix), dtype=bool))
    if len(flagged) < 2:
        return NearDedupResult(dup_of, score, eligible, 0)
    sub = subset_rows(sh, flagged)
    sig = signatures(sub, num_perm, seed)
    pairs = candidate_pairs(sig, bands, rows)
    sims = estimated_jaccard(sig, pairs)
    ok = sims >= threshold
    local_dup, local_score = keep_first(len(sub.rows), pairs[ok], sims[ok])
    hit = local_dup >= 0
    dup_of[sub.rows[hit]] = sub.rows[local_dup[hit]]
    score[sub.rows[hit]] = local_score[hit]
    return NearDedupResult(dup_of, score, eligible, int(len(pairs)))


def concat_shingles(parts: list[Shingles]) -> Shingles:
    if not parts:
        return Shingles(np.zeros(0, np.uint64), np.zeros(1, np.int64), np.zeros(0, np.int64))
    counts = np.concatenate([np.diff(p.offsets) for p in parts])
    return Shingles(np.concatenate([p.hashes for p in parts]), np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                    np.concatenate([p.rows for p in parts]))


def subset_rows(sh: Shingles, take: np.ndarray) -> Shingles:
    """The shingles of rows `take` (sorted positions into sh.rows) only."""
    counts = np.diff(sh.offsets)[take]
    starts = sh.offsets[:-1][take]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    idx = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
    return Shingles(sh.hashes[idx], offsets, sh.rows[take])

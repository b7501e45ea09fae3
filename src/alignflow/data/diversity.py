"""Self-Instruct's diversity filter without the O(n^2) scan.

Self-Instruct keeps a new instruction only if its ROUGE-L similarity to every instruction
already kept is at most 0.7. Comparing every pair is quadratic; here MinHash LSH over token
sets (a low threshold, so it only prunes pairs that cannot be similar) proposes candidates and
the exact ROUGE-L runs on those pairs only. Tokens are words, or characters for CJK text.
"""

from __future__ import annotations

import numpy as np

from alignflow.data.dedup import Shingles, candidate_pairs, lsh_params, signatures
from alignflow.data.text import encode_batch, ngram_hashes, token_hashes, tokens, TokenStream


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): O(len(a)) big-int ops."""
    if not a or not b:
        return 0
    masks: dict = {}
    for i, tok in enumerate(b):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full
    for tok in a:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - v.bit_count()


def rouge_l(a: list, b: list) -> float:
    """ROUGE-L F-measure of two token lists."""
    lcs = lcs_length(a, b)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def token_set_shingles(texts: list[str], max_tokens: int) -> Shingles:
    """Unigram hashes of each text's first `max_tokens` tokens (all texts, even short ones)."""
    stream = token_hashes(encode_batch(texts))
    # position of each token within its text, to cut at max_tokens
    counts = stream.counts()
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(stream.doc)) - first[stream.doc]
    keep = pos < max_tokens
    hashes, offsets = ngram_hashes(TokenStream(stream.hashes[keep], stream.doc[keep], stream.n_docs), 1)
    rows = np.flatnonzero(np.diff(offsets) > 0)
    return Shingles(hashes, np.concatenate([[0], np.cumsum(np.diff(offsets)[rows])]).astype(np.int64), rows)


def diversity_filter(
    texts: list[str], max_similarity: float = 0.7, candidate_threshold: float = 0.3, num_perm: int = 64,
    max_tokens: int = 256, seed: int = 1,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(similar_to, score, n_candidates): similar_to[i] is the kept text i is too similar to, or -1."""
    n = len(texts)
    similar_to, score = np.full(n, -1, dtype=np.int64), np.zeros(n)
    sh = token_set_shingles(texts, max_tokens)
    if len(sh.rows) < 2:
        return similar_to, score, 0
    sig = signatures(sh, num_perm, seed)
    local = candidate_pairs(sig, *lsh_params(candidate_threshold, num_perm))
    if len(local) == 0:
        return similar_to, score, 0
    pairs = sh.rows[local]  # back to text indices; rows are sorted, so i < j holds
    toks = {}

    def tok(i: int) -> list[str]:
        if i not in toks:
            toks[i] = tokens(texts[i])[:max_tokens]
        return toks[i]

    order = np.lexsort((pairs[:, 0], pairs[:, 1]))
    for i, j in pairs[order].tolist():
        if similar_to[j] != -1 or similar_to[i] != -1:
            continue  # j already dropped, or i was dropped (only kept instructions count)
        s = rouge_l(tok(j), tok(i))
        if s > max_similarity:
            similar_to[j], score[j] = i, s
    return similar_to, score, int(len(pairs))

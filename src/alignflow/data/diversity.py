"""Self-Instruct's diversity filter without the O(n^2) scan.

Self-Instruct keeps a new instruction only if its ROUGE-L similarity to every instruction
already kept is at most 0.7. Comparing every pair is quadratic; here MinHash LSH over token
sets (a low threshold, so it only prunes pairs that cannot be similar) proposes candidates and
the exact ROUGE-L runs on those pairs only. Tokens are words, and single characters in CJK text.
"""

from __future__ import annotations

import numpy as np

from alignflow.data.dedup import Shingles, candidate_pairs, signatures
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


def recall_lsh_params(max_similarity: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows) that find, with probability >= recall, every pair that can exceed max_similarity.

    ROUGE-L F > s needs an LCS of l > s(m+n)/2 tokens, so the token sets overlap by at least
    J = s / (2 - s) (0.54 for 0.7); among the exact divisors of num_perm, take the banding with
    the fewest chance collisions (largest rows) that still catches J with the given recall.
    """
    j_min = max_similarity / (2 - max_similarity)
    options = [(num_perm // r, r) for r in range(1, num_perm + 1) if num_perm % r == 0]
    ok = [(b, r) for b, r in options if 1 - (1 - j_min**r) ** b >= recall]
    return max(ok, key=lambda br: br[1]) if ok else (num_perm, 1)


def token_set_shingles(texts: list[str], max_tokens: int) -> Shingles:
    """Unigram hashes of each text's first `max_tokens` tokens (all texts, even short ones)."""
    stream = token_hashes(encode_batch(texts, compact=False), cjk_chars="always")  # the same tokens as rouge_l sees
    # position of each token within its text, to cut at max_tokens
    counts = stream.counts()
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(stream.doc)) - first[stream.doc]
    keep = pos < max_tokens
    hashes, offsets = ngram_hashes(TokenStream(stream.hashes[keep], stream.doc[keep], stream.n_docs), 1)
    rows = np.flatnonzero(np.diff(offsets) > 0)
    return Shingles(hashes, np.concatenate([[0], np.cumsum(np.diff(offsets)[rows])]).astype(np.int64), rows)


def diversity_filter(
    texts: list[str], max_similarity: float = 0.7, candidate_recall: float = 0.99, num_perm: int = 96,
    max_tokens: int = 256, seed: int = 1,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(similar_to, score, n_candidates): similar_to[i] is the kept text i is too similar to, or -1."""
    n = len(texts)
    similar_to, score = np.full(n, -1, dtype=np.int64), np.zeros(n)
    sh = token_set_shingles(texts, max_tokens)
    if len(sh.rows) < 2:
        return similar_to, score, 0
    sig = signatures(sh, num_perm, seed)
    local = candidate_pairs(sig, *recall_lsh_params(max_similarity, num_perm, candidate_recall))
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

"""Exact and near dedup (recall/precision on planted duplicates, English and Chinese), diversity, hashing."""

from __future__ import annotations

import random

import numpy as np
import pytest

from alignflow.data.dedup import candidate_pairs, exact_duplicates, lsh_params, near_duplicates, signatures, shingle
from alignflow.data.diversity import diversity_filter, lcs_length, rouge_l
from alignflow.data.text import encode_batch, ngram_hashes, token_hashes, tokens

WORDS = [f"w{i}" for i in range(3000)]
HANZI = [chr(0x4E00 + i) for i in range(3000)]


def english_doc(rng: random.Random, n: int = 60) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def chinese_doc(rng: random.Random, n: int = 100) -> str:
    text = "".join(rng.choice(HANZI) for _ in range(n))
    return "，".join(text[i : i + 12] for i in range(0, n, 12)) + "。"


def near_copy(doc: str, rng: random.Random, cjk: bool) -> str:
    """One or two small edits plus case/punctuation noise: still a near-duplicate."""
    if cjk:
        chars = list(doc)
        chars[rng.randrange(len(chars))] = rng.choice(HANZI)
        return "".join(chars).replace("，", ",")
    words = doc.split()
    words[rng.randrange(len(words))] = rng.choice(WORDS)
    return " ".join(words).upper()


def planted_corpus(cjk: bool, n_orig: int = 300, n_dup: int = 60, seed: int = 0):
    rng = random.Random(seed)
    make = chinese_doc if cjk else english_doc
    docs = [make(rng) for _ in range(n_orig)]
    truth = {}
    for k in range(n_dup):
        src = rng.randrange(n_orig)
        truth[len(docs)] = src
        docs.append(near_copy(docs[src], rng, cjk))
    return docs, truth


@pytest.mark.parametrize("cjk", [False, True], ids=["english", "chinese"])
def test_near_dedup_recall_and_precision_on_planted_duplicates(cjk):
    docs, truth = planted_corpus(cjk)
    res = near_duplicates(docs, threshold=0.7, num_perm=128, word_ngram=5, char_ngram=5, min_tokens=15)
    flagged = {i: int(j) for i, j in enumerate(res.dup_of) if j >= 0}
    true_pos = sum(1 for i, j in flagged.items() if truth.get(i) == j or truth.get(i) == truth.get(j, -1))
    recall = true_pos / len(truth)
    precision = true_pos / max(1, len(flagged))
    assert recall >= 0.9, (recall, len(flagged))
    assert precision >= 0.95, precision
    assert all(res.similarity[i] >= 0.7 for i in flagged)


def test_near_dedup_is_cjk_aware():
    # Chinese has no spaces: word shingles would see one giant "word" per clause and miss this pair
    a = "今天天气很好我们一起去公园散步然后去图书馆看书晚上回家做饭吃饭看电视休息"
    b = "今天天气很好我们一起去公园散步然后去图书馆看书晚上回家做饭吃饭看电影休息"
    c = "机器学习是人工智能的一个分支它使用统计方法让计算机从数据中学习规律和模式"
    res = near_duplicates([a, b, c], threshold=0.7, min_tokens=15)
    assert res.dup_of.tolist() == [-1, 0, -1]


def test_short_texts_are_exact_deduped_only():
    texts = ["Name a color.", "Name a colour.", "Name a fruit."]
    res = near_duplicates(texts, threshold=0.5, min_tokens=15)
    assert not res.eligible.any() and (res.dup_of == -1).all()
    assert exact_duplicates(["Name a color.", "name a COLOR!", "Name a fruit."]).tolist() == [-1, 0, -1]


def test_keep_first_semantics_for_chains():
    rng = random.Random(1)
    a = english_doc(rng, 80)
    res = near_duplicates([a, a.upper(), a + " extra words here"], threshold=0.7)
    assert res.dup_of.tolist() == [-1, 0, 0]


def test_lsh_params_use_every_permutation():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = lsh_params(threshold, 128)
        assert bands * rows == 128
    # a lower threshold needs more, shorter bands
    assert lsh_params(0.5, 128)[0] > lsh_params(0.9, 128)[0]


def test_candidate_pairs_stay_linear_in_a_huge_bucket():
    sig = np.zeros((2000, 16), dtype=np.uint32)  # 2000 identical signatures: one bucket
    pairs = candidate_pairs(sig, 4, 4, max_bucket_pairs=8)
    assert len(pairs) <= 2000 * 8 and (pairs[:, 0] < pairs[:, 1]).all()


def test_token_hashes_are_position_independent_and_ngrams_stay_inside_texts():
    batch = encode_batch(["alpha beta gamma", "Gamma, BETA! alpha", "中文字"])
    stream = token_hashes(batch)
    h = stream.hashes
    assert stream.counts().tolist() == [3, 3, 3]
    assert h[0] == h[5] and h[1] == h[4] and h[2] == h[3]  # same word, same hash, wherever it is
    assert len(set(h[:3].tolist())) == 3
    grams, offsets = ngram_hashes(stream, 2)
    assert offsets.tolist() == [0, 2, 4, 6]  # no bigram spans two texts


def test_signatures_match_for_identical_shingle_sets():
    sh = shingle(["one two three four five six seven", "seven six five four three two one x"], 1, 1, 1)
    sig = signatures(sh, 64, 1)
    assert (sig[0] == sig[1]).mean() > 0.8  # Jaccard 7/8


# ------------------------------------------------------------------------------------ diversity


def _lcs_dp(a, b):
    dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            dp[i + 1][j + 1] = dp[i][j] + 1 if a[i] == b[j] else max(dp[i][j + 1], dp[i + 1][j])
    return dp[-1][-1]


def test_bit_parallel_lcs_matches_dynamic_programming():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randrange(0, 30))]
        b = [rng.choice("abcd") for _ in range(rng.randrange(0, 30))]
        assert lcs_length(a, b) == _lcs_dp(a, b)
    assert rouge_l(tokens("the cat sat on the mat"), tokens("the cat sat on a mat")) == pytest.approx(5 / 6)


def _brute_force_diversity(texts, max_sim):
    kept, dropped = [], []
    for j, t in enumerate(texts):
        tj = tokens(t)
        if any(rouge_l(tj, tokens(texts[i])) > max_sim for i in kept):
            dropped.append(j)
        else:
            kept.append(j)
    return dropped


def test_diversity_filter_matches_the_quadratic_scan():
    rng = random.Random(3)
    stems = ["Write a short poem about", "Give three tips for", "Explain to a child how", "Summarize the article on",
             "用简单的语言解释", "列出三个关于"]
    topics = ["the ocean", "time management", "rainbows form", "climate change", "a healthy breakfast", "机器学习的原理", "健康饮食的建议"]
    texts = [f"{rng.choice(stems)} {rng.choice(topics)} {rng.choice(WORDS)}" for _ in range(150)]
    similar_to, score, n_cand = diversity_filter(texts, max_similarity=0.7)
    assert sorted(np.flatnonzero(similar_to >= 0).tolist()) == _brute_force_diversity(texts, 0.7)
    assert n_cand < len(texts) * (len(texts) - 1) / 2  # bucketed, not all pairs
    assert (score[similar_to >= 0] > 0.7).all()

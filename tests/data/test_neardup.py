"""Near-duplicates: planted edits are found and dropped (the first of each cluster kept), distinct texts stay."""

import random

import numpy as np
import pytest

from medpt.data import neardup
from medpt.data.neardup import jaccard, lsh_bands, near_duplicates, ngrams

ALPHABET = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你能而子那得于着下自之年过发后"


def _text(rng: random.Random, n: int = 300) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def _edit(rng: random.Random, text: str, changes: int) -> str:
    chars = list(text)
    for i in rng.sample(range(len(chars)), changes):
        chars[i] = rng.choice("甲乙丙丁戊己庚辛壬癸")
    return "".join(chars)


def _exact_jaccard(a: str, b: str) -> float:
    x, y = ({s[i : i + 5] for i in range(len(s) - 4)} for s in (a, b))
    return len(x & y) / len(x | y)


def test_planted_edits_are_dropped_and_distinct_texts_kept():
    rng = random.Random(0)
    originals = [_text(rng) for _ in range(40)]
    texts, expected = list(originals), []
    for k in range(0, 40, 4):  # every 4th original gets 1-3 copies with 3 characters changed, placed later
        for _ in range(1 + k % 3):
            texts.append(_edit(rng, originals[k], 3))
            expected.append((len(texts) - 1, k))
    assert all(_exact_jaccard(texts[d], texts[k]) >= 0.8 for d, k in expected)
    result = near_duplicates(texts)
    assert result.dropped == expected
    assert result.kept.tolist() == list(range(40))


def test_the_first_of_a_cluster_in_input_order_is_kept():
    rng = random.Random(1)
    a = _text(rng)
    texts = [_text(rng), _edit(rng, a, 2), _text(rng), a]
    assert near_duplicates(texts).dropped == [(3, 1)]


@pytest.mark.parametrize("changes", [3, 8, 12, 30])
def test_the_threshold_is_exact(changes, monkeypatch):
    """LSH proposing every pair (as it may, near the threshold), only pairs at or above it are dropped."""
    monkeypatch.setattr(neardup, "candidate_pairs", lambda keys: np.array([[0, 1]]))
    rng = random.Random(changes)
    a = _text(rng, 400)
    b = _edit(rng, a, changes)
    for threshold in (0.5, 0.8):
        dropped = near_duplicates([a, b], threshold=threshold).dropped
        assert bool(dropped) is (_exact_jaccard(a, b) >= threshold)


def test_a_chain_is_one_cluster():
    rng = random.Random(2)
    a = _text(rng, 400)
    b = _edit(rng, a, 8)
    c = _edit(rng, b, 8)
    assert _exact_jaccard(a, c) < 0.8 <= min(_exact_jaccard(a, b), _exact_jaccard(b, c))
    assert near_duplicates([a, b, c]).dropped == [(1, 0), (2, 0)]


def test_short_and_empty_texts():
    result = near_duplicates(["心", "心", "", "", "高血压", "高血糖", "ab"])
    assert result.dropped == [(1, 0), (3, 2)]


def test_slices_do_not_change_the_result(monkeypatch):
    rng = random.Random(3)
    base = [_text(rng) for _ in range(30)]
    texts = base + [_edit(rng, t, 2) for t in base[::3]]
    whole = near_duplicates(texts)
    monkeypatch.setattr(neardup, "_SLICE_CHARS", 700)
    assert near_duplicates(texts).dropped == whole.dropped


def test_signatures_agree_in_proportion_to_jaccard():
    """One-permutation hashing with densification: P(a bin agrees) ≈ the Jaccard similarity."""
    rng = random.Random(4)
    a = _text(rng, 200)
    for changes in (4, 15):
        b = _edit(rng, a, changes)
        agree = []
        for seed in range(40):
            hashes, owner = neardup.shingles([a, b], 5, seed)
            sig = neardup._signatures(hashes, owner, 2, 128)
            agree.append(np.mean(sig[0] == sig[1]))
        assert np.mean(agree) == pytest.approx(_exact_jaccard(a, b), abs=0.03)


def test_bands_make_an_s_curve_around_the_threshold():
    b, r = lsh_bands(0.8, 128)
    assert b * r <= 128

    def p(j: float) -> float:
        return 1 - (1 - j**r) ** b

    assert p(0.95) > 0.99 and p(0.5) < 0.01 and 0.2 < p(0.8) < 0.8


def test_jaccard_of_ngram_sets():
    assert jaccard(ngrams("abcdef", 5), ngrams("abcdeg", 5)) == pytest.approx(1 / 3)  # {abcde} of 3
    assert ngrams("abc", 5) == {"abc"}

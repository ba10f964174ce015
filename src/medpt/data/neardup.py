"""Near-duplicate documents: the same text re-posted with small edits, which exact dedup lets through.

Two documents are near-duplicates when the Jaccard similarity of their sets of character n-grams (5 by default) is
at least the threshold (0.8). Documents form clusters (connected components of near-duplicate pairs); the first
document of each cluster, in input order, is kept, every other one is dropped and listed with the kept one.
Pure and model-agnostic: texts in, indices out.

Finding the pairs without comparing all of them: MinHash LSH, in numpy.
1. Shingles: a 64-bit hash of every window of n characters of a document (a text shorter than n is one shingle),
   mixed with splitmix64's finaliser salted by the seed.
2. Signatures by one-permutation hashing (Li, Owen & Zhang 2012): each shingle's hash picks one of `num_perm` bins
   and its remaining bits are its value; a document's signature is the minimum value in each bin. Bins a short
   document leaves empty take the value of the next non-empty bin to the right, plus a distinct offset per distance
   (densification by rotation, Shrivastava & Li 2014). Two documents agree in a bin with probability ≈ their Jaccard
   similarity, as with `num_perm` independent hash functions, at the cost of one hash per shingle instead of
   `num_perm` (measured: 20x faster than the 128 multiply-shift passes of classic MinHash in numpy; see
   bench/neardup.py, which also times datasketch).
3. Band keys: the signature cut into b bands of r rows (b · r ≤ num_perm, minimising the false-positive plus
   false-negative probability mass around the threshold, as datasketch chooses them); two documents whose rows agree
   in some band become a candidate pair (P = 1 − (1 − J^r)^b: ~1 above the threshold, ~0 well below).
4. Every candidate pair is verified by its exact Jaccard similarity (skipped when the two are already in one
   cluster), so a document is never dropped for a near miss: the threshold is exact, LSH only decides which pairs
   are looked at.

Memory is bounded by the slice of documents signed at once; what is kept for the whole corpus is b band keys per
document (72 bytes at the default 9 bands).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medpt.data.contamination import window_hashes

DEFAULT_THRESHOLD = 0.8
DEFAULT_NGRAM = 5
DEFAULT_PERM = 128
_SLICE_CHARS = 2_000_000  # characters signed at once: ~100 MB of temporaries
_VALUE_BITS = np.uint64(32)  # a shingle's value in its bin: the low 32 bits of its hash


@dataclass
class NearDuplicates:
    kept: np.ndarray  # indices of the kept documents, in input order
    dropped: list[tuple[int, int]]  # (dropped document, the kept document of its cluster), in input order
    candidates: int  # candidate pairs LSH proposed
    verified: int  # pairs whose Jaccard similarity was computed (the others were already in one cluster)
    bands: tuple[int, int]  # (b, r)


def near_duplicates(
    texts: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    ngram: int = DEFAULT_NGRAM,
    num_perm: int = DEFAULT_PERM,
    seed: int = 0,
) -> NearDuplicates:
    """Which documents to keep: see the module docstring."""
    bands, rows = lsh_bands(threshold, num_perm)
    pairs = candidate_pairs(band_keys(texts, ngram, bands * rows, rows, seed))
    parent = list(range(len(texts)))
    verified = 0
    cached: tuple[int, set[str]] = (-1, set())
    for i, j in pairs.tolist():  # sorted by i: the first document's n-grams are computed once for all its pairs
        if _find(parent, i) == _find(parent, j):
            continue
        if cached[0] != i:
            cached = (i, ngrams(texts[i], ngram))
        verified += 1
        if jaccard(cached[1], ngrams(texts[j], ngram)) >= threshold:
            _union(parent, i, j)
    roots = np.array([_find(parent, i) for i in range(len(texts))], dtype=np.int64)
    first = roots == np.arange(len(texts))  # the root of a cluster is its smallest index
    dropped = [(i, int(roots[i])) for i in np.flatnonzero(~first).tolist()]
    return NearDuplicates(np.flatnonzero(first), dropped, len(pairs), verified, (bands, rows))


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(b, r) with b · r ≤ num_perm minimising ∫₀^t P(candidate) dJ + ∫_t^1 P(not candidate) dJ, equal weights."""
    below, above = np.linspace(0, threshold, 1001), np.linspace(threshold, 1, 1001)
    best, best_cost = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            # P(candidate | Jaccard j) = 1 − (1 − j^r)^b; each integral as the mean over a grid times its width
            cost = np.mean(1 - (1 - below**r) ** b) * threshold + np.mean((1 - above**r) ** b) * (1 - threshold)
            if cost < best_cost:
                best, best_cost = (b, r), cost
    return best


def band_keys(texts: Sequence[str], ngram: int, bins: int, rows: int, seed: int) -> np.ndarray:
    """(bands, documents) uint64: a hash of each band of each document's signature, a slice of documents at a time."""
    keys = np.zeros((bins // rows, len(texts)), dtype=np.uint64)
    start = 0
    while start < len(texts):
        end, size = start, 0
        while end < len(texts) and size < _SLICE_CHARS:
            size += len(texts[end])
            end += 1
        hashes, owner = shingles(texts[start:end], ngram, seed)
        keys[:, start:end] = _bands(_signatures(hashes, owner, end - start, bins), rows)
        start = end
    return keys


def shingles(texts: Sequence[str], ngram: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The mixed hash of every character n-gram of each text, and which text it belongs to."""
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    owner = np.repeat(np.arange(len(texts)), lengths)
    hashes = window_hashes(codes, ngram)
    inside = np.flatnonzero(np.arange(len(hashes)) + ngram <= np.cumsum(lengths)[owner[: len(hashes)]])
    hashes, owner = hashes[inside], owner[inside]
    short = np.flatnonzero(lengths < ngram)
    if len(short):  # a text shorter than n is one shingle: itself (an empty one, the hash of nothing)
        whole = [window_hashes(np.frombuffer(texts[i].encode("utf-32-le"), np.uint32).astype(np.uint64), len(texts[i]))
                 if texts[i] else np.zeros(1, np.uint64) for i in short]  # fmt: skip
        hashes, owner = np.concatenate([hashes, *whole]), np.concatenate([owner, short])
    return _mix(hashes ^ np.uint64(_mix(np.array([seed], dtype=np.uint64))[0])), owner


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit (bins and values must look random)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _signatures(hashes: np.ndarray, owner: np.ndarray, n_docs: int, bins: int) -> np.ndarray:
    """(documents, bins): one-permutation MinHash, densified by rotation (see the module docstring)."""
    empty = np.uint64(np.iinfo(np.uint64).max)
    sig = np.full(n_docs * bins, empty, dtype=np.uint64)
    np.minimum.at(sig, owner * bins + ((hashes >> _VALUE_BITS) % np.uint64(bins)).astype(np.int64),
                  hashes & np.uint64((1 << 32) - 1))  # fmt: skip
    sig = sig.reshape(n_docs, bins)
    # For each bin, the next non-empty bin at or after it, going round: the distance is added above the value bits.
    filled = np.where(sig != empty, np.arange(bins), 2 * bins)
    doubled = np.concatenate([filled, filled + bins], axis=1)
    nearest = np.minimum.accumulate(doubled[:, ::-1], axis=1)[:, ::-1][:, :bins]
    distance = (nearest - np.arange(bins)).astype(np.uint64)
    return sig[np.arange(n_docs)[:, None], nearest % bins] + (distance << _VALUE_BITS)


def _bands(signatures: np.ndarray, rows: int) -> np.ndarray:
    """(bands, documents): the r values of each band hashed into one key."""
    bands = signatures.shape[1] // rows
    keys = np.zeros((bands, signatures.shape[0]), dtype=np.uint64)
    for k in range(rows):
        keys = keys * np.uint64(0x100000001B3) + signatures[:, k : bands * rows : rows].T  # row k of every band
    return keys


def candidate_pairs(keys: np.ndarray) -> np.ndarray:
    """(i, j), i < j, sorted and unique: documents sharing a band key, each paired with the first and with the
    previous document (in input order) of its bucket, so a chain of near-duplicates is linked even when the first
    is not one of them."""
    n = keys.shape[1]
    found = [np.zeros(0, dtype=np.int64)]
    for band in keys:
        order = np.lexsort((np.arange(n), band))  # by key, then by index
        same = band[order][1:] == band[order][:-1]
        position = np.arange(1, n)[same]
        group_start = np.maximum.accumulate(np.where(np.concatenate([[True], ~same]), np.arange(n), 0))
        found.append(order[group_start[position]] * n + order[position])
        found.append(order[position - 1] * n + order[position])
    codes = np.unique(np.concatenate(found))
    pairs = np.stack([codes // n, codes % n], axis=1)
    return pairs[pairs[:, 0] != pairs[:, 1]]


def ngrams(text: str, ngram: int) -> set[str]:
    """A text's set of character n-grams (the text itself when it is shorter)."""
    return {text[i : i + ngram] for i in range(max(len(text) - ngram + 1, 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    common = len(a & b)  # |a ∪ b| from the sizes: one set operation instead of two
    return common / (len(a) + len(b) - common)


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


def _union(parent: list[int], i: int, j: int) -> None:
    """Join two clusters under the smaller index, so every root is its cluster's first document."""
    ri, rj = _find(parent, i), _find(parent, j)
    if ri != rj:
        parent[max(ri, rj)] = min(ri, rj)

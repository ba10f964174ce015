"""How sure is a base-vs-adapted difference: paired bootstrap confidence intervals and McNemar's exact test.

Both models answer the same questions (and score the same blocks), so the differences are *paired*: the unit that is
resampled is a question (or a block), and the statistic is recomputed on each resample from both models' results on
it. What the two models share (an easy question, a hard block) then cancels out of the interval, which is why a
paired interval is much narrower than two separate ones.

1. `mean_difference_ci`: the mean of per-item differences (accuracy: adapted correct − base correct, each 0 or 1;
   generation metrics: per-answer score differences). Several groups (benchmarks) are resampled each within itself
   (a stratified bootstrap: each benchmark keeps its size in every resample), for the pooled mean over all items
   (micro) or the mean of the group means (macro).
2. `ratio_difference_ci`: Δ of token-weighted means, Σ loss_adapted / Σ tokens − Σ loss_base / Σ tokens, with blocks
   resampled as units (the tokens of a block are not independent, a block is closer to it).
3. `mcnemar_exact`: the exact two-sided p-value of McNemar's test, from the discordant pairs only.

scipy does the work: `scipy.stats.bootstrap` (percentile intervals, seeded with a numpy Generator, resamples drawn in
batches so memory stays bounded) and `scipy.stats.binomtest`. Its unpaired multi-sample mode resamples each sample
independently, which is exactly the stratified bootstrap of step 1 once each sample holds per-item differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
_BATCH_ELEMENTS = 4_000_000  # resampled values held at once (float64: 32 MB), whatever the number of resamples


@dataclass(frozen=True)
class Interval:
    """A confidence interval; nan ends when it is undefined (fewer than two items)."""

    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_list(self) -> list[float | None]:
        return [None if math.isnan(x) else x for x in (self.low, self.high)]


def mean_difference_ci(groups: Sequence[np.ndarray], resamples: int, seed: int, macro: bool = False) -> Interval:
    """Percentile CI of the mean difference over groups of per-item differences (see the module docstring)."""
    from scipy.stats import bootstrap

    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups or any(len(g) < 2 for g in groups):
        return Interval(math.nan, math.nan)

    def micro(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        return sum(s.sum(axis=axis) for s in samples) / sum(s.shape[axis] for s in samples)

    def macro_mean(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        return sum(s.mean(axis=axis) for s in samples) / len(samples)

    result = bootstrap(
        tuple(groups),
        macro_mean if macro else micro,
        n_resamples=resamples,
        batch=_batch(sum(len(g) for g in groups), resamples),
        vectorized=True,
        method="percentile",
        confidence_level=CONFIDENCE,
        rng=np.random.default_rng(seed),
    )
    return Interval(float(result.confidence_interval.low), float(result.confidence_interval.high))


def ratio_difference_ci(
    base_sums: np.ndarray, adapted_sums: np.ndarray, counts: np.ndarray, resamples: int, seed: int
) -> Interval:
    """Percentile CI of Σ adapted / Σ counts − Σ base / Σ counts, resampling the rows (blocks) as pairs."""
    from scipy.stats import bootstrap

    base, adapted, n = (np.asarray(x, dtype=np.float64) for x in (base_sums, adapted_sums, counts))
    if len(n) < 2:
        return Interval(math.nan, math.nan)

    def delta(b: np.ndarray, a: np.ndarray, c: np.ndarray, axis: int = -1) -> np.ndarray:
        return (a.sum(axis=axis) - b.sum(axis=axis)) / c.sum(axis=axis)

    result = bootstrap(
        (base, adapted, n),
        delta,
        n_resamples=resamples,
        batch=_batch(3 * len(n), resamples),
        vectorized=True,
        paired=True,
        method="percentile",
        confidence_level=CONFIDENCE,
        rng=np.random.default_rng(seed),
    )
    return Interval(float(result.confidence_interval.low), float(result.confidence_interval.high))


def _batch(items: int, resamples: int) -> int:
    return max(1, min(resamples, _BATCH_ELEMENTS // max(items, 1)))


def mcnemar_exact(base_correct: Sequence[bool], adapted_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value: under 'no difference' each discordant question (one model right, the other
    wrong) is a fair coin, so the count of adapted-only wins is Binomial(discordant, 1/2)."""
    from scipy.stats import binomtest

    base, adapted = np.asarray(base_correct, dtype=bool), np.asarray(adapted_correct, dtype=bool)
    adapted_only = int((adapted & ~base).sum())
    discordant = adapted_only + int((base & ~adapted).sum())
    if discordant == 0:
        return 1.0
    return float(binomtest(adapted_only, discordant, 0.5).pvalue)

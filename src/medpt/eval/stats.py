"""How sure is an accuracy, and a base-vs-adapted difference: Wilson intervals, paired bootstrap confidence
intervals and McNemar's exact test.

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
4. `accuracy_ci` / `macro_accuracy_ci`: the 95% interval of one model's accuracy (Wilson score interval), and of a
   mean of accuracies (the macro average over benchmarks: Wilson with Kish's effective sample size).

scipy does the work: `scipy.stats.bootstrap` (percentile intervals, seeded with a numpy Generator, resamples drawn in
batches so memory stays bounded) and `scipy.stats.binomtest`. Its unpaired multi-sample mode resamples each sample
independently, which is exactly the stratified bootstrap of step 1 once each sample holds per-item differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

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


# --- 4. the interval of one model's accuracy -------------------------------------------------------------------------
# Wilson's score interval, not the normal (Wald) interval p ± 1.96·√(p(1−p)/n) that lm-evaluation-harness prints as
# ±stderr: Wald collapses to a point at 0% and 100% ("0% ± 0" for a model that missed 20 of 20) and covers less than
# 95% at small n; Wilson stays inside [0, 1], is one-sided at the ends, and at a few hundred questions and p away from
# the ends lies within a fraction of a point of Wald, so medpt's and lm-eval's intervals read alike. Not the bootstrap
# behind the Δ intervals either: at 0% or 100% every resample is the same and its interval is a point.
def accuracy_ci(right: Sequence[bool] | np.ndarray) -> Interval:
    """95% Wilson interval of the share of right answers (1 = right, 0 = wrong, one per question)."""
    right = np.asarray(right, dtype=np.float64)
    return wilson_interval(float(right.sum()), float(len(right)))


def macro_accuracy_ci(groups: Sequence[np.ndarray]) -> Interval:
    """95% interval of the mean of the groups' accuracies (macro: every benchmark counts once).

    The mean of K accuracies has variance Σ p_k(1−p_k)/n_k / K²; with a common p in the score test this is
    p(1−p)/n_eff, n_eff = K² / Σ 1/n_k (Kish's effective sample size), and the Wilson interval of the macro mean with
    n_eff questions follows. It equals the pooled Wilson interval when the benchmarks have the same size, keeps
    Wilson's behaviour at 0% and 100%, and is wider than needed (never narrower, by concavity of p(1−p)) when the
    benchmarks' accuracies differ."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return Interval(math.nan, math.nan)
    mean = float(np.mean([g.mean() for g in groups]))
    n_eff = len(groups) ** 2 / sum(1 / len(g) for g in groups)
    return wilson_interval(mean * n_eff, n_eff)


def wilson_interval(successes: float, n: float) -> Interval:
    """Wilson's score interval at CONFIDENCE. Written out rather than scipy's `binomtest(...).proportion_ci`
    (which it equals, tested) because the macro mean's effective count is fractional, and binomtest takes integers."""
    if n <= 0:
        return Interval(math.nan, math.nan)
    z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
    p, z2 = successes / n, z * z / n
    centre = (p + z2 / 2) / (1 + z2)
    half = z / (1 + z2) * math.sqrt(p * (1 - p) / n + z2 / (4 * n))
    # at p = 0 (1) the low (high) end is exactly 0 (1): written so, not left to the rounding of centre − half
    return Interval(0.0 if p <= 0 else max(0.0, centre - half), 1.0 if p >= 1 else min(1.0, centre + half))

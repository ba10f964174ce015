"""Wilson intervals of accuracies, paired bootstrap intervals and McNemar's test against cases computed by hand."""

import math

import numpy as np
import pytest

from medpt.eval.stats import accuracy_ci, macro_accuracy_ci, mcnemar_exact, mean_difference_ci, ratio_difference_ci

R = 4000  # resamples: enough that a tail holding ≥ 3.7% of the mass is always hit


@pytest.mark.parametrize(
    "diffs, expected",
    [
        # resample means of [0, 1] are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: both 2.5% tails sit on the ends
        ([0, 1], (0.0, 1.0)),
        # [1, 0, 0]: means k/3, k ~ Binomial(3, 1/3); P(0) = 8/27 > 2.5%, P(1) = 1/27 = 3.7% > 2.5%
        ([1, 0, 0], (0.0, 1.0)),
        ([1] * 50, (1.0, 1.0)),  # the adapter gets every question the base missed: the interval is that point
        ([0] * 50, (0.0, 0.0)),  # identical models: every difference is zero
        ([5], (math.nan, math.nan)),  # one item: no interval
    ],
)
def test_mean_difference_ci_hand_cases(diffs, expected):
    ci = mean_difference_ci([np.array(diffs)], R, seed=0)
    assert (ci.low, ci.high) == pytest.approx(expected, nan_ok=True)


def test_all_right_vs_chance_is_above_zero_and_identical_contains_zero():
    rng = np.random.default_rng(1)
    base = rng.random(300) < 0.25
    assert mean_difference_ci([np.ones(300) - base], R, seed=0).low > 0
    same = mean_difference_ci([base.astype(float) - base], R, seed=0)
    assert same.low <= 0 <= same.high and not same.excludes_zero()


def test_interval_matches_the_normal_approximation_on_a_large_sample():
    rng = np.random.default_rng(2)
    diffs = rng.choice([-1.0, 0.0, 1.0], size=2000, p=[0.2, 0.5, 0.3])
    ci = mean_difference_ci([diffs], 5000, seed=3)
    half = 1.959964 * diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert ci.low == pytest.approx(diffs.mean() - half, abs=0.004)
    assert ci.high == pytest.approx(diffs.mean() + half, abs=0.004)


def test_groups_are_resampled_each_within_itself():
    # Each group constant: a stratified resample keeps 10 zeros and 30 ones, so micro and macro are points.
    # (Pooling the 40 items would let the share of ones vary.)
    groups = [np.zeros(10), np.ones(30)]
    micro = mean_difference_ci(groups, R, seed=0)
    macro = mean_difference_ci(groups, R, seed=0, macro=True)
    assert (micro.low, micro.high) == pytest.approx((0.75, 0.75))
    assert (macro.low, macro.high) == pytest.approx((0.5, 0.5))


def test_seeded():
    diffs = [np.random.default_rng(4).choice([-1.0, 0.0, 1.0], size=200)]
    assert mean_difference_ci(diffs, 1000, seed=7) == mean_difference_ci(diffs, 1000, seed=7)


def test_ratio_difference_resamples_blocks_as_pairs():
    # Two blocks of one token; Δ per block 1 and 3: resamples give 1, 2, 3 with probabilities 1/4, 1/2, 1/4.
    ci = ratio_difference_ci(np.zeros(2), np.array([1.0, 3.0]), np.ones(2), R, seed=0)
    assert (ci.low, ci.high) == pytest.approx((1.0, 3.0))
    # Token weighting: a 3-token block with Δ sum 3 and a 1-token block with Δ 1 give Δ 1 per token in every resample.
    ci = ratio_difference_ci(np.array([6.0, 2.0]), np.array([9.0, 3.0]), np.array([3.0, 1.0]), R, seed=0)
    assert (ci.low, ci.high) == pytest.approx((1.0, 1.0))


@pytest.mark.parametrize(
    "base, adapted, expected",
    [
        # 1 question only base gets right, 5 only adapted: 2 · P(X ≤ 1), X ~ Bin(6, 1/2) = 2 · 7/64
        ("TTFFFFFF", "FTTTTTTF", 14 / 64),
        ("FFFFFFFFFF", "TTTTTTTTTT", 2 / 1024),  # 10 adapted-only wins: 2 · (1/2)^10
        ("TFTF", "TFTF", 1.0),  # no discordant question
        ("TF", "FT", 1.0),  # one each way: 2 · P(X ≤ 1 | Bin(2, 1/2)) = 1.5, capped at 1
    ],
)
def test_mcnemar_exact_hand_cases(base, adapted, expected):
    assert mcnemar_exact([c == "T" for c in base], [c == "T" for c in adapted]) == pytest.approx(expected)


# --- the interval of one accuracy -------------------------------------------------------------------------------
@pytest.mark.parametrize("right, n", [(0, 1), (1, 1), (0, 200), (200, 200), (50, 200), (1, 3), (7, 11), (999, 1000)])
def test_the_wilson_interval_is_scipys(right, n):
    from scipy.stats import binomtest

    expected = binomtest(right, n).proportion_ci(0.95, method="wilson")
    ci = accuracy_ci([1] * right + [0] * (n - right))
    assert (ci.low, ci.high) == pytest.approx((expected.low, expected.high), abs=1e-12)


@pytest.mark.parametrize("n", [1, 5, 40, 200, 2000])
def test_an_all_right_and_an_all_wrong_model_get_one_sided_intervals(n):
    right, wrong = accuracy_ci(np.ones(n)), accuracy_ci(np.zeros(n))
    assert right.high == 1.0 and 0 < right.low < 1
    assert wrong.low == 0.0 and 0 < wrong.high < 1
    assert right.low == pytest.approx(1 - wrong.high)  # the two are mirror images


def test_at_25_percent_of_200_the_interval_is_within_a_point_of_lm_evals_stderr_interval():
    p, n = 0.25, 200
    ci = accuracy_ci(np.r_[np.ones(50), np.zeros(150)])
    half = 1.96 * math.sqrt(p * (1 - p) / n)  # lm-eval prints acc ± stderr, stderr = √(p(1−p)/n)
    assert ci.low == pytest.approx(p - half, abs=0.01) and ci.high == pytest.approx(p + half, abs=0.01)
    assert ci.high - ci.low == pytest.approx(2 * half, abs=0.01)


def test_macro_accuracy_interval():
    a, b = np.r_[np.ones(30), np.zeros(70)], np.r_[np.ones(20), np.zeros(80)]
    # benchmarks of one size: the pooled Wilson interval
    assert macro_accuracy_ci([a, b]) == accuracy_ci(np.r_[a, b])
    # all right / all wrong on benchmarks of different sizes: one-sided, like a single accuracy
    right, wrong = macro_accuracy_ci([np.ones(10), np.ones(300)]), macro_accuracy_ci([np.zeros(10), np.zeros(300)])
    assert right.high == 1.0 and 0 < right.low < 1 and wrong.low == 0.0 and 0 < wrong.high < 1
    # the small benchmark counts as much as the big one: the interval is wider than the pooled one
    small, big = np.r_[np.ones(3), np.zeros(7)], np.r_[np.ones(90), np.zeros(210)]
    macro, pooled = macro_accuracy_ci([small, big]), accuracy_ci(np.r_[small, big])
    assert macro.high - macro.low > pooled.high - pooled.low
    # away from the ends it agrees with the stratified bootstrap of the mean of benchmark accuracies
    rng = np.random.default_rng(5)
    groups = [rng.random(k) < 0.4 for k in (150, 250, 400)]
    boot = mean_difference_ci([g.astype(float) for g in groups], R, seed=0, macro=True)
    ci = macro_accuracy_ci(groups)
    assert ci.low == pytest.approx(boot.low, abs=0.01) and ci.high == pytest.approx(boot.high, abs=0.01)
    assert macro_accuracy_ci([]).to_list() == [None, None]

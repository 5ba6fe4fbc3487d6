"""The statistics of A/B tests, as pure functions over numbers (no Django, no IO). Distributions are SciPy's.

- A rate (completion) has a Wilson score interval (``scipy.stats.binomtest(...).proportion_ci("wilson")``).
- A mean (cost, latency, score) has a Student t interval: mean ± t(1 - alpha/2, n - 1) · s / √n.
- A median (latency p50) has a distribution-free interval from order statistics (``scipy.stats.quantile_test``);
  too few values for the confidence asked give no interval (None).
- A variant is compared with the control by a two-proportion z-test (pooled; the same as Pearson's chi-squared
  test of the 2×2 table without continuity correction) on rates, and by Welch's t-test (unequal variances,
  ``scipy.stats.ttest_ind(equal_var=False)``) on means. Both are two-sided.

A difference is called significant when p < alpha *and* both groups meet the minimum sample (the normal
approximations behind both tests are poor on small or one-sided samples); ``caveats`` say what is missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
MIN_SAMPLE = 30  # per group, for the t-test's normal approximation on skewed data (cost, latency)
MIN_EXPECTED = 5  # successes and failures per group, for the z-test's normal approximation


@dataclass(frozen=True)
class RateEstimate:
    successes: int
    trials: int
    rate: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class MeanEstimate:
    n: int
    mean: float | None
    std: float | None  # the sample standard deviation (n - 1)
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class MedianEstimate:
    n: int
    median: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Comparison:
    """A variant against the control: ``difference`` is variant minus control."""

    test: str  # "two_proportion_z" or "welch_t"
    difference: float | None
    statistic: float | None
    p_value: float | None
    significant: bool
    caveats: tuple[str, ...] = field(default_factory=tuple)


def rate_estimate(successes: int, trials: int, *, confidence: float = CONFIDENCE) -> RateEstimate:
    """The rate with its Wilson score interval (none without trials)."""
    if trials <= 0:
        return RateEstimate(successes=successes, trials=trials, rate=None, ci_low=None, ci_high=None)
    interval = stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return RateEstimate(successes=successes, trials=trials, rate=successes / trials, ci_low=float(interval.low),
                        ci_high=float(interval.high))


def mean_estimate(values: Sequence[float], *, confidence: float = CONFIDENCE) -> MeanEstimate:
    """The mean with its Student t interval (none under two values; a point when every value is the same)."""
    n = len(values)
    if n == 0:
        return MeanEstimate(n=0, mean=None, std=None, ci_low=None, ci_high=None)
    mean = float(np.mean(values))
    if n < 2:
        return MeanEstimate(n=n, mean=mean, std=None, ci_low=None, ci_high=None)
    std = float(np.std(values, ddof=1))
    if std == 0:
        return MeanEstimate(n=n, mean=mean, std=0.0, ci_low=mean, ci_high=mean)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return MeanEstimate(n=n, mean=mean, std=std, ci_low=float(low), ci_high=float(high))


def median_estimate(values: Sequence[float], *, confidence: float = CONFIDENCE) -> MedianEstimate:
    """The median with a distribution-free interval from order statistics (none when too few values)."""
    n = len(values)
    if n == 0:
        return MedianEstimate(n=0, median=None, ci_low=None, ci_high=None)
    median = float(np.median(values))
    interval = stats.quantile_test(np.asarray(values, dtype=float), q=median, p=0.5).confidence_interval(confidence)
    low, high = float(interval.low), float(interval.high)
    if math.isnan(low) or math.isnan(high) or math.isinf(low) or math.isinf(high):
        return MedianEstimate(n=n, median=median, ci_low=None, ci_high=None)
    return MedianEstimate(n=n, median=median, ci_low=low, ci_high=high)


def two_proportion_z_test(control: RateEstimate, variant: RateEstimate, *, alpha: float = ALPHA,
                          min_sample: int = MIN_SAMPLE, min_expected: int = MIN_EXPECTED) -> Comparison:
    """Two-sided pooled z-test of the variant's rate against the control's."""
    caveats = _sample_caveats(control.trials, variant.trials, min_sample)
    if control.trials == 0 or variant.trials == 0:
        return Comparison(test="two_proportion_z", difference=None, statistic=None, p_value=None, significant=False,
                          caveats=("no finished runs in one of the groups",))
    p1, p2 = control.successes / control.trials, variant.successes / variant.trials
    pooled = (control.successes + variant.successes) / (control.trials + variant.trials)
    for name, group in (("control", control), ("variant", variant)):
        expected = min(group.trials * pooled, group.trials * (1 - pooled))
        if expected < min_expected:
            caveats.append(f"{name}: fewer than {min_expected} expected successes or failures; the normal "
                           "approximation is poor")
    standard_error = math.sqrt(pooled * (1 - pooled) * (1 / control.trials + 1 / variant.trials))
    if standard_error == 0:  # every run of both groups completed, or none did: no difference to test
        return Comparison(test="two_proportion_z", difference=p2 - p1, statistic=0.0, p_value=1.0,
                          significant=False, caveats=tuple(caveats))
    z = (p2 - p1) / standard_error
    p_value = float(2 * stats.norm.sf(abs(z)))
    return Comparison(test="two_proportion_z", difference=p2 - p1, statistic=z, p_value=p_value,
                      significant=p_value < alpha and not caveats, caveats=tuple(caveats))


def welch_t_test(control: Sequence[float], variant: Sequence[float], *, alpha: float = ALPHA,
                 min_sample: int = MIN_SAMPLE) -> Comparison:
    """Two-sided Welch t-test of the variant's mean against the control's."""
    caveats = _sample_caveats(len(control), len(variant), min_sample)
    if len(control) < 2 or len(variant) < 2:
        difference = float(np.mean(variant) - np.mean(control)) if len(control) and len(variant) else None
        return Comparison(test="welch_t", difference=difference, statistic=None, p_value=None, significant=False,
                          caveats=("fewer than 2 values in one of the groups",))
    difference = float(np.mean(variant) - np.mean(control))
    if np.var(control) == 0 and np.var(variant) == 0:
        caveats.append("no variance in either group")
        return Comparison(test="welch_t", difference=difference, statistic=None,
                          p_value=1.0 if difference == 0 else None, significant=False, caveats=tuple(caveats))
    result = stats.ttest_ind(variant, control, equal_var=False)
    p_value = float(result.pvalue)
    return Comparison(test="welch_t", difference=difference, statistic=float(result.statistic), p_value=p_value,
                      significant=p_value < alpha and not caveats, caveats=tuple(caveats))


def _sample_caveats(control_n: int, variant_n: int, min_sample: int) -> list[str]:
    return [f"{name}: {n} values, under the minimum of {min_sample}"
            for name, n in (("control", control_n), ("variant", variant_n)) if n < min_sample]

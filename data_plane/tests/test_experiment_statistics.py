"""A/B statistics against reference values (R and published examples): pure, table-driven."""

from __future__ import annotations

import pytest

from data_plane.experiment_statistics import mean_estimate, median_estimate, rate_estimate, two_proportion_z_test, \
    welch_t_test

# Welch's t-test, example 1 of the Wikipedia article "Welch's t-test": t = -2.46, df = 24.9, p = 0.021
WIKI_A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
WIKI_A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]


@pytest.mark.parametrize(("successes", "trials", "rate", "low", "high"), [
    # R: prop.test(x, n, correct = FALSE)$conf.int (the Wilson score interval)
    (7, 10, 0.7, 0.3967781, 0.8922087),
    (0, 10, 0.0, 0.0, 0.2775328),
    (10, 10, 1.0, 0.7224672, 1.0),
    # the closed form, (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n) with z = 1.959964
    (81, 263, 81 / 263, 0.2552885, 0.3662096),
])
def test_wilson_interval_matches_r(successes, trials, rate, low, high):
    estimate = rate_estimate(successes, trials)
    assert (estimate.successes, estimate.trials) == (successes, trials)
    assert estimate.rate == pytest.approx(rate, abs=1e-12)
    assert (estimate.ci_low, estimate.ci_high) == (pytest.approx(low, abs=5e-7), pytest.approx(high, abs=5e-7))


def test_a_rate_without_trials_has_no_value():
    estimate = rate_estimate(0, 0)
    assert (estimate.rate, estimate.ci_low, estimate.ci_high) == (None, None, None)


@pytest.mark.parametrize(("values", "mean", "std", "low", "high"), [
    # R: t.test(1:5)$conf.int
    ([1, 2, 3, 4, 5], 3.0, 1.5811388, 1.0367568, 4.9632432),
    # mean ± t(0.975, 5) · s/√6 with the table value t(0.975, 5) = 2.570582
    ([0.012, 0.015, 0.011, 0.020, 0.014, 0.013], 0.0141667, 0.0031885, 0.0108205, 0.0175128),
    ([0.5, 0.5, 0.5], 0.5, 0.0, 0.5, 0.5),  # no spread: the interval is the point
])
def test_t_interval_of_a_mean_matches_r(values, mean, std, low, high):
    estimate = mean_estimate(values)
    assert estimate.n == len(values)
    assert (estimate.mean, estimate.std) == (pytest.approx(mean, abs=5e-7), pytest.approx(std, abs=5e-7))
    assert (estimate.ci_low, estimate.ci_high) == (pytest.approx(low, abs=5e-7), pytest.approx(high, abs=5e-7))


@pytest.mark.parametrize(("values", "expected"), [
    ([], (0, None, None, None)),
    ([4.0], (1, 4.0, None, None)),
])
def test_means_of_too_few_values_have_no_interval(values, expected):
    estimate = mean_estimate(values)
    assert (estimate.n, estimate.mean, estimate.ci_low, estimate.ci_high) == expected


@pytest.mark.parametrize(("values", "median", "low", "high"), [
    # order statistics: for n = 10 the 95% interval of the median is (x(2), x(9)) (coverage 97.9%)
    (list(range(1, 11)), 5.5, 2.0, 9.0),
    # n = 20: (x(6), x(15)), coverage 95.9%
    ([v * 0.5 for v in range(20, 0, -1)], 5.25, 3.0, 7.5),
    # n = 5: even (x(1), x(5)) covers only 93.75%: no interval
    ([1, 2, 3, 4, 5], 3.0, None, None),
])
def test_median_interval_from_order_statistics(values, median, low, high):
    estimate = median_estimate(values)
    assert (estimate.n, estimate.median, estimate.ci_low, estimate.ci_high) == (len(values), median, low, high)


def test_welch_t_test_matches_the_published_example():
    # when the variant (A1) is compared with the control (A2)
    comparison = welch_t_test(WIKI_A2, WIKI_A1)
    # then
    assert comparison.test == "welch_t"
    assert comparison.difference == pytest.approx(20.82 - 22.98667, abs=1e-4)
    assert comparison.statistic == pytest.approx(-2.46, abs=0.005)
    assert comparison.p_value == pytest.approx(0.021378, abs=1e-6)  # R: t.test(A1, A2)$p.value
    # p < 0.05, but 15 values per group are under the minimum sample: not called significant
    assert comparison.significant is False
    assert comparison.caveats == ("control: 15 values, under the minimum of 30",
                                  "variant: 15 values, under the minimum of 30")
    assert welch_t_test(WIKI_A2, WIKI_A1, min_sample=15).significant is True


@pytest.mark.parametrize(("control", "variant", "z", "p_value", "significant"), [
    # R: prop.test(c(90, 120), c(200, 200), correct = FALSE): X-squared = 9.0226 (= z^2), p = 0.002667
    ((90, 200), (120, 200), 3.0037570, 0.0026667, True),
    # by hand: pooled 0.475, se = sqrt(0.475 · 0.525 · (1/100 + 1/100)) = 0.0706223, z = 0.05 / se
    ((45, 100), (50, 100), 0.7079923, 0.4789500, False),
])
def test_two_proportion_z_test_matches_r(control, variant, z, p_value, significant):
    comparison = two_proportion_z_test(rate_estimate(*control), rate_estimate(*variant))
    assert comparison.test == "two_proportion_z"
    assert comparison.difference == pytest.approx(variant[0] / variant[1] - control[0] / control[1], abs=1e-12)
    assert comparison.statistic == pytest.approx(z, abs=5e-7)
    assert comparison.p_value == pytest.approx(p_value, abs=5e-7)
    assert comparison.significant is significant
    assert comparison.caveats == ()


def test_z_test_caveats_on_small_and_one_sided_samples():
    # every control run completed and all but one of the variant's: few expected failures, few runs
    comparison = two_proportion_z_test(rate_estimate(10, 10), rate_estimate(9, 10))
    assert comparison.significant is False
    assert comparison.caveats == (
        "control: 10 values, under the minimum of 30", "variant: 10 values, under the minimum of 30",
        "control: fewer than 5 expected successes or failures; the normal approximation is poor",
        "variant: fewer than 5 expected successes or failures; the normal approximation is poor")
    # identical all-completed groups: nothing to test
    same = two_proportion_z_test(rate_estimate(40, 40), rate_estimate(40, 40))
    assert (same.statistic, same.p_value, same.significant) == (0.0, 1.0, False)


def test_tests_without_data_say_so():
    assert two_proportion_z_test(rate_estimate(0, 0), rate_estimate(3, 4)).caveats == (
        "no finished runs in one of the groups",)
    empty = welch_t_test([], [1.0, 2.0])
    assert (empty.difference, empty.p_value, empty.significant, empty.caveats) == (
        None, None, False, ("fewer than 2 values in one of the groups",))
    flat = welch_t_test([1.0] * 30, [1.0] * 30)
    assert (flat.difference, flat.p_value, flat.caveats) == (0.0, 1.0, ("no variance in either group",))

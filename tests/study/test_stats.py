"""Intervals on fixed inputs: hand-computed values and scipy's own t-tests as the peer."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from elmforge.study.stats import (
    paired_difference,
    ratio_summary,
    summarize,
    t_quantile,
    welch_difference,
)

A = [3.912, 3.874, 3.951]
B = [3.990, 4.021, 3.958, 4.005]


def test_t_quantile_matches_the_tables():
    # Student's t, two-sided 95%: 12.706 (1 df), 4.303 (2 df), 2.776 (4 df), 1.960 (infinite).
    assert t_quantile(1) == pytest.approx(12.7062047, abs=1e-6)
    assert t_quantile(2) == pytest.approx(4.3026527, abs=1e-6)
    assert t_quantile(4) == pytest.approx(2.7764451, abs=1e-6)
    assert t_quantile(math.inf) == pytest.approx(1.9599640, abs=1e-6)


def test_mean_interval_by_hand():
    summary = summarize([1.0, 2.0, 3.0])
    assert summary.mean == 2.0
    assert summary.std == pytest.approx(1.0)
    assert summary.sem == pytest.approx(1 / math.sqrt(3))
    half = 4.302652729911275 / math.sqrt(3)
    assert summary.ci95 == pytest.approx((2 - half, 2 + half))


def test_mean_interval_matches_scipy():
    summary = summarize(A)
    low, high = scipy_stats.t.interval(
        0.95, len(A) - 1, loc=sum(A) / len(A), scale=scipy_stats.sem(A)
    )
    assert summary.ci95 == pytest.approx((low, high), rel=1e-12)


def test_one_value_has_no_interval():
    summary = summarize([4.2])
    assert (summary.n, summary.mean, summary.std, summary.ci95) == (1, 4.2, None, None)
    assert welch_difference([4.2], [4.3]).ci95 is None
    assert welch_difference([4.2], [4.3]).difference == pytest.approx(-0.1)
    assert paired_difference([4.2], [4.3]).ci95 is None


def test_welch_matches_scipy():
    ours = welch_difference(A, B)
    theirs = scipy_stats.ttest_ind(A, B, equal_var=False)
    interval = theirs.confidence_interval(0.95)
    assert ours.difference == pytest.approx(sum(A) / 3 - sum(B) / 4)
    assert ours.t == pytest.approx(theirs.statistic, rel=1e-10)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-8)
    assert ours.df == pytest.approx(theirs.df, rel=1e-10)
    assert ours.ci95 == pytest.approx((interval.low, interval.high), rel=1e-10)


def test_paired_matches_scipy():
    ours = paired_difference(A, B[:3])
    theirs = scipy_stats.ttest_rel(A, B[:3])
    interval = theirs.confidence_interval(0.95)
    assert ours.t == pytest.approx(theirs.statistic, rel=1e-10)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-8)
    assert ours.ci95 == pytest.approx((interval.low, interval.high), rel=1e-10)
    with pytest.raises(ValueError):
        paired_difference(A, B)


def test_ratio_with_equal_weights_is_the_plain_mean():
    plain, ratio = summarize(A), ratio_summary(A, [1.0] * len(A))
    assert ratio.mean == pytest.approx(plain.mean)
    assert ratio.ci95 == pytest.approx(plain.ci95)


def test_ratio_interval_by_hand():
    # Documents of 10, 20 and 30 tokens with summed losses 40, 100 and 90: loss 230/60.
    nll, tokens = [40.0, 100.0, 90.0], [10.0, 20.0, 30.0]
    summary = ratio_summary(nll, tokens)
    r = 230 / 60
    residual = sum((y - r * x) ** 2 for y, x in zip(nll, tokens))
    sem = math.sqrt(3 / 2 * residual) / 60
    assert summary.mean == pytest.approx(r)
    assert summary.sem == pytest.approx(sem)
    assert summary.ci95 == pytest.approx((r - t_quantile(2) * sem, r + t_quantile(2) * sem))

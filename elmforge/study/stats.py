"""Means with t-based 95% intervals, and the difference of two means (Welch, and paired).

Seeds are few (3 by default), so intervals use Student's t quantiles, not the normal's 1.96:
with 3 seeds the half-width is 4.30 standard errors. The quantile comes from scipy, the field's
reference implementation; everything else is the textbook formula, written out so the report
can show each ingredient (standard error, degrees of freedom).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

CONFIDENCE = 0.95


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """The two-sided ``confidence`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def t_two_sided_p(statistic: float, df: float) -> float:
    from scipy.stats import t

    return float(2 * t.sf(abs(statistic), df))


@dataclass(frozen=True)
class Summary:
    """Mean of ``n`` values with its sample standard deviation and 95% t interval."""

    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for one value
    sem: float | None  # standard error of the mean
    ci95: tuple[float, float] | None  # None when n < 2: one value has no spread to measure

    @property
    def half_width(self) -> float | None:
        return None if self.ci95 is None else (self.ci95[1] - self.ci95[0]) / 2

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return out


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, sample standard deviation and the t-based interval of ``values``."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize: no values")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Summary(n=n, mean=mean, std=None, sem=None, ci95=None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    sem = std / math.sqrt(n)
    half = t_quantile(n - 1, confidence) * sem
    return Summary(n=n, mean=mean, std=std, sem=sem, ci95=(mean - half, mean + half))


@dataclass(frozen=True)
class Difference:
    """``mean(a) - mean(b)`` with its standard error, degrees of freedom, interval and t test."""

    method: str  # "welch" or "paired"
    difference: float
    se: float | None
    df: float | None
    ci95: tuple[float, float] | None
    t: float | None
    p_value: float | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return out


def _difference(
    method: str, difference: float, se: float | None, df: float | None, confidence: float
) -> Difference:
    if se is None or df is None or not df > 0:
        return Difference(method, difference, se, df, None, None, None)
    if se == 0:  # identical values in every run: the difference is exact
        return Difference(method, difference, 0.0, df, (difference, difference), None, None)
    half = t_quantile(df, confidence) * se
    t = difference / se
    return Difference(
        method, difference, se, df, (difference - half, difference + half), t, t_two_sided_p(t, df)
    )


def welch_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> Difference:
    """``mean(a) - mean(b)``, Welch's unequal-variance interval (Welch-Satterthwaite df)."""
    sa, sb = summarize(a), summarize(b)
    difference = sa.mean - sb.mean
    if sa.std is None or sb.std is None:
        return _difference("welch", difference, None, None, confidence)
    va, vb = sa.std**2 / sa.n, sb.std**2 / sb.n
    se = math.sqrt(va + vb)
    denominator = va**2 / (sa.n - 1) + vb**2 / (sb.n - 1)
    df = (va + vb) ** 2 / denominator if denominator > 0 else float(sa.n + sb.n - 2)
    return _difference("welch", difference, se, df, confidence)


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> Difference:
    """Mean of ``a[i] - b[i]`` with a one-sample t interval (pairs share a seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}")
    summary = summarize([x - y for x, y in zip(a, b)])
    return _difference("paired", summary.mean, summary.sem, summary.n - 1 or None, confidence)


def ratio_summary(
    numerators: Sequence[float], denominators: Sequence[float], confidence: float = CONFIDENCE
) -> Summary:
    """``sum(numerators) / sum(denominators)`` with a t interval over the ``m`` pairs.

    The per-token loss of a document set is such a ratio (summed negative log-likelihood over
    predicted tokens); documents differ in length, so the standard error is the ratio
    estimator's (linearised, "cluster-robust"): sqrt(m/(m-1) * sum((y_i - r x_i)^2)) / sum(x_i),
    with m - 1 degrees of freedom. With ``numerators`` the per-document differences of two
    models' summed losses it gives the paired difference on the same documents.
    """
    if len(numerators) != len(denominators):
        raise ValueError(
            f"ratio_summary: {len(numerators)} numerators, {len(denominators)} denominators"
        )
    total = math.fsum(denominators)
    if not numerators or total <= 0:
        raise ValueError("ratio_summary: nothing to average")
    m = len(numerators)
    ratio = math.fsum(numerators) / total
    if m < 2:
        return Summary(n=m, mean=ratio, std=None, sem=None, ci95=None)
    residual = math.fsum((y - ratio * x) ** 2 for y, x in zip(numerators, denominators))
    sem = math.sqrt(m / (m - 1) * residual) / total
    half = t_quantile(m - 1, confidence) * sem
    std = sem * math.sqrt(m)
    return Summary(n=m, mean=ratio, std=std, sem=sem, ci95=(ratio - half, ratio + half))

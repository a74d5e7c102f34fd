"""Summaries of raw samples: median, spread, and the two kinds of ratio.

Why both ratios: the ratio of medians is what a reader expects, while the median of
per-rep paired ratios (rep r of A over rep r of B, measured back to back) cancels
most of this machine's slow drift; when they disagree much, the run was noisy.
"""
from __future__ import annotations

import statistics
from typing import Optional, Sequence


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return statistics.median(values)


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """First and third quartile (inclusive method; equals min/max for fewer than 2 values)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def ratio_of_medians(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """median(numerator) / median(denominator)."""
    return median(numerator) / median(denominator)


def median_paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over reps of numerator[r] / denominator[r] (same-round samples)."""
    if len(numerator) != len(denominator):
        raise ValueError("paired ratios need the same number of reps")
    return median([a / b for a, b in zip(numerator, denominator)])


def peak_summary(peaks: Sequence[Optional[int]]) -> Optional[tuple[float, float]]:
    """(median, max) of peak bytes, or None when memory was not measured."""
    known = [peak for peak in peaks if peak is not None]
    if not known:
        return None
    return float(median(known)), float(max(known))

"""95% bootstrap intervals of every score over the assessment images, from the cached teacher outputs.

The bootstrap draws the N assessment images with replacement B times: ``counts`` (B, N) says how
often each image is drawn (a multinomial row summing to N). For a score that is a mean of per-image
values v (``scd``, ``scd_cost``, ``leep``) resample b is ``counts_b . v / N``, one (B, N) x (N,)
product; NCE re-counts its hard joint for all resamples at once. The interval is the percentile
interval [q_2.5%, q_97.5%] of the resampled scores.

The feature metrics (LogME, H-score) fit a model to the features, so a bootstrap resample with
duplicated rows changes their rank structure and with it the score far more than a new sample
would (measured: LogME's bootstrap interval on 36 images spanned [-1.76, 1.07] around -0.35). They
use half-sampling instead (Efron's balanced half-samples, :data:`FEATURE_RESAMPLES` random halves
without replacement): for a smooth statistic the spread of half-sample estimates about their mean
matches the sampling spread of the full-sample estimate (var of a half-sample mean is
sigma^2 / (N/2) * (N/2) / (N - 1) ~ sigma^2 / N), so the interval is score +- 1.96 sd(half-sample
scores). Seeded: the same seed and N give the same resamples for every teacher and metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from scd_core.assess.metrics import Metric
from scd_core.outputs.streaming import TeacherOutputs

__all__ = ["CONFIDENCE", "FEATURE_RESAMPLES", "RESAMPLES", "bootstrap_counts", "half_samples", "intervals_overlap",
           "mean_interval", "percentile_interval", "score_with_intervals"]

CONFIDENCE = 0.95
RESAMPLES = 1000
"""Resamples of the per-image and NCE bootstraps (one matrix product each)."""
FEATURE_RESAMPLES = 20
"""Half-samples of the feature metrics, each a new spectrum: O(N d min(N, d)) apiece."""
_MAX_COUNT_ENTRIES = 1 << 23  # at most ~64 MB of counts at a time


def bootstrap_counts(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n) float64: how often each of the n images is drawn in each resample (rows sum to n)."""
    rng = np.random.default_rng([seed, n])
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def half_samples(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n // 2) int64: random halves of range(n) without replacement, each sorted."""
    rng = np.random.default_rng([seed, n, 1])
    keys = rng.random((resamples, n))
    return np.sort(np.argsort(keys, axis=1)[:, : n // 2], axis=1)


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap values (NaN ignored)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def mean_interval(values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image ``values`` (N,), one matrix product per block."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if n < 2:
        return math.nan, math.nan
    counts = bootstrap_counts(n, resamples, seed)
    block = max(1, min(resamples, _MAX_COUNT_ENTRIES // n))  # the product's temporaries stay ~64 MB
    boot = np.concatenate([counts[i:i + block] @ values for i in range(0, resamples, block)]) / n
    return percentile_interval(boot)


def _normal_interval(score: float, values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2 or not np.isfinite(score):
        return math.nan, math.nan
    half = NormalDist().inv_cdf(0.5 + confidence / 2.0) * float(values.std(ddof=1))
    return score - half, score + half


def score_with_intervals(outputs: TeacherOutputs, metrics: Sequence[Metric], *, resamples: int = RESAMPLES,
                         feature_resamples: int = FEATURE_RESAMPLES, seed: int = 0
                         ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Scores and 95% bootstrap intervals of one teacher under each metric, from its outputs only."""
    n = outputs.num_samples
    scores: dict[str, float] = {}
    intervals: dict[str, tuple[float, float]] = {}
    counts_cache: dict[int, np.ndarray] = {}

    def counts(b: int) -> np.ndarray:
        if b not in counts_cache:
            counts_cache[b] = bootstrap_counts(n, b, seed)
        return counts_cache[b]

    for metric in metrics:
        values = metric.per_image(outputs) if n > 1 else None
        if values is not None:
            score = float(values.mean()) if metric.mean_over_images else float(metric.score(outputs))
            scores[metric.name], intervals[metric.name] = score, mean_interval(values, resamples, seed)
            continue
        score = float(metric.score(outputs))
        scores[metric.name] = score
        if n < 2:
            continue
        if metric.needs_features:
            if n < 4:
                continue
            halves = [metric.score_rows(outputs, index) for index in half_samples(n, feature_resamples, seed)]
            intervals[metric.name] = _normal_interval(score, np.array(halves))
        else:
            try:
                boot = metric.resample(outputs, counts(resamples))
            except NotImplementedError:
                continue
            intervals[metric.name] = percentile_interval(boot)
    return scores, intervals


def intervals_overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """Whether two intervals share a point (False when either is missing or NaN)."""
    if a is None or b is None or not all(np.isfinite([*a, *b])):
        return False
    return max(a[0], b[0]) <= min(a[1], b[1])

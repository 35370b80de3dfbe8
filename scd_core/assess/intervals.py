"""95% bootstrap intervals of every score over the assessment images, from the cached teacher outputs.

The bootstrap draws the N assessment images with replacement B times: ``counts`` (B, N) says how
often each image is drawn (a multinomial row summing to N). For a score that is a mean of per-image
values v (``scd``, ``scd_cost``, ``leep``) resample b is ``counts_b . v / N``, one (B, N) x (N,)
product, and the interval is the percentile interval [q_2.5%, q_97.5%] of the resampled scores.
NCE re-counts its hard joint for all resamples at once; its plug-in entropy is biased under
resampling (duplicated images make H(Y | Z) look smaller), so the percentile interval can miss the
score itself, and its interval is the normal one, score +- 1.96 sd(resampled scores).

The feature metrics (LogME, H-score) fit a model to the features, so a bootstrap resample with
duplicated rows changes their rank structure and with it the score far more than a new sample
would (measured: LogME's bootstrap interval on 36 images spanned [-1.76, 1.07] around -0.35). They
use half-sampling instead (:data:`FEATURE_RESAMPLES` random halves of the images, without
replacement): for a smooth statistic the spread of half-sample estimates about their mean
matches the sampling spread of the full-sample estimate (var of a half-sample mean is
sigma^2 / (N/2) * (N/2) / (N - 1) ~ sigma^2 / N), so the interval is score +- 1.96 sd(half-sample
scores). Ten halves keep the cost at ten fits; the sd they give is itself uncertain by about 25%.

Seeded: the same seed and N give the same resamples for every teacher and metric. The (B, N) count
matrix is kept under ~64 MB by using fewer resamples for very large N (never fewer than 200).
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
FEATURE_RESAMPLES = 10
"""Half-samples of the feature metrics, each a new spectrum: O(N d min(N, d)) apiece."""
_MAX_COUNT_ENTRIES = 1 << 23  # ~64 MB of float64 counts
_MIN_RESAMPLES = 200


def bootstrap_counts(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n) float64: how often each of the n images is drawn in each resample (rows sum to n).

    n uniform draws per row, counted with one bincount over (row, image) pairs: a multinomial row.
    """
    rng = np.random.default_rng([seed, n])
    draws = rng.integers(0, n, size=(resamples, n)) + (np.arange(resamples) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)


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


def mean_interval(values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0,
                  counts: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image ``values`` (N,), one matrix product per block."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if n < 2:
        return math.nan, math.nan
    counts = bootstrap_counts(n, resamples, seed) if counts is None else counts
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
        # one (B, N) count matrix shared by the metrics; past ~64 MB fewer resamples (never under 200)
        b = min(b, max(_MIN_RESAMPLES, _MAX_COUNT_ENTRIES // max(n, 1)))
        if b not in counts_cache:
            counts_cache[b] = bootstrap_counts(n, b, seed)
        return counts_cache[b]

    for metric in metrics:
        values = metric.per_image(outputs) if n > 1 else None
        if values is not None:
            score = float(values.mean()) if metric.mean_over_images else float(metric.score(outputs))
            scores[metric.name] = score
            shared = counts(resamples)
            intervals[metric.name] = mean_interval(values, shared.shape[0], seed, shared)
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
            intervals[metric.name] = _normal_interval(score, boot)
    return scores, intervals


def intervals_overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """Whether two intervals share a point (False when either is missing or NaN)."""
    if a is None or b is None or not all(np.isfinite([*a, *b])):
        return False
    return max(a[0], b[0]) <= min(a[1], b[1])

"""Aggregate statistics over runs with confidence intervals: is a difference between two groups of runs real?

Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice" (NeurIPS), and their
library rliable: with the handful of seeds a budget affords, report interval estimates of robust aggregates, not
point estimates. The definitions below are rliable's (rliable/metrics.py), with scipy doing the resampling.

Scores come as tasks: a sequence of 1-D arrays, one per task (one experiment, a config), each holding the scores of
its runs (its seeds). The seeds of one config are one task; `pixlab report --group-by` pools several.

- mean: the mean over tasks of each task's mean (rliable's aggregate_mean: every task weighs the same).
- median: the median of all runs' scores pooled. rliable's aggregate_median is the median of the task means, which
  for the one task of a seed group would be its mean again; the pooled median is the robust figure there.
- IQM, the interquartile mean: the mean of the middle 50% of all runs' scores pooled, scipy.stats.trim_mean(scores,
  0.25) exactly as rliable's aggregate_iqm: int(n / 4) scores are cut from each end, with no fractional weighting
  at the quartiles, so with fewer than 4 runs nothing is cut and the IQM is the mean.
- probability of improvement P(X > Y): per task, the fraction of pairs (a run of X, a run of Y) in which X's score
  is the greater, a tie counting 1/2 (the Mann-Whitney U statistic over n_x n_y), averaged over the tasks
  (rliable's probability_of_improvement).

Intervals: CONFIDENCE percentile intervals of the stratified bootstrap: each task's runs are resampled with
replacement, independently of the other tasks, RESAMPLES times (scipy.stats.bootstrap given one sample per task
with paired=False does exactly that), from a fixed seed, so a report is the same every time it is made.
Percentile, as rliable's default: scipy's default BCa needs a jackknife that is degenerate with two or three seeds.
A task of one run is a constant under resampling; when no task has two runs there is nothing to resample and the
interval is None, never one of zero width. Scores that are not finite (a diverged run) get no interval either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import scipy.stats

CONFIDENCE = 0.95
RESAMPLES = 10_000  # rliable's figures use 50,000 to 200,000; 10,000 puts the 2.5% tail on 250 resamples
BAND_RESAMPLES = 2_000  # a curve's band: one interval per point of the curve, drawn, not read as a number
SEED = 0
BATCH_ELEMENTS = 1_000_000  # bounds the memory of one vectorized batch of resamples (8 MB of float64)

Tasks = Sequence[Sequence[float]]  # tasks[k]: the scores of task k's runs


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its confidence interval; low and high are None when there was nothing to resample."""

    value: float
    low: Optional[float] = None
    high: Optional[float] = None

    @property
    def interval(self) -> Optional[tuple[float, float]]:
        return None if self.low is None else (self.low, self.high)


# --------------------------------------------------------------------- the statistics
# Each takes the tasks as arrays whose last axis holds the runs, (..., n_k) for task k, with the same leading
# (batch) axes, and returns one value per batch element: the form scipy.stats.bootstrap calls when vectorized.
def aggregate_mean(*tasks: np.ndarray) -> np.ndarray:
    """The mean over tasks of the task means."""
    return np.mean(np.stack([np.mean(t, axis=-1) for t in tasks]), axis=0)


def aggregate_median(*tasks: np.ndarray) -> np.ndarray:
    """The median of all runs' scores pooled."""
    return np.median(np.concatenate(tasks, axis=-1), axis=-1)


def aggregate_iqm(*tasks: np.ndarray) -> np.ndarray:
    """The interquartile mean of all runs' scores pooled: the 25% trimmed mean, int(n / 4) cut from each end."""
    return scipy.stats.trim_mean(np.concatenate(tasks, axis=-1), 0.25, axis=-1)


AGGREGATES: dict[str, Callable[..., np.ndarray]] = {
    "mean": aggregate_mean,
    "median": aggregate_median,
    "IQM": aggregate_iqm,
}


def probability_of_improvement(x_tasks: Sequence[np.ndarray], y_tasks: Sequence[np.ndarray]) -> np.ndarray:
    """P(X > Y): per task k, the share of pairs (x_tasks[k][i], y_tasks[k][j]) with x > y, ties counting 1/2,
    averaged over the tasks. x_tasks[k] is (..., n_x), y_tasks[k] (..., n_y), paired by task."""
    per_task = []
    for x, y in zip(x_tasks, y_tasks, strict=True):
        difference = np.asarray(x)[..., :, None] - np.asarray(y)[..., None, :]  # (..., n_x, n_y)
        per_task.append(np.mean((difference > 0) + 0.5 * (difference == 0), axis=(-2, -1)))
    return np.mean(np.stack(per_task), axis=0)


# --------------------------------------------------------------------- intervals
def bootstrap(
    statistic: Callable[..., np.ndarray],
    tasks: Tasks,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Estimate:
    """statistic(*tasks) and its stratified-bootstrap percentile interval: each task resampled on its own.

    `statistic` takes the tasks as arrays whose last axis holds the runs (see aggregate_mean). The interval is None
    when no task has two runs or a score is not finite."""
    arrays = [np.asarray(t, dtype=np.float64) for t in tasks]
    value = float(statistic(*arrays))
    varying = [k for k, a in enumerate(arrays) if len(a) > 1]
    if not varying or not all(np.isfinite(a).all() for a in arrays):
        return Estimate(value)

    def resampled(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        # scipy resamples the tasks of two runs or more; the others are constants, broadcast to the batch
        batch = samples[0].shape[:-1]
        full = [np.broadcast_to(a, batch + a.shape) for a in arrays]
        for k, sample in zip(varying, samples):
            full[k] = sample
        return statistic(*full)

    result = scipy.stats.bootstrap(
        [arrays[k] for k in varying],
        resampled,
        n_resamples=resamples,
        batch=max(1, BATCH_ELEMENTS // sum(len(a) for a in arrays)),
        vectorized=True,
        paired=False,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return Estimate(value, float(result.confidence_interval.low), float(result.confidence_interval.high))


def aggregates(tasks: Tasks, **options) -> dict[str, Estimate]:
    """{'mean', 'median', 'IQM'} of the tasks' scores, each with its interval (options: those of `bootstrap`)."""
    return {name: bootstrap(statistic, tasks, **options) for name, statistic in AGGREGATES.items()}


def improvement(x_tasks: Tasks, y_tasks: Tasks, **options) -> Estimate:
    """P(X > Y) with its stratified-bootstrap interval: every task of X and of Y resampled on its own."""
    if len(x_tasks) != len(y_tasks):
        raise ValueError(f"X has {len(x_tasks)} tasks and Y {len(y_tasks)}; the tasks are compared pairwise")
    split = len(x_tasks)
    return bootstrap(
        lambda *tasks: probability_of_improvement(tasks[:split], tasks[split:]), [*x_tasks, *y_tasks], **options
    )


def mean_band(
    values: np.ndarray, confidence: float = CONFIDENCE, resamples: int = BAND_RESAMPLES, seed: int = SEED
) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(low, high), each (points,): the bootstrap interval of the mean over runs at each point of a curve.

    values: (runs, points). One resample of the runs serves every point, so the band is as smooth as the runs.
    None for one run; NaN at a point where some run's value is not finite."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return None
    low, high = np.full(values.shape[1], np.nan), np.full(values.shape[1], np.nan)
    finite = np.isfinite(values).all(axis=0)
    if finite.any():
        result = scipy.stats.bootstrap(
            (values[:, finite],),
            lambda sample, axis=-1: np.mean(sample, axis=axis),
            n_resamples=resamples,
            batch=max(1, BATCH_ELEMENTS // values.size),
            vectorized=True,
            axis=0,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low[finite], high[finite] = result.confidence_interval.low, result.confidence_interval.high
    return low, high

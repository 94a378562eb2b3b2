"""shared/stats.py: the aggregates and the probability of improvement on numbers worked by hand, and the bootstrap
intervals against the exact percentiles of every resample, enumerated."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats

from shared import stats
from shared.stats import Estimate


def test_mean_median_and_iqm_by_hand():
    skewed = [0, 1, 2, 4, 8, 16, 32, 1000]
    assert stats.aggregate_mean(np.array(skewed)) == 1063 / 8
    assert stats.aggregate_median(np.array(skewed)) == 6  # (4 + 8) / 2
    assert stats.aggregate_iqm(np.array(skewed)) == 7.5  # 8 runs: 2 cut from each end, (2 + 4 + 8 + 16) / 4
    # 6 runs, not a multiple of 4: int(6 / 4) = 1 cut from each end, as scipy.stats.trim_mean (rliable) does
    assert stats.aggregate_iqm(np.array([0, 1, 2, 4, 8, 1000])) == (1 + 2 + 4 + 8) / 4
    assert stats.aggregate_iqm(np.array([0, 3, 30])) == 11  # fewer than 4 runs: nothing cut, the mean
    # two tasks: the mean weighs each task the same; the median and the IQM pool the runs
    tasks = (np.array([0.0, 2.0]), np.array([10.0]))
    assert stats.aggregate_mean(*tasks) == (1 + 10) / 2
    assert (stats.aggregate_median(*tasks), stats.aggregate_iqm(*tasks)) == (2, 4)


def test_the_statistics_take_a_batch_of_resamples_on_their_leading_axes():
    batch = (np.array([[0.0, 2.0], [4.0, 4.0]]), np.array([[1.0], [3.0]]))  # two resamples of two tasks
    assert stats.aggregate_mean(*batch).tolist() == [1.0, 3.5]
    assert stats.aggregate_median(*batch).tolist() == [1.0, 4.0]


def test_probability_of_improvement_by_hand():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 2.0])
    # pairs x > y: 1 > 0; 2 > 0 and two ties at 2 (1/2 each); 3 > 0, 2, 2: (1 + 2 + 3) / 9
    assert stats.probability_of_improvement([x], [y]) == pytest.approx(6 / 9)
    u = scipy.stats.mannwhitneyu(x, y, alternative="greater").statistic  # the same count, done independently
    assert u / 9 == pytest.approx(6 / 9)
    # a second task: 5 beats 1 and loses to 9, 1/2; the tasks are averaged
    assert stats.probability_of_improvement([x, np.array([5.0])], [y, np.array([1.0, 9.0])]) == pytest.approx(7 / 12)
    assert stats.probability_of_improvement([x], [x]) == 0.5  # a group against itself
    with pytest.raises(ValueError, match="X has 1 tasks and Y 2"):
        stats.improvement([[1.0]], [[1.0], [2.0]])


def exact_percentile_interval(statistic, tasks, confidence=0.95):
    """The percentile interval of the complete bootstrap distribution: every resample of every task enumerated,
    all equally likely. Also returns the smallest distance of a CDF step from the interval's tails, so a test can
    check that the 10,000 random resamples of shared.stats cannot land on a neighbouring value."""
    per_task = [np.array(list(itertools.product(t, repeat=len(t)))) for t in tasks]  # (len(t) ** len(t), len(t))
    combos = np.indices([len(r) for r in per_task]).reshape(len(tasks), -1)  # every choice of one resample a task
    values = np.sort(statistic(*(r[i] for r, i in zip(per_task, combos))))  # the statistics take a batch axis
    atoms, counts = np.unique(values.round(12), return_counts=True)
    cdf = np.cumsum(counts) / len(values)
    alpha = (1 - confidence) / 2
    low, high = atoms[np.searchsorted(cdf, alpha)], atoms[np.searchsorted(cdf, 1 - alpha)]
    margin = min(np.abs(cdf - alpha).min(), np.abs(cdf - (1 - alpha)).min())
    return (low, high), margin


@pytest.mark.parametrize(
    "statistic, tasks",
    [
        (stats.aggregate_mean, [[0.0, 1.0, 2.0, 3.0]]),  # 256 resamples: [0.5, 2.5]
        (stats.aggregate_median, [[0.0, 1.0, 2.0, 3.0, 7.0]]),
        (stats.aggregate_iqm, [[0.0, 1.0, 2.0, 3.0], [10.0, 20.0]]),  # two tasks, each resampled on its own: 256 x 4
        (stats.aggregate_mean, [[7.0], [0.0, 2.0]]),  # a task of one run is a constant
    ],
)
def test_the_interval_is_the_percentile_interval_of_every_resample_enumerated(statistic, tasks):
    (low, high), margin = exact_percentile_interval(statistic, tasks)
    assert margin > 0.005  # the 2.5% and 97.5% points lie well inside a step of the CDF
    estimate = stats.bootstrap(statistic, tasks)
    assert estimate == Estimate(*(pytest.approx(v) for v in (statistic(*map(np.array, tasks)), low, high)))


def test_the_bootstrap_is_stratified_by_task():
    # each task resampled on its own keeps one run of 0 and one of 10 in every resample: the mean of the task
    # means is always 5; resampling the four runs pooled would give anything from 0 to 10
    assert stats.bootstrap(stats.aggregate_mean, [[0.0, 0.0], [10.0, 10.0]]) == Estimate(5.0, 5.0, 5.0)
    assert stats.improvement([[0.0, 1.0]], [[0.5]]) == Estimate(0.5, 0.0, 1.0)  # x resampled: {0,0} {0,1} {1,0} {1,1}


def test_no_interval_without_two_runs_in_some_task_or_with_a_value_not_finite():
    assert stats.aggregates([[0.7]]) == {name: Estimate(0.7) for name in ("mean", "median", "IQM")}
    assert stats.bootstrap(stats.aggregate_mean, [[1.0], [3.0]]) == Estimate(2.0)
    assert stats.bootstrap(stats.aggregate_median, [[1.0, np.inf, 2.0]]).interval is None
    assert Estimate(2.0).interval is None and Estimate(2.0, 1.0, 3.0).interval == (1.0, 3.0)


def test_the_interval_is_the_same_for_the_same_seed():
    scores = [np.random.default_rng(1).normal(size=7)]
    first, again = stats.bootstrap(stats.aggregate_iqm, scores), stats.bootstrap(stats.aggregate_iqm, scores)
    assert first == again and first.low < first.value < first.high
    assert stats.bootstrap(stats.aggregate_iqm, scores, seed=1) != first
    narrower = stats.bootstrap(stats.aggregate_iqm, scores, confidence=0.5)
    assert first.low < narrower.low < narrower.high < first.high


def test_mean_band_is_the_interval_of_the_mean_at_each_point():
    values = np.array([[0.0, 10.0, 1.0], [1.0, 10.0, np.nan], [2.0, 10.0, 1.0], [3.0, 10.0, 1.0]])  # (runs, points)
    low, high = stats.mean_band(values)
    (expected_low, expected_high), _ = exact_percentile_interval(stats.aggregate_mean, [values[:, 0]])
    assert (low[0], high[0]) == (expected_low, expected_high) == (0.5, 2.5)
    assert (low[1], high[1]) == (10.0, 10.0)
    assert np.isnan(low[2]) and np.isnan(high[2])  # a run's value there is not finite
    assert stats.mean_band(values[:1]) is None  # one run: no band

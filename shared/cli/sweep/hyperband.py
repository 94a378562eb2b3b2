"""W&B's hyperband stopping rule as an Optuna pruner, so that a sweep YAML stops the same trials offline as on
W&B's server. Imported by search.py only when a study runs: it imports Optuna.

W&B's rule (its sweeps library, `stop_runs_hyperband`): the bands are history indices (spec.hyperband_bands). At
band b, the threshold is the value ranked int(n / eta) from the best (0 = best) among the n runs that logged the
metric more than b times, running, finished or stopped alike, the run itself included. A running run that passed
band b stops when its best value so far is worse than the threshold of the last band it passed.

Why not Optuna's own pruners: `SuccessiveHalvingPruner(min_resource=min_iter, reduction_factor=eta)` has the same
bands but keeps the (n // eta) best, at least the best alone, where W&B keeps int(n / eta) + 1 (with eta = 2, the
second of two trials is pruned by Optuna unless it beats the first, never by W&B), and it compares the value at the
band where W&B compares the best so far; `HyperbandPruner` runs several brackets that W&B's server does not.
"""

from __future__ import annotations

import math

import optuna
from optuna.study import StudyDirection


class WandbHyperbandPruner(optuna.pruners.BasePruner):
    """Prune a trial whose best reported value is behind the top int(n / eta) + 1 at the last band it passed.
    Steps are history indices: the sweep reports a run's i-th logged value (from 0) at step i."""

    def __init__(self, bands: list[int], eta: int):
        self.bands, self.eta = sorted(bands), eta

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if trial.last_step is None:
            return False
        passed = [band for band in self.bands if band <= trial.last_step]
        if not passed:
            return False
        band = passed[-1]
        sign = 1 if study.direction == StudyDirection.MINIMIZE else -1  # compare as a loss: lower is better
        at_band = sorted(
            sign * t.intermediate_values[band]
            for t in study.get_trials(deepcopy=False)
            if band in t.intermediate_values and not math.isnan(t.intermediate_values[band])
        )
        history = [sign * v for v in trial.intermediate_values.values() if not math.isnan(v)]
        if not at_band or not history:
            return False
        return min(history) > at_band[int(len(at_band) / self.eta)]

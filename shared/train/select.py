"""Model selection on a validation split: keep the weights of the best evaluation, stop when none comes.

    best = BestWeights(model, patience=50)          # a checkpointed object beside the model and optimizer
    ...after each validation:  best.observe(val_error, step, model)
    if best.exhausted: stop training                # `patience` evaluations without a new best
    best.restore(model)                             # the selected weights, for the final test

The metric is minimized. The kept weights are a copy on the CPU, saved in every checkpoint, so a resumed
run selects exactly what an uninterrupted one would. The metric must come from data held out of the
training set (never the test set): that is the caller's promise, and what makes the test figure honest.
"""

from __future__ import annotations

from typing import Optional

import torch.nn as nn


class BestWeights:
    def __init__(self, model: nn.Module, patience: Optional[int] = None) -> None:
        self.patience = patience  # evaluations without improvement before `exhausted`; None: never
        self.metric: Optional[float] = None
        self.step: Optional[int] = None
        self.bad_evaluations = 0
        self.weights = _cpu_copy(model)  # the initial weights until the first observation

    def observe(self, metric: float, step: int, model: nn.Module) -> bool:
        """Record one validation result; True (and the weights kept) when it is the best so far."""
        if self.metric is not None and not metric < self.metric:
            self.bad_evaluations += 1
            return False
        self.metric, self.step, self.bad_evaluations = metric, step, 0
        self.weights = _cpu_copy(model)
        return True

    @property
    def exhausted(self) -> bool:
        """`patience` evaluations in a row brought no new best: early stopping is due."""
        return self.patience is not None and self.bad_evaluations >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the kept weights into `model` (on its own device)."""
        model.load_state_dict(self.weights)

    def state_dict(self) -> dict:
        return {
            "metric": self.metric,
            "step": self.step,
            "bad_evaluations": self.bad_evaluations,
            "weights": self.weights,
        }

    def load_state_dict(self, state: dict) -> None:
        self.metric, self.step = state["metric"], state["step"]
        self.bad_evaluations, self.weights = state["bad_evaluations"], state["weights"]


def _cpu_copy(model: nn.Module) -> dict:
    return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}

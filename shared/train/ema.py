"""An exponential moving average of a model's weights, evaluated in place of the live weights.

    ema = EMA(model, decay=0.999)
    ...after each optimizer step: ema.update(model)
    evaluate(ema.module)

Floating-point parameters and buffers (batch-norm running statistics too) are averaged:
avg <- decay * avg + (1 - decay) * live. Integer buffers (index maps, batch counters) are copied:
averaging them would corrupt them. The first update copies everything, so the average starts at the
weights of step 1 rather than at the initialisation.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn as nn


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def _pairs(self, model: nn.Module):
        return zip(
            itertools.chain(self.module.parameters(), self.module.buffers()),
            itertools.chain(model.parameters(), model.buffers()),
        )

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        floats_avg, floats_live = [], []
        for average, live in self._pairs(model):
            if self.updates == 0 or not average.dtype.is_floating_point:
                average.copy_(live)
            else:
                floats_avg.append(average)
                floats_live.append(live)
        if floats_avg:
            torch._foreach_lerp_(floats_avg, floats_live, 1 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]

"""What the optimiser does around the loss: the learning-rate schedule and a moving average of the weights.

Neither changes the objective: the SSN's loss stays the paper's Monte Carlo log-likelihood.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["SCHEDULES", "learning_rate_factor", "WeightAverage"]

SCHEDULES = ("constant", "cosine", "linear")


def learning_rate_factor(
    step: int, fraction: float, schedule: str, warmup_steps: int = 0, final: float = 0.01
) -> float:
    """The multiplier of the base learning rate at optimiser step ``step`` (0-based).

    A linear warm-up over the first ``warmup_steps`` steps, then ``schedule`` over the budget:
    ``constant`` keeps 1; ``cosine`` and ``linear`` decay from 1 to ``final`` as ``fraction``,
    the share of the training budget (steps, minutes or epochs) spent so far, goes from 0 to 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}; got {schedule!r}")
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    fraction = min(max(fraction, 0.0), 1.0)
    if schedule == "cosine":
        decay = final + (1 - final) * 0.5 * (1 + math.cos(math.pi * fraction))
    elif schedule == "linear":
        decay = 1 - (1 - final) * fraction
    else:
        decay = 1.0
    return warmup * decay


class WeightAverage:
    """An exponential moving average of a model's parameters, theta_ema <- d theta_ema + (1 - d) theta.

    The decay ramps up as d_t = min(decay, (1 + t) / (10 + t)), so that the first steps are not
    frozen into the average by a long memory. Buffers (batch-norm statistics, themselves running
    averages) are copied. ``module`` is the averaged copy, used for validation and checkpoints.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1); got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the weights of ``model`` after optimiser step ``step`` (1-based) into the average."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for averaged, current in zip(self.module.parameters(), model.parameters()):
            averaged.lerp_(current, 1 - decay)
        for averaged_buffer, current_buffer in zip(self.module.buffers(), model.buffers()):
            averaged_buffer.copy_(current_buffer)

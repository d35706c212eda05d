"""What the optimiser does around the loss: the learning-rate schedule and a moving average of the weights.

Neither changes the objective: the SSN's loss stays the paper's Monte Carlo log-likelihood.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["SCHEDULES", "learning_rate_factor", "weight_average"]

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


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of a model's parameters, theta_ema <- d_t theta_ema + (1 - d_t) theta,
    as torch's :class:`~torch.optim.swa_utils.AveragedModel`.

    The decay ramps up as d_t = min(decay, (1 + t) / (10 + t)) at optimiser step t (1-based), so
    that the first steps are not frozen into the average by a long memory; the starting weights
    count as the first average (``n_averaged`` is t + 1 after step t; set it on resume). Buffers
    (batch-norm statistics, themselves running averages) are copied, not averaged. ``.module`` is
    the averaged copy, in eval mode and without gradients, used for validation and checkpoints;
    ``update_parameters(model)`` folds in one step.
    """
    if not 0 < decay < 1:
        raise ValueError(f"decay must be in (0, 1); got {decay}")
    average = AveragedModel(model, multi_avg_fn=_ramped_ema(decay), use_buffers=False)
    average.n_averaged.fill_(1)
    average.module.eval().requires_grad_(False)
    return average


def _ramped_ema(decay: float):
    """``multi_avg_fn`` for :class:`AveragedModel`: one step of the ramped EMA, t = ``n_averaged``."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        t = int(num_averaged)
        weight = 1 - min(decay, (1 + t) / (10 + t))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer parameters: blended by hand (lerp takes floats only)
            for a, c in zip(averaged, current):
                a.copy_(a + (c - a) * weight)

    return update

"""The learning-rate schedule and the moving average of the weights."""

import math

import pytest
import torch
from torch import nn

from ssn.engine.optim import learning_rate_factor, weight_average


def test_warm_up_is_linear_then_the_schedule_takes_over():
    assert learning_rate_factor(0, 0.0, "constant", warmup_steps=4) == pytest.approx(0.25)
    assert learning_rate_factor(3, 0.0, "constant", warmup_steps=4) == pytest.approx(1.0)
    assert learning_rate_factor(100, 0.7, "constant", warmup_steps=4) == 1.0


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decays_run_from_one_to_the_final_fraction_over_the_budget(schedule):
    factors = [learning_rate_factor(10, f, schedule, final=0.01) for f in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)]
    assert (
        factors[0] == pytest.approx(1.0) and factors[-2] == pytest.approx(0.01) and factors[-1] == pytest.approx(0.01)
    )
    assert all(a > b for a, b in zip(factors, factors[1:-1]))  # strictly decreasing until the end
    middle = 0.01 + 0.99 * (0.5 * (1 + math.cos(math.pi / 2)) if schedule == "cosine" else 0.5)
    assert factors[2] == pytest.approx(middle)


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule must be one of"):
        learning_rate_factor(0, 0.0, "step")


def test_the_average_follows_the_recursion_with_its_ramped_decay():
    model = nn.Linear(2, 1)
    average = weight_average(model, decay=0.9)
    expected = model.weight.detach().clone()
    for step in range(1, 30):
        with torch.no_grad():
            model.weight.add_(1.0)
        average.update_parameters(model)  # step `step`
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * model.weight.detach()
    torch.testing.assert_close(average.module.weight, expected)
    assert not average.module.weight.requires_grad and not average.module.training


def test_buffers_are_copied_not_averaged():
    model = nn.BatchNorm1d(3)
    average = weight_average(model, decay=0.99)
    model.train()(torch.randn(16, 3) + 5)
    average.update_parameters(model)
    torch.testing.assert_close(average.module.running_mean, model.running_mean)

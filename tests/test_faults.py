"""Faults in training: a non-finite loss or gradient never reaches the weights."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ssn.apps.cli import main
from ssn.data.arrays import save_arrays
from ssn.data.synthetic import make_synthetic
from ssn.networks import register_backbone, unregister_backbone


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "synthetic.npz"
    save_arrays(path, make_synthetic(32, size=32, seed=0))
    return path


def _all_finite(run) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(run / "last.safetensors")).values())


@pytest.mark.parametrize("method", ["ssn", "deterministic"])
def test_a_learning_rate_of_10_never_makes_a_nan_model(data, tmp_path, capsys, method):
    run = tmp_path / "run"
    code = main(["train", "--data", str(data), "--out", str(run), "--method", method, "--features", "4", "8",
                 "--lr", "10", "--max-steps", "40", "--batch-size", "8", "--val-images", "4", "--val-every", "10"])
    err = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:  # it may stop: then with the reason, and the weights saved before are finite
        assert "non-finite loss or gradients" in err.err and "Lower --lr" in err.err
    assert _all_finite(run)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        assert np.isfinite(entry["train_loss"]) or entry["train_loss"] != entry["train_loss"]  # NaN only if all skipped


class _Poisoned(nn.Module):
    """A backbone whose features turn NaN from its third call on."""

    out_channels = 4

    def __init__(self, spatial_dims=2, in_channels=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        features = self.conv(x)
        return features * float("nan") if self.calls > 2 else features


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(data, tmp_path, capsys):
    register_backbone("poisoned")(_Poisoned)
    try:
        run = tmp_path / "run"
        code = main(["train", "--data", str(data), "--out", str(run), "--model", "poisoned", "--max-steps", "50",
                     "--batch-size", "8", "--val-images", "4", "--val-every", "2", "--max-bad-steps", "3",
                     "--mean-warmup", "0"])
    finally:
        unregister_backbone("poisoned")
    printed = capsys.readouterr()
    assert code == 2
    assert "training stopped at step 5: 3 steps in a row had a non-finite loss or gradients" in printed.err
    assert printed.out.count("step skipped") == 3 and "step 3: non-finite loss or gradients" in printed.out
    assert _all_finite(run)  # the two good steps' weights, never a NaN

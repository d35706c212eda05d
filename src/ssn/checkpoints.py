"""Run directories: a JSON configuration and safetensors weights, written atomically.

A run directory holds everything ``evaluate`` and ``sample`` need:

- ``config.json``      the full training configuration (model settings included);
- ``best.safetensors`` the weights with the best validation GED^2, ``last.safetensors`` the latest;
- ``state.pt``         optimiser state and progress, for ``--resume``;
- ``metrics.jsonl``    one line of metrics per epoch; ``tensorboard/`` the same as events.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import models
from .files import write_atomically

__all__ = ["save_weights", "load_weights", "write_json", "read_config", "build_model", "load_run"]


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomically(path, lambda p: save_file(state, str(p)))


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    model.load_state_dict(load_file(str(path)))


def write_json(payload: dict, path: str | os.PathLike) -> None:
    write_atomically(path, lambda p: p.write_text(json.dumps(payload, indent=2) + "\n"))


def read_config(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.json (train one with `ssn train`)")
    return json.loads(path.read_text())


def build_model(config: dict) -> nn.Module:
    """The model a training configuration describes (untrained)."""
    return models.create(
        config["model"],
        spatial_dims=config["spatial_dims"],
        in_channels=config["in_channels"],
        num_classes=config["num_classes"],
        rank=config["rank"],
        deterministic=config["deterministic"],
        features=tuple(config["features"]),
    )


def load_run(run_dir: str | os.PathLike, which: str = "best") -> tuple[nn.Module, dict]:
    """(model with the ``best`` or ``last`` weights, in eval mode; configuration)."""
    config = read_config(run_dir)
    weights = Path(run_dir) / f"{which}.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the run has not saved {which} weights yet")
    model = build_model(config)
    load_weights(model, weights)
    return model.eval(), config

"""Run directories: a JSON configuration and safetensors weights, written atomically.

A run directory holds everything ``evaluate`` and ``sample`` need:

- ``config.json``      the training configuration, with ``architecture``: the
  :class:`~ssn.models.ModelSpec` (method, backbone, every model argument) the model is rebuilt from;
- ``best.safetensors`` the weights with the best validation GED^2, ``last.safetensors`` the latest;
- ``state.pt``         optimiser state and progress, for ``--resume``;
- ``metrics.jsonl``    one line of metrics per validation; ``tensorboard/`` the same as events;
- ``calibration.json`` (after ``ssn calibrate``) the sampling temperature chosen on validation data.
"""

from __future__ import annotations

import json
import os

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import ConfigError, RunError
from ..files import write_atomically, write_json
from ..models import ModelSpec, SegmentationModel, build
from ..networks.inflate import inflate_state_dict
from .pretrained import resolve_run_dir
from .rundir import RunDir

__all__ = [
    "save_weights",
    "load_weights",
    "initialise_from",
    "write_json",
    "read_config",
    "load_run",
    "CALIBRATION_FILE",
]

CALIBRATION_FILE = RunDir.CALIBRATION


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomically(path, lambda p: save_file(state, str(p)))


def _read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError for a damaged header or body
        raise RunError(
            f"{path} cannot be read as safetensors weights ({error}); the file is damaged: "
            "use the run's other weights (best/last) or train again"
        ) from None


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load safetensors weights into ``model``; a damaged file or weights of another model
    raise :class:`~ssn.errors.RunError` naming the file and what differs."""
    state = _read_weights(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:4]) or first[0]
        raise RunError(f"{path} holds weights of another model than its config.json describes ({detail})") from None


def initialise_from(model: nn.Module, run_dir: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Load the best weights of ``run_dir`` (or ``pretrained:NAME``) into ``model`` to start a
    training from them; a 2D run's kernels are inflated into a 3D model's
    (:func:`~ssn.networks.inflate.inflate_state_dict`).

    Returns:
        (the model's tensors the run has not got, left at their initial values; the run's
        tensors the model has no use for), e.g. a diagonal model started from a low-rank one
        leaves the low-rank factor's head unused.

    Raises:
        RunError: no such run or weights, or weights that do not fit the model.
    """
    weights = RunDir(resolve_run_dir(run_dir)).weights("best")
    if not weights.is_file():
        raise RunError(f"--init-from {run_dir}: {weights} is missing: name a trained run directory")
    try:
        state, fresh, unused = inflate_state_dict(_read_weights(weights), model)
    except ConfigError as error:
        raise RunError(f"--init-from {run_dir}: {error}") from None
    if len(fresh) == len(state):
        raise RunError(f"--init-from {run_dir}: none of its weights belongs to this model: start from a run of it")
    model.load_state_dict(state)
    return fresh, unused


def read_config(run_dir: str | os.PathLike) -> dict:
    """The ``config.json`` of a run directory or of ``pretrained:NAME`` (see :meth:`RunDir.read_config`)."""
    return RunDir(resolve_run_dir(run_dir)).read_config()


def load_run(
    run_dir: str | os.PathLike, which: str = "best", temperature: float | None = None
) -> tuple[SegmentationModel, dict]:
    """(model with the ``best`` or ``last`` weights, in eval mode; configuration).

    The model's sampling temperature is ``temperature`` if given, else the one ``ssn
    calibrate`` stored in the run, else 1. ``run_dir`` may be ``pretrained:NAME``, a model
    shipped with the package (:func:`ssn.pretrained`).
    """
    run_dir = resolve_run_dir(run_dir)
    config = read_config(run_dir)
    weights = RunDir(run_dir).weights(which)
    if not weights.is_file():
        raise RunError(f"{weights} is missing: the run has not saved {which} weights yet")
    try:
        model = build(ModelSpec.from_dict(config["architecture"]))
    except (KeyError, TypeError, ValueError) as error:
        raise RunError(
            f"{RunDir(run_dir).config_path}: its architecture is incomplete or invalid "
            f"({type(error).__name__}: {error}); the run directory is damaged"
        ) from None
    load_weights(model, weights)
    if temperature is None:
        calibration = RunDir(run_dir).calibration_path
        try:
            temperature = json.loads(calibration.read_text())["temperature"] if calibration.is_file() else 1.0
        except (json.JSONDecodeError, KeyError, TypeError):
            raise RunError(f"{calibration} is damaged; run `ssn calibrate` again or delete it") from None
    if not temperature >= 0:
        raise RunError(f"the sampling temperature must be >= 0; got {temperature}")
    model.temperature = float(temperature)
    return model.eval(), config

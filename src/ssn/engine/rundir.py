"""A run directory: the one owner of the files ``ssn train`` writes and everything else reads.

    RUN/
      config.json        the settings and the model's description (TrainConfig + architecture)
      metrics.jsonl      one line per validation: step, minutes, cpu_minutes, losses, GED^2
      state.pt           everything a resumed run needs (weights, optimiser, progress)
      last.safetensors   the weights at the last validation
      best.safetensors   the weights of the best validation GED^2
      calibration.json   the sampling temperature chosen by ``ssn calibrate``
      tensorboard/       TensorBoard events

It also holds the resume policy: which settings a resumed run takes from its ``config.json``
and which it may change (the budget, the cadence of validation and checkpoints, the device).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, RunError
from ..files import check_writable, write_atomically, write_json
from ..models import ModelSpec

__all__ = ["RunDir", "RESUME_MAY_CHANGE"]

# Settings a resumed run may change: its budget, where and how often it validates, checkpoints, runs.
RESUME_MAY_CHANGE = frozenset(
    {
        "resume", "out", "epochs", "max_minutes", "max_steps", "device", "val_every", "workers", "precision",
        "compile", "checkpoint_minutes", "max_bad_steps", "stop_after_minutes", "overwrite",
    }
)  # fmt: skip
# Settings that runs written before they existed behaved as: a resumed older run keeps that behaviour.
_BEFORE_THEY_EXISTED = {"val_volumes": "patches"}  # ssn <= 0.7 validated volume runs on patches
# Settings read from the data, not given: a resumed run reads them again.
_FROM_THE_DATA = ("in_channels", "spatial_dims")


class RunDir:
    """The files of one run directory (see the module docstring); ``path`` need not exist yet."""

    CONFIG, METRICS, STATE = "config.json", "metrics.jsonl", "state.pt"
    LAST, BEST, CALIBRATION, TENSORBOARD = "last.safetensors", "best.safetensors", "calibration.json", "tensorboard"
    SPLIT = "split.json"
    #: what a run writes; ``overwrite`` removes these before starting over
    FILES = (CONFIG, METRICS, STATE, LAST, BEST, CALIBRATION, SPLIT)

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def state_path(self) -> Path:
        return self.path / self.STATE

    def weights(self, which: str = "best") -> Path:
        """``best.safetensors`` or ``last.safetensors``."""
        return self.path / f"{which}.safetensors"

    @property
    def calibration_path(self) -> Path:
        return self.path / self.CALIBRATION

    @property
    def split_path(self) -> Path:
        """The training/validation split a run held out itself (no split file given)."""
        return self.path / self.SPLIT

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    # ------------------------------------------------------------------ preparing
    def held(self) -> list[str]:
        """The run files already here."""
        return [name for name in self.FILES if (self.path / name).exists()]

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Create the directory; refuse one that holds a run unless resuming it or starting it over."""
        held = self.held()
        if held and not (resume or overwrite):
            raise RunError(
                f"{self.path} already holds a run ({', '.join(held)}): continue it with --resume, start it over "
                "with --overwrite, or choose another --out"
            )
        if overwrite:
            for name in held:
                (self.path / name).unlink()
            shutil.rmtree(self.tensorboard_dir, ignore_errors=True)
        check_writable(self.config_path)

    # ------------------------------------------------------------------ the files
    def read_config(self) -> dict:
        """``config.json`` as written by ``ssn train``, checked; a run of ssn 0.1 gets its ``architecture``."""
        path = self.config_path
        if not path.is_file():
            raise RunError(f"{self.path} is not a run directory: it has no config.json (train one with `ssn train`)")
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunError(f"{path} is not valid JSON ({error}); the run directory is damaged") from None
        if not isinstance(config, dict):
            raise RunError(f"{path} is not a run's configuration (a JSON mapping)")
        if "architecture" not in config:
            config["architecture"] = _architecture_of_version_0_1(config)
        return config

    def write_config(self, record: dict) -> None:
        write_json(record, self.config_path)

    def read_state(self) -> dict:
        """``state.pt``, loaded as plain tensors and containers (``weights_only``)."""
        if not self.state_path.is_file():
            raise RunError(f"--resume: {self.state_path} does not exist; train without --resume first")
        try:
            return torch.load(self.state_path, weights_only=True, map_location="cpu")
        except Exception as error:  # pickle, zip and unpickler errors all mean one thing here
            raise RunError(
                f"--resume: {self.state_path} cannot be read ({type(error).__name__}); it is damaged. Resume is "
                "impossible: start over with --overwrite, or restore the file from a backup"
            ) from None

    def write_state(self, state: dict) -> None:
        write_atomically(self.state_path, lambda p: torch.save(state, p))

    def append_metrics(self, entry: dict) -> None:
        with open(self.metrics_path, "a") as file:
            file.write(json.dumps(entry) + "\n")

    def metrics(self) -> list[dict]:
        """The whole lines of ``metrics.jsonl`` (a line torn by a kill is left out)."""
        if not self.metrics_path.is_file():
            return []
        entries = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return entries

    def truncate_metrics(self, step: int) -> None:
        """Keep the lines of ``metrics.jsonl`` up to ``step`` (those of the resumed state), whole lines only."""
        if not self.metrics_path.is_file():
            return
        kept = [json.dumps(e) for e in self.metrics() if e.get("step", 0) <= step]
        write_atomically(self.metrics_path, lambda p: p.write_text("".join(f"{line}\n" for line in kept)))

    # ------------------------------------------------------------------ the resume policy
    def resumed_settings(self, given: dict[str, Any]) -> dict[str, Any]:
        """The run's own settings (its ``config.json``), with the given ones that a resume may change.

        Raises:
            ConfigError: a given setting that contradicts the run's, other than those a resume
                may change (:data:`RESUME_MAY_CHANGE`).
        """
        from .config import TrainConfig

        if given.get("overwrite"):
            raise ConfigError("--resume and --overwrite contradict each other: continue the run, or start it over")
        if not self.config_path.is_file():
            raise ConfigError(f"--resume: {self.config_path} does not exist; train without --resume first")
        try:
            saved = json.loads(self.config_path.read_text())
        except json.JSONDecodeError:
            raise ConfigError(f"--resume: {self.config_path} is not valid JSON; the run cannot be resumed") from None
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        settings = {k: v for k, v in saved.items() if k in names and k not in (*_FROM_THE_DATA, "overwrite")}
        settings.update({k: v for k, v in _BEFORE_THEY_EXISTED.items() if k not in saved})
        conflicts = [
            f"{k}: the run has {settings.get(k)!r}, the command gives {v!r}"
            for k, v in given.items()
            if k not in RESUME_MAY_CHANGE and k in settings and not _same(k, settings[k], v)
        ]
        if conflicts:
            raise ConfigError(
                "--resume continues the run as it was configured; these settings differ ("
                + "; ".join(conflicts)
                + "). Drop them, or train a new run in another --out"
            )
        settings.update({k: v for k, v in given.items() if k in RESUME_MAY_CHANGE})
        return settings

    def check_resumable(self, settings: dict[str, Any]) -> None:
        """Raise :class:`ConfigError` if a complete configuration (``TrainConfig.as_dict()``)
        differs from the run's in a setting that a resume may not change."""
        given = {k: v for k, v in settings.items() if k not in _FROM_THE_DATA}
        saved = self.read_config()
        if saved.get("num_classes") is not None and given.get("num_classes") is None:
            given.pop("num_classes", None)  # read from the data, as the run did
        self.resumed_settings({k: v for k, v in given.items() if k in saved or k in RESUME_MAY_CHANGE})


def _architecture_of_version_0_1(config: dict) -> dict:
    """Runs written by ssn 0.1 named the model by ``deterministic``, ``model``, ``features``, ``rank``."""
    missing = [k for k in ("model", "features", "spatial_dims", "in_channels", "num_classes") if k not in config]
    if missing:
        raise RunError(f"config.json lacks {', '.join(missing)}: it was not written by ssn train")
    deterministic = config.get("deterministic", False)
    return ModelSpec(
        method="deterministic" if deterministic else "ssn",
        backbone=config["model"],
        spatial_dims=config["spatial_dims"],
        in_channels=config["in_channels"],
        num_classes=config["num_classes"],
        method_kwargs={} if deterministic else {"rank": config["rank"], "mc_samples": config.get("mc_samples", 20)},
        backbone_kwargs={"features": config["features"]},
    ).as_dict()


def _same(key: str, a, b) -> bool:
    if key in ("data", "split_file") and a and b:
        return Path(a).resolve() == Path(b).resolve()
    return a == b

"""Trained models shipped inside the package, loaded offline: ``ssn.pretrained("lidc-2d")``.

Each lives in ``ssn/weights/NAME/`` as a run directory (``config.json``, ``best.safetensors``,
``calibration.json``) with a ``MODEL_CARD.md`` naming its data, split, budget, figures and the
data's licence. On the command line a run directory argument ``pretrained:NAME`` names one.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import RunError

__all__ = ["PREFIX", "available_pretrained", "pretrained_dir", "resolve_run_dir"]

PREFIX = "pretrained:"
_ROOT = Path(__file__).resolve().parent.parent / "weights"


def available_pretrained() -> list[str]:
    """Names of the models shipped with this installation."""
    if not _ROOT.is_dir():
        return []
    return sorted(p.name for p in _ROOT.iterdir() if (p / "config.json").is_file())


def pretrained_dir(name: str) -> Path:
    """The run directory of the shipped model ``name``."""
    if name not in available_pretrained():
        raise RunError(f"no pretrained model named {name!r}; shipped: {', '.join(available_pretrained()) or 'none'}")
    return _ROOT / name


def resolve_run_dir(run_dir: str | os.PathLike) -> Path:
    """A run directory, with ``pretrained:NAME`` mapped to the shipped model's directory."""
    text = str(run_dir)
    return pretrained_dir(text[len(PREFIX) :]) if text.startswith(PREFIX) else Path(run_dir)

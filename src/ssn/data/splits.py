"""Patient-level splits: from a split file, or a seeded hold-out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .arrays import DataError, SegmentationArrays

__all__ = ["select_split", "holdout_split", "read_split_file", "split_record", "select_recorded_split"]


def read_split_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{"splits": {"train": [patient ids], "val": [...], "test": [...]}}`` -> the inner dict."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such split file: {path}")
    try:
        content = json.loads(path.read_text())
        splits = content["splits"]
        if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(
            f'{path} is not a split file: expected JSON {{"splits": {{"train": [patient ids], ...}}}}'
        ) from None
    return {name: [str(p) for p in ids] for name, ids in splits.items()}


def select_split(data: SegmentationArrays, name: str, split_file: str | os.PathLike) -> np.ndarray:
    """Sorted indices of the images whose patient is in split ``name`` of ``split_file``."""
    splits = read_split_file(split_file)
    if name not in splits:
        raise DataError(f"split {name!r} is not in {split_file}; it has: {', '.join(splits)}")
    if data.patient is None:
        raise DataError("the data file has no 'patient' key, so a patient-level split file cannot apply")
    indices = np.flatnonzero(np.isin(data.patient, np.array(splits[name], dtype=str)))
    if indices.size == 0:
        raise DataError(f"no image of the data file belongs to split {name!r} of {split_file}")
    return indices


def holdout_split(data: SegmentationArrays, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices, holding out ``fraction`` of the patients (or of the images)."""
    groups = data.patient if data.patient is not None else np.arange(len(data)).astype(str)
    unique = np.unique(groups)
    if unique.size < 2:
        raise DataError("need at least two patients (or images) to hold some out for validation")
    rng = np.random.default_rng(seed)
    held = rng.choice(unique, size=max(1, round(fraction * unique.size)), replace=False)
    is_held = np.isin(groups, held)
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def split_record(data: SegmentationArrays, splits: dict[str, np.ndarray]) -> dict:
    """A split of ``data`` (name -> image indices) as JSON: a split file of patient ids when the
    data has them (``{"splits": {...}}``, as ``--split-file`` takes), else the image indices
    (``{"images": {...}}``)."""
    if data.patient is not None:
        return {"splits": {name: sorted({str(p) for p in data.patient[idx]}) for name, idx in splits.items()}}
    return {"images": {name: [int(i) for i in np.sort(idx)] for name, idx in splits.items()}}


def select_recorded_split(data: SegmentationArrays, name: str, path: str | os.PathLike) -> np.ndarray:
    """The images of split ``name`` of a run's ``split.json`` (see :func:`split_record`)."""
    content = json.loads(Path(path).read_text())
    if "splits" in content:
        return select_split(data, name, path)
    images = content.get("images", {})
    if name not in images:
        raise DataError(f"split {name!r} is not in {path}; it has: {', '.join(images)}")
    indices = np.asarray(images[name], dtype=np.int64)
    if indices.size and indices.max() >= len(data):
        raise DataError(
            f"{path} names image {int(indices.max())}, but the data holds {len(data)}: is it the run's data?"
        )
    return indices

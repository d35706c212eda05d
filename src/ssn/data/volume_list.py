"""Volume datasets: NIfTI cases listed in one JSON file, in the MONAI / Decathlon style.

The list (paths relative to the JSON file; ``labels`` and ``mask`` optional)::

    {"labels": {"0": 0, "1": 1, "2": 2, "3": 1, "4": 3},
     "training":   [{"id": "pat5", "image": ["flair.nii.gz", "t1c.nii.gz"],
                     "label": "seg.nii.gz", "mask": "brainmask.nii.gz"}],
     "validation": [...],
     "test":       [{"id": "tcga", "image": [...], "label": ["rater1.nii.gz", "rater2.nii.gz"]}]}

- ``image``: one file per input channel (MR sequence), all of one shape and affine.
- ``label``: one label map, or a list of them (one per annotator); optional for cases that are
  only sampled.
- ``labels``: file value -> class. Without it the file values are the classes. Class 0 is the
  background.
- ``mask``: the region of interest (a brain mask, > 0.5 inside). Without it, the voxels where
  any channel is non-zero (skull-stripped images are zero outside the brain).

This module parses and checks the list; :func:`ssn.data.nifti.read_case` reads a case's files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .nifti import nifti_stem, read_nifti

__all__ = ["VolumeCase", "VolumeList", "load_volume_list", "is_volume_list", "class_file_values"]

_SPLIT_ALIASES = {"train": "training", "val": "validation", "valid": "validation"}


@dataclass
class VolumeCase:
    """One case of a list: its id and absolute file paths."""

    id: str
    images: list[Path]
    labels: list[Path] = field(default_factory=list)
    mask: Path | None = None

    def files(self) -> list[Path]:
        return [*self.images, *self.labels, *([self.mask] if self.mask else [])]


@dataclass
class VolumeList:
    """A parsed dataset list: cases per split and the label mapping."""

    path: Path
    splits: dict[str, list[VolumeCase]]
    label_map: dict[int, int] | None = None
    sequences: list[str] | None = None  # the input channels' names, if the list gives them

    @property
    def in_channels(self) -> int:
        return len(self.all_cases()[0].images)

    @property
    def num_annotators(self) -> int:
        return max(len(case.labels) for case in self.all_cases())

    def all_cases(self) -> list[VolumeCase]:
        return [case for cases in self.splits.values() for case in cases]

    def split(self, name: str | None) -> list[VolumeCase]:
        """The cases of split ``name`` (``train``/``val`` are accepted for ``training``/``validation``);
        ``None``: every case."""
        if name is None:
            return self.all_cases()
        key = _SPLIT_ALIASES.get(name, name)
        if key not in self.splits:
            raise DataError(f"split {name!r} is not in {self.path}; it has: {', '.join(self.splits) or 'none'}")
        if not self.splits[key]:
            raise DataError(f"split {name!r} of {self.path} lists no case")
        return self.splits[key]

    def num_classes(self) -> int:
        """C = the largest class + 1 (at least 2): from the mapping, else read from the label files."""
        if self.label_map:
            return max(2, max(self.label_map.values()) + 1)
        largest = 1
        for case in self.all_cases():
            for path in case.labels:
                largest = max(largest, int(np.max(read_nifti(path)[0])))
        return largest + 1

    def file_values(self) -> dict[int, int]:
        """class -> the file value written for it: the smallest file value mapped to the class."""
        return {c: int(v) for c, v in enumerate(class_file_values(self.label_map, self.num_classes()))}


def class_file_values(label_map: dict[int, int] | None, num_classes: int) -> np.ndarray:
    """(num_classes,) uint8 lookup class -> the file value written for it: the smallest file
    value that ``label_map`` (file value -> class) sends to the class; without a mapping, the
    class itself."""
    values = np.arange(max(num_classes, 1), dtype=np.uint8)
    if label_map:
        for value, cls in sorted(label_map.items(), reverse=True):
            values[cls] = value
    return values


def is_volume_list(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a dataset list (a ``.json`` file) rather than an ``.npz``."""
    return str(path).lower().endswith(".json")


def load_volume_list(path: str | os.PathLike) -> VolumeList:
    """Parse and check a dataset list; every listed file must exist.

    Raises:
        DataError: a missing list or file, a malformed list, cases with different channel counts.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such dataset list: {path}")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(content, dict):
        raise DataError(f'{path} must be a JSON object such as {{"training": [...], "test": [...]}}')
    base = path.parent
    label_map = _parse_label_map(content.get("labels"), path)
    splits: dict[str, list[VolumeCase]] = {}
    for name, entries in content.items():
        if name in ("labels", "name", "description", "regions", "sequences"):
            continue
        if not isinstance(entries, list):
            raise DataError(f"{path}: {name!r} must be a list of cases")
        splits[name] = [_parse_case(entry, base, path, f"{name}[{i}]") for i, entry in enumerate(entries)]
    sequences = content.get("sequences")
    listed = VolumeList(path, splits, label_map, [str(x) for x in sequences] if isinstance(sequences, list) else None)
    cases = listed.all_cases()
    if not cases:
        raise DataError(f'{path} lists no case; give at least one split such as "training"')
    for name, split_cases in splits.items():
        ids = [case.id for case in split_cases]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise DataError(f"{path}: case ids must be unique within a split; {name!r} repeats {', '.join(duplicated)}")
    channels = {len(case.images) for case in cases}
    if len(channels) > 1:
        raise DataError(f"{path}: every case needs the same number of image files; found {sorted(channels)}")
    return listed


def _parse_label_map(raw, path: Path) -> dict[int, int] | None:
    if raw is None:
        return None
    try:
        mapping = {int(float(k)): int(v) for k, v in raw.items()}
    except (AttributeError, TypeError, ValueError):
        raise DataError(f'{path}: "labels" must map file values to classes, e.g. {{"0": 0, "4": 3}}') from None
    classes = sorted(set(mapping.values()))
    if not classes or mapping.get(0, 0) != 0 or classes[0] != 0 or classes != list(range(len(classes))):
        raise DataError(f'{path}: "labels" must send 0 to class 0 and use the classes 0..C-1 without gaps; got {raw}')
    return mapping


def _parse_case(entry, base: Path, path: Path, where: str) -> VolumeCase:
    if not isinstance(entry, dict) or "image" not in entry:
        raise DataError(f'{path}: {where} must be an object with at least "image"')
    images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
    labels = entry.get("label", [])
    labels = labels if isinstance(labels, list) else [labels]
    mask = entry.get("mask")
    if not images:
        raise DataError(f"{path}: {where} has no image file")
    for name in (*images, *labels, *([mask] if mask else [])):
        if not isinstance(name, str) or not name:
            raise DataError(
                f"{path}: {where}: file names must be non-empty strings (paths relative to the list); got {name!r}"
            )
    case = VolumeCase(
        id=str(entry.get("id") or nifti_stem(images[0])),
        images=[(base / p).resolve() for p in images],
        labels=[(base / p).resolve() for p in labels],
        mask=(base / mask).resolve() if mask else None,
    )
    for file in case.files():
        if not file.is_file():
            raise DataError(f"{path}: case {case.id!r}: missing file {file}")
    return case

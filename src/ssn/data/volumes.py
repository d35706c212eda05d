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

A case is read with nibabel when first used and checked (shapes and affines agree, label
values are in the mapping, the mask is not empty). Each channel is then z-scored inside the mask
and set to 0 outside. The result is cached uncompressed in ``$SSN_CACHE_DIR`` (default
``~/.cache/ssn``) and memory-mapped afterwards, so that drawing a training patch reads only the
patch: volumes are never all in memory at once. Arrays keep the file's voxel order, so outputs
written with the case's affine line up with the input in any viewer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .arrays import cache_dir, read_cached, write_cache_folder

__all__ = [
    "VolumeCase",
    "Volume",
    "VolumeList",
    "load_volume_list",
    "is_volume_list",
    "read_case",
    "index_brats",
    "BRATS_LABELS",
    "BRATS_REGIONS",
]

#: The BraTS file labels (0 background, 1 necrotic/non-enhancing core, 2 oedema, 3 non-enhancing
#: core in BraTS 2013, 4 enhancing) as the SSN paper's four classes: 3 merges into 1.
BRATS_LABELS = {0: 0, 1: 1, 2: 2, 3: 1, 4: 3}
#: The regions BraTS reports, as sets of BraTS file labels: whole tumour, tumour core, enhancing.
BRATS_REGIONS = {"whole tumour": (1, 2, 3, 4), "tumour core": (1, 3, 4), "enhancing tumour": (4,)}
_SPLIT_ALIASES = {"train": "training", "val": "validation", "valid": "validation"}
_NIFTI = (".nii", ".nii.gz")


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
class Volume:
    """A case read and normalised; arrays may be memory-mapped.

    Attributes:
        image: (channels, *S) float32, z-scored inside ``mask``, 0 outside.
        labels: (A, *S) uint8 classes, or ``None`` for a case without label maps.
        mask: (*S) bool, the region of interest.
        affine: (4, 4) voxel-to-world matrix of the first image file.
    """

    id: str
    image: np.ndarray
    labels: np.ndarray | None
    mask: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


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
                largest = max(largest, int(np.max(_read(path)[0])))
        return largest + 1

    def file_values(self) -> dict[int, int]:
        """class -> the file value written for it: the smallest file value mapped to the class."""
        if not self.label_map:
            return {c: c for c in range(self.num_classes())}
        out: dict[int, int] = {}
        for value, cls in sorted(self.label_map.items()):
            out.setdefault(cls, value)
        return out


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
        id=str(entry.get("id") or _stem(images[0])),
        images=[(base / p).resolve() for p in images],
        labels=[(base / p).resolve() for p in labels],
        mask=(base / mask).resolve() if mask else None,
    )
    for file in case.files():
        if not file.is_file():
            raise DataError(f"{path}: case {case.id!r}: missing file {file}")
    return case


def _stem(name: str) -> str:
    name = Path(name).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ------------------------------------------------------------------------------ reading
def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data as stored, in voxel order; affine) of a NIfTI file."""
    import nibabel

    try:
        image: Any = nibabel.load(str(path))  # a NIfTI image (nibabel's stubs name only its base class)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for a damaged file
        raise DataError(f"{path} is not a readable NIfTI file: {error}") from None
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path} holds an array of shape {data.shape}; a volume must be 3D")
    return data, np.asarray(image.affine, dtype=np.float64)


def _case_key(case: VolumeCase, label_map: dict[int, int] | None) -> str:
    parts = [json.dumps(sorted((label_map or {}).items()))]
    for file in case.files():
        stat = file.stat()
        parts.append(f"{file}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def read_case(case: VolumeCase, label_map: dict[int, int] | None = None, cache: bool = True) -> Volume:
    """Read, check and normalise a case (memory-mapped from the cache after the first read).

    Raises:
        DataError: files whose shapes or affines disagree, label values outside the mapping (or
            not integers), an empty mask, a missing or unreadable file.
    """
    folder = cache_dir() / "volumes" / _case_key(case, label_map) if cache else None
    if folder is not None and (folder / "done.json").is_file():
        cached = read_cached(folder, lambda f: _read_cached_case(case, f))
        if cached is not None:
            return cached
    volume = _decode(case, label_map)
    if folder is None:
        return volume
    arrays = {"image": volume.image, "mask": volume.mask}
    if volume.labels is not None:
        arrays["labels"] = volume.labels

    def write(temporary: Path) -> None:
        for name, array in arrays.items():
            np.save(temporary / f"{name}.npy", array)
        (temporary / "done.json").write_text(
            json.dumps({"id": case.id, "affine": volume.affine.tolist(), "shape": list(volume.shape)})
        )

    write_cache_folder(folder, write)
    return _read_cached_case(case, folder)


def _read_cached_case(case: VolumeCase, folder: Path) -> Volume:
    meta = json.loads((folder / "done.json").read_text())
    labels = folder / "labels.npy"
    volume = Volume(
        case.id,
        np.load(folder / "image.npy", mmap_mode="r"),
        np.load(labels, mmap_mode="r") if labels.is_file() else None,
        np.load(folder / "mask.npy", mmap_mode="r"),
        np.array(meta["affine"]),
    )
    if list(volume.image.shape[1:]) != meta["shape"] or list(volume.mask.shape) != meta["shape"]:
        raise ValueError(f"the cached arrays have shape {volume.image.shape[1:]}, not {meta['shape']}")
    return volume


def _decode(case: VolumeCase, label_map: dict[int, int] | None) -> Volume:
    channels: list[np.ndarray] = []
    affine: np.ndarray | None = None
    for path in case.images:
        data, this_affine = _read(path)
        if affine is None:
            affine, shape, first = this_affine, data.shape, path
        _check_alike(case, first, shape, affine, path, data.shape, this_affine)
        channels.append(np.asarray(data, dtype=np.float32))
    image = np.stack(channels)
    if not np.isfinite(image).all():
        raise DataError(f"case {case.id!r}: the images contain NaN or infinite values")
    if case.mask is not None:
        data, this_affine = _read(case.mask)
        _check_alike(case, first, shape, affine, case.mask, data.shape, this_affine)
        mask = np.asarray(data, dtype=np.float32) > 0.5
        where = f"its mask {case.mask.name}"
    else:
        mask = (image != 0).any(0)
        where = "its images (no mask given: the non-zero voxels are used)"
    if not mask.any():
        raise DataError(f"case {case.id!r}: {where} is empty; the region of interest needs at least one voxel")
    labels = None
    if case.labels:
        maps = []
        for path in case.labels:
            data, this_affine = _read(path)
            _check_alike(case, first, shape, affine, path, data.shape, this_affine)
            maps.append(_to_classes(np.asarray(data), label_map, case, path))
        labels = np.stack(maps)
    assert affine is not None  # a case has at least one image (VolumeCase checks)
    return Volume(case.id, normalise(image, mask), labels, mask, affine)


def _check_alike(case, first: Path, shape, affine, path: Path, this_shape, this_affine) -> None:
    if tuple(this_shape) != tuple(shape):
        raise DataError(
            f"case {case.id!r}: {path.name} has shape {tuple(this_shape)} but {first.name} has {tuple(shape)}; "
            "resample the files of a case onto one grid"
        )
    if not np.allclose(this_affine, affine, atol=1e-3):
        raise DataError(
            f"case {case.id!r}: the affine of {path.name} differs from that of {first.name}; the files "
            "of a case must share one voxel grid (co-register and resample them first)"
        )


def _to_classes(data: np.ndarray, label_map: dict[int, int] | None, case, path: Path) -> np.ndarray:
    values = np.unique(data)
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values)):
        raise DataError(f"case {case.id!r}: {path.name} holds non-integer values; a label map holds integers")
    values = values.astype(np.int64)
    if label_map is None:
        bad = [int(v) for v in values if not 0 <= v < 256]
        if bad:
            raise DataError(
                f'case {case.id!r}: {path.name} holds labels {bad} outside [0, 256); give a "labels" mapping'
            )
        return np.asarray(data).astype(np.uint8)
    bad = [int(v) for v in values if int(v) not in label_map]
    if bad:
        raise DataError(
            f'case {case.id!r}: {path.name} holds the values {bad}, which the list\'s "labels" mapping '
            f"({', '.join(map(str, sorted(label_map)))}) does not name; add them to the mapping"
        )
    lookup = np.zeros(max(label_map) + 1, dtype=np.uint8)
    for value, cls in label_map.items():
        lookup[value] = cls
    return lookup[np.asarray(data).astype(np.int64)]


def normalise(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each channel of (channels, *S) z-scored over the voxels inside ``mask`` and 0 outside."""
    out = np.zeros_like(image, dtype=np.float32)
    for c, channel in enumerate(image):
        inside = channel[mask].astype(np.float64)
        std = inside.std()
        out[c][mask] = (inside - inside.mean()) / (std if std > 0 else 1.0)
    return out


# --------------------------------------------------------------------- indexing a tree
_SEQUENCE_TOKENS = {
    "flair": ("flair", "fla"),
    "t1": ("t1", "t1n"),
    "t1c": ("t1c", "t1ce", "t1gd"),
    "t2": ("t2", "t2w"),
}
_LABEL_TOKENS = ("seg", "otmulticlass", "label", "labels")
_MASK_TOKENS = ("brainmask", "mask")
_SPLIT_FOLDERS = {
    "train": "training",
    "training": "training",
    "validation": "validation",
    "val": "validation",
    "test": "test",
    "testing": "test",
}


def _tokens(path: Path) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", _stem(path.name).lower())) - {""}


def index_brats(root: str | os.PathLike, sequences: list[str] | None = None, default_split: str = "test") -> dict:
    """A dataset list (as a dict, paths relative to ``root``) for a BraTS-style folder tree.

    A case is a folder holding NIfTI files named after MR sequences (``flair``/``fla``, ``t1``,
    ``t1c``/``t1ce``, ``t2``). Its label maps are the files named ``seg``, ``OTMultiClass`` or
    ``label``, or every NIfTI file of a ``segmentation`` folder beside the sequences (several
    annotators); a ``brainmask`` file is its mask. Cases under a folder named ``train``,
    ``validation`` or ``test`` go to that split, the others to ``default_split``. The label
    mapping is BraTS's (3 merged into 1). ``sequences`` picks and orders the input channels
    (default: those every case has, in the order flair, t1, t1c, t2).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no such folder: {root}")
    found = []
    for folder in sorted({p.parent for p in root.rglob("*") if p.name.lower().endswith(_NIFTI)}):
        files = sorted(p for p in folder.iterdir() if p.name.lower().endswith(_NIFTI))
        present = {}
        for name, tokens in _SEQUENCE_TOKENS.items():
            matches = [p for p in files if _tokens(p) & set(tokens)]
            if len(matches) == 1:
                present[name] = matches[0]
        if not present:
            continue
        case_dir = folder.parent if folder.name.lower() in ("raw_bet", "images", "image") else folder
        labels = [p for p in files if _tokens(p) & set(_LABEL_TOKENS)]
        segmentation = case_dir / "segmentation"
        if not labels and segmentation.is_dir():
            labels = sorted(p for p in segmentation.iterdir() if p.name.lower().endswith(_NIFTI))
        masks = [p for p in files if _tokens(p) & set(_MASK_TOKENS)]
        relative = case_dir.relative_to(root).parts
        split = next((_SPLIT_FOLDERS[p.lower()] for p in relative if p.lower() in _SPLIT_FOLDERS), default_split)
        found.append((split, case_dir.name, present, labels, masks[0] if masks else None))
    if not found:
        raise DataError(f"no case found under {root}: expected folders of NIfTI files named after MR sequences")
    if sequences is None:
        common = set.intersection(*(set(present) for _, _, present, _, _ in found))
        sequences = [name for name in _SEQUENCE_TOKENS if name in common]
    unknown = [s for s in sequences if s not in _SEQUENCE_TOKENS]
    if unknown or not sequences:
        raise DataError(f"unknown sequences {unknown or sequences}; choose from {', '.join(_SEQUENCE_TOKENS)}")
    listing: dict = {"labels": {str(k): v for k, v in BRATS_LABELS.items()}, "sequences": sequences}
    for split, case_id, present, labels, mask in found:
        missing = [s for s in sequences if s not in present]
        if missing:
            raise DataError(f"case {case_id} under {root} lacks the sequences {', '.join(missing)}")
        entry = {"id": case_id, "image": [str(present[s].relative_to(root)) for s in sequences]}
        if labels:
            names = [str(p.relative_to(root)) for p in labels]
            entry["label"] = names[0] if len(names) == 1 else names
        if mask is not None:
            entry["mask"] = str(mask.relative_to(root))
        listing.setdefault(split, []).append(entry)
    return listing

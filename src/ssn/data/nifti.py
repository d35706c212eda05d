"""NIfTI volumes: reading and writing files, checking the files of a case, label maps, z-scoring.

A case is read with nibabel when first used and checked (shapes and affines agree, label
values are in the mapping, the mask is not empty). Its intensities then become the model's input
as the run says (``ssn train --intensity``, :data:`INTENSITIES`): by default each channel is
z-scored inside the mask; ``stored`` keeps the files' values, as a 2D model trained on the
stored grey levels saw them. Either way the voxels outside the mask are set to 0. The result is cached uncompressed (:mod:`ssn.data.cache`) and
memory-mapped afterwards, so that drawing a training patch reads only the patch: volumes are
never all in memory at once. Arrays keep the file's voxel order, so outputs written with the
case's affine line up with the input in any viewer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, DataError
from ..files import write_atomically
from .cache import cache_dir, read_cached, write_cache_folder

if TYPE_CHECKING:
    from .volume_list import VolumeCase

__all__ = [
    "Volume",
    "read_case",
    "read_nifti",
    "write_nifti",
    "normalise",
    "normalise_volume",
    "NIFTI_SUFFIXES",
    "INTENSITIES",
    "model_input",
    "run_intensity",
]

#: The file name endings of NIfTI files.
NIFTI_SUFFIXES = (".nii", ".nii.gz")

#: How a case's intensities become the model's input, the run's ``intensity`` setting:
#: ``zscore``, each channel z-scored over the voxels inside the mask (the default), or
#: ``stored``, the files' values as they are (float32). Both set the voxels outside the mask to 0.
INTENSITIES = ("zscore", "stored")


@dataclass
class Volume:
    """A case read and normalised; arrays may be memory-mapped.

    Attributes:
        image: (channels, *S) float32, z-scored inside ``mask`` (or as stored, see
            :data:`INTENSITIES`), 0 outside.
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


def nifti_stem(name: str | Path) -> str:
    """A NIfTI file's name without its ``.nii`` or ``.nii.gz``."""
    name = Path(name).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, description: str = "") -> None:
    """Write ``array`` (*S) or (*S, C) with ``affine``, atomically; ``description`` goes in the
    header's ``descrip`` (at most 79 characters)."""
    import nibabel

    image = nibabel.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    if description:
        image.header["descrip"] = description[:79].encode()
    write_atomically(path, lambda temporary: nibabel.save(image, str(temporary)))


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
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


def _case_key(case: VolumeCase, label_map: dict[int, int] | None, intensity: str) -> str:
    parts = [json.dumps(sorted((label_map or {}).items())), intensity]
    for file in case.files():
        stat = file.stat()
        parts.append(f"{file}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def read_case(
    case: VolumeCase, label_map: dict[int, int] | None = None, cache: bool = True, intensity: str = "zscore"
) -> Volume:
    """Read, check and normalise a case (memory-mapped from the cache after the first read).

    ``intensity`` is one of :data:`INTENSITIES`: a run's setting, :func:`run_intensity`.

    Raises:
        DataError: files whose shapes or affines disagree, label values outside the mapping (or
            not integers), an empty mask, a missing or unreadable file.
    """
    check_intensity(intensity)
    folder = cache_dir() / "volumes" / _case_key(case, label_map, intensity) if cache else None
    if folder is not None and (folder / "done.json").is_file():
        cached = read_cached(folder, lambda f: _read_cached_case(case, f))
        if cached is not None:
            return cached
    volume = _decode(case, label_map, intensity)
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


def _decode(case: VolumeCase, label_map: dict[int, int] | None, intensity: str) -> Volume:
    channels: list[np.ndarray] = []
    affine: np.ndarray | None = None
    for path in case.images:
        data, this_affine = read_nifti(path)
        if affine is None:
            affine, shape, first = this_affine, data.shape, path
        _check_alike(case, first, shape, affine, path, data.shape, this_affine)
        channels.append(np.asarray(data, dtype=np.float32))
    image = np.stack(channels)
    if not np.isfinite(image).all():
        raise DataError(f"case {case.id!r}: the images contain NaN or infinite values")
    if case.mask is not None:
        data, this_affine = read_nifti(case.mask)
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
            data, this_affine = read_nifti(path)
            _check_alike(case, first, shape, affine, path, data.shape, this_affine)
            maps.append(_to_classes(np.asarray(data), label_map, case, path))
        labels = np.stack(maps)
    assert affine is not None  # a case has at least one image (VolumeCase checks)
    return Volume(case.id, model_input(image, mask, intensity), labels, mask, affine)


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


def model_input(image: np.ndarray, mask: np.ndarray, intensity: str = "zscore") -> np.ndarray:
    """(channels, *S) intensities as a model takes them (see :data:`INTENSITIES`): z-scored
    over ``mask`` or as stored, 0 outside ``mask`` either way; float32."""
    check_intensity(intensity)
    if intensity == "zscore":
        return normalise(image, mask)
    return np.where(mask, image, 0).astype(np.float32)


def normalise_volume(image: np.ndarray, intensity: str = "zscore") -> np.ndarray:
    """(channels, *S) raw intensities as a model takes them (:func:`model_input`) over the
    voxels where any channel is non-zero, the region of interest of a list's case without a mask.

    Raises:
        DataError: an all-zero volume (no region of interest).
    """
    inside = (image != 0).any(0)
    if not inside.any():
        raise DataError("the volume is all zero: it has no region of interest to normalise over")
    return model_input(image, inside, intensity)


def check_intensity(intensity: str) -> None:
    """Refuse an ``intensity`` that is not one of :data:`INTENSITIES`."""
    if intensity not in INTENSITIES:
        raise ConfigError(f"intensity must be one of {', '.join(INTENSITIES)}; got {intensity!r}")


def run_intensity(config: dict) -> str:
    """The ``intensity`` a run was trained with, from its configuration (``zscore`` for runs
    older than the setting)."""
    intensity = config.get("intensity", "zscore")
    check_intensity(intensity)
    return intensity

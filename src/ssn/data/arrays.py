"""The dataset format: images with one label map per annotator, in one ``.npz`` file.

Keys (N images, A annotators, channels optional):

- ``images``  (N, H, W), (N, channels, H, W) or, for volumes, (N, channels, D, H, W);
  uint8 or float, finite;
- ``masks``   (N, A, H, W) or (N, A, D, H, W), integer labels in [0, C);
- ``patient`` (N,) str, optional: patient ids for patient-level splits;
- ``truth_maps`` (N, K, *S) and ``truth_probs`` (N, K), optional: the exact label distribution of
  each image (K possible maps and their probabilities), as synthetic data has it.

Reading is fast and bounded: the first load of a compressed file writes each array once,
uncompressed, to a cache folder (``$SSN_CACHE_DIR``, default ``~/.cache/ssn``) keyed on the
file's path, size and modification time; later loads memory-map the cache, so the data is
neither read twice nor copied per data-loader worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import write_atomically
from .cache import cache_dir, read_cached, write_cache_folder

__all__ = ["DataError", "SegmentationArrays", "load_arrays", "save_arrays", "validate_values", "float_images"]


_OPTIONAL = ("patient", "truth_maps", "truth_probs")
_KEYS = ("images", "masks") + _OPTIONAL


@dataclass
class SegmentationArrays:
    """Images (N, channels, *S) and masks (N, A, *S), both possibly memory-mapped."""

    images: np.ndarray
    masks: np.ndarray
    patient: np.ndarray | None = None
    truth_maps: np.ndarray | None = None
    truth_probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.masks.ndim in (4, 5) and self.images.ndim == self.masks.ndim - 1:  # (N, *S): a channel axis, as a view
            self.images = self.images[:, None]
        validate_shapes(self.images, self.masks, self.patient)
        if (self.truth_maps is None) != (self.truth_probs is None):
            raise DataError("truth_maps and truth_probs come together; the file has only one of them")
        if (
            self.truth_maps is not None
            and self.truth_probs is not None
            and (
                self.truth_maps.shape[:1] + self.truth_maps.shape[2:] != self.masks.shape[:1] + self.masks.shape[2:]
                or self.truth_probs.shape != self.truth_maps.shape[:2]
            )
        ):
            raise DataError(
                f"truth_maps must be (N, K, *S) and truth_probs (N, K) for masks {self.masks.shape}; "
                f"got {self.truth_maps.shape} and {self.truth_probs.shape}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.masks.shape[2:])

    @property
    def num_annotators(self) -> int:
        return self.masks.shape[1]

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    def num_classes(self) -> int:
        """C = the largest label + 1 (at least 2)."""
        return max(2, int(self.masks.max()) + 1)

    def truth(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(maps (K, *S), probabilities (K,)) of image ``index``, if the data has the truth."""
        if self.truth_maps is None or self.truth_probs is None:
            return None
        return self.truth_maps[index], self.truth_probs[index]


def validate_shapes(images: np.ndarray, masks: np.ndarray, patient: np.ndarray | None) -> None:
    """Cheap checks of shapes and dtypes; raise :class:`DataError` naming the first problem."""
    if masks.ndim not in (4, 5):
        raise DataError(f"masks must be (N, A, H, W) or (N, A, D, H, W); got shape {masks.shape}")
    if images.ndim != masks.ndim:
        raise DataError(
            f"images must be (N, H, W), (N, channels, H, W) or (N, channels, D, H, W) to match masks "
            f"{masks.shape}; got {images.shape}"
        )
    if images.shape[0] != masks.shape[0] or images.shape[2:] != masks.shape[2:]:
        raise DataError(f"images {images.shape} and masks {masks.shape} disagree on N or the spatial size")
    if images.shape[0] == 0:
        raise DataError("the file holds no images (N = 0)")
    if masks.shape[1] == 0:
        raise DataError("masks hold no annotator (A = 0)")
    if images.shape[1] == 0 or 0 in masks.shape[2:]:
        raise DataError(f"images {images.shape} have no channel or no pixels")
    if not (np.issubdtype(masks.dtype, np.integer) or masks.dtype == bool):
        raise DataError(f"masks must hold integer labels; got dtype {masks.dtype}")
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise DataError(f"images must be uint8 or float; got dtype {images.dtype}")
    if patient is not None and patient.shape != (images.shape[0],):
        raise DataError(f"patient must have one id per image, shape ({images.shape[0]},); got {patient.shape}")


def float_images(images: np.ndarray) -> np.ndarray:
    """Images as the models take them, float32: uint8 scaled to [0, 1], floats as they are
    (a copy either way)."""
    images = np.asarray(images)
    return images.astype(np.float32) / np.float32(255) if images.dtype == np.uint8 else images.astype(np.float32)


def validate_values(data: SegmentationArrays) -> None:
    """Checks that read every value (finite images, non-negative labels); run once per file."""
    if np.issubdtype(data.images.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data.images)))
        if bad:
            raise DataError(f"images contain {bad} NaN or infinite values; clean or drop those images")
    if int(data.masks.min()) < 0:
        raise DataError(f"masks contain negative labels (min {int(data.masks.min())}); labels must be in [0, C)")


def _cache_key(path: Path) -> str:
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load_arrays(path: str | os.PathLike, cache: bool = True) -> SegmentationArrays:
    """Load and check a dataset ``.npz``; memory-map an uncompressed cache of it.

    Raises:
        DataError: missing file or keys, a truncated or corrupt file, wrong shapes, bad labels,
            NaN images.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such data file: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes)")
    folder = cache_dir() / _cache_key(path) if cache else None
    if folder is not None and (folder / "done.json").exists():
        cached = read_cached(folder, _read_cache)
        if cached is not None:
            return cached
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("images", "masks") if k not in archive.files]
            if missing:
                raise DataError(
                    f"{path} lacks {', '.join(missing)}; a dataset .npz needs 'images' and 'masks' "
                    f"(found: {', '.join(archive.files) or 'nothing'})"
                )
            arrays = {k: archive[k] for k in _KEYS if k in archive.files}
            odd = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]  # numpy returns such members as bytes
            if odd:
                raise DataError(f"{path}: {', '.join(odd)} in it are not .npy arrays; write the file with numpy.savez")
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise DataError(f"{path} is not a readable .npz (truncated or corrupt?): {error}") from None
    except MemoryError as error:  # a header claiming an array larger than memory
        raise DataError(
            f"{path}: an array in it does not fit in memory ({error}); the file is corrupt, or too "
            "large for this machine: split it into smaller .npz files"
        ) from None
    if "patient" in arrays:
        arrays["patient"] = arrays["patient"].astype(str)
    data = SegmentationArrays(**arrays)
    validate_values(data)
    if folder is not None:
        write_cache_folder(folder, lambda temporary: _write_cache(temporary, data))
        return _read_cache(folder)
    return data


def _write_cache(folder: Path, data: SegmentationArrays) -> None:
    for name in _KEYS:
        array = getattr(data, name)
        if array is not None:
            np.save(folder / f"{name}.npy", np.ascontiguousarray(array))
    (folder / "done.json").write_text(json.dumps({"images": list(data.images.shape)}))


def _read_cache(folder: Path) -> SegmentationArrays:
    arrays = {}
    for name in _KEYS:
        file = folder / f"{name}.npy"
        if file.exists():
            arrays[name] = np.load(file, mmap_mode=None if name == "patient" else "r")
    shape = json.loads((folder / "done.json").read_text())["images"]
    if list(arrays["images"].shape) != shape:
        raise ValueError(f"images.npy has shape {arrays['images'].shape}, not {shape}")
    return SegmentationArrays(**arrays)


def save_arrays(path: str | os.PathLike, data: SegmentationArrays, compress: bool = True) -> None:
    """Write a dataset ``.npz`` atomically (to a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(getattr(data, k)) for k in _KEYS if getattr(data, k) is not None}
    if "patient" in arrays:
        arrays["patient"] = arrays["patient"].astype(str)
    save: Callable[..., None] = np.savez_compressed if compress else np.savez
    write_atomically(path, lambda p: save(p, **arrays))

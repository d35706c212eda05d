"""Converters from the common LIDC distributions into the dataset format.

- ``png_tree``: ``ROOT/LIDC-IDRI-XXXX/nodule-Y/{images,mask-0,...,mask-3}/slice-N.png``;
- ``probabilistic_unet_pickle``: the PyTorch Probabilistic U-Net port's ``data_lidc.pickle``, a
  dict of ``{key: {"image": (H, W), "masks": [A x (H, W)], "series_uid": str}}``. It is read with
  a restricted unpickler that admits numpy arrays and plain containers only: a pickle that asks
  for anything else is refused, never run;
- ``phiseg_hdf5``: PHiSeg's LIDC file with groups ``train``/``val``/``test``, each holding
  ``images`` (N, H, W) and ``labels`` (N, H, W, A).

Each returns :class:`SegmentationArrays` (and the PHiSeg converter the split it came with);
nothing is written unless every image was read.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import numpy as np

from .arrays import DataError, SegmentationArrays, validate_values

__all__ = ["png_tree", "probabilistic_unet_pickle", "phiseg_hdf5"]

_SLICE = re.compile(r"slice-(\d+)\.png$")


def _slice_number(path: Path) -> int:
    """The number of ``slice-N.png`` (names that do not match sort first)."""
    match = _SLICE.search(path.name)
    return int(match.group(1)) if match else -1


_PATIENT = re.compile(r"LIDC-IDRI-\d{4}")


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{path} is not a readable PNG: {error}") from None


def png_tree(root: str | os.PathLike, num_annotators: int = 4) -> SegmentationArrays:
    """Read ``ROOT/<patient>/<nodule>/{images,mask-0..}/slice-N.png`` (masks: nonzero = 1)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no such folder: {root}")
    images, masks, patients = [], [], []
    for patient in sorted(p for p in root.iterdir() if p.is_dir()):
        for nodule in sorted(n for n in patient.iterdir() if n.is_dir()):
            image_dir = nodule / "images"
            if not image_dir.is_dir():
                raise DataError(f"{nodule} has no images/ folder")
            slices = sorted(image_dir.glob("slice-*.png"), key=_slice_number)
            for image_path in slices:
                mask_paths = [nodule / f"mask-{k}" / image_path.name for k in range(num_annotators)]
                missing = [str(p) for p in mask_paths if not p.is_file()]
                if missing:
                    raise DataError(f"{image_path} lacks its masks: {', '.join(missing)}")
                images.append(_read_png(image_path))
                masks.append(np.stack([(_read_png(p) > 0).astype(np.uint8) for p in mask_paths]))
                patients.append(patient.name)
    if not images:
        raise DataError(f"{root} holds no <patient>/<nodule>/images/slice-N.png files")
    shapes = {i.shape for i in images}
    if len(shapes) > 1:
        raise DataError(f"the PNGs under {root} have different sizes: {sorted(shapes)}")
    data = SegmentationArrays(np.stack(images), np.stack(masks), np.array(patients))
    validate_values(data)
    return data


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays, dtypes and scalars and plain containers; refuses every other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(
            f"the pickle asks for {module}.{name}, which is not a numpy array or a plain container; "
            "refusing to load it (pickles can run arbitrary code)"
        )


def probabilistic_unet_pickle(path: str | os.PathLike) -> SegmentationArrays:
    """Read ``data_lidc.pickle``; patients come from ``LIDC-IDRI-XXXX`` in the key, else the series UID."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    try:
        content = _ArraysOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except DataError:
        raise
    except Exception as error:  # a truncated or corrupt pickle can fail in many ways
        raise DataError(f"{path} is not a readable pickle: {error}") from None
    if not isinstance(content, dict) or not content:
        raise DataError(f"{path} must hold a non-empty dict of {{key: {{'image', 'masks', 'series_uid'}}}}")
    images, masks, patients = [], [], []
    for key in sorted(content):
        entry = content[key]
        if not isinstance(entry, dict) or "image" not in entry or "masks" not in entry:
            raise DataError(f"entry {key!r} of {path} lacks 'image' or 'masks'")
        image = np.asarray(entry["image"])
        if np.issubdtype(image.dtype, np.floating) and image.max() <= 1.0:
            image = np.round(image * 255)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
        masks.append(np.stack([(np.asarray(m) > 0).astype(np.uint8) for m in entry["masks"]]))
        found = _PATIENT.search(str(key))
        patients.append(found.group(0) if found else str(entry.get("series_uid", key)))
    try:
        data = SegmentationArrays(np.stack(images), np.stack(masks), np.array(patients))
    except ValueError as error:
        raise DataError(f"the entries of {path} have different shapes: {error}") from None
    validate_values(data)
    return data


def phiseg_hdf5(path: str | os.PathLike) -> tuple[SegmentationArrays, dict[str, list[str]]]:
    """Read PHiSeg's LIDC hdf5; return the data and its train/val/test split (ids per group)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{path} is not a readable HDF5 file: {error}") from None
    images, masks, ids, split = [], [], [], {}
    with handle:
        groups = [g for g in ("train", "val", "test") if g in handle]
        if not groups:
            raise DataError(f"{path} has none of the groups train, val, test (found: {', '.join(handle) or 'nothing'})")
        for group in groups:
            if "images" not in handle[group] or "labels" not in handle[group]:
                raise DataError(f"{path}:{group} needs datasets 'images' (N, H, W) and 'labels' (N, H, W, A)")
            image, label = np.asarray(handle[group]["images"]), np.asarray(handle[group]["labels"])
            if label.ndim != 4 or image.shape != label.shape[:3]:
                raise DataError(f"{path}:{group}: images {image.shape} and labels {label.shape} do not match")
            if label.size and (label.min() < 0 or label.max() > 255 or not np.array_equal(label, np.round(label))):
                raise DataError(
                    f"{path}:{group}: labels must be integers in [0, 255]; found values from "
                    f"{label.min()} to {label.max()}"
                )
            images.append(image.astype(np.float32))
            masks.append(np.moveaxis(label, -1, 1).astype(np.uint8))
            names = [f"phiseg-{group}-{i:05d}" for i in range(image.shape[0])]
            ids += names
            split[group] = names
    data = SegmentationArrays(np.concatenate(images), np.concatenate(masks), np.array(ids))
    validate_values(data)
    return data, split

"""Converters from the common LIDC distributions into the dataset format, and the BraTS tree index.

- ``png_tree``: ``ROOT/LIDC-IDRI-XXXX/nodule-Y/{images,mask-0,...}/slice-N.png``, or flat
  ``ROOT/images/NAME.png`` with one folder per annotator; any number of annotators;
- ``probabilistic_unet_pickle``: the PyTorch Probabilistic U-Net port's ``data_lidc.pickle``, a
  dict of ``{key: {"image": (H, W), "masks": [A x (H, W)], "series_uid": str}}``. It is read with
  a restricted unpickler that admits numpy arrays and plain containers only: a pickle that asks
  for anything else is refused, never run;
- ``phiseg_hdf5``: PHiSeg's LIDC file with groups ``train``/``val``/``test``, each holding
  ``images`` (N, H, W) and ``labels`` (N, H, W, A).

Each returns :class:`SegmentationArrays` (and the PHiSeg converter the split it came with);
nothing is written unless every image was read.

``index_brats`` indexes a BraTS-style folder tree of NIfTI files as a volume list
(:mod:`ssn.data.volume_list`), with BraTS's label mapping.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import numpy as np

from .arrays import DataError, SegmentationArrays, validate_values
from .nifti import NIFTI_SUFFIXES, nifti_stem

__all__ = ["png_tree", "probabilistic_unet_pickle", "phiseg_hdf5", "index_brats", "BRATS_LABELS", "BRATS_REGIONS"]

#: The BraTS file labels (0 background, 1 necrotic/non-enhancing core, 2 oedema, 3 non-enhancing
#: core in BraTS 2013, 4 enhancing) as the SSN paper's four classes: 3 merges into 1.
BRATS_LABELS = {0: 0, 1: 1, 2: 2, 3: 1, 4: 3}
#: The regions BraTS reports, as sets of BraTS file labels: whole tumour, tumour core, enhancing.
BRATS_REGIONS = {"whole tumour": (1, 2, 3, 4), "tumour core": (1, 3, 4), "enhancing tumour": (4,)}

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


def png_tree(root: str | os.PathLike, num_annotators: int | None = None) -> SegmentationArrays:
    """Read a folder of PNG slices with one mask folder per annotator (masks: nonzero = 1).

    Two layouts:

    - the LIDC tree, ``ROOT/<patient>/<nodule>/{images,mask-0,mask-1,...}/slice-N.png``;
    - flat, ``ROOT/images/NAME.png`` with one folder per annotator, ``ROOT/<rater>/NAME.png``
      (raters in name order; the patient is the ``LIDC-IDRI-XXXX`` in NAME, else NAME itself).

    Any number of annotators, the same for every image; ``num_annotators`` requires that many.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no such folder: {root}")
    if (root / "images").is_dir():
        found = _flat_png_layout(root)
    else:
        found = _lidc_png_tree(root)
    if not found:
        raise DataError(
            f"{root} holds no PNG slices: expected <patient>/<nodule>/images/slice-N.png with mask-0, mask-1, ... "
            "beside images/, or images/NAME.png with one folder per annotator"
        )
    counts = sorted({len(masks) for _, masks, _ in found})
    if len(counts) > 1:
        raise DataError(f"the images under {root} have different numbers of annotators ({counts}); give each the same")
    if num_annotators is not None and counts != [num_annotators]:
        raise DataError(f"{root} has {counts[0]} annotator(s) per image, not {num_annotators}")
    images = [_read_png(image) for image, _, _ in found]
    masks = [np.stack([(_read_png(m) > 0).astype(np.uint8) for m in mask_paths]) for _, mask_paths, _ in found]
    shapes = {i.shape for i in images} | {m.shape[1:] for m in masks}
    if len(shapes) > 1:
        raise DataError(f"the PNGs under {root} have different sizes: {sorted(shapes)}")
    data = SegmentationArrays(np.stack(images), np.stack(masks), np.array([patient for _, _, patient in found]))
    validate_values(data)
    return data


def _mask_number(folder: Path) -> int:
    return int(folder.name.split("-", 1)[1]) if folder.name.split("-", 1)[1].isdigit() else -1


def _lidc_png_tree(root: Path) -> list[tuple[Path, list[Path], str]]:
    """(image, its masks, patient) for ``ROOT/<patient>/<nodule>/{images,mask-K}/slice-N.png``."""
    found = []
    for patient in sorted(p for p in root.iterdir() if p.is_dir()):
        for nodule in sorted(n for n in patient.iterdir() if n.is_dir()):
            image_dir = nodule / "images"
            if not image_dir.is_dir():
                raise DataError(f"{nodule} has no images/ folder")
            raters = sorted((d for d in nodule.glob("mask-*") if d.is_dir()), key=_mask_number)
            if not raters:
                raise DataError(f"{nodule} has no mask-0, mask-1, ... folders beside images/")
            for image_path in sorted(image_dir.glob("slice-*.png"), key=_slice_number):
                found.append((image_path, _masks_of(image_path, raters), patient.name))
    return found


def _flat_png_layout(root: Path) -> list[tuple[Path, list[Path], str]]:
    """(image, its masks, patient) for ``ROOT/images/NAME.png`` and ``ROOT/<rater>/NAME.png``."""
    raters = sorted(d for d in root.iterdir() if d.is_dir() and d.name != "images")
    if not raters:
        raise DataError(f"{root} has images/ but no annotator folders beside it (one folder of masks per rater)")
    found = []
    for image_path in sorted((root / "images").glob("*.png"), key=lambda p: (_slice_number(p), p.name)):
        match = _PATIENT.search(image_path.stem)
        found.append((image_path, _masks_of(image_path, raters), match.group(0) if match else image_path.stem))
    return found


def _masks_of(image_path: Path, raters: list[Path]) -> list[Path]:
    masks = [rater / image_path.name for rater in raters]
    missing = [str(m) for m in masks if not m.is_file()]
    if missing:
        raise DataError(f"{image_path} lacks its masks: {', '.join(missing)}")
    return masks


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


# ------------------------------------------------------------ indexing a BraTS tree
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
    return set(re.split(r"[^a-z0-9]+", nifti_stem(path.name).lower())) - {""}


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
    for folder in sorted({p.parent for p in root.rglob("*") if p.name.lower().endswith(NIFTI_SUFFIXES)}):
        files = sorted(p for p in folder.iterdir() if p.name.lower().endswith(NIFTI_SUFFIXES))
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
            labels = sorted(p for p in segmentation.iterdir() if p.name.lower().endswith(NIFTI_SUFFIXES))
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

"""LIDC-3D: the slices of each LIDC nodule stacked into a volume with its four readers' masks.

``lidc_slices_128.npz`` holds 2D crops with ``patient``, ``nodule`` and ``slice`` for each.
Stacking a nodule's crops in ``slice`` order gives a volume of 128 x 128 x depth with four
annotator maps: 2,630 nodule volumes, depth median 4 slices, 90% at most 11, at most 56. The
converter writes, per nodule, ``<patient>_<nodule>/image.nii.gz`` (the uint8 grey levels as
float32 / 255), ``reader0.nii.gz`` ... (uint8 0/1) and ``mask.nii.gz`` (the whole crop is the
region of interest), and a volume list (:mod:`ssn.data.volume_list`) whose training, validation
and test splits follow the patient-level ``split.json``.

The crops carry no voxel spacing, so the affine is the identity: 1 x 1 x 1 mm is assumed, which
is wrong in physical terms (LIDC's pixels are about 0.5-0.9 mm and its slices 0.6-3 mm apart)
but the same for every volume, which is what training and evaluation need. Volumes shallower
than a training patch are padded by the patch sampler and by the sliding window (which warns).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import write_json
from .nifti import write_nifti

__all__ = ["convert_lidc_3d", "nodule_volumes", "ATTRIBUTION"]

ATTRIBUTION = (
    "Armato III, S. G., McLennan, G., Bidaut, L., et al. (2011). The Lung Image Database Consortium (LIDC) and "
    "Image Database Resource Initiative (IDRI): a completed reference database of lung nodules on CT scans. "
    "Medical Physics, 38(2), 915-931. Data: The Cancer Imaging Archive, LIDC-IDRI collection, CC BY 3.0."
)
_SPLITS = {"train": "training", "val": "validation", "test": "test"}


def nodule_volumes(
    patient: np.ndarray, nodule: np.ndarray, slice_index: np.ndarray
) -> dict[tuple[str, str], np.ndarray]:
    """(patient, nodule) -> the indices of its slices, in ``slice`` order.

    Raises:
        DataError: a nodule that lists one slice number twice.
    """
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(patient.astype(str), nodule.astype(str))):
        groups[key].append(i)
    out = {}
    for key, members in groups.items():
        order = np.asarray(members)[np.argsort(slice_index[members], kind="stable")]
        numbers = slice_index[order]
        if np.any(numbers[1:] == numbers[:-1]):
            raise DataError(
                f"nodule {key[1]} of {key[0]} lists slice {int(numbers[np.argmax(numbers[1:] == numbers[:-1])])} twice"
            )
        out[key] = order
    return out


def convert_lidc_3d(
    npz: str | os.PathLike, out: str | os.PathLike, split_file: str | os.PathLike | None = None, log=print
) -> Path:
    """Write the nodule volumes of ``npz`` under ``out`` and the volume list ``out/lidc3d.json``.

    ``split_file`` (default: ``split.json`` beside ``npz`` if there is one) puts each patient's
    nodules in training, validation or test; without one every nodule goes to ``test``.

    Returns:
        the path of the volume list.
    """
    npz, out = Path(npz), Path(out)
    if not npz.is_file():
        raise DataError(f"no such file: {npz}")
    split_file = (
        Path(split_file)
        if split_file
        else (npz.parent / "split.json" if (npz.parent / "split.json").is_file() else None)
    )
    with np.load(npz, allow_pickle=False) as archive:
        missing = [k for k in ("images", "masks", "patient", "nodule", "slice") if k not in archive.files]
        if missing:
            raise DataError(f"{npz} lacks {', '.join(missing)}: LIDC-3D needs the slices' patient, nodule and slice")
        images, masks = archive["images"], archive["masks"]
        patient, nodule, slice_index = archive["patient"].astype(str), archive["nodule"].astype(str), archive["slice"]
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or masks.ndim != 4:
        raise DataError(
            f"{npz}: expected images (N, H, W) and masks (N, A, H, W); got {images.shape} and {masks.shape}"
        )
    where = {}
    if split_file is not None:
        splits = json.loads(Path(split_file).read_text())["splits"]
        where = {str(p): _SPLITS.get(name, name) for name, patients in splits.items() for p in patients}
    listing: dict = {
        "name": "LIDC-3D: LIDC-IDRI nodules as volumes of their 128x128 crops, four readers each",
        "description": "voxel spacing unknown (the crops carry none): identity affine, 1 mm assumed. " + ATTRIBUTION,
        "labels": {"0": 0, "1": 1},
    }
    out.mkdir(parents=True, exist_ok=True)
    affine = np.eye(4)
    volumes = nodule_volumes(patient, nodule, slice_index)
    depths = []
    for count, ((who, which), order) in enumerate(sorted(volumes.items())):
        case = f"{who}_{which}"
        folder = out / case
        folder.mkdir(exist_ok=True)
        image = np.moveaxis(images[order], 0, -1).astype(np.float32) / 255  # (H, W, depth)
        readers = np.moveaxis(masks[order], 0, -1)  # (A, H, W, depth)
        write_nifti(folder / "image.nii.gz", image, affine)
        write_nifti(folder / "mask.nii.gz", np.ones(image.shape, np.uint8), affine)
        for a, reader in enumerate(readers):
            write_nifti(folder / f"reader{a}.nii.gz", (reader > 0).astype(np.uint8), affine)
        entry = {
            "id": case,
            "image": f"{case}/image.nii.gz",
            "label": [f"{case}/reader{a}.nii.gz" for a in range(len(readers))],
            "mask": f"{case}/mask.nii.gz",
        }
        split = where.get(who, "test") if where else "test"
        listing.setdefault(split, []).append(entry)
        depths.append(len(order))
        if (count + 1) % 500 == 0:
            log(f"  {count + 1} of {len(volumes)} nodule volumes written")
    path = out / "lidc3d.json"
    write_json(listing, path)
    sizes = {name: len(cases) for name, cases in listing.items() if isinstance(cases, list)}
    log(
        f"wrote {path}: {len(volumes)} nodule volumes of 128x128 x depth {min(depths)}-{max(depths)} (median "
        f"{int(np.median(depths))}), {masks.shape[1]} readers each; splits {sizes}"
    )
    return path

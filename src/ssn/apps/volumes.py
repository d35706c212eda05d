"""Sampling and evaluating whole NIfTI volumes with a run trained on patches.

``ssn sample --run RUN --input LIST.json [--split test] --samples N --out DIR`` writes, per case,

- ``DIR/<id>/sample_000.nii.gz`` ... : uint8 label maps in the files' own label values;
- ``DIR/<id>/mean.nii.gz``: the per-class frequencies of the samples, (*S, C) float32;
- ``DIR/<id>/entropy.nii.gz``: the entropy of those frequencies, in nats;

all with the input's affine and shape, so that they overlay the input in any viewer. The input
may also be one case folder (its sequence files found by name, as ``ssn convert brats`` does)
or the sequence files themselves, in the run's channel order.

``ssn evaluate --run RUN --data LIST.json --split test`` reports, per case and per structure
(each class, and for BraTS labels the whole tumour, tumour core and enhancing tumour), GED^2,
sample diversity, Hungarian-matched IoU and the Dice of the mean prediction.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import metrics
from ..data.volumes import (
    BRATS_LABELS,
    BRATS_REGIONS,
    VolumeCase,
    index_brats,
    is_volume_list,
    load_volume_list,
    read_case,
)
from ..distributed import join
from ..engine.checkpoints import load_run, write_json
from ..errors import ConfigError, DataError
from ..files import check_writable, write_atomically, write_csv
from ..inference.sliding import predict_volume, roi_box
from ..metrics.regions import class_structures, structure_metrics

__all__ = ["is_volume_input", "sample_volumes", "evaluate_volumes", "write_nifti"]

_NIFTI = (".nii", ".nii.gz")


def is_volume_input(inputs: list[str]) -> bool:
    """Whether ``--input`` names volumes: a list ``.json``, a case folder, or NIfTI files."""
    first = str(inputs[0])
    return (
        is_volume_list(first)
        or Path(first).is_dir()
        or (len(inputs) > 1 or first.lower().endswith(_NIFTI))
        and all(str(p).lower().endswith(_NIFTI) for p in inputs)
    )


def _label_map(config: dict) -> dict[int, int] | None:
    raw = config.get("label_map")
    return {int(k): int(v) for k, v in raw.items()} if raw else None


def _cases(inputs: list[str], split: str | None, config: dict) -> list[VolumeCase]:
    first = Path(inputs[0])
    if is_volume_list(first):
        return load_volume_list(first).split(split)
    if first.is_dir():
        listing = index_brats(first, config.get("sequences"))
        cases = [
            case for key, value in listing.items() if isinstance(value, list) and key != "sequences" for case in value
        ]
        return [
            VolumeCase(
                c["id"],
                [(first / p).resolve() for p in c["image"]],
                [],
                (first / c["mask"]).resolve() if c.get("mask") else None,
            )
            for c in cases
        ]
    missing = [p for p in inputs if not Path(p).is_file()]
    if missing:
        raise DataError(f"no such input file: {missing[0]}")
    name = first.name
    stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else first.stem
    return [VolumeCase(stem, [Path(p).resolve() for p in inputs])]


def _prepare(run_dir, temperature, device):
    world, device = join(device)
    model, config = load_run(run_dir, temperature=temperature)
    model.to(device)
    if config["architecture"]["spatial_dims"] != 3:
        raise ConfigError(
            f"{run_dir} is a {config['architecture']['spatial_dims']}D model; NIfTI volumes need a 3D one"
        )
    return model, config, world, device


def _window(config: dict, window: list[int] | None) -> list[int]:
    window = window or config.get("patch_size")
    if not window:
        raise ConfigError("the run was not trained on patches; give the sliding window with --window X Y Z")
    return list(window)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` (*S) or (*S, C) with ``affine``, atomically."""
    import nibabel

    image = nibabel.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    write_atomically(path, lambda temporary: nibabel.save(image, str(temporary)))


def sample_volumes(
    run_dir,
    inputs: list[str],
    split: str | None = None,
    num_samples: int = 16,
    out="samples",
    device: str = "cpu",
    seed: int = 0,
    temperature: float | None = None,
    window: list[int] | None = None,
    overlap: float = 0.5,
    log=print,
) -> list[Path]:
    """Draw ``num_samples`` label maps of each input volume and write them as NIfTI (see the module)."""
    if num_samples < 1:
        raise ConfigError(f"need --samples >= 1; got {num_samples}")
    model, config, world, device = _prepare(run_dir, temperature, device)
    window = _window(config, window)
    label_map = _label_map(config)
    values = _file_values(label_map, model.num_classes)
    written = []
    for case in world.shard(_cases(inputs, split, config)):  # under torchrun, each process its share
        start = time.perf_counter()
        case = VolumeCase(case.id, case.images, [], case.mask)  # sampling needs no label map
        volume = read_case(case, label_map, cache=False)
        _check_channels(volume, config)
        generator = torch.Generator().manual_seed(seed)
        box, stream = predict_volume(
            model, volume.image, volume.mask, num_samples, window, overlap, model.temperature, generator, device
        )
        folder = Path(out) / case.id
        folder.mkdir(parents=True, exist_ok=True)
        counts = torch.zeros((model.num_classes, *_box_shape(box)), dtype=torch.int32)
        for index, labels in enumerate(stream):
            for c in range(model.num_classes):
                counts[c] += labels == c
            full = np.zeros(volume.shape, dtype=np.uint8)
            full[box] = values[labels.numpy()]
            write_nifti(folder / f"sample_{index:03d}.nii.gz", full, volume.affine)
        frequencies = np.zeros((*volume.shape, model.num_classes), dtype=np.float32)
        frequencies[..., 0] = 1.0  # outside the box: background
        frequencies[box] = (counts.float() / num_samples).movedim(0, -1).numpy()
        write_nifti(folder / "mean.nii.gz", frequencies, volume.affine)
        logs = np.log(np.where(frequencies > 0, frequencies, 1.0))
        write_nifti(folder / "entropy.nii.gz", -(frequencies * logs).sum(-1).astype(np.float32), volume.affine)
        log(
            f"{case.id}: {num_samples} samples, mean.nii.gz and entropy.nii.gz in {folder} "
            f"({time.perf_counter() - start:.0f} s, temperature {model.temperature:g})"
        )
        written.append(folder)
    return written


def _file_values(label_map: dict[int, int] | None, num_classes: int) -> np.ndarray:
    """A lookup class -> the file value written for it (the smallest value mapped to the class)."""
    values = np.arange(max(num_classes, 1), dtype=np.uint8)
    if label_map:
        for value, cls in sorted(label_map.items(), reverse=True):
            values[cls] = value
    return values


def _box_shape(box: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in box)


def _check_channels(volume, config: dict) -> None:
    expected = config["architecture"]["in_channels"]
    if volume.image.shape[0] != expected:
        names = f" ({', '.join(config['sequences'])})" if config.get("sequences") else ""
        raise DataError(
            f"case {volume.id!r} has {volume.image.shape[0]} image files but the model takes "
            f"{expected} channels{names}; give them in that order"
        )


def structures_for(label_map: dict[int, int] | None, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Each class, plus the BraTS regions when the labels are BraTS's."""
    if label_map == BRATS_LABELS:
        names = {1: "necrotic/non-enhancing core", 2: "oedema", 3: "enhancing"}
        unions = {name: [label_map[v] for v in values] for name, values in BRATS_REGIONS.items()}
        return class_structures(num_classes, names, unions)
    return class_structures(num_classes)


def evaluate_volumes(
    run_dir,
    data_path,
    split: str | None = "test",
    num_samples: int = 100,
    out=None,
    device: str = "cpu",
    seed: int = 0,
    temperature: float | None = None,
    window: list[int] | None = None,
    overlap: float = 0.5,
    classes: str | None = None,
    matching: str = "repeat",
    log=print,
) -> dict:
    """Evaluate a 3D run on the cases of one split of a volume list (see the module).

    Besides each structure (a binary map, where the conventions agree), the rows
    ``multi-class (present)`` and ``multi-class (all)`` score the whole label maps in both
    conventions of averaging over classes (:mod:`ssn.metrics.functional`), or only in
    ``classes`` when it is given. ``matching`` chooses the Hungarian matching's convention.
    """
    if num_samples < 2:
        raise ConfigError(f"need --samples >= 2; got {num_samples}")
    try:
        metrics.functional._check_conventions(classes or "present", matching)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    conventions = [classes] if classes else ["present", "all"]
    model, config, world, device = _prepare(run_dir, temperature, device)
    if out is not None and world.main:
        check_writable(out)  # before minutes of work, not after
    window = _window(config, window)
    listing = load_volume_list(data_path)
    label_map = listing.label_map
    structures = structures_for(label_map, model.num_classes)
    matched = tuple(sorted({min(16, num_samples), num_samples}))
    rows, start = [], time.perf_counter()
    for case in world.shard(listing.split(split)):  # under torchrun, each process its share
        volume = read_case(case, label_map)
        _check_channels(volume, config)
        if volume.labels is None:
            raise DataError(f"case {case.id!r} has no label map to evaluate against")
        region = np.asarray(volume.mask) | np.asarray(volume.labels).any(0)
        box = roi_box(region)
        generator = torch.Generator().manual_seed(seed)
        _, stream = predict_volume(
            model,
            volume.image,
            volume.mask,
            num_samples,
            window,
            overlap,
            model.temperature,
            generator,
            device,
            box=box,
        )
        samples = torch.stack(list(stream))
        annotations = torch.from_numpy(np.array(volume.labels[(slice(None), *box)]))
        for name, values in structure_metrics(samples, annotations, structures, matched, matching).items():
            rows.append({"case": case.id, "structure": name, **values})
        for convention in conventions:
            values = metrics.image_metrics(
                samples, annotations, model.num_classes, matched, classes=convention, matching=matching
            )
            rows.append({"case": case.id, "structure": f"multi-class ({convention})", **values})
        log(
            f"{case.id}: "
            + ", ".join(
                f"{r['structure']} Dice {r['dice']:.3f} GED^2 {r['ged']:.3f}" for r in rows if r["case"] == case.id
            )
        )
    order = {case.id: k for k, case in enumerate(listing.split(split))}
    rows = sorted((row for part in world.gather(rows) for row in part), key=lambda row: order[row["case"]])
    summary = {
        "structures": {},
        "num_samples": num_samples,
        "num_cases": len({r["case"] for r in rows}),
        "run": str(run_dir),
        "data": str(data_path),
        "split": split,
        "temperature": model.temperature,
        "window": window,
        "overlap": overlap,
        "seconds": time.perf_counter() - start,
        "conventions": {"classes": conventions, "matching": matching},
        "model": config["architecture"],
    }
    for name in [*structures, *(f"multi-class ({c})" for c in conventions)]:
        chosen = [r for r in rows if r["structure"] == name]
        summary["structures"][name] = {
            key: _mean_and_stderr([r[key] for r in chosen]) for key in chosen[0] if key not in ("case", "structure")
        }
    if out is not None and world.main:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(summary, out)
        write_csv(rows, out.with_suffix(".csv"))
    return summary


def _mean_and_stderr(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    stderr = float(array.std(ddof=1) / np.sqrt(array.size)) if array.size > 1 else None
    return {"mean": float(array.mean()), "stderr": stderr, "num_cases": int(array.size)}

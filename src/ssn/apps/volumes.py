"""Sampling and evaluating whole NIfTI volumes with a run trained on patches.

``ssn sample --run RUN --input LIST.json [--split test] --samples N --out DIR`` writes, per case,

- ``DIR/<id>/sample_000.nii.gz`` ... : uint8 label maps in the files' own label values;
- ``DIR/<id>/mean.nii.gz``: the per-class frequencies of the samples, (*S, C) float32, channel c for
  class c; ``mean.json`` beside it names each channel's class and the file's label value for it;
- ``DIR/<id>/entropy.nii.gz``: the entropy of those frequencies, in nats;

all with the input's affine and shape, so that they overlay the input in any viewer. The input
may also be one case folder (its sequence files found by name, as ``ssn convert brats`` does)
or the sequence files themselves, in the run's channel order.

``ssn evaluate --run RUN --data LIST.json --split test`` reports, per case and per structure
(each class, and for BraTS labels the whole tumour, tumour core and enhancing tumour), GED^2,
sample diversity, Hungarian-matched IoU and the Dice of the mean prediction.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics
from ..data.converters import BRATS_LABELS, BRATS_REGIONS, index_brats
from ..data.nifti import NIFTI_SUFFIXES, nifti_stem, read_case, run_intensity, write_nifti
from ..data.volume_list import VolumeCase, class_file_values, is_volume_list, load_volume_list
from ..distributed import join
from ..engine.checkpoints import load_run
from ..errors import ConfigError, DataError
from ..files import write_json
from ..inference.sliding import labelled_draws, predict_volume
from ..metrics.aggregation import Estimate
from ..metrics.regions import class_structures, structure_metrics
from ..randomness import case_seed
from .evaluate import prepare_evaluation, write_results

__all__ = ["is_volume_input", "sample_volumes", "evaluate_volumes"]


def is_volume_input(inputs: list[str]) -> bool:
    """Whether ``--input`` names volumes: a list ``.json``, a case folder, or NIfTI files."""
    first = str(inputs[0])
    return (
        is_volume_list(first)
        or Path(first).is_dir()
        or (len(inputs) > 1 or first.lower().endswith(NIFTI_SUFFIXES))
        and all(str(p).lower().endswith(NIFTI_SUFFIXES) for p in inputs)
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
    return [VolumeCase(nifti_stem(first), [Path(p).resolve() for p in inputs])]


def _load_3d(run_dir, temperature, device):
    model, config = load_run(run_dir, temperature=temperature)
    model.to(device)
    if config["architecture"]["spatial_dims"] != 3:
        raise ConfigError(
            f"{run_dir} is a {config['architecture']['spatial_dims']}D model; NIfTI volumes (a volume list, a case folder or NIfTI files) need a 3D one"
        )
    return model, config


def _window(config: dict, window: list[int] | None) -> list[int]:
    window = window or config.get("patch_size")
    if not window:
        raise ConfigError("the run was not trained on patches; give the sliding window with --window X Y Z")
    if len(window) != 3 or min(window) < 1:
        raise ConfigError(
            f"--window needs three sides of at least 1 voxel, e.g. 64 64 64; got {' '.join(map(str, window))}"
        )
    return list(window)


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
    world, device = join(device)
    model, config = _load_3d(run_dir, temperature, device)
    window = _window(config, window)
    label_map = _label_map(config)
    values = class_file_values(label_map, model.num_classes)
    written: list[Path] = []
    warned: set[tuple[int, ...]] = set()
    for case in world.shard(_cases(inputs, split, config)):  # under torchrun, each process its share
        start = time.perf_counter()
        case = VolumeCase(case.id, case.images, [], case.mask)  # sampling needs no label map
        volume = read_case(case, label_map, cache=False, intensity=run_intensity(config))
        _check_channels(volume, config)
        _warn_window(case.id, window, volume.shape, warned)
        generator = torch.Generator().manual_seed(case_seed(seed, case.id))  # each case its own draws
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
        write_nifti(folder / "mean.nii.gz", frequencies, volume.affine, description="P(class) per channel: mean.json")
        channels = [{"channel": c, "class": c, "file_value": int(values[c])} for c in range(model.num_classes)]
        write_json(
            {"mean.nii.gz": "the samples' frequency of each class, one channel per class", "channels": channels},
            folder / "mean.json",
        )
        entropy = metrics.frequency_entropy(torch.from_numpy(frequencies), dim=-1).numpy()
        write_nifti(folder / "entropy.nii.gz", entropy, volume.affine)
        log(
            f"{case.id}: {num_samples} samples, mean.nii.gz and entropy.nii.gz in {folder} "
            f"({time.perf_counter() - start:.0f} s, temperature {model.temperature:g})"
        )
        written.append(folder)
    return written


def _box_shape(box: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in box)


def _warn_window(case_id: str, window, shape, warned: set) -> None:
    """One line on stderr the first time (per ``warned``, one set per command) that the sliding
    window is larger than a volume along an axis: the network then pads the volume there
    (reflecting it, where training patches of volumes that small were zero-padded; on LIDC-3D
    the two gave validation GED² 0.497 and 0.502). A model trained on larger volumes only never
    saw such padding."""
    larger = tuple(k for k, (w, s) in enumerate(zip(window, shape)) if w > s)
    if larger and larger not in warned:
        warned.add(larger)
        print(
            f"ssn: warning: case {case_id!r} (and any later one like it): the window {'x'.join(map(str, window))} "
            f"is larger than the volume {'x'.join(map(str, shape))} along axis {', '.join(map(str, larger))}; the "
            "network pads the volume there (if no training volume was that small, give a smaller --window)",
            file=sys.stderr,
        )


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
    world, device, matched = prepare_evaluation(num_samples, classes, matching, out, device)
    conventions = [classes] if classes else ["present", "all"]
    model, config = _load_3d(run_dir, temperature, device)
    window = _window(config, window)
    listing = load_volume_list(data_path)
    cases = listing.split(split)
    structures = structures_for(listing.label_map, model.num_classes)
    sampling = dict(num_samples=num_samples, window=window, overlap=overlap, seed=seed, device=device, warned=set())
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for case in world.shard(cases):  # under torchrun, each process its share
        mine = _case_rows(model, config, case, listing.label_map, structures, conventions, matched, matching, sampling)
        log(f"{case.id}: " + ", ".join(f"{r['structure']} Dice {r['dice']:.3f} GED^2 {r['ged']:.3f}" for r in mine))
        rows += mine
    order = {case.id: k for k, case in enumerate(cases)}
    rows = sorted((row for part in world.gather(rows) for row in part), key=lambda row: order[row["case"]])
    summary = {
        "structures": _per_structure(rows, [*structures, *(f"multi-class ({c})" for c in conventions)]),
        "num_samples": num_samples,
        "num_cases": len(order),
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
    if world.main:
        write_results(summary, rows, out)
    return summary


def _case_rows(model, config, case, label_map, structures, conventions, matched, matching, sampling) -> list[dict]:
    """One row per structure (and per class convention of the whole map) for one case: its
    samples drawn through sliding windows over the box around the mask and the labels."""
    volume = read_case(case, label_map, intensity=run_intensity(config))
    _check_channels(volume, config)
    _warn_window(case.id, sampling["window"], volume.shape, sampling["warned"])
    if volume.labels is None:
        raise DataError(f"case {case.id!r} has no label map to evaluate against")
    samples, annotations = labelled_draws(
        model,
        volume.image,
        volume.mask,
        volume.labels,
        sampling["num_samples"],
        sampling["window"],
        sampling["overlap"],
        sampling["seed"],
        sampling["device"],
        case_id=case.id,
    )
    rows: list[dict[str, Any]] = [
        {"case": case.id, "structure": name, **values}
        for name, values in structure_metrics(samples, annotations, structures, matched, matching).items()
    ]
    for convention in conventions:
        values = metrics.image_metrics(
            samples, annotations, model.num_classes, matched, classes=convention, matching=matching
        )
        rows.append({"case": case.id, "structure": f"multi-class ({convention})", **values})
    return rows


def _per_structure(rows: list[dict], names: list[str]) -> dict:
    """{structure: {metric: {"mean", "stderr", "num_cases"}}}: the means over cases, with their
    standard errors (``None`` for one case)."""
    out: dict[str, dict] = {}
    for name in names:
        chosen = [r for r in rows if r["structure"] == name]
        out[name] = {}
        for key in chosen[0]:
            if key not in ("case", "structure"):
                estimate = Estimate.of([r[key] for r in chosen]).as_dict()
                out[name][key] = {"mean": estimate["mean"], "stderr": estimate["stderr"], "num_cases": len(chosen)}
    return out

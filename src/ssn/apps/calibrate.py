"""Choosing the sampling temperature on validation data: ``ssn calibrate``.

A model whose samples spread too much (or too little) around its mean is corrected by drawing
at a temperature t: eta = mu + t (P z + sqrt(D) eps) for the SSN, z = mu_z + t sigma_z eps for
the Probabilistic U-Net. ``calibrate`` tries a grid of temperatures on validation images, all
with the same random draws (so the curve compares temperatures, not draws), keeps the one of
lowest GED^2 and stores it in the run as ``calibration.json``. ``ssn evaluate`` and
``ssn sample`` then use it unless ``--temperature`` says otherwise. Training is unchanged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from .. import metrics
from ..distributed import join
from ..engine.checkpoints import CALIBRATION_FILE, load_run, write_json
from ..engine.pretrained import PREFIX, resolve_run_dir
from ..engine.rundir import RunDir
from ..errors import ConfigError, DataError
from ..files import check_writable
from ..inference import images_to_predict, predict_batches_at

__all__ = ["calibrate", "DEFAULT_TEMPERATURES"]

DEFAULT_TEMPERATURES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0)


def calibrate(
    run_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    split: str | None = None,
    split_file: str | os.PathLike | None = None,
    temperatures=DEFAULT_TEMPERATURES,
    num_samples: int = 16,
    max_images: int | None = 512,
    batch_size: int = 16,
    device: str = "cpu",
    seed: int = 0,
    write: bool = True,
    out: str | os.PathLike | None = None,
    log=print,
) -> dict:
    """GED^2(``num_samples``) at each temperature on (up to ``max_images`` of) the chosen images.

    Returns (and, with ``write``, stores) the chosen temperature with the whole curve:
    ``{"temperature", "curve": [{"temperature", "ged", "stderr"}], ...}``. It is stored in
    ``out`` when given, else in ``run_dir/calibration.json``, where ``evaluate`` and ``sample``
    find it. A shipped model (``pretrained:NAME``) lives inside the installed package, so its
    calibration needs ``out`` (and is then used with ``--temperature``).
    """
    temperatures, target, world, device = _prepare(run_dir, temperatures, num_samples, write, out, device)
    model, config = load_run(run_dir, temperature=1.0)
    if not model.has_spread:
        raise ConfigError("a deterministic model has no spread to calibrate; calibrate an ssn or prob-unet run")
    model.to(device)
    data, indices = images_to_predict(
        model, data_path, split, split_file, default_split="val", run_split=RunDir(resolve_run_dir(run_dir)).split_path
    )
    if max_images is not None and indices.size > max_images:
        indices = np.sort(np.random.default_rng(seed).choice(indices, size=max_images, replace=False))
    start = time.perf_counter()
    scores = [metrics.GeneralizedEnergyDistance(model.num_classes) for _ in temperatures]
    # one network pass per batch for every temperature; image i draws from (seed, i): the same
    # draws at every temperature, in every process
    for chunk, labels in predict_batches_at(
        model, data.images, world.shard(indices), temperatures, num_samples, batch_size, device, seed=seed
    ):
        readers = torch.from_numpy(np.ascontiguousarray(data.masks[chunk]))
        for score, maps in zip(scores, labels):
            score.update(maps, readers)
    curve = []
    for t, score in zip(temperatures, scores):
        estimate = score.compute()
        curve.append({"temperature": t, "ged": estimate.mean, "stderr": estimate.stderr})
        if world.main:
            log(f"  t = {t:g}: GED^2({num_samples}) {estimate.mean:.4f} +- {estimate.stderr:.4f}")
    best = min(curve, key=lambda point: point["ged"])
    result = {
        **_chosen(best, curve, num_samples),
        "num_images": int(indices.size),
        "data": str(data_path),
        "split": (split or "val") if split_file or split else "all",
        "seed": seed,
        "seconds": time.perf_counter() - start,
        "curve": curve,
    }
    if target is not None and world.main:
        write_json(result, target)
    (log if world.main else (lambda *_: None))(
        f"temperature {best['temperature']:g}: validation GED^2({num_samples}) {best['ged']:.4f} "
        f"(at t = 1: {_describe(_at(curve, 1.0))}) on {indices.size} images"
        + (f"; stored in {target}" if target is not None else "")
        + (f" (use it with --temperature {best['temperature']:g})" if out is not None else "")
    )
    return result


def _prepare(run_dir, temperatures, num_samples: int, write: bool, out, device: str):
    """What both calibrations check and set up first: (the sorted grid, where the result goes or
    ``None``, the world of processes, this process's device), the output checked before the sweep."""
    grid = sorted({float(t) for t in temperatures})
    if not grid or grid[0] < 0:
        raise ConfigError(f"temperatures must be numbers >= 0 (0: every sample is the mean's); got {grid}")
    if num_samples < 2:
        raise ConfigError(f"need --samples >= 2 to measure the spread; got {num_samples}")
    target = _calibration_target(run_dir, out) if write else None
    world, joined = join(device)
    if target is not None and world.main:
        check_writable(target)  # before the sweep, not after
    return grid, target, world, joined


def _calibration_target(run_dir, out) -> Path:
    """Where the calibration goes: ``out``, else the run's ``calibration.json`` (not a shipped model's)."""
    if out is not None:
        return Path(out)
    if str(run_dir).startswith(PREFIX):
        raise ConfigError(
            f"{run_dir} is a shipped model inside the installed package; give --out FILE to store its "
            "calibration, and sample or evaluate with --temperature T"
        )
    return Path(run_dir) / CALIBRATION_FILE


def _chosen(best: dict, curve: list[dict], num_samples: int) -> dict:
    """The head of a calibration record: the chosen temperature, its GED^2 and that at t = 1."""
    return {
        "temperature": best["temperature"],
        "ged": best["ged"],
        "ged_at_1": _at(curve, 1.0),
        "num_samples": num_samples,
    }


def _at(curve: list[dict], t: float) -> float | None:
    return next((point["ged"] for point in curve if point["temperature"] == t), None)


def _describe(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4f}"


def calibrate_volumes(
    run_dir: str | os.PathLike,
    list_path: str | os.PathLike,
    split: str = "validation",
    temperatures=DEFAULT_TEMPERATURES,
    num_samples: int = 16,
    max_cases: int | None = 64,
    device: str = "cpu",
    seed: int = 0,
    window: list[int] | None = None,
    overlap: float = 0.5,
    write: bool = True,
    out: str | os.PathLike | None = None,
    log=print,
) -> dict:
    """The temperature of a 3D run chosen on the cases of a volume list, as :func:`calibrate` does
    on images: GED^2(``num_samples``) of the whole label maps (classes present in either map)
    against the annotators, each case through sliding windows.

    Each case's blended distribution is computed once, and every temperature draws from it with
    the same noise (case k from (seed, k)); at most ``max_cases`` cases, drawn with ``seed``.
    The result is stored as for images (``calibration.json``, or ``out``), where ``evaluate``
    and ``sample`` on volumes find it.
    """
    from ..data.nifti import read_case, run_intensity
    from ..data.volume_list import load_volume_list
    from ..inference.sliding import roi_box, sliding_window_distribution, stream_samples
    from ..randomness import derive_seed
    from .volumes import _check_channels, _load_3d, _warn_window, _window

    temperatures, target, world, device = _prepare(run_dir, temperatures, num_samples, write, out, device)
    model, config = _load_3d(run_dir, 1.0, device)
    if not model.has_spread:
        raise ConfigError("a deterministic model has no spread to calibrate; calibrate an ssn or prob-unet run")
    window = _window(config, window)
    listing = load_volume_list(list_path)
    cases = listing.split(split)
    if max_cases is not None and len(cases) > max_cases:
        chosen = np.sort(np.random.default_rng(seed).choice(len(cases), size=max_cases, replace=False))
        cases = [cases[int(i)] for i in chosen]
    start = time.perf_counter()
    scores: dict[float, list[float]] = {t: [] for t in temperatures}
    model.eval()
    warned: set = set()
    for k in world.shard(np.arange(len(cases))):
        case = cases[int(k)]
        volume = read_case(case, listing.label_map, intensity=run_intensity(config))
        _check_channels(volume, config)
        if volume.labels is None:
            raise DataError(f"case {case.id!r} has no label map to calibrate against")
        _warn_window(case.id, window, volume.shape, warned)
        box = roi_box(np.asarray(volume.mask) | np.asarray(volume.labels).any(0))
        crop = torch.from_numpy(np.array(volume.image[(slice(None), *box)], dtype=np.float32))
        roi = torch.from_numpy(np.array(volume.mask[box], dtype=bool))
        dist = sliding_window_distribution(model, crop, window, overlap, roi, device=device)
        annotations = torch.from_numpy(np.array(volume.labels[(slice(None), *box)]))
        for t in temperatures:
            generator = torch.Generator().manual_seed(derive_seed(seed, int(k)))  # the same draws at every t
            samples = torch.stack(list(stream_samples(dist.scaled(t), num_samples, generator=generator)))
            samples[:, ~roi] = 0
            scores[t].append(metrics.generalized_energy_distance(samples, annotations, model.num_classes))
    gathered = world.gather(scores)
    curve = []
    for t in temperatures:
        values = [v for part in gathered for v in part[t]]
        estimate = metrics.Estimate.of(values, num_samples)
        curve.append({"temperature": t, "ged": estimate.mean, "stderr": estimate.as_dict()["stderr"]})
        if world.main:
            log(f"  t = {t:g}: GED^2({num_samples}) {estimate.mean:.4f} over {len(values)} cases")
    best = min(curve, key=lambda point: point["ged"])
    result = {
        **_chosen(best, curve, num_samples),
        "num_cases": len(cases),
        "data": str(list_path),
        "split": split,
        "window": window,
        "overlap": overlap,
        "seed": seed,
        "seconds": time.perf_counter() - start,
        "curve": curve,
    }
    if target is not None and world.main:
        write_json(result, target)
    if world.main:
        log(
            f"temperature {best['temperature']:g}: {split} GED^2({num_samples}) {best['ged']:.4f} "
            f"(at t = 1: {_describe(_at(curve, 1.0))}) on {len(cases)} cases"
            + (f"; stored in {target}" if target is not None else "")
        )
    return result

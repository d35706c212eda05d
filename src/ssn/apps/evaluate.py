"""Evaluation of a trained run on a dataset, the way the field reports it.

Per image, ``num_samples`` label maps are drawn and compared with the annotators: GED^2 and
Hungarian-matched IoU (of the first 16 and of all ``num_samples`` samples), sample diversity, Dice of the mean prediction,
and, where the data carries its exact label distribution, GED^2 against that truth. ``classes`` and
``matching`` choose the conventions (:mod:`ssn.metrics.functional`); the summary records them and
holds the matched IoU in both matching conventions (``hm_iou_by_matching``). Calibration
(ECE) pools all pixels. The figures come from the accumulating metrics of :mod:`ssn.metrics`
(dataset means with standard errors, each with its number of samples); a CSV beside the JSON
holds the per-image values.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics
from ..distributed import World, join
from ..engine.checkpoints import load_run, write_json
from ..engine.pretrained import resolve_run_dir
from ..engine.rundir import RunDir
from ..errors import ConfigError
from ..files import check_writable, write_csv
from ..inference import images_to_predict, predict_batches
from ..progress import progress

__all__ = ["evaluate", "prepare_evaluation", "write_results"]


def evaluate(
    run_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    split: str | None = None,
    split_file: str | os.PathLike | None = None,
    num_samples: int = 100,
    out: str | os.PathLike | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    seed: int = 0,
    temperature: float | None = None,
    classes: str = "present",
    matching: str = "repeat",
    log=print,
) -> dict:
    """Evaluate ``run_dir``'s best weights on ``data_path`` (all images, or one split).

    Samples are drawn at ``temperature``: by default the run's calibrated one (``ssn
    calibrate``), else 1. The summary records the temperature used. Image ``i`` draws its
    samples from (seed, i), so the figures do not depend on the batch size; under ``torchrun``
    each process evaluates its share of the images and the first one writes the results, the
    same as one process would.
    """
    if batch_size < 1:
        raise ConfigError(f"need --batch-size >= 1; got {batch_size}")
    world, device, matched = prepare_evaluation(num_samples, classes, matching, out, device)
    model, config = load_run(run_dir, temperature=temperature)
    model.to(device)
    data, indices = images_to_predict(
        model, data_path, split, split_file, default_split="test", run_split=RunDir(resolve_run_dir(run_dir)).split_path
    )
    num_classes = model.num_classes
    per_image = metrics.ImageMetrics(num_classes, matched, classes=classes, matching=matching)
    other = "rectangular" if matching == "repeat" else "repeat"
    other_matched = {n: metrics.HungarianMatchedIoU(num_classes, classes, other) for n in matched}
    ece = metrics.ExpectedCalibrationError(num_classes)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    mine = world.shard(indices)
    batches = predict_batches(model, data.images, mine, num_samples, batch_size, device, seed=seed)
    for chunk, labels in progress(batches, -(-len(mine) // batch_size), "evaluate (batches)", world.main):
        annotations = torch.from_numpy(np.ascontiguousarray(data.masks[chunk]))
        ece.update(labels, annotations)
        for n, accumulated in other_matched.items():
            accumulated.update(labels[:, :n], annotations)
        truths = [data.truth(i) for i in chunk] if data.truth_maps is not None else None
        for k, (index, values) in enumerate(zip(chunk, per_image.update(labels, annotations, truths))):
            patient = {"patient": str(data.patient[index])} if data.patient is not None else {}
            frequencies = metrics.class_frequencies(labels[k], num_classes)
            ece_here = metrics.expected_calibration_error(frequencies, annotations[k], num_classes)
            rows.append({"index": int(index), **patient, **values, "ece": ece_here})
    seconds = time.perf_counter() - start
    rows = sorted((row for part in world.gather_to_main(rows) or [] for row in part), key=lambda row: row["index"])
    figures = per_image.compute()  # summed over the processes
    summary: dict[str, Any] = {
        key: figures[key].as_dict() for key in ("ged", "diversity", "dice", "ged_truth") if key in figures
    }
    summary["hm_iou"] = {str(n): figures[f"hm_iou_{n}"].as_dict() for n in matched}
    summary["hm_iou_by_matching"] = {
        matching: summary["hm_iou"],
        other: {str(n): m.compute().as_dict() for n, m in other_matched.items()},
    }
    summary["conventions"] = {"classes": classes, "matching": matching}
    summary["ged_at"] = {str(n): figures[f"ged_{n}"].as_dict() for n in matched}
    summary["ece"] = dataclasses.replace(ece.compute(), num_samples=num_samples).as_dict()
    summary.update(
        num_samples=num_samples,
        num_images=figures["ged"].num_images,
        run=str(run_dir),
        data=str(data_path),
        split=(split or "test") if split_file or split else "all",
        seconds=seconds,
        temperature=model.temperature,
        model=config["architecture"],
    )
    if world.main:
        write_results(summary, rows, out)
        log(_describe(summary))
    return summary


def prepare_evaluation(
    num_samples: int, classes: str | None, matching: str, out, device: str
) -> tuple[World, str, tuple[int, ...]]:
    """What every evaluation does first: check the settings, join the processes (torchrun),
    check that ``out`` can be written (before minutes of work, not after).

    Returns:
        (the world of processes, this process's device, the sample counts whose matched IoU
        and GED^2 are reported: 16 and ``num_samples``).
    """
    if num_samples < 2:
        raise ConfigError(f"need --samples >= 2; got {num_samples}")
    try:
        metrics.functional._check_conventions(classes or "present", matching)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    world, joined = join(device)
    if out is not None and world.main:
        check_writable(out)
    return world, joined, tuple(sorted({min(16, num_samples), num_samples}))


def write_results(summary: dict, rows: list[dict], out) -> None:
    """The summary as JSON at ``out`` and the per-image (per-case) rows as CSV beside it; nothing
    when ``out`` is ``None``."""
    if out is None:
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(summary, out)
    write_csv(rows, out.with_suffix(".csv"))


def _describe(summary: dict) -> str:
    n = summary["num_samples"]
    parts = [
        f"GED^2({n}) {summary['ged']['mean']:.4f} +- {summary['ged']['stderr'] or float('nan'):.4f}",
        f"diversity {summary['diversity']['mean']:.4f}",
        *[f"GED^2({k}) {v['mean']:.4f}" for k, v in summary["ged_at"].items() if k != str(n)],
        *[f"HM-IoU({k}) {v['mean']:.4f}" for k, v in summary["hm_iou"].items()],
        f"Dice {summary['dice']['mean']:.4f}",
        f"ECE {summary['ece']['mean']:.4f}",
    ]
    if "ged_truth" in summary:
        parts.append(f"GED^2({n}) vs exact truth {summary['ged_truth']['mean']:.4f}")
    return f"{summary['num_images']} images, temperature {summary['temperature']:g}: " + ", ".join(parts)

"""Evaluation of a trained run on a dataset, the way the field reports it.

Per image, ``num_samples`` label maps are drawn and compared with the annotators: GED^2, sample
diversity, Hungarian-matched IoU (16 and ``num_samples`` samples), Dice of the mean prediction,
and, where the data carries its exact label distribution, GED^2 against that truth. Calibration
(ECE) pools all pixels. The JSON holds dataset means with standard errors, each with its
number of samples; a CSV beside it holds the per-image values.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .checkpoints import load_run, write_json
from .data.arrays import load_arrays
from .data.splits import select_split
from .files import write_atomically
from .training import image_tensor, predict_labels

__all__ = ["evaluate"]


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
    log=print,
) -> dict:
    """Evaluate ``run_dir``'s best weights on ``data_path`` (all images, or one split)."""
    model, config = load_run(run_dir)
    model.to(device)
    data = load_arrays(data_path)
    if split_file is not None:
        indices = select_split(data, split or "test", split_file)
    elif split is not None:
        raise ValueError("--split needs --split-file (the JSON listing each split's patients)")
    else:
        indices = np.arange(len(data))
    num_classes = config["num_classes"]
    if data.num_classes() > num_classes:
        raise ValueError(f"the data holds labels up to {data.num_classes() - 1}, the model only {num_classes} classes")
    matched = tuple(sorted({min(16, num_samples), num_samples}))
    torch.manual_seed(seed)
    ece = metrics.ExpectedCalibrationError(num_classes)
    rows = []
    start = time.perf_counter()
    for i in range(0, indices.size, batch_size):
        chunk = indices[i : i + batch_size]
        labels = predict_labels(
            model, image_tensor(data.images[chunk], device), num_samples, config["deterministic"]
        ).cpu()
        annotations = torch.from_numpy(np.ascontiguousarray(data.masks[chunk]))
        ece.update(labels, annotations)
        for j, index in enumerate(chunk):
            values = metrics.image_metrics(labels[j], annotations[j], num_classes, matched, data.truth(index))
            rows.append({"index": int(index), **({"patient": str(data.patient[index])} if data.patient is not None else {}), **values})
    seconds = time.perf_counter() - start
    summary = _summarise(rows, matched, num_samples)
    summary["ece"] = {"mean": ece.compute().mean, "num_samples": num_samples, "num_images": len(rows)}
    summary.update(
        num_samples=num_samples, num_images=len(rows), run=str(run_dir), data=str(data_path),
        split=split if split_file else "all", seconds=seconds,
        model={k: config[k] for k in ("model", "rank", "deterministic", "features")},
    )
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(summary, out)
        _write_csv(rows, out.with_suffix(".csv"))
    log(_describe(summary))
    return summary


def _estimate(values: list[float], num_samples: int) -> dict:
    array = np.asarray(values, dtype=np.float64)
    stderr = float(array.std(ddof=1) / math.sqrt(array.size)) if array.size > 1 else math.nan
    return {"mean": float(array.mean()), "stderr": stderr, "num_samples": num_samples, "num_images": int(array.size)}


def _summarise(rows: list[dict], matched: tuple[int, ...], num_samples: int) -> dict:
    summary = {
        "ged": _estimate([r["ged"] for r in rows], num_samples),
        "diversity": _estimate([r["diversity"] for r in rows], num_samples),
        "hm_iou": {str(n): _estimate([r[f"hm_iou_{n}"] for r in rows], n) for n in matched},
        "dice": _estimate([r["dice"] for r in rows], num_samples),
    }
    if rows and "ged_truth" in rows[0]:
        summary["ged_truth"] = _estimate([r["ged_truth"] for r in rows], num_samples)
    return summary


def _write_csv(rows: list[dict], path: Path) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, write)


def _describe(summary: dict) -> str:
    n = summary["num_samples"]
    parts = [
        f"GED^2({n}) {summary['ged']['mean']:.4f} +- {summary['ged']['stderr']:.4f}",
        f"diversity {summary['diversity']['mean']:.4f}",
        *[f"HM-IoU({k}) {v['mean']:.4f}" for k, v in summary["hm_iou"].items()],
        f"Dice {summary['dice']['mean']:.4f}",
        f"ECE {summary['ece']['mean']:.4f}",
    ]
    if "ged_truth" in summary:
        parts.append(f"GED^2({n}) vs exact truth {summary['ged_truth']['mean']:.4f}")
    return f"{summary['num_images']} images: " + ", ".join(parts)

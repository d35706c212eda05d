"""``ssn demo``: the whole job in about three minutes on a CPU, on data with a known answer.

Builds the synthetic dataset (:mod:`ssn.data.synthetic`), trains the low-rank SSN, the
diagonal SSN (rank 0) and the deterministic baseline on the same backbone for the same time,
evaluates each on held-out images against the annotators and against the exact label
distribution, and writes metrics and figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics
from ..data.arrays import save_arrays
from ..data.synthetic import make_synthetic
from ..engine import TrainConfig, load_run, train
from ..engine.checkpoints import write_json
from ..inference import predict_batches
from .evaluate import evaluate
from .plotting import plot_samples

MODELS: dict[str, dict[str, Any]] = {
    "low-rank SSN (rank 10)": {"rank": 10},
    "diagonal SSN (rank 0)": {"rank": 0},
    "deterministic U-Net": {"method": "deterministic"},
}


def _run_dir(out: Path, name: str) -> Path:
    """``low-rank SSN (rank 10)`` -> ``out/low_rank_SSN``."""
    return out / name.split(" (")[0].replace(" ", "_").replace("-", "_")


def run_demo(
    out: str | Path = "ssn_demo", minutes: float = 0.8, seed: int = 0, num_images: int = 640, size: int = 40, log=print
) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = make_synthetic(num_images, size=size, seed=seed)
    data_path = out / "synthetic.npz"
    save_arrays(data_path, data)
    assert data.patient is not None  # synthetic data names its patients
    patients = [str(p) for p in data.patient]
    test_count = num_images // 5
    split = {
        "train": patients[: -2 * test_count],
        "val": patients[-2 * test_count : -test_count],
        "test": patients[-test_count:],
    }
    split_path = out / "split.json"
    write_json({"splits": split}, split_path)
    log(f"synthetic data: {num_images} images of {size}x{size}, 4 annotators, exact truth known -> {data_path}")

    results = {}
    for name, overrides in MODELS.items():
        run_dir = _run_dir(out, name)
        config = TrainConfig(
            data=str(data_path),
            out=str(run_dir),
            split_file=str(split_path),
            features=[16, 32, 64],
            max_minutes=minutes,
            batch_size=16,
            lr=3e-3,
            val_images=64,
            val_samples=16,
            seed=seed,
            overwrite=True,
            **overrides,
        )
        log(f"training {name} for {minutes:.1f} min ...")
        summary = train(config, log=lambda *_: None)
        scores = evaluate(
            run_dir, data_path, "test", split_path, num_samples=100, out=run_dir / "metrics.json", log=lambda *_: None
        )
        results[name] = {"steps": summary["steps"], **scores}
    write_json({name: _short(r) for name, r in results.items()}, out / "metrics.json")
    figures = _figures(out, data, split, seed)
    log(_table(results))
    log(
        f"\nwrote {out / 'metrics.json'} (and metrics.json/.csv per model), figures in {figures}.\n"
        "GED^2 vs truth compares the samples with the exact label distribution (0 is perfect).\n"
        "The deterministic model draws one map, so its diversity is 0 and it cannot match the spread."
    )
    return results


def _short(result: dict) -> dict:
    keep = {
        k: result[k]
        for k in ("ged", "ged_truth", "diversity", "hm_iou", "dice", "ece", "num_samples", "steps")
        if k in result
    }
    return json.loads(json.dumps(keep))


def _table(results: dict) -> str:
    lines = [
        "",
        f"{'model':26s} {'steps':>6s} {'GED^2(100) vs truth':>20s} {'GED^2(100)':>11s} {'HM-IoU(16)':>11s} {'diversity':>10s} {'Dice':>6s}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:26s} {r['steps']:6d} {r['ged_truth']['mean']:13.3f} +- {r['ged_truth']['stderr']:.3f} "
            f"{r['ged']['mean']:11.3f} {r['hm_iou']['16']['mean']:11.3f} {r['diversity']['mean']:10.3f} {r['dice']['mean']:6.3f}"
        )
    return "\n".join(lines)


def _figures(out: Path, data, split: dict, seed: int) -> Path:
    """Figures of four test images: 16 samples of each model, and 16 draws of the exact truth."""
    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    test = np.flatnonzero(np.isin(data.patient, split["test"]))[:4]
    for name in MODELS:
        run_dir = _run_dir(out, name)
        model, _ = load_run(run_dir)
        ((_, drawn),) = predict_batches(model, data.images, test, 16, batch_size=len(test), seed=seed)
        labels = drawn.numpy()
        for j, index in enumerate(test):
            mean = metrics.class_frequencies(labels[j], 2).numpy()
            entropy = metrics.entropy_map(labels[j], 2).numpy()
            plot_samples(
                data.images[index], labels[j], mean, entropy, folder / f"{run_dir.name}_image{j}.png", title=name
            )
    for j, index in enumerate(test):
        maps, probs = data.truth(index)
        draws = maps[np.random.default_rng(seed).choice(len(probs), size=16, p=probs)]
        mean = metrics.class_frequencies(draws, 2).numpy()
        entropy = metrics.entropy_map(draws, 2).numpy()
        plot_samples(
            data.images[index], draws, mean, entropy, folder / f"truth_image{j}.png", title="exact truth (16 draws)"
        )
    return folder


def run_demo_3d(
    out: str | Path = "ssn_demo_3d", minutes: float = 1.0, seed: int = 0, samples: int = 32, log=print
) -> dict:
    """``ssn demo --3d``: the volume path end to end on synthetic NIfTI volumes with a known answer.

    Writes the volumes and their list, trains the three models on patches for ``minutes`` each,
    evaluates the test volumes with sliding windows against the annotators and the exact label
    distribution, and writes NIfTI samples of the test volumes of the low-rank SSN.
    """
    from ..data.nifti import read_case, run_intensity
    from ..data.synthetic import make_synthetic_volumes
    from ..data.volume_list import load_volume_list
    from ..inference.sliding import predict_volume
    from ..randomness import case_seed
    from .volumes import sample_volumes

    out = Path(out)
    list_path = make_synthetic_volumes(out / "data", seed=seed)
    listing = load_volume_list(list_path)
    log(
        f"synthetic volumes: {len(listing.all_cases())} cases of 40x40x24, 3 classes, 3 annotators, exact truth "
        f"known -> {list_path}"
    )
    results = {}
    for name, overrides in MODELS.items():
        run_dir = _run_dir(out, name)
        config = TrainConfig(
            data=str(list_path),
            out=str(run_dir),
            patch_size=[24, 24, 24],
            patches_per_volume=8,
            features=[8, 16, 32],
            max_minutes=minutes,
            batch_size=4,
            lr=3e-3,
            val_images=8,
            val_samples=8,
            seed=seed,
            overwrite=True,
            **overrides,
        )
        log(f"training {name} for {minutes:.1f} min ...")
        summary = train(config, log=lambda *_: None)
        model, run_config = load_run(run_dir)
        per_case = []
        for case in listing.split("test"):
            volume = read_case(case, listing.label_map, intensity=run_intensity(run_config))
            truth = np.load(Path(case.images[0]).parent / "truth.npz")
            box, stream = predict_volume(
                model,
                volume.image,
                volume.mask,
                samples,
                [24, 24, 24],
                generator=torch.Generator().manual_seed(case_seed(seed, case.id)),
            )
            drawn = torch.stack(list(stream))
            annotations = np.asarray(volume.labels)[(slice(None), *box)]
            truth_maps = truth["maps"][(slice(None), *box)]
            per_case.append(metrics.image_metrics(drawn, annotations, 3, (16,), truth=(truth_maps, truth["probs"])))
        results[name] = {
            "steps": summary["steps"],
            **{key: float(np.mean([m[key] for m in per_case])) for key in per_case[0]},
            "ged_truth_stderr": float(np.std([m["ged_truth"] for m in per_case], ddof=1) / np.sqrt(len(per_case))),
        }
    write_json(results, out / "metrics.json")
    folders = sample_volumes(
        _run_dir(out, "low-rank SSN"), [str(list_path)], "test", 8, out / "samples", log=lambda *_: None
    )
    lines = [
        "",
        f"{'model':26s} {'steps':>6s} {f'GED^2({samples}) vs truth':>20s} {'vs raters':>10s} {'HM-IoU(16)':>11s} "
        f"{'diversity':>10s} {'Dice':>6s}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:26s} {r['steps']:6d} {r['ged_truth']:13.3f} +- {r['ged_truth_stderr']:.3f} {r['ged']:10.3f} "
            f"{r['hm_iou_16']:11.3f} {r['diversity']:10.3f} {r['dice']:6.3f}"
        )
    log("\n".join(lines))
    log(
        f"\nwrote {out / 'metrics.json'}; NIfTI samples, mean and entropy of the low-rank SSN for "
        f"{len(folders)} test volumes in {out / 'samples'} (open them over data/<case>/image.nii.gz in any viewer)"
    )
    return results

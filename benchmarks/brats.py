"""BraTS on a CPU budget: the paper's 3D setting on six real cases, a demonstration.

Trains the deterministic 3D U-Net, the diagonal SSN (rank 0) and the low-rank SSN (rank 10) on
the same backbone, patches and optimiser steps, on FLAIR + T1c of the ``brats_deepmedic`` cases
(training: its train and validation folders, 4 cases; the 2 validation cases also pick the
checkpoint, so the selection has seen them), with the brain mask confining the distribution.
Each model is evaluated with sliding windows over the whole volume:

- on the 2 ``brats_deepmedic`` test cases against their one expert map;
- on the 2 ``brats_tcga`` cases (raw intensities, normalised inside the non-zero voxels)
  against their five algorithms' maps, a multi-rater 3D test.

It reports Dice of the mean prediction, GED^2 and diversity per BraTS region (whole tumour,
tumour core, enhancing tumour), GED^2 and diversity of the whole 4-class map in both conventions
of averaging over classes (``present``, ours and Flow-SSN's; ``all``, PHiSeg's, the official
SSN's and CCDM's), the diversity of the five TCGA algorithms' own maps per region (the spread a
model's samples should match there), and writes a figure of axial slices through a test tumour. With
six cases these figures are a demonstration of the path, not a benchmark of the method.
Evaluation uses windows of 96^3 (larger than the training patches: the network is fully
convolutional, and fewer, larger windows are faster on a CPU).

    python -m benchmarks.brats --steps 1200 --threads 1 --out runs/brats
    python -m benchmarks.brats --steps 1000 --one-at-a-time --out runs/brats  # beside another job
    python -m benchmarks.brats --steps 1000 --models low-rank --extra "--marginal-weight 1" \
        --variant "marginal weight 1" --out runs/brats  # a row beside the defaults' rows
    # data from $SSN_BRATS_DIR (default ../shared/data/brats_deepmedic) and $SSN_BRATS_TCGA_DIR
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import (
    BENCHMARKS,
    RESULTS,
    ROOT,
    benchmark_parser,
    brats_dir,
    brats_tcga_dir,
    recorded_command,
    save_json,
    update_json,
)
from benchmarks._training import SSN_AND_BASELINES, Job, model_flags, run_jobs, ssn_command, thread_env

MODELS = SSN_AND_BASELINES
REGIONS = ("whole tumour", "tumour core", "enhancing tumour")
CONVENTIONS = ("present", "all")


def raters_diversity(tcga_list: Path) -> dict[str, dict]:
    """The spread of the TCGA cases' own label maps (five algorithms each) per region, the mean
    1 - IoU over distinct pairs: ``{region: {"mean": over the cases, "per case": {id: value}}}``."""
    import numpy as np
    import torch

    from ssn import metrics
    from ssn.apps.volumes import structures_for
    from ssn.data import load_volume_list, read_case

    listing = load_volume_list(tcga_list)
    structures = structures_for(listing.label_map, 4)
    per_case: dict[str, dict[str, float]] = {}
    for case in listing.split("test"):
        labels = torch.from_numpy(np.array(read_case(case, listing.label_map).labels))
        per_case[case.id] = {
            r: metrics.sample_diversity(torch.isin(labels, torch.tensor(structures[r])).to(torch.uint8), distinct=True)
            for r in REGIONS
        }
    return {
        r: {
            "mean": float(np.mean([v[r] for v in per_case.values()])),
            "per case": {k: v[r] for k, v in per_case.items()},
        }
        for r in REGIONS
    }


def write_lists(out: Path, deepmedic: Path, tcga: Path) -> tuple[Path, Path]:
    """The two volume lists: deepmedic (training = train + validation) and tcga (test only)."""
    python = ssn_command()
    raw = out / "deepmedic_raw.json"
    subprocess.run(
        python + ["convert", "brats", str(deepmedic), "--out", str(raw), "--sequences", "flair", "t1c"], check=True
    )
    listing = json.loads(raw.read_text())
    listing["training"] = listing["training"] + listing["validation"]
    lists = save_json(out / "deepmedic.json", listing)
    tcga_list = out / "tcga.json"
    subprocess.run(
        python + ["convert", "brats", str(tcga), "--out", str(tcga_list), "--sequences", "flair", "t1c"], check=True
    )
    return lists, tcga_list


def figure(run: Path, lists: Path, out_png: Path, window: list[int], samples: int = 6) -> None:
    """Axial slices through the largest tumour slice of the first test case: FLAIR, the expert
    map, the mean prediction and samples of ``run``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel
    import numpy as np
    from matplotlib.colors import ListedColormap

    listing = json.loads(lists.read_text())
    case = listing["test"][0]
    folder = Path(run).parent / "figure_samples"  # beside the runs: NIfTI samples stay out of the repository
    subprocess.run(
        ssn_command(
            "sample",
            "--run",
            str(run),
            "--input",
            str(lists),
            "--split",
            "test",
            "--samples",
            str(samples),
            "--window",
            *map(str, window),
            "--out",
            str(folder),
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    base = lists.parent
    flair = np.asarray(nibabel.load(str(base / case["image"][0])).dataobj)
    expert = np.asarray(nibabel.load(str(base / case["label"])).dataobj).astype(np.uint8)
    z = int(np.argmax((expert > 0).sum((0, 1))))
    drawn = [
        np.asarray(nibabel.load(str(folder / case["id"] / f"sample_{i:03d}.nii.gz")).dataobj)[:, :, z]
        for i in range(samples)
    ]
    mean = np.asarray(nibabel.load(str(folder / case["id"] / "mean.nii.gz")).dataobj)[:, :, z]
    colours = ListedColormap(["none", "#d62728", "#2ca02c", "#d62728", "#ffbf00"])  # by file label 0..4
    panels = [("FLAIR", None), ("expert", expert[:, :, z]), ("P(tumour)", None)] + [
        (f"sample {i + 1}", d) for i, d in enumerate(drawn)
    ]
    inside = np.argwhere(expert[:, :, z] > 0)
    low, high = np.maximum(inside.min(0) - 30, 0), inside.max(0) + 30
    crop = (slice(low[0], high[0]), slice(low[1], high[1]))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6))
    for ax, (title, labels) in zip(axes, panels):
        ax.imshow(flair[:, :, z][crop].T, cmap="gray", origin="lower")
        if title == "P(tumour)":
            ax.imshow((1 - mean[..., 0])[crop].T, cmap="magma", vmin=0, vmax=1, origin="lower", alpha=0.8)
        elif labels is not None:
            ax.imshow(
                np.ma.masked_equal(labels[crop].T, 0),
                cmap=colours,
                vmin=0,
                vmax=4,
                origin="lower",
                interpolation="nearest",
                alpha=0.6,
            )
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{case['id']}, axial slice {z}: oedema green, core red, enhancing yellow", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def calibrated_temperature(run: Path, lists: Path, args) -> float:
    """``ssn calibrate`` of ``run`` on the validation cases of ``lists`` (whole volumes through
    the evaluation's sliding windows), stored in the run; returns the chosen temperature."""
    subprocess.run(
        ssn_command(
            "calibrate",
            "--run",
            str(run),
            "--data",
            str(lists),
            "--split",
            "validation",
            "--samples",
            "8",
            "--window",
            *map(str, args.window),
        ),
        check=True,
        env=thread_env(2),
        stdout=subprocess.DEVNULL,
    )
    return float(json.loads((run / "calibration.json").read_text())["temperature"])


def evaluated(run: Path, lists: Path, tcga_list: Path, args, temperature: float) -> dict:
    """``{tag: {region: {dice, ged, diversity}, "multi-class": {convention: {ged, diversity}}}}``
    of ``run`` at ``temperature`` on the deepmedic test cases and the TCGA cases."""
    entry: dict = {}
    suffix = "" if temperature == 1.0 else f"_t{temperature:g}"
    for tag, data in (("deepmedic test", lists), ("tcga", tcga_list)):
        report = run / f"{tag.replace(' ', '_')}{suffix}.json"
        command = ssn_command(
            "evaluate",
            "--run",
            str(run),
            "--data",
            str(data),
            "--split",
            "test",
            "--samples",
            str(args.samples),
            "--window",
            *map(str, args.window),
            "--temperature",
            f"{temperature:g}",
            "--out",
            str(report),
        )
        subprocess.run(command, check=True, env=thread_env(2), stdout=subprocess.DEVNULL)
        structures = json.loads(report.read_text())["structures"]
        entry[tag] = {
            region: {k: structures[region][k]["mean"] for k in ("dice", "ged", "diversity")} for region in REGIONS
        }
        entry[tag]["multi-class"] = {
            c: {k: structures[f"multi-class ({c})"][k]["mean"] for k in ("ged", "diversity")} for c in CONVENTIONS
        }
    return entry


def main() -> None:
    parser = benchmark_parser("brats", __doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=brats_dir(),
        help="the brats_deepmedic cases (default: $SSN_BRATS_DIR or ../shared/data/brats_deepmedic)",
    )
    parser.add_argument(
        "--tcga-dir",
        type=Path,
        default=brats_tcga_dir(),
        help="the brats_tcga cases (default: $SSN_BRATS_TCGA_DIR or ../shared/data/brats_tcga)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "brats")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--patch-size", type=int, nargs=3, default=[48, 48, 48])
    parser.add_argument("--features", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--samples", type=int, default=20, help="samples per test volume")
    parser.add_argument("--window", type=int, nargs=3, default=[96, 96, 96], help="sliding window of the evaluation")
    parser.add_argument("--threads", type=int, default=1, help="threads per model (the models train at once)")
    parser.add_argument(
        "--one-at-a-time", action="store_true", help="train the models one after another instead of at once"
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="the stochastic models: choose a temperature on the 2 brats_deepmedic validation cases "
        "(ssn calibrate, which the models also trained on: there is no other held-out case) and evaluate "
        "them at it too, a second row beside the one at t = 1",
    )
    parser.add_argument("--extra", default="", help="further `ssn train` flags for every model, one string")
    parser.add_argument(
        "--variant",
        help="name the change of the defaults that --extra makes, e.g. 'marginal weight 1': its rows are added "
        "to results/brats.json beside the defaults' (named 'MODEL (VARIANT)'), which they leave as they are",
    )
    args = parser.parse_args()
    if args.extra.strip() and not args.variant:
        parser.error("--extra changes the defaults: name the change with --variant (e.g. 'marginal weight 1')")
    if args.variant and not (RESULTS / "brats.json").is_file():
        parser.error("--variant adds rows beside the defaults' in results/brats.json: run the defaults first")
    slug = args.variant.replace(" ", "-").replace("/", "-").replace(",", "") if args.variant else ""
    for folder in (args.data_dir, args.tcga_dir):
        if not folder.is_dir():
            raise SystemExit(f"BraTS data not found in {folder}; set SSN_BRATS_DIR / SSN_BRATS_TCGA_DIR")
    args.out.mkdir(parents=True, exist_ok=True)
    lists, tcga_list = write_lists(args.out, args.data_dir, args.tcga_dir)
    python = ssn_command()
    settings = [
        "--patch-size",
        *map(str, args.patch_size),
        "--features",
        *map(str, args.features),
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--max-steps",
        str(args.steps),
        "--val-every",
        "200",
        "--val-images",
        "8",
        "--val-samples",
        "8",
        "--patches-per-volume",
        "50",
        "--seed",
        "0",
        *shlex.split(args.extra),
    ]
    folders = {name: args.out / (f"{name}.{slug}" if slug else name) for name in args.models}
    start = time.perf_counter()
    if not args.skip_training:
        training = [
            Job(
                name,
                python
                + ["train", "--data", str(lists), "--out", str(folders[name]), "--overwrite", *settings]
                + model_flags(name),
                folders[name].with_name(folders[name].name + ".train.log"),
            )
            for name in args.models
        ]
        run_jobs(training, thread_env(args.threads), at_once=1 if args.one_at_a_time else None)
    train_minutes = (time.perf_counter() - start) / 60
    runs = {}
    for name in args.models:
        run = folders[name]
        entry: dict = {"steps": json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]}
        entry |= evaluated(run, lists, tcga_list, args, 1.0)
        if args.calibrate and name != "deterministic":
            temperature = calibrated_temperature(run, lists, args)
            entry["calibrated"] = {"temperature": temperature} | evaluated(run, lists, tcga_list, args, temperature)
        if args.variant:
            entry |= {
                "variant": args.variant,
                "extra": args.extra.strip(),
                "train_minutes_wall": train_minutes,
                "threads": args.threads,
                "settings": settings,
                "command": recorded_command("brats", *sys.argv[1:]),
            }
        key = f"{name} ({args.variant})" if args.variant else name
        runs[key] = entry
        print(key, json.dumps(entry), flush=True)
    if "low-rank" in args.models:
        png = f"brats_samples.{slug}.png" if slug else "brats_samples.png"
        figure(folders["low-rank"], lists, BENCHMARKS / png, args.window)
        if args.variant:
            runs[f"low-rank ({args.variant})"]["figure"] = png
    if args.variant:  # beside the defaults' rows, which keep their settings and command
        update_json(RESULTS / "brats.json", lambda content: content | {"runs": content.get("runs", {}) | runs})
        from benchmarks import report as report_module

        report_module.write()
        return
    result = {
        "measured": time.strftime("%Y-%m-%d"),
        "steps": args.steps,
        "patch_size": args.patch_size,
        "features": args.features,
        "samples": args.samples,
        "threads_per_model": args.threads,
        "models_at_once": 1 if args.one_at_a_time else len(args.models),
        "train_minutes_wall": train_minutes,
        "settings": settings,
        "command": recorded_command("brats", *sys.argv[1:]),
        "runs": runs,
        "tcga raters": raters_diversity(tcga_list),
    }
    save_json(RESULTS / "brats.json", result)
    from benchmarks import report as report_module

    report_module.write()


if __name__ == "__main__":
    main()

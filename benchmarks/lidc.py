"""LIDC-IDRI: the deterministic U-Net, the diagonal SSN and the low-rank SSN on one budget.

All use the same backbone and optimiser settings and the same budget (minutes or optimiser
steps). By default the chosen models train at the same time (one process each) so that they
share the machine alike; with ``--one-at-a-time`` each has the whole machine in turn (the
low-rank model first). Each is then evaluated on the test split with 100 samples per slice.

Models can be run separately (``--models low-rank``): every run is appended to
``benchmarks/results/lidc.json`` and ``benchmarks/RESULTS.md`` shows the latest run of each
model, with all earlier runs below it. Paths are recorded relative to the repository, the data
as ``$SSN_LIDC_DIR``.

    python benchmarks/lidc.py --minutes 40              # data from $SSN_LIDC_DIR or ../shared/data/lidc
    python benchmarks/lidc.py --minutes 40 --one-at-a-time --threads 2 --out runs/lidc-sequential
    python benchmarks/lidc.py --steps 5042 --models low-rank --threads 2 --out runs/lidc-steps
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_JSON = HERE / "results" / "lidc.json"
MODELS = {
    "deterministic": ["--method", "deterministic"],
    "diagonal": ["--rank", "0"],
    "low-rank": ["--rank", "10"],
}
PAPER = {  # Monteiro et al. 2020, Table 1 (LIDC, 100 samples, the paper's own split)
    "deterministic": "0.607", "diagonal": "0.622", "low-rank": "0.225",
    "Prob. U-Net (Kohl et al. 2018)": "0.252", "PHiSeg (Baumgartner et al. 2019)": "0.224",
}


def run_all(commands: dict[str, list[str]], threads: int, log_dir: Path, phase: str, parallel: bool) -> None:
    """Run the commands (all at once, or one after another); logs go to LOG_DIR/NAME.PHASE.log."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    processes = {}
    for name, command in commands.items():
        log_path = log_dir / f"{name}.{phase}.log"
        log = open(log_path, "w")
        processes[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log, log_path)
        if not parallel:
            _wait(name, *processes.pop(name))
    for name, entry in processes.items():
        _wait(name, *entry)


def _wait(name: str, process, log, log_path: Path) -> None:
    code = process.wait()
    log.close()
    if code != 0:
        raise SystemExit(f"{name} failed; see {log_path}")


def portable(text: str, data_dir: Path) -> str:
    """A path as it should be recorded: under $SSN_LIDC_DIR or relative to the repository."""
    path = Path(text).resolve()
    for base, name in ((data_dir.resolve(), "$SSN_LIDC_DIR"), (ROOT, None)):
        try:
            relative = path.relative_to(base)
        except ValueError:
            continue
        return f"{name}/{relative}" if name else str(relative)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(os.environ.get("SSN_LIDC_DIR", ROOT.parent / "shared" / "data" / "lidc"))
    parser.add_argument("--data-dir", type=Path, default=default_dir)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="training minutes per model (default 40)")
    budget.add_argument("--steps", type=int, help="optimiser steps per model, instead of minutes")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "lidc")
    parser.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--seed", type=int, default=0, help="training seed; the summary table shows seed 0, other seeds measure training noise")
    parser.add_argument("--skip-training", action="store_true", help="evaluate existing runs in --out")
    parser.add_argument(
        "--one-at-a-time", action="store_true",
        help="train the models one after another, each with --threads threads, instead of all at once",
    )
    args = parser.parse_args()
    if args.minutes is None and args.steps is None:
        args.minutes = 40.0
    data, split = args.data_dir / "lidc_slices_128.npz", args.data_dir / "split.json"
    if not data.is_file() or not split.is_file():
        raise SystemExit(f"LIDC data not found in {args.data_dir}; set SSN_LIDC_DIR or --data-dir")
    args.out.mkdir(parents=True, exist_ok=True)
    python = [sys.executable, "-m", "ssn"]
    budget = ["--max-minutes", str(args.minutes)] if args.minutes is not None else ["--max-steps", str(args.steps)]
    settings = [
        "--data", str(data), "--split-file", str(split), *budget,
        "--features", *map(str, args.features), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--mc-samples", "20", "--val-images", "128", "--val-samples", "16", "--seed", str(args.seed),
    ]
    models = [m for m in MODELS if m in args.models]
    import ssn
    from ssn.data import load_arrays

    load_arrays(data)  # fill the memory-mapped cache once, before the processes read it
    started = time.time()
    if not args.skip_training:
        order = list(reversed(models)) if args.one_at_a_time else models  # one at a time: low-rank first
        commands = {m: python + ["train", "--out", str(args.out / m), *settings, *MODELS[m]] for m in order}
        run_all(commands, args.threads, args.out, "train", parallel=not args.one_at_a_time)
    trained = time.time()
    run_all(
        {
            m: python + ["evaluate", "--run", str(args.out / m), "--data", str(data), "--split", "test",
                         "--split-file", str(split), "--samples", "100", "--out", str(args.out / m / "test_metrics.json")]
            for m in models
        },
        os.cpu_count() or 1, args.out, "evaluate", parallel=False,  # one at a time, whole machine: timed
    )
    command = " ".join(["python", "benchmarks/lidc.py", *sys.argv[1:]])
    runs = load_runs()
    for m in models:
        result = json.loads((args.out / m / "test_metrics.json").read_text())
        result["run"], result["data"] = portable(result["run"], args.data_dir), portable(result["data"], args.data_dir)
        lines = (args.out / m / "metrics.jsonl").read_text().splitlines()
        runs.append({
            "name": m, "measured": time.strftime("%Y-%m-%d"), "ssn_version": ssn.__version__, "seed": args.seed,
            "command": command,
            "settings": [portable(s, args.data_dir) if "/" in s else s for s in settings + MODELS[m]],
            "threads_per_process": args.threads, "one_at_a_time": args.one_at_a_time,
            "models_at_once": 1 if args.one_at_a_time else len(models),
            "train_minutes_wall": (trained - started) / 60, "machine": f"{os.cpu_count()} cores",
            "training": json.loads(lines[-1]) if lines else {}, **result,
        })
    RESULTS_JSON.parent.mkdir(exist_ok=True)
    RESULTS_JSON.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    if "low-rank" in models:
        figure(args.out / "low-rank", data, split, HERE / "lidc_samples.png")
    write_results(runs, args)
    print((HERE / "RESULTS.md").read_text())


def load_runs() -> list[dict]:
    """Every recorded run; the single-run format of earlier versions becomes one entry per model."""
    if not RESULTS_JSON.is_file():
        return []
    content = json.loads(RESULTS_JSON.read_text())
    if "runs" in content:
        return content["runs"]
    runs, old_data_dir = [], ROOT.parent / "shared" / "data" / "lidc"
    for m, result in content["results"].items():
        result = {**result, "run": portable(result["run"], old_data_dir), "data": portable(result["data"], old_data_dir)}
        runs.append({
            "name": m, "measured": "2026-11-27", "ssn_version": "0.1.0", "seed": 0, "command": content["command"],
            "settings": [portable(s, old_data_dir) if "/" in s else s for s in content["settings"]],
            "threads_per_process": content["threads_per_process"], "one_at_a_time": content["one_at_a_time"],
            "models_at_once": 1 if content["one_at_a_time"] else len(content["results"]),
            "train_minutes_wall": content["train_minutes_wall"], "machine": content["machine"], **result,
        })
    return runs


def figure(run_dir: Path, data_path: Path, split: Path, path: Path) -> None:
    """Test slices where the readers disagree: image, the 4 readers, 6 SSN samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from ssn.data import load_arrays, select_split
    from ssn.engine import load_run
    from ssn.inference import predict_batches

    data = load_arrays(data_path)
    test = select_split(data, "test", split)
    marked = (np.asarray(data.masks[test]).reshape(test.size, 4, -1).max(-1)).sum(1)
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(test[(marked >= 2) & (marked <= 3)], size=4, replace=False))
    model, _ = load_run(run_dir)
    generator = torch.Generator().manual_seed(0)
    ((_, samples),) = predict_batches(model, data.images, chosen, 6, batch_size=len(chosen), generator=generator)
    samples = samples.numpy()
    fig, axes = plt.subplots(len(chosen), 11, figsize=(16, 1.6 * len(chosen)), squeeze=False)
    for row, index in enumerate(chosen):
        image = np.asarray(data.images[index, 0])
        panels = [("CT crop", None)] + [(f"reader {k + 1}", data.masks[index, k]) for k in range(4)]
        panels += [(f"SSN sample {k + 1}", samples[row, k]) for k in range(6)]
        for axis, (title, mask) in zip(axes[row], panels):
            axis.imshow(image, cmap="gray")
            if mask is not None:
                axis.contour(np.asarray(mask), levels=[0.5], colors=["#ff7f0e" if title.startswith("SSN") else "#1f77b4"], linewidths=1)
            axis.set_axis_off()
            if row == 0:
                axis.set_title(title, fontsize=8)
    fig.suptitle("LIDC-IDRI test slices (data: Armato et al. 2011, TCIA LIDC-IDRI, CC BY 3.0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _row(run: dict, label: str) -> str:
    budget = run["training"].get("step", 0)
    return (
        f"| {label} | {run['ged']['mean']:.3f} ± {run['ged']['stderr']:.3f} | {run['hm_iou']['16']['mean']:.3f} | "
        f"{run['diversity']['mean']:.3f} | {run['dice']['mean']:.3f} | {run['ece']['mean']:.4f} | "
        f"{budget} steps, {run['training'].get('minutes', 0):.0f} min | {run['seconds']:.0f} s |"
    )


def write_results(runs: list[dict], args) -> None:
    """benchmarks/RESULTS.md: the latest run of each model with seed 0, then every run recorded."""
    latest = {run["name"]: run for run in runs if run.get("seed", 0) == 0}
    header = "| model | GED²(100) | HM-IoU(16) | diversity | Dice | ECE | training | evaluation |"
    rule = "| --- | --- | --- | --- | --- | --- | --- | --- |"
    lines = [
        "# LIDC-IDRI results",
        "",
        "Written by `benchmarks/lidc.py` (the commands are listed with each run below). All models use "
        f"the same U-Net backbone (features {args.features}), Adam lr {args.lr:g}, batch {args.batch_size}, one "
        "reader drawn per slice per step, flips and small rotations, 20 antithetic MC samples for the SSNs; "
        "the best checkpoint by validation GED²(16) on 128 validation slices. Test split of `split.json` "
        "(3,095 slices), 100 samples per slice; *evaluation* is the wall time of `ssn evaluate` for all of "
        "them, alone on the whole machine (2 threads, no GPU).",
        "",
        "## Latest run of each model (seed 0)",
        "",
        header + " paper GED²(100) |",
        rule + " --- |",
        *[_row(latest[m], m) + f" {PAPER[m]} |" for m in MODELS if m in latest],
        f"| Prob. U-Net | | | | | | | | {PAPER['Prob. U-Net (Kohl et al. 2018)']} |",
        f"| PHiSeg | | | | | | | | {PAPER['PHiSeg (Baumgartner et al. 2019)']} |",
        "",
        "Paper figures: Monteiro et al., NeurIPS 2020, on their own split of the same 875 patients, "
        "trained to convergence on a GPU; this project's split differs (patient-level, seeded), so "
        "the comparison is approximate. GED² uses d = 1 − IoU with d = 0 for two empty masks, all "
        "ordered pairs including self-pairs.",
        "",
        "![LIDC samples](lidc_samples.png)",
        "",
        "## Every run",
        "",
        "| model | measured | ssn | seed | GED²(100) | HM-IoU(16) | diversity | Dice | ECE | training | evaluation | command |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        cells = _row(run, run["name"]).split("|", 2)[2]  # the figures, without the model name
        lines.append(
            f"| {run['name']} | {run['measured']} | {run['ssn_version']} | {run.get('seed', 0)} |{cells} `{run['command']}` |"
        )
    lines += [
        "",
        "A timed budget depends on what else runs: `--minutes` with all models at once gives each a third "
        "of the machine; `--one-at-a-time` gives each the whole machine; `--steps` fixes the work itself.",
        "",
        "Data: Armato III, S. G., McLennan, G., Bidaut, L., et al. (2011). The Lung Image Database "
        "Consortium (LIDC) and Image Database Resource Initiative (IDRI): a completed reference "
        "database of lung nodules on CT scans. Medical Physics, 38(2), 915-931. The Cancer Imaging "
        "Archive, LIDC-IDRI collection, CC BY 3.0.",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()

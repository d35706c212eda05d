"""LIDC-IDRI: the deterministic U-Net, the diagonal SSN and the low-rank SSN on one budget.

All three use the same backbone, the same optimiser settings and the same training time. By
default they train at the same time (one process each, one thread each) so that they share the
machine alike; with ``--one-at-a-time`` each has the whole machine in turn (the low-rank model
first). Each is then evaluated on the test split with 100 samples per slice. Writes
``benchmarks/RESULTS.md``, ``benchmarks/results/lidc.json`` and ``benchmarks/lidc_samples.png``.

    python benchmarks/lidc.py --minutes 40              # data from $SSN_LIDC_DIR or ../shared/data/lidc
    python benchmarks/lidc.py --minutes 40 --one-at-a-time --threads 2 --out runs/lidc-sequential
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = {
    "deterministic": ["--deterministic"],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(os.environ.get("SSN_LIDC_DIR", ROOT.parent / "shared" / "data" / "lidc"))
    parser.add_argument("--data-dir", type=Path, default=default_dir)
    parser.add_argument("--minutes", type=float, default=40.0, help="training minutes per model")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "lidc")
    parser.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--skip-training", action="store_true", help="evaluate existing runs in --out")
    parser.add_argument(
        "--one-at-a-time", action="store_true",
        help="train the models one after another, each with --threads threads, instead of all at once",
    )
    args = parser.parse_args()
    data, split = args.data_dir / "lidc_slices_128.npz", args.data_dir / "split.json"
    if not data.is_file() or not split.is_file():
        raise SystemExit(f"LIDC data not found in {args.data_dir}; set SSN_LIDC_DIR or --data-dir")
    args.out.mkdir(parents=True, exist_ok=True)
    python = [sys.executable, "-m", "ssn"]
    settings = [
        "--data", str(data), "--split-file", str(split), "--max-minutes", str(args.minutes),
        "--features", *map(str, args.features), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--mc-samples", "20", "--val-images", "128", "--val-samples", "16", "--seed", "0",
    ]
    from ssn.data import load_arrays

    load_arrays(data)  # fill the memory-mapped cache once, before three processes read it
    started = time.time()
    if not args.skip_training:
        order = reversed(MODELS) if args.one_at_a_time else MODELS  # one at a time: the low-rank model first
        commands = {m: python + ["train", "--out", str(args.out / m), *settings, *MODELS[m]] for m in order}
        run_all(commands, args.threads, args.out, "train", parallel=not args.one_at_a_time)
    trained = time.time()
    run_all(
        {
            m: python + ["evaluate", "--run", str(args.out / m), "--data", str(data), "--split", "test",
                         "--split-file", str(split), "--samples", "100", "--out", str(args.out / m / "test_metrics.json")]
            for m in MODELS
        },
        os.cpu_count() or 1, args.out, "evaluate", parallel=False,  # one at a time, whole machine: timed
    )
    results = {m: json.loads((args.out / m / "test_metrics.json").read_text()) for m in MODELS}
    # ``seconds`` in each result is that model's evaluation time on the whole machine.
    for m in MODELS:
        lines = (args.out / m / "metrics.jsonl").read_text().splitlines()
        results[m]["training"] = json.loads(lines[-1]) if lines else {}
    payload = {
        "command": " ".join(["python", "benchmarks/lidc.py", *sys.argv[1:]]),
        "settings": settings, "threads_per_process": args.threads, "one_at_a_time": args.one_at_a_time,
        "train_minutes_wall": (trained - started) / 60, "evaluate_minutes_wall": (time.time() - trained) / 60,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "results": results,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "lidc.json").write_text(json.dumps(payload, indent=2) + "\n")
    figure(args.out / "low-rank", data, split, HERE / "lidc_samples.png")
    write_results(payload, args)
    print((HERE / "RESULTS.md").read_text())


def figure(run_dir: Path, data_path: Path, split: Path, path: Path) -> None:
    """Test slices where the readers disagree: image, the 4 readers, 6 SSN samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from ssn.checkpoints import load_run
    from ssn.data import load_arrays, select_split
    from ssn.training import image_tensor, predict_labels

    data = load_arrays(data_path)
    test = select_split(data, "test", split)
    marked = (np.asarray(data.masks[test]).reshape(test.size, 4, -1).max(-1)).sum(1)
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(test[(marked >= 2) & (marked <= 3)], size=4, replace=False))
    model, config = load_run(run_dir)
    torch.manual_seed(0)
    samples = predict_labels(model, image_tensor(data.images[chosen]), 6, False).numpy()
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


def write_results(payload: dict, args) -> None:
    """benchmarks/RESULTS.md from the figures of ``payload`` (as saved in results/lidc.json)."""
    r = payload["results"]
    row = lambda m: (  # noqa: E731
        f"| {m} (this project) | {r[m]['ged']['mean']:.3f} ± {r[m]['ged']['stderr']:.3f} | "
        f"{r[m]['hm_iou']['16']['mean']:.3f} | {r[m]['diversity']['mean']:.3f} | {r[m]['dice']['mean']:.3f} | "
        f"{r[m]['ece']['mean']:.4f} | {r[m]['training'].get('step', 0)} steps of {args.batch_size} slices | "
        f"{r[m]['seconds']:.0f} s | {PAPER[m]} |"
    )
    lines = [
        "# LIDC-IDRI results",
        "",
        f"Command: `{payload['command']}` (measured {time.strftime('%Y-%m-%d')}).",
        "",
        f"Budget: {args.minutes:g} minutes of training per model, "
        f"{'one after another' if payload.get('one_at_a_time') else 'all three at once'}, one process and "
        f"{payload['threads_per_process']} thread(s) each on a {payload['machine']} CPU machine (no GPU); "
        f"the same U-Net backbone (features {args.features}), Adam lr {args.lr:g}, batch {args.batch_size}, "
        "one reader drawn per slice per step, flips and small rotations, 20 antithetic MC samples. Best "
        "checkpoint by validation GED²(16) on 128 validation slices. Test split of `split.json` "
        f"({r['low-rank']['num_images']} slices), 100 samples per slice; ``evaluation`` is the wall time "
        "of `ssn evaluate` for all of them, run alone on the whole machine (2 threads).",
        "",
        "| model | GED²(100) | HM-IoU(16) | diversity | Dice | ECE | training | evaluation | paper GED²(100) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *[row(m) for m in MODELS],
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
        "Data: Armato III, S. G., McLennan, G., Bidaut, L., et al. (2011). The Lung Image Database "
        "Consortium (LIDC) and Image Database Resource Initiative (IDRI): a completed reference "
        "database of lung nodules on CT scans. Medical Physics, 38(2), 915-931. The Cancer Imaging "
        "Archive, LIDC-IDRI collection, CC BY 3.0.",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()

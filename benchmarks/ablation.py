"""Training options of the low-rank SSN on LIDC, judged on the validation split on one budget.

Each ``--variant "NAME=FLAGS"`` trains the low-rank SSN on the LIDC train split for ``--steps``
optimiser steps with the common settings plus FLAGS, then evaluates it on the whole validation
split (16 samples per slice). The test split is never used. Runs are appended to
``benchmarks/results/ablation.json`` and shown in ``benchmarks/RESULTS.md``.

    python benchmarks/ablation.py --steps 2000 --parallel 2 --threads 1 \\
        --variant "paper init, constant lr=--lr-schedule constant" \\
        --variant "+ variance init 0.01=--variance-init 0.01 --lr-schedule constant"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
RESULTS_JSON = HERE / "results" / "ablation.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(os.environ.get("SSN_LIDC_DIR", ROOT.parent / "shared" / "data" / "lidc"))
    parser.add_argument("--data-dir", type=Path, default=default_dir)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ablation")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--variant", action="append", required=True, help='"NAME=FLAGS" (flags of ssn train)')
    parser.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--parallel", type=int, default=2, help="variants trained at once")
    parser.add_argument(
        "--evaluate-only", action="store_true", help="evaluate and record variants already trained in --out"
    )
    args = parser.parse_args()
    data, split = args.data_dir / "lidc_slices_128.npz", args.data_dir / "split.json"
    if not data.is_file() or not split.is_file():
        raise SystemExit(f"LIDC data not found in {args.data_dir}; set SSN_LIDC_DIR or --data-dir")
    variants = []
    for text in args.variant:
        name, sep, flags = text.partition("=")
        if not sep:
            raise SystemExit(f'--variant must be "NAME=FLAGS"; got {text!r}')
        variants.append((name.strip(), flags.strip()))
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    common = [
        "--data",
        str(data),
        "--split-file",
        str(split),
        "--max-steps",
        str(args.steps),
        "--rank",
        "10",
        "--features",
        *map(str, args.features),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--val-images",
        "128",
        "--val-samples",
        "16",
        "--seed",
        str(args.seed),
    ]
    python = [sys.executable, "-m", "ssn"]
    pending = list(variants)
    running: dict = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name, flags = pending.pop(0)
            run_dir = args.out / f"{name.replace(' ', '-').replace('/', '-').replace(',', '')}.seed{args.seed}"
            log = open(args.out / f"{run_dir.name}.log", "a" if args.evaluate_only else "w")  # noqa: SIM115 (kept open for the child process)
            command = python + ["train", "--out", str(run_dir), "--overwrite", *common, *shlex.split(flags)]
            if args.evaluate_only:
                command = [sys.executable, "-c", "pass"]
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[process] = (name, flags, run_dir, log, time.perf_counter())
        finished = [p for p in running if p.poll() is not None]
        if not finished:
            time.sleep(5)
            continue
        for process in finished:
            name, flags, run_dir, log, start = running.pop(process)
            log.close()
            if process.returncode != 0:
                raise SystemExit(f"{name} failed; see {log.name}")
            minutes = (time.perf_counter() - start) / 60
            if args.evaluate_only:  # the training's own clock, from its last metrics line
                minutes = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["minutes"]
            out = run_dir / "val_metrics.json"
            subprocess.run(
                python
                + [
                    "evaluate",
                    "--run",
                    str(run_dir),
                    "--data",
                    str(data),
                    "--split",
                    "val",
                    "--split-file",
                    str(split),
                    "--samples",
                    "16",
                    "--out",
                    str(out),
                ],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            val = json.loads(out.read_text())
            record(
                {
                    "tag": name,
                    "flags": flags,
                    "steps": args.steps,
                    "seed": args.seed,
                    "train_minutes": minutes,
                    "models_at_once": args.parallel,
                    "threads_per_process": args.threads,
                    "measured": time.strftime("%Y-%m-%d"),
                    "command": " ".join(
                        [
                            "python",
                            "benchmarks/ablation.py",
                            "--steps",
                            str(args.steps),
                            "--seed",
                            str(args.seed),
                            "--variant",
                            shlex.quote(f"{name}={flags}"),
                        ]
                    ),
                    "val": {k: val[k] for k in ("ged", "diversity", "hm_iou", "dice")},
                }
            )
            print(
                f"{name}: val GED^2(16) {val['ged']['mean']:.4f} +- {val['ged']['stderr']:.4f}, "
                f"diversity {val['diversity']['mean']:.3f}, {minutes:.1f} min",
                flush=True,
            )
    import report

    report.write()


def record(run: dict) -> None:
    runs = json.loads(RESULTS_JSON.read_text())["runs"] if RESULTS_JSON.is_file() else []
    RESULTS_JSON.parent.mkdir(exist_ok=True)
    temporary = RESULTS_JSON.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"runs": runs + [run]}, indent=2) + "\n")
    temporary.replace(RESULTS_JSON)


if __name__ == "__main__":
    main()

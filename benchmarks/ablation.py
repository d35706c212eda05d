"""Training options of the low-rank SSN on LIDC, judged on the validation split on one budget.

Each ``--variant "NAME=FLAGS"`` trains the low-rank SSN on the LIDC train split for ``--steps``
optimiser steps with the common settings plus FLAGS, then evaluates it on the whole validation
split (16 samples per slice). The test split is never used. Runs are appended to
``benchmarks/results/ablation.json`` and shown in ``benchmarks/RESULTS.md``.

    python -m benchmarks.ablation --steps 2000 --parallel 2 --threads 1 \\
        --variant "paper init, constant lr=--lr-schedule constant" \\
        --variant "+ variance init 0.01=--variance-init 0.01 --lr-schedule constant"
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

from benchmarks._common import RESULTS, ROOT, add_lidc_dir, benchmark_parser, lidc_files, recorded_command, update_json
from benchmarks._training import Job, model_flags, run_jobs, ssn_command, thread_env

RESULTS_JSON = RESULTS / "ablation.json"


def main() -> None:
    parser = benchmark_parser("ablation", __doc__)
    add_lidc_dir(parser)
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
    data, split = lidc_files(args.data_dir)
    variants = {}  # name: (run folder, flags)
    for text in args.variant:
        name, sep, flags = text.partition("=")
        if not sep:
            raise SystemExit(f'--variant must be "NAME=FLAGS"; got {text!r}')
        name = name.strip()
        run_dir = args.out / f"{name.replace(' ', '-').replace('/', '-').replace(',', '')}.seed{args.seed}"
        variants[name] = (run_dir, flags.strip())
    args.out.mkdir(parents=True, exist_ok=True)
    env = thread_env(args.threads)
    common = [
        "--data",
        str(data),
        "--split-file",
        str(split),
        "--max-steps",
        str(args.steps),
        *model_flags("low-rank"),
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

    def evaluate(name: str, minutes: float) -> None:
        """Evaluate the variant ``name``, trained for ``minutes``, on the validation split and record it."""
        run_dir, flags = variants[name]
        out = run_dir / "val_metrics.json"
        subprocess.run(
            ssn_command(
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
            ),
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
                "command": recorded_command(
                    "ablation",
                    "--steps",
                    str(args.steps),
                    "--seed",
                    str(args.seed),
                    "--variant",
                    shlex.quote(f"{name}={flags}"),
                ),
                "val": {k: val[k] for k in ("ged", "diversity", "hm_iou", "dice")},
            }
        )
        print(
            f"{name}: val GED^2(16) {val['ged']['mean']:.4f} +- {val['ged']['stderr']:.4f}, "
            f"diversity {val['diversity']['mean']:.3f}, {minutes:.1f} min",
            flush=True,
        )

    if args.evaluate_only:
        for name, (run_dir, _) in variants.items():  # the training's own clock, from its last metrics line
            evaluate(name, json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["minutes"])
    else:
        training = [
            Job(
                name,
                ssn_command("train", "--out", str(run_dir), "--overwrite", *common, *shlex.split(flags)),
                args.out / f"{run_dir.name}.log",
            )
            for name, (run_dir, flags) in variants.items()
        ]
        run_jobs(training, env, at_once=args.parallel, when_done=lambda job, minutes: evaluate(job.name, minutes))
    from benchmarks import report

    report.write()


def record(run: dict) -> None:
    """Append one run to the results file, re-read just before writing (several invocations may run at once)."""
    update_json(RESULTS_JSON, lambda content: {"runs": content.get("runs", []) + [run]})


if __name__ == "__main__":
    main()

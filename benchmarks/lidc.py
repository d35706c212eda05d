"""LIDC-IDRI: the deterministic U-Net, the diagonal and low-rank SSNs and the Prob. U-Net on one budget.

All use the same backbone and optimiser settings and the same budget (minutes or optimiser
steps). By default the chosen models train at the same time (one process each) so that they
share the machine alike; with ``--one-at-a-time`` each has the whole machine in turn (the
low-rank model first). The stochastic models are calibrated (``ssn calibrate``, 512 validation
slices); each model is then evaluated on the test split with 100 samples per slice, at t = 1
and at the calibrated temperature. Reference rows (an empty prediction, the readers' majority
vote, the readers' own diversity) are measured on the same test slices.

Models can be run separately (``--models low-rank``): every run is appended to
``benchmarks/results/lidc.json`` and ``benchmarks/RESULTS.md`` shows the latest run of each
model, with all earlier runs below it. Paths are recorded relative to the repository, the data
as ``$SSN_LIDC_DIR``.

    python -m benchmarks.lidc --minutes 40              # data from $SSN_LIDC_DIR or ../shared/data/lidc
    python -m benchmarks.lidc --minutes 40 --one-at-a-time --threads 2 --out runs/lidc-sequential
    python -m benchmarks.lidc --steps 5042 --models low-rank prob-unet --threads 1 --out runs/lidc-v3

Training for hours, in parts: ``--part-minutes M`` trains each model for at most M minutes in
this invocation (``ssn train --stop-after-minutes``) and resumes the run in ``--out`` where there
is one. Each part is resumed exactly, and each run's validation curve (GED^2 against the CPU
time of its process) is in its ``metrics.jsonl``. The models are calibrated and evaluated once
the budget is spent, so run the same command again until it says so:

    python -m benchmarks.lidc --steps 30000 --crop 96 --variant "crops 96" --models low-rank --threads 1 --part-minutes 120 --out runs/lidc-v6
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (
    BENCHMARKS,
    ROOT,
    SHARED_DATA,
    add_lidc_dir,
    benchmark_parser,
    lidc_files,
    recorded_command,
    update_json,
)
from benchmarks._training import MODEL_FLAGS, logged_jobs, model_flags, run_jobs, ssn_command, thread_env

RESULTS_JSON = BENCHMARKS / "results" / "lidc.json"
MODELS = tuple(MODEL_FLAGS)
PROTOCOL = 3  # ssn 0.3: the library's training defaults, calibration, GED^2(16); older runs are listed only


def run_all(commands: dict[str, list[str]], threads: int, log_dir: Path, phase: str, parallel: bool) -> None:
    """Run the commands (all at once, or one after another) with ``threads`` threads each; logs
    go to LOG_DIR/NAME.PHASE.log."""
    run_jobs(logged_jobs(commands, log_dir, phase), thread_env(threads), at_once=None if parallel else 1)


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


def calibrated_models(models: list[str], chosen: list[str] | None) -> list[str]:
    """The stochastic ones of ``models`` that ``--calibrate`` names; all of them when it names none
    (the flag left out, or given bare: a bare flag once meant none, and a calibration was skipped)."""
    return [m for m in models if m != "deterministic" and (not chosen or m in chosen)]


def main() -> None:
    parser = benchmark_parser("lidc", __doc__)
    add_lidc_dir(parser)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="training minutes per model (default 40)")
    budget.add_argument("--steps", type=int, help="optimiser steps per model, instead of minutes")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "lidc")
    parser.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--extra", default="", help="further `ssn train` flags for every model, one string")
    parser.add_argument(
        "--variant",
        help="name the change of the defaults that --extra (or --crop) makes, e.g. 'mean weight 1': the rows "
        "are kept out of the headline table, which shows the defaults, and named with it elsewhere",
    )
    parser.add_argument(
        "--crop",
        type=int,
        help="train on random crops of this side (ssn train --patch-size C C); "
        "validation and evaluation see whole slices",
    )
    parser.add_argument(
        "--part-minutes",
        type=float,
        help="train for hours in parts: at most this many minutes per model in this invocation, "
        "resuming the runs in --out; evaluation waits until the budget is spent",
    )
    parser.add_argument(
        "--calibrate",
        nargs="*",
        choices=list(MODELS),
        help="the stochastic models to calibrate and evaluate at their temperature (default, and the bare flag: all)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="training seed; the summary table shows seed 0, other seeds measure training noise",
    )
    parser.add_argument(
        "--skip-training",
        action="store_true",
        help="evaluate existing runs in --out (calibrations and evaluations already written are kept)",
    )
    parser.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="train the models one after another, each with --threads threads, instead of all at once",
    )
    parser.add_argument(
        "--references-only",
        action="store_true",
        help="measure the reference rows (an empty prediction, the readers' votes) on the test split, "
        "record them in results/lidc.json and rewrite RESULTS.md; trains and evaluates no model",
    )
    args = parser.parse_args()
    if args.references_only:
        data, split = lidc_files(args.data_dir)
        reference = references(data, split)
        update_json(RESULTS_JSON, lambda content: {**content, "reference": reference})
        from benchmarks import report

        report.write()
        print(json.dumps({k: v["ged"] for k, v in reference["readers_at_least"].items()}, indent=1))
        return
    if (args.extra.strip() or args.crop) and not args.variant:
        parser.error("--extra and --crop change the defaults: name the change with --variant (e.g. 'mean weight 1')")
    if args.minutes is None and args.steps is None:
        args.minutes = 40.0
    data, split = lidc_files(args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    python = ssn_command()
    budget = ["--max-minutes", str(args.minutes)] if args.minutes is not None else ["--max-steps", str(args.steps)]
    settings = [
        "--data",
        str(data),
        "--split-file",
        str(split),
        *budget,
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
        "--val-every",
        "500",
        "--seed",
        str(args.seed),
        *(["--patch-size", str(args.crop), str(args.crop)] if args.crop else []),
        *shlex.split(args.extra),
    ]
    models = [m for m in MODELS if m in args.models]
    import ssn
    from ssn.data import load_arrays

    load_arrays(data)  # fill the memory-mapped cache once, before the processes read it
    started = time.time()
    if not args.skip_training:
        order = list(reversed(models)) if args.one_at_a_time else models  # one at a time: low-rank first
        if args.part_minutes:
            commands = {
                m: python + train_part(args.out / m, model_settings(settings, m, args.features), args.part_minutes)
                for m in order
                if not finished(args.out / m)
            }
            run_all(
                commands,
                args.threads,
                args.out,
                f"train-part{time.strftime('%Y%m%d-%H%M')}",
                parallel=not args.one_at_a_time,
            )
            unfinished = [m for m in models if not finished(args.out / m)]
            if unfinished:
                for m in unfinished:
                    print(
                        f"{m}: step {progress_of(args.out / m)['step']} of {args.steps or 'the budget'}; "
                        "run the same command again to continue"
                    )
                return
        else:
            commands = {
                m: python
                + ["train", "--out", str(args.out / m), "--overwrite", *model_settings(settings, m, args.features)]
                for m in order
            }
            run_all(commands, args.threads, args.out, "train", parallel=not args.one_at_a_time)
    trained = time.time()
    stochastic = calibrated_models(models, args.calibrate)

    def needed(path: Path) -> bool:
        return not (args.skip_training and path.is_file())

    run_all(
        {
            m: python
            + [
                "calibrate",
                "--run",
                str(args.out / m),
                "--data",
                str(data),
                "--split",
                "val",
                "--split-file",
                str(split),
                "--samples",
                "16",
                "--max-images",
                "512",
            ]
            for m in stochastic
            if needed(args.out / m / "calibration.json")
        },
        os.cpu_count() or 1,
        args.out,
        "calibrate",
        parallel=False,
    )
    evaluations = {}
    for m in models:
        evaluations[m] = python + [
            "evaluate",
            "--run",
            str(args.out / m),
            "--data",
            str(data),
            "--split",
            "test",
            "--split-file",
            str(split),
            "--samples",
            "100",
        ]
    run_all(
        {
            **{
                m: command + ["--temperature", "1", "--out", str(args.out / m / "test_metrics.json")]
                for m, command in evaluations.items()
                if needed(args.out / m / "test_metrics.json")
            },
            **{
                f"{m}.calibrated": command + ["--out", str(args.out / m / "test_metrics_calibrated.json")]
                for m, command in evaluations.items()
                if m in stochastic and needed(args.out / m / "test_metrics_calibrated.json")
            },
        },
        os.cpu_count() or 1,
        args.out,
        "evaluate",
        parallel=False,  # one at a time, whole machine: timed
    )
    recorded = recorded_command("lidc", *(a for a in sys.argv[1:] if a != "--skip-training"))
    runs = []
    for m in models:
        result = json.loads((args.out / m / "test_metrics.json").read_text())
        result["run"], result["data"] = portable(result["run"], args.data_dir), portable(result["data"], args.data_dir)
        calibrated = args.out / m / "test_metrics_calibrated.json"
        lines = (args.out / m / "metrics.jsonl").read_text().splitlines()
        runs.append(
            {
                "name": m,
                **({"variant": args.variant} if args.variant else {}),
                "measured": time.strftime("%Y-%m-%d"),
                "ssn_version": ssn.__version__,
                "seed": args.seed,
                "protocol": PROTOCOL,
                "command": recorded,
                "settings": [
                    portable(s, args.data_dir) if "/" in s else s for s in model_settings(settings, m, args.features)
                ],
                "threads_per_process": args.threads,
                "one_at_a_time": args.one_at_a_time,
                "models_at_once": 1 if args.one_at_a_time else len(models),
                "train_minutes_wall": None if args.skip_training or args.part_minutes else (trained - started) / 60,
                "trained_in_parts": bool(args.part_minutes),
                "machine": f"{os.cpu_count()} cores",
                "training": json.loads(lines[-1]) if lines else {},
                **result,
                "calibrated": _without_paths(json.loads(calibrated.read_text())) if calibrated.is_file() else None,
                "calibration": _without_paths(json.loads((args.out / m / "calibration.json").read_text()))
                if m in stochastic
                else None,
                "evaluation_threads": os.cpu_count(),
            }
        )

    def appended(content: dict) -> dict:
        """The results file with these runs after those recorded (re-read now: others may have added some)."""
        reference = content.get("reference")
        if not reference or "readers_at_least" not in reference:  # written before 2026-12-06
            reference = references(data, split)
        return {"reference": reference, "runs": load_runs(content) + runs}

    update_json(RESULTS_JSON, appended)
    if "low-rank" in models and not args.variant:
        figure(args.out / "low-rank", data, split, BENCHMARKS / "lidc_samples.png")
    from benchmarks import report

    print(report.write().read_text())


def model_settings(settings: list[str], model: str, features: list[int]) -> list[str]:
    """The ``ssn train`` flags of ``model``: the shared ``settings``, its method's own (the SSNs'
    20 Monte Carlo samples, the Prob. U-Net's prior and posterior nets as wide as the U-Net) and
    the flags that make it (:func:`model_flags`)."""
    own = {
        "diagonal": ["--mc-samples", "20"],
        "low-rank": ["--mc-samples", "20"],
        "prob-unet": ["--encoder-features", *map(str, features)],
    }
    return [*settings, *own.get(model, []), *model_flags(model)]


def progress_of(run: Path) -> dict:
    """The training progress saved in a run's state.pt (empty before the first checkpoint)."""
    import torch

    state = run / "state.pt"
    return torch.load(state, weights_only=True, map_location="cpu")["progress"] if state.is_file() else {}


def finished(run: Path) -> bool:
    """Whether the run in ``run`` has spent its budget (its config's max_steps or max_minutes)."""
    config_path = run / "config.json"
    if not config_path.is_file():
        return False
    config, progress = json.loads(config_path.read_text()), progress_of(run)
    if not progress:
        return False
    if config.get("max_steps") and progress["step"] >= config["max_steps"]:
        return True
    return bool(config.get("max_minutes") and progress["seconds"] >= 60 * config["max_minutes"])


def train_part(run: Path, settings: list[str], minutes: float) -> list[str]:
    """The ``ssn train`` arguments of the next part of ``run``: a new run, or a resumed one."""
    part = ["--stop-after-minutes", str(minutes)]
    if (run / "state.pt").is_file():
        return ["train", "--resume", "--out", str(run), *part]
    return ["train", "--out", str(run), "--overwrite", *settings, *part]


def _without_paths(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("run", "data", "model")}


#: The readers' votes that reference rows turn into one map: at least k of the four readers.
#: 2 is the majority vote; 1 the union, 4 the intersection of their maps.
VOTES = (1, 3, 4)


def references(data_path: Path, split: Path) -> dict:
    """An empty prediction and the readers' majority vote as predictions, and the readers' own
    diversity (mean 1 - IoU over distinct pairs), on the test slices.

    ``readers_at_least[k]``: the map of the pixels that at least k of the four readers marked,
    for each k of :data:`VOTES`, as a prediction. These are single maps, as a deterministic
    model's are: what one map drawn from the test readers themselves scores, so that a
    deterministic model's GED^2 can be read against the best a single map does."""
    import torch

    from ssn import metrics
    from ssn.data import load_arrays, select_split

    data = load_arrays(data_path)
    test = select_split(data, "test", split)
    # each single map: the pixels that at least k readers marked (None: an empty map)
    votes: dict[str, int | None] = {"empty": None, "majority_vote": 2, **{str(k): k for k in VOTES}}
    scorers = {
        name: (
            metrics.ImageMetrics(2, matched_sizes=(16,)),
            metrics.HungarianMatchedIoU(2, matching="rectangular"),
            metrics.ExpectedCalibrationError(2),
        )
        for name in votes
    }
    for start in range(0, test.size, 256):  # the masks read once, every map scored from them
        masks = torch.from_numpy(np.asarray(data.masks[test[start : start + 256]])).long()
        marked = masks.sum(1)
        for name, k in votes.items():
            prediction = torch.zeros_like(marked) if k is None else (marked >= k).long()
            samples = prediction.unsqueeze(1).expand(-1, 16, *prediction.shape[1:]).to(torch.uint8)
            for scorer in scorers[name]:
                scorer.update(samples, masks)
    rows = {}
    for name, (figures, rectangular, ece) in scorers.items():
        computed = figures.compute()
        rows[name] = {
            "ged": computed["ged"].as_dict(),
            "ged_at": {"16": computed["ged_16"].as_dict()},
            "hm_iou": {"16": computed["hm_iou_16"].as_dict()},
            "diversity": computed["diversity"].as_dict(),
            "hm_iou_by_matching": {
                "repeat": {"16": computed["hm_iou_16"].as_dict()},
                "rectangular": {"16": rectangular.compute().as_dict()},
            },
            "dice": computed["dice"].as_dict(),
            "ece": ece.compute().as_dict(),
        }
    out: dict = {
        "empty": rows["empty"],
        "majority_vote": rows["majority_vote"],
        "readers_at_least": {str(k): rows[str(k)] for k in VOTES},
    }
    masks = np.asarray(data.masks[test]).reshape(test.size, 4, -1).astype(bool)
    a, b = np.triu_indices(4, 1)
    union = (masks[:, a] | masks[:, b]).sum(-1)
    iou = np.where(union > 0, (masks[:, a] & masks[:, b]).sum(-1) / np.maximum(union, 1), 1.0)
    out["reader_diversity"] = float((1 - iou).mean())
    out["num_images"] = int(test.size)
    return out


def load_runs(content: dict) -> list[dict]:
    """Every run recorded in ``content`` (the results file); the single-run format of earlier
    versions becomes one entry per model."""
    if not content:
        return []
    if "runs" in content:
        return content["runs"]
    runs, old_data_dir = [], SHARED_DATA / "lidc"
    for m, result in content["results"].items():
        result = {
            **result,
            "run": portable(result["run"], old_data_dir),
            "data": portable(result["data"], old_data_dir),
        }
        runs.append(
            {
                "name": m,
                "measured": "2026-11-27",
                "ssn_version": "0.1.0",
                "seed": 0,
                "command": content["command"],
                "settings": [portable(s, old_data_dir) if "/" in s else s for s in content["settings"]],
                "threads_per_process": content["threads_per_process"],
                "one_at_a_time": content["one_at_a_time"],
                "models_at_once": 1 if content["one_at_a_time"] else len(content["results"]),
                "train_minutes_wall": content["train_minutes_wall"],
                "machine": content["machine"],
                **result,
            }
        )
    return runs


def figure(run_dir: Path, data_path: Path, split: Path, path: Path) -> None:
    """Four test slices, image, the 4 readers and 6 SSN samples each: two that all four readers
    marked (the samples should keep the nodule) and two where two or three did (they should vary)."""
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
    agreeing = rng.choice(test[marked == 4], size=2, replace=False)
    disagreeing = rng.choice(test[(marked >= 2) & (marked <= 3)], size=2, replace=False)
    chosen = np.concatenate([np.sort(agreeing), np.sort(disagreeing)])
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
                axis.contour(
                    np.asarray(mask),
                    levels=[0.5],
                    colors=["#ff7f0e" if title.startswith("SSN") else "#1f77b4"],
                    linewidths=1,
                )
            axis.set_axis_off()
            if mask is None:
                readers = int((np.asarray(data.masks[index]).reshape(4, -1).max(-1) > 0).sum())
                axis.text(2, 10, f"{readers} of 4 readers", color="white", fontsize=7)
            if row == 0:
                axis.set_title(title, fontsize=8)
    fig.suptitle("LIDC-IDRI test slices (data: Armato et al. 2011, TCIA LIDC-IDRI, CC BY 3.0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()

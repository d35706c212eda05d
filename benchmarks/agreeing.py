"""Small data where the readers agree: does the low-rank SSN stay as tight as its annotators?

From LIDC-IDRI, the slices where all four readers drew the nodule and agree closely (mean
pairwise 1 - IoU of the readers <= ``--max-reader-distance``, 0.25 by default) form a small
data set: ``--train-images`` training slices (48) from the train split, 64 validation slices
from the val split and every such slice of the test split. The models train on the same
budget in steps, one after another with the whole machine, and are evaluated on those test
slices with 100 samples. Reference rows, measured on the same slices: the readers' majority
vote as a single (deterministic) prediction, and the readers' own diversity.

Runs are appended to ``benchmarks/results/agreeing.json``; ``benchmarks/RESULTS.md`` shows them.

    python -m benchmarks.agreeing --steps 600 --threads 2
    python -m benchmarks.agreeing --steps 600 --models low-rank --tag "paper init" --extra="--variance-init 0 --mean-warmup 0"

The stochastic models are also calibrated on the validation slices (``ssn calibrate``) and
evaluated at that temperature, reported beside the t = 1 figures.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (
    RESULTS,
    ROOT,
    add_lidc_dir,
    benchmark_parser,
    lidc_files,
    locked,
    recorded_command,
    save_json,
    update_json,
)
from benchmarks._training import SSN_AND_BASELINES, model_flags, ssn_command, thread_env
from ssn.files import write_atomically

RESULTS_JSON = RESULTS / "agreeing.json"
MODELS = SSN_AND_BASELINES


def reader_distances(masks: np.ndarray) -> np.ndarray:
    """(N, A, *S) binary masks -> (N,) mean 1 - IoU over the distinct reader pairs (0 for two empty masks)."""
    flat = masks.reshape(masks.shape[0], masks.shape[1], -1).astype(bool)
    a, b = np.triu_indices(flat.shape[1], 1)
    inter = (flat[:, a] & flat[:, b]).sum(-1)
    union = (flat[:, a] | flat[:, b]).sum(-1)
    return (1 - np.where(union > 0, inter / np.maximum(union, 1), 1.0)).mean(1)


def build_subset(data_dir: Path, out: Path, train_images: int, max_distance: float, seed: int) -> tuple[Path, Path]:
    """Write OUT/agreeing.npz and OUT/split.json (the subset and its patient split); return their paths."""
    from ssn.data import load_arrays, select_split

    npz_file, split_file = lidc_files(data_dir)
    data = load_arrays(npz_file)
    masks = np.asarray(data.masks)
    agree = (masks.reshape(len(masks), masks.shape[1], -1).any(-1).all(1)) & (reader_distances(masks) <= max_distance)
    rng = np.random.default_rng(seed)
    chosen, splits = {}, {}
    for name, size in (("train", train_images), ("val", 64), ("test", None)):
        pool = np.intersect1d(select_split(data, name, split_file), np.flatnonzero(agree))
        chosen[name] = pool if size is None else np.sort(rng.choice(pool, size=min(size, pool.size), replace=False))
    order = np.concatenate([chosen[n] for n in ("train", "val", "test")])
    for name in chosen:  # patients are unique to a split in split.json, so a patient split still holds
        splits[name] = sorted({str(p) for p in np.asarray(data.patient)[chosen[name]]})
    npz = out / "agreeing.npz"
    arrays = {
        "images": np.asarray(data.images)[order],
        "masks": masks[order],
        "patient": np.asarray(data.patient)[order],
    }
    with locked(out):  # written atomically, one invocation at a time: another may be training on it
        write_atomically(npz, lambda temporary: np.savez(temporary, **arrays))
    split_json = save_json(out / "split.json", {"splits": splits, "source": "LIDC split.json, readers agreeing"})
    return npz, split_json


def references(npz: Path, split_json: Path) -> dict:
    """The readers' majority vote as a prediction, and the readers' own diversity, on the test slices."""
    import torch

    from ssn import metrics
    from ssn.data import load_arrays, select_split

    data = load_arrays(npz)
    test = select_split(data, "test", split_json)
    masks = torch.from_numpy(np.asarray(data.masks)[test]).long()
    vote = (masks.float().mean(1) >= 0.5).to(torch.uint8)  # ties (2 of 4) count as nodule
    ged = metrics.GeneralizedEnergyDistance(2)
    ged.update(vote.unsqueeze(1), masks)
    return {
        "majority_vote_ged": ged.compute().as_dict(),
        "reader_diversity": float(reader_distances(masks.numpy()).mean()),
        "num_test_images": int(test.size),
    }


def evaluate(run_dir: Path, npz: Path, split_json: Path, env: dict, calibrate: bool) -> tuple[dict, dict | None]:
    """Test figures at t = 1 and, for a stochastic model, at the temperature chosen on the 64
    validation slices (``ssn calibrate``); the second is ``None`` for the deterministic model."""
    python = ssn_command()
    data = ["--data", str(npz), "--split-file", str(split_json)]
    results = []
    for temperature in (["--temperature", "1"], []) if calibrate else (["--temperature", "1"],):
        if calibrate and not temperature:
            subprocess.run(
                python + ["calibrate", "--run", str(run_dir), *data, "--split", "val", "--samples", "16"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        out = run_dir / ("test_metrics.json" if temperature else "test_metrics_calibrated.json")
        subprocess.run(
            python
            + [
                "evaluate",
                "--run",
                str(run_dir),
                *data,
                "--split",
                "test",
                "--samples",
                "100",
                "--out",
                str(out),
                *temperature,
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        results.append(json.loads(out.read_text()))
    if not calibrate:
        return results[0], None
    keep = ("ged", "diversity", "hm_iou", "dice", "ece", "temperature")
    return results[0], {k: results[1][k] for k in keep}


def record(run: dict, reference: dict) -> None:
    """Append one run to the results file, re-read just before writing (several invocations may run at once)."""
    update_json(RESULTS_JSON, lambda content: {"reference": reference, "runs": content.get("runs", []) + [run]})


def main() -> None:
    parser = benchmark_parser("agreeing", __doc__)
    add_lidc_dir(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "agreeing")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--train-images", type=int, default=48)
    parser.add_argument("--max-reader-distance", type=float, default=0.25)
    parser.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tag", default="defaults", help="a name for these settings in the results table")
    parser.add_argument("--extra", default="", help="further `ssn train` flags for every model, one string")
    parser.add_argument("--skip-training", action="store_true", help="evaluate the runs already trained in --out")
    args = parser.parse_args()
    lidc_files(args.data_dir)  # before any work: the data is there
    args.out.mkdir(parents=True, exist_ok=True)
    npz, split_json = build_subset(args.data_dir, args.out, args.train_images, args.max_reader_distance, 0)
    env = thread_env(args.threads)
    settings = [
        "--data",
        str(npz),
        "--split-file",
        str(split_json),
        "--max-steps",
        str(args.steps),
        "--features",
        *map(str, args.features),
        "--batch-size",
        str(args.batch_size),
        "--val-images",
        "64",
        "--val-samples",
        "16",
        "--seed",
        str(args.seed),
        *shlex.split(args.extra),
    ]
    import ssn

    reference = references(npz, split_json)
    slug = args.tag.replace(" ", "-").replace("/", "-")
    for name in args.models:
        run_dir = args.out / f"{name}.{slug}.seed{args.seed}"
        train = ssn_command("train", "--out", str(run_dir), "--overwrite", *settings, *model_flags(name))
        if not args.skip_training:
            subprocess.run(train, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        minutes = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["minutes"]
        result, calibrated = evaluate(run_dir, npz, split_json, env, calibrate=name != "deterministic")
        record(
            {
                "name": name,
                "tag": args.tag,
                "measured": time.strftime("%Y-%m-%d"),
                "ssn_version": ssn.__version__,
                "seed": args.seed,
                "steps": args.steps,
                "train_minutes": minutes,
                "extra": args.extra,
                "command": recorded_command(
                    "agreeing", *(shlex.quote(a) for a in sys.argv[1:] if a != "--skip-training")
                ),
                **{k: result[k] for k in ("ged", "diversity", "hm_iou", "dice", "ece", "num_images")},
                "calibrated": calibrated,
            },
            reference,
        )
        print(
            f"{name} [{args.tag}]: GED^2(100) {result['ged']['mean']:.3f} +- {result['ged']['stderr']:.3f}, "
            f"diversity {result['diversity']['mean']:.3f}, ECE {result['ece']['mean']:.4f}, {minutes:.1f} min",
            flush=True,
        )
        if calibrated:
            print(
                f"  calibrated t = {calibrated['temperature']:g}: GED^2(100) {calibrated['ged']['mean']:.3f}, "
                f"diversity {calibrated['diversity']['mean']:.3f}",
                flush=True,
            )
    print(
        f"references on {reference['num_test_images']} test slices: majority vote GED^2 "
        f"{reference['majority_vote_ged']['mean']:.3f}, readers' diversity {reference['reader_diversity']:.3f}"
    )


if __name__ == "__main__":
    main()

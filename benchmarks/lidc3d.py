"""LIDC-3D: the deterministic U-Net, the diagonal and the low-rank SSN on the nodule volumes of
LIDC, with one 3D backbone and one step budget, against the four readers.

The volumes come from ``ssn convert lidc-3d`` (written under ``--volumes`` when missing). Each
model trains on patches (``--patch``, default 64 x 64 x 8) of the training nodules, in parts
when ``--part-minutes`` is given (rerun the same command to go on), and is evaluated on every
test nodule with ``--samples`` samples through sliding windows, at t = 1 and (the SSNs) at the
temperature ``ssn calibrate`` chooses on 64 validation nodules. Reference rows on the same
volumes: an empty prediction, the readers' majority vote (2 of 4 count), and the readers' own
diversity (mean 1 - IoU over distinct pairs). GED^2 and diversity are of the nodule (class 1);
the figures are means over test nodules with their standard errors (one training seed).

    python -m benchmarks.lidc3d --steps 4000 --part-minutes 120 --out ../runs/lidc3d
    # writes benchmarks/results/lidc3d.json: {"reference": ..., "runs": [{"name", "ged", "diversity", ...}]}
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np

from benchmarks._common import (
    RESULTS,
    add_lidc_dir,
    benchmark_parser,
    lidc_files,
    machine,
    recorded_command,
    update_json,
)
from benchmarks._training import SSN_AND_BASELINES, logged_jobs, model_flags, run_jobs, ssn_command, thread_env

STRUCTURE = "class 1"  # the nodule
DRAWS = "per case"  # each nodule its own draws (ssn.randomness.case_seed); older rows shared one set


def train_flags(args, listing: Path, name: str) -> list[str]:
    """The ``ssn train`` flags of model ``name``, the same in every part."""
    return [
        "--data", str(listing), "--out", str(args.out / name), "--patch-size", *map(str, args.patch),
        "--features", *map(str, args.features), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--max-steps", str(args.steps), "--val-images", str(args.val_images), "--val-samples", "8",
        "--val-every", str(args.val_every), "--seed", str(args.seed), *model_flags(name),
        *(["--val-volumes", args.val_volumes] if args.val_volumes else []),
        *(["--init-from", args.init_from] if args.init_from else []),
        *(["--model-kwargs", args.model_kwargs] if args.model_kwargs else []),
        *(["--intensity", args.intensity] if args.intensity else []),
        *(["--mean-warmup", str(args.mean_warmup)] if args.mean_warmup is not None else []),
        *(["--warmup-steps", str(args.warmup_steps)] if args.warmup_steps else []),
        *shlex.split(args.extra),
    ]  # fmt: skip


def train_commands(args, listing: Path) -> dict[str, list[str]]:
    """The ``ssn train`` command of each model whose budget is not spent yet (resuming its run)."""
    commands = {}
    for name in args.models:
        run = args.out / name
        flags = ["train", *train_flags(args, listing, name)]
        if args.part_minutes:
            flags += ["--stop-after-minutes", str(args.part_minutes)]
        if (run / "state.pt").is_file():
            if _steps_done(run) >= args.steps:
                continue
            flags += ["--resume"]
        commands[name] = ssn_command(*flags)
    return commands


def _last_entry(run: Path) -> dict:
    """The run's last ``metrics.jsonl`` line (``{}`` before its first validation)."""
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    return json.loads(lines[-1]) if lines else {}


def _steps_done(run: Path) -> int:
    return _last_entry(run).get("step", 0)


def references(listing: Path, samples: int) -> dict:
    """The empty prediction, the majority vote and the readers' diversity on the test nodules."""
    import torch

    from ssn import metrics
    from ssn.data import load_volume_list, read_case

    volumes = load_volume_list(listing)
    rows: dict[str, list[float]] = {"empty": [], "majority_vote": [], "empty_diversity": [], "readers": []}
    for case in volumes.split("test"):
        readers = torch.from_numpy(np.array(read_case(case, volumes.label_map).labels)).long()
        for name, prediction in (
            ("empty", torch.zeros_like(readers[0])),
            ("majority_vote", (readers.float().mean(0) >= 0.5).long()),
        ):
            drawn = prediction.unsqueeze(0).expand(samples, *prediction.shape).to(torch.uint8)
            rows[name].append(metrics.generalized_energy_distance(drawn, readers, 2))
        rows["readers"].append(metrics.sample_diversity(readers.to(torch.uint8), 2, distinct=True))
    estimate = metrics.Estimate.of
    return {
        "empty": {"ged": estimate(rows["empty"]).as_dict(), "diversity": {"mean": 0.0}},
        "majority_vote": {"ged": estimate(rows["majority_vote"]).as_dict(), "diversity": {"mean": 0.0}},
        "reader_diversity": estimate(rows["readers"]).as_dict(),
        "num_cases": len(rows["empty"]),
    }


def stacked_samples(dist, samples: int, generator) -> dict:
    """``{"independent": ..., "shared latent": ..., "shared": ...}``, each (samples, H, W, D)
    uint8: samples of a batch of D slice distributions stacked in depth, with each slice's own
    noise, with slice 0's latent z for every slice but each slice's own pixel noise (what a 3D
    model inflated from the 2D one draws: one z per volume, eps per voxel), and with slice 0's
    noise, z and eps, for every slice."""
    from ssn.distributions import LogitNoise, labels_from_logits

    noise = dist.draw_noise(samples, generator)  # z (samples, D, R), eps (samples, D, C, H, W)
    shared = LogitNoise(*(part[:, :1].expand_as(part) for part in noise))
    latent = LogitNoise(shared.z, noise.eps)
    out = {}
    for mode, drawn in (("independent", noise), ("shared latent", latent), ("shared", shared)):
        labels = labels_from_logits(dist.logits_from_noise(drawn))  # (samples, D, H, W)
        out[mode] = labels.permute(0, 2, 3, 1)
    return out


def weights_digest(run: str | Path) -> str:
    """SHA-256 of a run's ``best.safetensors`` (``pretrained:NAME`` resolved): which weights a row measured."""
    import hashlib

    from ssn.engine.pretrained import resolve_run_dir

    return hashlib.sha256((resolve_run_dir(run) / "best.safetensors").read_bytes()).hexdigest()


def slicewise_2d(listing: Path, run: str, samples: int, seed: int) -> dict:
    """A 2D model applied to each slice of the test nodules, its samples stacked in depth.

    Not a model trained alike: it is the 2D SSN (for example ``pretrained:lidc-2d``, trained on
    the same patients' slices), a yardstick for what the 3D models should reach. Each slice's
    distribution is drawn with ``independent`` noise (the slices' samples unrelated, as a 2D
    model gives them), with a ``shared latent`` (one z for every slice of a sample, each slice's
    own pixel noise: what a 3D model inflated from the 2D one draws), and with ``shared`` noise
    (one draw of the latent and pixel noise for every slice of a sample, so that a sample's
    slices move together). The slices are the converted
    volumes' images as stored (intensity / 255, as the 2D model was trained), not normalised.
    """
    import torch

    from ssn import metrics
    from ssn.data import load_volume_list, read_case
    from ssn.data.nifti import read_nifti
    from ssn.engine.checkpoints import load_run

    model, config = load_run(run, temperature=1.0)
    volumes = load_volume_list(listing)
    figures: dict[str, list[dict]] = {"independent": [], "shared latent": [], "shared": []}
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for case in volumes.split("test"):
            readers = torch.from_numpy(np.array(read_case(case, volumes.label_map).labels)).long()  # (A, H, W, D)
            image, _ = read_nifti(case.images[0])
            slices = torch.from_numpy(np.moveaxis(np.asarray(image, dtype=np.float32), -1, 0)).unsqueeze(1)
            dist = model.distribution(slices)  # a batch of D slices
            for mode, labels in stacked_samples(dist, samples, generator).items():
                figures[mode].append(metrics.image_metrics(labels, readers, 2, matched_sizes=(samples,)))
    estimate = metrics.Estimate.of
    return {
        "run": run,
        "weights_sha256": weights_digest(run),
        "temperature": 1.0,
        "steps": config.get("max_steps"),
        "num_samples": samples,
        **{
            mode: {
                key: estimate([row[key] for row in rows]).as_dict()
                for key in ("ged", "diversity", "dice", f"hm_iou_{samples}")
            }
            for mode, rows in figures.items()
        },
    }


def calibrate(args, listing: Path, name: str) -> float | None:
    """The temperature ``ssn calibrate`` chooses for a stochastic model on validation volumes
    (64 of them, 16 samples; chosen once, then read back), or None for the deterministic one."""
    import subprocess

    run = args.out / name
    if name == "deterministic" or not args.calibrate:
        return None
    chosen = run / "calibration.json"
    if not chosen.is_file():
        command = ssn_command("calibrate", "--run", str(run), "--data", str(listing), "--split", "validation",
                              "--samples", "16", "--out", str(chosen))  # fmt: skip
        subprocess.run(command, env=thread_env(args.threads), check=True)
    return float(json.loads(chosen.read_text())["temperature"])


def evaluate(args, listing: Path, name: str, temperature: float = 1.0) -> dict | None:
    """The test figures of one trained model at ``temperature`` (evaluated once, then read back)."""
    import subprocess

    run = args.out / name
    if _steps_done(run) < args.steps:
        return None
    suffix = "" if temperature == 1.0 else f"_t{temperature:g}"
    out = run / f"test_metrics_{args.samples}{suffix}.json"
    if not out.is_file():
        command = ssn_command("evaluate", "--run", str(run), "--data", str(listing), "--split", "test",
                              "--samples", str(args.samples), "--temperature", f"{temperature:g}",
                              "--out", str(out))  # fmt: skip
        subprocess.run(command, env=thread_env(args.threads), check=True)
    summary = json.loads(out.read_text())
    nodule = summary["structures"][STRUCTURE]
    return {
        "name": (f"{name} ({args.tag})" if args.tag else name) + ("" if temperature == 1.0 else ", calibrated"),
        "ged": nodule["ged"],
        "diversity": nodule["diversity"],
        "dice": nodule["dice"],
        "hm_iou": {k[len("hm_iou_") :]: v for k, v in nodule.items() if k.startswith("hm_iou_")},
        "multi_class": summary["structures"].get("multi-class (present)"),
        "num_cases": summary["num_cases"],
        "num_samples": summary["num_samples"],
        "temperature": summary["temperature"],
        "steps": args.steps,
        "cpu_hours": _cpu_hours(run),
        "seed": args.seed,
        "draws": DRAWS,
        "settings": train_flags(args, listing, name),
        "run": str(run),
    }


def _cpu_hours(run: Path) -> float | None:
    last = _last_entry(run)
    return round(last["cpu_minutes"] / 60, 3) if "cpu_minutes" in last else None


def _plus_minus(figure: dict) -> str:
    stderr = figure.get("stderr")
    return f"{figure['mean']:.3f} +- {stderr:.3f}" if stderr is not None else f"{figure['mean']:.3f} (one case)"


def main() -> None:
    parser = benchmark_parser("lidc3d", __doc__)
    add_lidc_dir(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/lidc3d"))
    parser.add_argument("--volumes", type=Path, help="the converted LIDC-3D folder (default: OUT/volumes)")
    parser.add_argument("--npz", type=Path, help="the slices to convert (default: the LIDC folder's)")
    parser.add_argument("--models", nargs="+", default=list(SSN_AND_BASELINES), choices=list(SSN_AND_BASELINES))
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 8])
    parser.add_argument("--features", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-images", type=int, default=32)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--val-volumes", choices=("whole", "patches"), help="how the runs validate (default: ssn train's, whole)"
    )
    parser.add_argument(
        "--slicewise-2d",
        metavar="RUN",
        help="only score a 2D run (e.g. pretrained:lidc-2d) slice by slice on the test nodules",
    )
    parser.add_argument(
        "--init-from",
        metavar="RUN",
        help="start every model from this run's weights (e.g. pretrained:lidc-2d, inflated slice by slice: "
        "needs --model-kwargs '{pool: [2, 2, 1]}' and its --features)",
    )
    parser.add_argument("--model-kwargs", help="the backbone's own arguments (ssn train --model-kwargs)")
    parser.add_argument(
        "--intensity",
        choices=["zscore", "stored"],
        help="ssn train --intensity: stored feeds the grey level / 255 that a 2D model saw (default: zscore)",
    )
    parser.add_argument("--mean-warmup", type=float, help="ssn train --mean-warmup (default: its own, 0.25)")
    parser.add_argument("--warmup-steps", type=int, default=0, help="ssn train --warmup-steps (learning-rate warm-up)")
    parser.add_argument("--tag", help="a variant's name, added to its rows' names (e.g. 'patches 32x32x8')")
    parser.add_argument(
        "--extra", default="", help="further `ssn train` flags for every model, one string (needs --tag)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--part-minutes", type=float, help="train for at most this many minutes per model now")
    parser.add_argument("--one-at-a-time", action="store_true", help="train the models one after another")
    parser.add_argument("--results", type=Path, default=RESULTS / "lidc3d.json")
    parser.add_argument(
        "--no-calibrate", dest="calibrate", action="store_false",
        help="evaluate at t = 1 only (default: the SSNs also at the temperature ssn calibrate chooses on 64 validation nodules)",
    )  # fmt: skip
    parser.add_argument(
        "--references-only", action="store_true", help="convert if needed, write the reference rows, train nothing"
    )
    args = parser.parse_args()
    if args.extra.strip() and not args.tag:
        parser.error("--extra changes the settings: name the change with --tag (e.g. 'marginal weight 1')")
    args.out.mkdir(parents=True, exist_ok=True)
    volumes = args.volumes or args.out / "volumes"
    listing = volumes / "lidc3d.json"
    if not listing.is_file():
        import subprocess

        npz, split = (args.npz, None) if args.npz else lidc_files(args.data_dir)
        command = ssn_command(
            "convert", "lidc-3d", str(npz), "--out", str(volumes), *(["--split-file", str(split)] if split else [])
        )
        subprocess.run(command, check=True)
    measured = {"machine": machine(), "command": recorded_command("lidc3d", *sys.argv[1:])}
    if args.references_only:
        reference = {**references(listing, args.samples), **measured}
        update_json(args.results, lambda content: {**content, "reference": reference, "runs": content.get("runs", [])})
        print(f"test nodules: {reference['num_cases']}; readers' diversity {_plus_minus(reference['reader_diversity'])}; "
              f"empty {_plus_minus(reference['empty']['ged'])}; majority vote {_plus_minus(reference['majority_vote']['ged'])}")  # fmt: skip
        return
    if args.slicewise_2d:
        row = {**slicewise_2d(listing, args.slicewise_2d, args.samples, args.seed), **measured}
        update_json(args.results, lambda content: {**content, "slicewise_2d": row})
        for mode in ("independent", "shared latent", "shared"):
            print(f"{args.slicewise_2d} slice by slice, {mode} noise: GED^2 {_plus_minus(row[mode]['ged'])}, "
                  f"diversity {row[mode]['diversity']['mean']:.3f}, Dice {row[mode]['dice']['mean']:.3f}")  # fmt: skip
        return
    jobs = logged_jobs(train_commands(args, listing), args.out, "train")
    run_jobs(jobs, thread_env(args.threads), at_once=1 if args.one_at_a_time else None)
    rows = []
    for name in args.models:
        row = evaluate(args, listing, name)
        if row is None:
            continue
        rows.append(row)
        temperature = calibrate(args, listing, name)
        if temperature is not None and temperature != 1.0:
            rows.append(evaluate(args, listing, name, temperature))
    waiting = [name for name in args.models if _steps_done(args.out / name) < args.steps]
    if waiting:
        print(f"still training ({', '.join(waiting)}): rerun the same command to go on")
    if not rows:
        return
    reference = {**references(listing, args.samples), **measured}

    def change(content: dict) -> dict:
        kept = [
            r
            for r in content.get("runs", [])
            if (r["name"], r.get("seed"), r.get("steps")) not in {(x["name"], x["seed"], x["steps"]) for x in rows}
        ]
        return {**content, "reference": reference, "runs": kept + [{**r, **measured} for r in rows]}

    update_json(args.results, change)
    print(f"test nodules: {reference['num_cases']}; readers' diversity {reference['reader_diversity']['mean']:.3f}")
    for name in ("empty", "majority_vote"):
        print(f"  {name:14s} GED^2 {_plus_minus(reference[name]['ged'])}")
    for r in rows:
        print(f"  {r['name']:14s} GED^2 {_plus_minus(r['ged'])}, diversity {r['diversity']['mean']:.3f}")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()

"""Where a model's LIDC GED² comes from: the test slices grouped by how many readers marked them.

Reads the per-slice CSVs that ``benchmarks/lidc.py`` leaves in each run folder
(``test_metrics.csv``), adds the readers' majority vote, and prints a table of GED²(100) per group
with each group's share of the test mean. With ``--inspect RUN`` it also draws 16 samples of 120
slices that all four readers marked and reports how often a sample is empty, the area of the
mean prediction and the samples' IoU with the majority vote.

    python -m benchmarks.lidc_breakdown --runs runs/lidc-v3/low-rank runs/lidc-v3/prob-unet \\
        --inspect runs/lidc-v3/low-rank
    python -m benchmarks.lidc_breakdown --inspect pretrained:lidc-2d --slices 0  # every four-reader test slice
    python -m benchmarks.lidc_breakdown --inspect runs/a runs/b --slices 0 --split val  # to choose between runs
    python -m benchmarks.lidc_breakdown --presence pretrained:lidc-2d  # empty samples by readers marking

``--presence RUN`` asks whether a model's chance of drawing an empty sample depends on the image:
on slices that k of the four readers marked, (4 - k)/4 of the readers' maps are empty, so a model
that reads the image draws more empty samples where fewer readers marked. It prints, for each k,
the share of empty samples (16 per slice, t = 1) beside the readers' share, how often the mean
map is empty, and the empty samples where it is not (those the covariance empties), and records
them in ``results/lidc_presence.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import add_lidc_dir, benchmark_parser, lidc_files


def _temperature(value: str) -> float | None:
    """``--temperature``: a number >= 0, or None for 'calibrated' (``load_run`` then reads the run's own)."""
    if value == "calibrated":
        return None
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"--temperature takes a number >= 0 or 'calibrated'; got {value!r}")
    return number


def main() -> None:
    parser = benchmark_parser("lidc_breakdown", __doc__)
    add_lidc_dir(parser)
    parser.add_argument("--runs", nargs="+", type=Path, default=[], help="run folders holding test_metrics.csv")
    parser.add_argument(
        "--inspect",
        nargs="+",
        default=[],
        help="runs (or pretrained:NAME) to draw samples from on the four-reader slices",
    )
    parser.add_argument(
        "--slices", type=int, default=120, help="with --inspect: how many four-reader slices (0: all of them)"
    )
    parser.add_argument(
        "--split", default="test", choices=["val", "test"], help="with --inspect alone: the slices' split"
    )
    parser.add_argument(
        "--presence",
        nargs="+",
        default=[],
        help="runs (or pretrained:NAME): empty samples against the readers' empty maps, by readers marking",
    )
    parser.add_argument(
        "--temperature",
        type=_temperature,
        default=1.0,
        help="with --presence: the sampling temperature, a number >= 0 or 'calibrated' (each run's "
        "calibration.json, 1 where it has none; default 1)",
    )
    args = parser.parse_args()
    if not args.runs and not args.inspect and not args.presence:
        parser.error("give --runs, --inspect, --presence or a combination")
    from ssn.data import load_arrays, select_split
    from ssn.metrics import image_metrics

    npz_file, split_file = lidc_files(args.data_dir)
    arrays = load_arrays(npz_file)  # memory-mapped: each lookup reads only the rows it takes
    data = {"images": arrays.images, "masks": arrays.masks}
    if not args.runs:
        test = select_split(arrays, args.split, split_file)
        masks = data["masks"][test]
        marking = masks.reshape(len(test), masks.shape[1], -1).any(-1).sum(1)
        for run in args.inspect:
            inspect(run, data, test, marking == masks.shape[1], args.slices, split=args.split)
        from ssn.engine.checkpoints import load_run

        for run in args.presence:
            model, _ = load_run(run, temperature=args.temperature)
            if not model.has_logit_distribution:
                raise SystemExit(f"--presence needs an SSN run (a logit distribution); {run} is a {model.method} model")
            rows = presence(model, data, test, marking, args.slices)
            print_presence(run, args.split, 16, rows, model.temperature)
            record_presence(run, args.split, 16, rows, sys.argv[1:], model.temperature)
        return
    columns, indices = {}, None
    for run in args.runs:
        with open(run / "test_metrics.csv") as file:
            rows = list(csv.DictReader(file))
        order = np.array([int(r["index"]) for r in rows])
        if indices is not None and not np.array_equal(order, indices):
            raise SystemExit(f"{run} was evaluated on other slices than {args.runs[0]}")
        indices = order
        columns[run.name] = np.array([float(r["ged"]) for r in rows])
    masks = data["masks"][indices]
    columns["majority vote"] = np.array(
        [image_metrics((m.sum(0) >= 2).astype(np.uint8)[None], m, 2)["ged"] for m in masks]
    )
    marking = masks.reshape(len(indices), masks.shape[1], -1).any(-1).sum(1)
    print("| readers marking | slices | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (2 + len(columns)))
    for k in range(masks.shape[1] + 1):
        chosen = marking == k
        cells = [f"{v[chosen].mean():.3f} ({v[chosen].sum() / len(v):.3f})" for v in columns.values()]
        print(f"| {k} | {int(chosen.sum())} | " + " | ".join(cells) + " |")
    print(f"| all | {len(indices)} | " + " | ".join(f"{v.mean():.3f}" for v in columns.values()) + " |")
    for run in args.inspect:
        inspect(run, data, indices, marking == masks.shape[1], args.slices)


def inspect(
    run, data, indices: np.ndarray, all_marked: np.ndarray, count: int = 120, samples: int = 16, split: str = "test"
) -> None:
    """Draw ``samples`` samples (t = 1) on ``count`` of the ``split``'s slices that every reader marked
    (all of them when ``count`` is 0) and print the share of empty samples, the mean prediction's
    area, the readers' area and the samples' IoU with the majority vote."""
    from ssn.engine.checkpoints import load_run
    from ssn.inference import image_tensor

    model, _ = load_run(run, temperature=1.0)
    marked = np.flatnonzero(all_marked)
    count = count or marked.size
    chosen = indices[np.sort(np.random.default_rng(0).choice(marked, count, replace=False))]
    masks = data["masks"][chosen].reshape(count, data["masks"].shape[1], -1).astype(bool)
    images = image_tensor(data["images"][chosen])  # (count, 1, H, W)
    generator = torch.Generator().manual_seed(0)
    drawn_parts, probability_parts = [], []
    with torch.no_grad():
        for begin in range(0, count, 64):
            part = images[begin : begin + 64]
            drawn_parts.append(model.sample_labels(part, samples, generator=generator))
            probability_parts.append(model.mean_probabilities(part)[:, 1])
    drawn = torch.cat(drawn_parts, 1).numpy().reshape(samples, count, -1).astype(bool)
    probability = torch.cat(probability_parts)
    majority = masks.sum(1) >= 2
    union = (drawn | majority[None]).sum(-1)
    iou = np.where(union == 0, 1.0, (drawn & majority[None]).sum(-1) / np.maximum(union, 1))
    print(
        json.dumps(
            {
                "run": str(run),
                "split": split,
                "slices": count,
                "samples": samples,
                "empty_sample_share": float((drawn.sum(-1) == 0).mean()),
                "mean_prediction_area": float((probability.numpy().reshape(count, -1) > 0.5).sum(-1).mean()),
                "reader_area": float(masks.sum(-1).mean()),
                "iou_with_majority": float(iou.mean()),
            },
            indent=1,
        )
    )


def presence(
    model,
    data,
    indices: np.ndarray,
    marking: np.ndarray,
    count: int = 120,
    samples: int = 16,
) -> list[dict]:
    """For each number k of readers marking a slice, on up to ``count`` such slices among
    ``indices`` (all when 0): the readers' share of empty maps, (R - k)/R; how often the mean map (the argmax
    of the mean logits mu) is empty; the share of empty samples (drawn at ``model.temperature``), overall
    and on the slices where the mean map is not empty (what the covariance alone empties). Recorded in
    ``results/lidc_presence.json`` by :func:`record_presence`. ``model`` is an SSN."""
    from ssn.inference import image_tensor

    readers = data["masks"].shape[1]
    generator = torch.Generator().manual_seed(0)
    rows = []
    for k in range(1, readers + 1):
        group = np.flatnonzero(marking == k)
        take = min(count or group.size, group.size)
        if take == 0:
            continue  # no slice that k readers marked: no row
        chosen = indices[np.sort(np.random.default_rng(0).choice(group, take, replace=False))]
        images = image_tensor(data["images"][chosen])
        mean_empty, sample_empty = [], []
        with torch.no_grad():
            for begin in range(0, take, 64):
                distribution = model.distribution(images[begin : begin + 64]).scaled(model.temperature)
                mean_empty.append((distribution.loc.argmax(1) == 0).flatten(1).all(1))
                drawn = distribution.sample_labels(samples, generator=generator)  # (N, b, H, W)
                sample_empty.append((drawn == 0).flatten(2).all(2).float().mean(0))
        empty_mean, empty_samples = torch.cat(mean_empty), torch.cat(sample_empty)
        rows.append(
            {
                "readers_marking": k,
                "slices": int(take),
                "readers_empty_share": (readers - k) / readers,
                "mean_map_empty_share": float(empty_mean.float().mean()),
                "empty_sample_share": float(empty_samples.mean()),
                "empty_sample_share_where_the_mean_is_not_empty": float(empty_samples[~empty_mean].mean())
                if bool((~empty_mean).any())
                else None,
            }
        )
    return rows


def print_presence(run: str, split: str, samples: int, rows: list[dict], temperature: float = 1.0) -> None:
    print(f"{run} ({split}, {samples} samples per slice, t = {temperature:g})")
    print("| readers marking | slices | readers' maps empty | mean map empty | samples empty | where the mean is not |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        rest = row["empty_sample_share_where_the_mean_is_not_empty"]
        print(
            f"| {row['readers_marking']} | {row['slices']} | {row['readers_empty_share']:.0%} "
            f"| {row['mean_map_empty_share']:.1%} | {row['empty_sample_share']:.1%} "
            f"| {'' if rest is None else f'{rest:.1%}'} |"
        )


def record_presence(
    run: str, split: str, samples: int, rows: list[dict], argv: list[str], temperature: float = 1.0
) -> None:
    """Keep ``rows`` in ``results/lidc_presence.json``, replacing an earlier entry of the same run,
    split and temperature."""
    import ssn
    from benchmarks._common import RESULTS, recorded_command, update_json

    name = run if str(run).startswith("pretrained:") else "/".join(Path(run).parts[-2:])
    entry = {
        "run": name,
        "split": split,
        "samples": samples,
        "temperature": temperature,
        "measured": time.strftime("%Y-%m-%d"),
        "ssn_version": ssn.__version__,
        "command": recorded_command("lidc_breakdown", *argv),
        "rows": rows,
    }

    def change(content: dict) -> dict:
        def key(e: dict) -> tuple:
            return e["run"], e["split"], e.get("temperature", 1.0)

        kept = [e for e in content.get("runs", []) if key(e) != key(entry)]
        return {"runs": [*kept, entry]}

    update_json(RESULTS / "lidc_presence.json", change)


if __name__ == "__main__":
    main()

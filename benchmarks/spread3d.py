"""Why 3D samples spread: the candidate causes measured on trained 3D runs, beside the readers.

For each run (a 3D SSN trained on patches) and each test case of a volume list with several
annotators, 16 samples are drawn as ``ssn evaluate`` draws them (sliding windows of the training
patch over the box around the mask, the run's temperature) and compared with the readers:

- **spread**: the diversity E[1 - IoU(S, S')] of the structure against the readers' own;
- **size**: the samples' mean foreground volume over the readers' mean, and the coefficient of
  variation of the volume (sd / mean) of the samples and of the readers;
- **empty**: the share of empty samples on the cases that every reader marked (and on all cases);
- **the mean**: the share of the readers' majority region (2 of 4) where the mean logits say
  foreground (mu_1 > mu_0): a mean that misses the lesion leaves the samples to find it through
  the covariance alone;
- **leak**: the share of the samples' foreground voxels farther than ``--margin`` voxels (3D
  chessboard distance) from every reader's foreground, beside the same share of each reader's
  voxels measured against the other readers;
- **variance far away**: the median standard deviation of the foreground-minus-background logit,
  sqrt(sum_r (P_1r - P_0r)^2 + D_1 + D_0), near the readers' union (within ``--margin``) and far
  from it;
- **the blend**: the diversity and GED² again with one window over the whole box (no blending),
  the same noise seed;
- **training**: the run's validation GED² and diversity at each validation step (``metrics.jsonl``).

Rank and the patch sampler's foreground share are properties of training: they are compared by
training runs that differ in ``--rank`` or ``--foreground-share`` and running this script on each.

    python -m benchmarks.spread3d --runs ../runs/lidc3d-v1/low-rank ../runs/lidc3d-v1/diagonal \\
        --data ../runs/lidc3d/lidc3d.json --cases 200
    # writes benchmarks/results/spread3d.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from benchmarks._common import RESULTS, benchmark_parser, machine, recorded_command, update_json


def _foreground_sd(dist, foreground: int) -> torch.Tensor:
    """(*S) standard deviation of eta_fg - eta_0 under a batch-1 low-rank distribution."""
    factor = dist.cov_factor[0]  # (R, C, *S)
    difference = factor[:, foreground] - factor[:, 0]
    return (difference.square().sum(0) + dist.cov_diag[0, foreground] + dist.cov_diag[0, 0]).sqrt()


def _case_figures(model, config, case, label_map, window, samples, margin, seed) -> dict:
    from ssn import metrics
    from ssn.data import read_case
    from ssn.data.nifti import run_intensity
    from ssn.inference.sliding import roi_box, sliding_window_distribution, stream_samples

    volume = read_case(case, label_map, intensity=run_intensity(config))
    readers = np.asarray(volume.labels) > 0  # (A, *S): the structure (every foreground class)
    box = roi_box(np.asarray(volume.mask) | readers.any(0))
    image = torch.from_numpy(np.array(volume.image[(slice(None), *box)], dtype=np.float32))
    roi = torch.from_numpy(np.array(volume.mask[box], dtype=bool))
    readers = readers[(slice(None), *box)]
    union = readers.any(0)
    near = ndimage.binary_dilation(union, np.ones((3, 3, 3), bool), iterations=margin) if union.any() else union
    figures: dict = {"case": case.id, "readers_marked": int(readers.reshape(len(readers), -1).any(1).sum())}
    annotations = torch.from_numpy(readers.astype(np.uint8))
    shape = tuple(image.shape[1:])
    for name, size in (("blend", window), ("one_window", list(shape))):
        dist = sliding_window_distribution(model, image, size, 0.5, roi).scaled(model.temperature)
        generator = torch.Generator().manual_seed(seed)
        drawn = torch.stack([labels for labels in stream_samples(dist, samples, 4, generator)])
        drawn = ((drawn > 0) & roi).to(torch.uint8)
        figures[f"{name}_ged"] = metrics.generalized_energy_distance(drawn, annotations, 2)
        figures[f"{name}_diversity"] = metrics.sample_diversity(drawn, 2)
        if name != "blend":
            continue
        figures["reader_diversity"] = metrics.sample_diversity(annotations, 2)
        volumes = drawn.reshape(samples, -1).sum(1).double().numpy()
        reader_volumes = readers.reshape(len(readers), -1).sum(1).astype(float)
        figures["size_ratio"] = float(volumes.mean() / reader_volumes.mean()) if reader_volumes.mean() else None
        figures["size_cv"] = float(volumes.std() / volumes.mean()) if volumes.mean() else None
        figures["reader_size_cv"] = (
            float(reader_volumes.std() / reader_volumes.mean()) if reader_volumes.mean() else None
        )
        figures["empty"] = float((volumes == 0).mean())
        foreground = drawn.numpy().astype(bool)
        figures["leak"] = float((foreground & ~near).sum() / max(foreground.sum(), 1))
        reader_leaks = []
        for k in range(len(readers)):
            others = np.delete(readers, k, axis=0).any(0)
            if readers[k].any() and others.any():
                around = ndimage.binary_dilation(others, np.ones((3, 3, 3), bool), iterations=margin)
                reader_leaks.append((readers[k] & ~around).sum() / readers[k].sum())
        figures["reader_leak"] = float(np.mean(reader_leaks)) if reader_leaks else None
        majority = readers.mean(0) >= 0.5
        mean_says = (dist.loc[0, 1] > dist.loc[0, 0]).numpy()
        figures["mean_covers_majority"] = float(mean_says[majority].mean()) if majority.any() else None
        sd = _foreground_sd(dist, 1).numpy()
        inside = np.asarray(roi)
        figures["sd_near"] = float(np.median(sd[near & inside])) if (near & inside).any() else None
        figures["sd_far"] = float(np.median(sd[~near & inside])) if (~near & inside).any() else None
    return figures


def _mean(rows: list[dict], key: str, where=lambda row: True) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None and where(row)]
    return float(np.mean(values)) if values else None


def summarise(rows: list[dict], readers: int) -> dict:
    """Means over cases of each figure (``empty`` both on all cases and on those every reader marked)."""
    keys = [k for k in rows[0] if k not in ("case", "readers_marked", "empty")]
    out = {key: _mean(rows, key) for key in keys}
    out["empty_any"] = _mean(rows, "empty")
    out["empty_all_marked"] = _mean(rows, "empty", lambda row: row["readers_marked"] == readers)
    out["num_cases"] = len(rows)
    return out


def curve(run: Path) -> list[dict]:
    """(step, validation GED², validation diversity) of each validation of the run."""
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    entries = [json.loads(line) for line in lines]
    return [
        {"step": e["step"], "val_ged": e["val_ged"], "val_diversity": e.get("val_diversity")}
        for e in entries
        if e.get("val_ged") is not None
    ]


def _calibration(run: Path) -> dict | None:
    """The temperature ``ssn calibrate`` chose for the run and its curve (GED² per temperature), if any."""
    path = run / "calibration.json"
    if not path.is_file():
        return None
    chosen = json.loads(path.read_text())
    return {key: chosen.get(key) for key in ("temperature", "ged", "ged_at_1", "num_samples", "split", "curve")}


def main() -> None:
    from ssn.data import load_volume_list
    from ssn.engine.checkpoints import load_run

    parser = benchmark_parser("spread3d", __doc__)
    parser.add_argument("--runs", type=Path, nargs="+", required=True)
    parser.add_argument("--data", type=Path, required=True, help="the volume list (e.g. LIDC-3D's lidc3d.json)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--cases", type=int, help="N cases of the split, drawn with --seed (default: all)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--margin", type=int, default=3, help="voxels around the readers' union that count as near")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--temperature", type=float, help="sampling temperature (default: the run's calibrated one, else 1)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS / "spread3d.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    listing = load_volume_list(args.data)
    cases = listing.split(args.split)
    if args.cases and args.cases < len(cases):  # a fixed random subset, in the list's order
        chosen = np.sort(np.random.default_rng(args.seed).choice(len(cases), args.cases, replace=False))
        cases = [cases[k] for k in chosen]
    runs = []
    for run in args.runs:
        model, config = load_run(run, temperature=args.temperature)
        window = list(config["patch_size"])
        with torch.no_grad():
            rows = [
                _case_figures(model, config, case, listing.label_map, window, args.samples, args.margin, args.seed)
                for case in cases
            ]
        readers = max(row["readers_marked"] for row in rows)
        summary = summarise(rows, readers)
        runs.append(
            {
                "run": str(run),
                "name": f"{run.parent.name}/{run.name}",
                "method": config["architecture"]["method"],
                "rank": config.get("rank"),
                "temperature": model.temperature,
                "window": window,
                "figures": summary,
                "curve": curve(run),
                "calibration": _calibration(run),
            }
        )
        print(f"{run}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if isinstance(v, float)))
    measured = {"machine": machine(), "command": recorded_command("spread3d", *sys.argv[1:])}
    update_json(
        args.results,
        lambda content: {
            "runs": [r for r in content.get("runs", []) if (r["run"], r["temperature"]) not in {(x["run"], x["temperature"]) for x in runs}]
            + [{**r, "data": str(args.data), "split": args.split, "samples": args.samples, "margin": args.margin, **measured} for r in runs]
        },
    )  # fmt: skip
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()

"""What a 3D SSN inflated from a 2D one loses against the 2D model on LIDC-3D: the input scale.

A 3D U-Net inflated from a 2D one (``ssn train --init-from``, ``pool [2, 2, 1]``,
``norm: slice-instance``) computes the 2D network on each slice, under one latent draw for the
whole volume. Yet the volume pipeline z-scores each volume inside its mask, where the 2D model
saw the stored intensities (intensity / 255 for LIDC). This script scores the inflated run on
validation nodules both ways, whole volumes in one pass (a 128x128 crop pools in-plane and the
depth is not pooled, so no window is needed), with the same noise for both inputs and several
noise seeds, and reports the paired difference per seed.

    python -m benchmarks.inflation --run ../runs/lidc3d-slice/step0 --volumes ../runs/lidc3d/lidc3d.json
    # writes benchmarks/results/inflation.json
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

from benchmarks._common import benchmark_parser, recorded_command, write


def score(run: str, listing: Path, cases: int, seeds: list[int], samples: int = 16) -> dict:
    """GED² per input ("zscored", "stored") and seed on ``cases`` validation nodules drawn with
    a fixed shuffle, and the paired difference stored - zscored per seed (mean, standard error)."""
    import torch

    from ssn import metrics
    from ssn.data import load_volume_list, read_case
    from ssn.data.nifti import read_nifti
    from ssn.distributions import labels_from_logits
    from ssn.engine.checkpoints import load_run

    model, _ = load_run(run, temperature=1.0)
    volumes = load_volume_list(listing)
    chosen = list(volumes.split("val"))
    random.Random(0).shuffle(chosen)
    rows: dict[str, dict[int, list[float]]] = {"zscored": {s: [] for s in seeds}, "stored": {s: [] for s in seeds}}
    with torch.no_grad():
        for case in chosen[:cases]:
            volume = read_case(case, volumes.label_map)
            readers = torch.from_numpy(np.array(volume.labels)).long()
            stored, _ = read_nifti(case.images[0])
            inputs = {
                "zscored": torch.from_numpy(np.array(volume.image)).unsqueeze(0),  # (1, 1, H, W, D)
                "stored": torch.from_numpy(np.asarray(stored, dtype=np.float32))[None, None],
            }
            for mode, image in inputs.items():
                dist = model.distribution(image)
                for seed in seeds:
                    noise = dist.draw_noise(samples, torch.Generator().manual_seed(seed))
                    labels = labels_from_logits(dist.logits_from_noise(noise))[:, 0]
                    figures = metrics.image_metrics(labels, readers, 2, matched_sizes=(samples,))
                    rows[mode][seed].append(figures["ged"])
    out: dict = {"run": run, "cases": min(cases, len(chosen)), "samples": samples, "seeds": {}}
    for seed in seeds:
        zscored, stored_ged = np.array(rows["zscored"][seed]), np.array(rows["stored"][seed])
        diff = stored_ged - zscored
        out["seeds"][str(seed)] = {
            "zscored": float(zscored.mean()),
            "stored": float(stored_ged.mean()),
            "difference": float(diff.mean()),
            "difference_stderr": float(diff.std(ddof=1) / np.sqrt(len(diff))),
        }
    return out


def main() -> None:
    parser = benchmark_parser("inflation", __doc__)
    parser.add_argument("--run", required=True, help="an inflated 3D run (or pretrained:NAME)")
    parser.add_argument("--volumes", type=Path, required=True, help="the LIDC-3D volume list (lidc3d.json)")
    parser.add_argument("--cases", type=int, default=96)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    result = score(args.run, args.volumes, args.cases, args.seeds)
    for seed, row in result["seeds"].items():
        print(
            f"seed {seed}: GED² z-scored {row['zscored']:.3f}, stored {row['stored']:.3f}, "
            f"paired difference {row['difference']:+.3f} ± {row['difference_stderr']:.3f}"
        )
    write("inflation", {**result, "command": recorded_command("inflation", *sys.argv[1:])})


if __name__ == "__main__":
    main()

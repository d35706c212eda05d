"""Speed of the per-image metrics: 100 samples and 4 annotations of 128x128, binary.

The baseline is the textbook loop: d(a, b) = 1 - IoU computed pair by pair with numpy, as many
evaluation scripts do. Both run interleaved in one process; medians are reported.

    python -m benchmarks.metrics           # writes benchmarks/results/metrics.json
"""

from __future__ import annotations

import numpy as np

from benchmarks._common import benchmark_parser, medians, paired_ratio, time_interleaved, write
from ssn import metrics


def loop_distance(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 0.0 if union == 0 else 1.0 - np.logical_and(a, b).sum() / union


def loop_ged(samples: np.ndarray, annotations: np.ndarray) -> float:
    def mean(xs, ys):
        return np.mean([loop_distance(x, y) for x in xs for y in ys])

    return 2 * mean(samples, annotations) - mean(samples, samples) - mean(annotations, annotations)


def main() -> None:
    benchmark_parser("metrics", __doc__).parse_args()
    rng = np.random.default_rng(0)
    # Blob-like maps (not noise): thresholded smooth fields, like real nodule masks.
    yy, xx = np.mgrid[:128, :128]
    centres = rng.uniform(40, 88, (104, 2))
    radii = rng.uniform(5, 20, 104)
    maps = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2 < radii[:, None, None] ** 2
    maps = maps.astype(np.uint8)
    maps[rng.random(104) < 0.2] = 0  # some empty maps, as when a reader marks nothing
    samples, annotations = maps[:100], maps[100:]
    ged = metrics.generalized_energy_distance(samples, annotations)
    assert abs(ged - loop_ged(samples, annotations)) < 1e-9
    rounds = time_interleaved(
        {
            "ged_ssn": lambda: metrics.generalized_energy_distance(samples, annotations),
            "ged_loop": lambda: loop_ged(samples, annotations),
            "hm_iou_16": lambda: metrics.hungarian_matched_iou(samples[:16], annotations),
            "hm_iou_100": lambda: metrics.hungarian_matched_iou(samples, annotations),
            "diversity_100": lambda: metrics.sample_diversity(samples),
        },
        repeats=15,
        warmup=2,
    )
    ms = {name: 1e3 * t for name, t in medians(rounds).items()}
    speedup = paired_ratio(rounds, "ged_loop", "ged_ssn")
    print(
        f"GED^2 (100 samples, 4 annotations, 128x128): {ms['ged_ssn']:.1f} ms "
        f"(pairwise numpy loop {ms['ged_loop']:.0f} ms, x{speedup:.0f}); "
        f"HM-IoU(16) {ms['hm_iou_16']:.1f} ms, HM-IoU(100) {ms['hm_iou_100']:.1f} ms, "
        f"diversity(100) {ms['diversity_100']:.1f} ms"
    )
    write(
        "metrics",
        {"milliseconds": ms, "ged_speedup_over_loop": speedup, "samples": 100, "annotations": 4, "size": [128, 128]},
    )


if __name__ == "__main__":
    main()

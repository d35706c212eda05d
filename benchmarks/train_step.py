"""Cost of one training step of an SSN against its deterministic counterpart.

Same U-Net backbone, 2D 128x128, batch 8, two classes. SSN: rank 10, 20 antithetic Monte Carlo
samples, its Monte Carlo loss. Deterministic: one 1x1 convolution and cross-entropy summed over
pixels. Both through ``model.loss``. A step is forward,
loss, backward and an Adam update. Steps of the two models alternate in one process; medians.

    python -m benchmarks.train_step        # writes benchmarks/results/train_step.json
"""

from __future__ import annotations

import torch

import ssn
from benchmarks._common import benchmark_parser, medians, paired_ratio, time_interleaved, write


def main() -> None:
    parser = benchmark_parser("train_step", __doc__)
    parser.add_argument("--repeats", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    torch.manual_seed(0)
    features = (32, 64, 128, 256)
    model = ssn.models.create("unet", num_classes=2, rank=10, mc_samples=20, features=features)
    baseline = ssn.models.create("unet", method="deterministic", num_classes=2, features=features)
    images = torch.randn(args.batch_size, 1, args.size, args.size)
    target = (torch.rand(args.batch_size, args.size, args.size) > 0.8).long()

    def step(network, optimiser):
        def run():
            optimiser.zero_grad(set_to_none=True)
            network.loss(images, target).backward()  # each method's own loss, through the interface
            optimiser.step()

        return run

    ssn_step = step(model, torch.optim.Adam(model.parameters(), lr=1e-4))
    deterministic_step = step(baseline, torch.optim.Adam(baseline.parameters(), lr=1e-4))

    rounds = time_interleaved({"ssn": ssn_step, "deterministic": deterministic_step}, repeats=args.repeats, warmup=2)
    times = medians(rounds)
    ratio = paired_ratio(rounds, "ssn", "deterministic")
    print(
        f"train step, U-Net {features}, batch {args.batch_size}, {args.size}x{args.size}: "
        f"SSN (rank 10, 20 samples) {times['ssn']:.3f} s, deterministic {times['deterministic']:.3f} s, "
        f"ratio {ratio:.3f} (median of {args.repeats} paired rounds; target <= 1.15)"
    )
    write(
        "train_step",
        {
            "backbone": {"name": "unet", "features": features},
            "batch_size": args.batch_size,
            "size": args.size,
            "rank": 10,
            "mc_samples": 20,
            "seconds": times,
            "ratio": ratio,
            "repeats": args.repeats,
        },
    )


if __name__ == "__main__":
    main()

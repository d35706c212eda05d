"""Training throughput (images/s) of the deterministic U-Net and the SSN at fp32 and bf16.

The step is the trainer's: the method's loss under ``torch.autocast`` (the backbone in the low
precision, the head and the loss in float32), backward, gradient clipping and an Adam update.
U-Net (32, 64, 128, 256), 128x128 images, two classes, the SSN with rank 10 and 20 samples.
The four candidates alternate in one process (medians of paired rounds), so the ratios hold
even when the machine's speed drifts.

    python -m benchmarks.throughput --device cuda [--batch-size 32] [--compile]
    python -m benchmarks.throughput                # the CPU, batch 8

Writes ``benchmarks/results/throughput.json`` (``throughput-compiled.json`` with --compile).
"""

from __future__ import annotations

import torch

import ssn
from benchmarks._common import benchmark_parser, medians, time_interleaved, write

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    parser = benchmark_parser("throughput", __doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 on CUDA, 8 on the CPU")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch_size or (32 if device.type == "cuda" else 8)
    torch.manual_seed(0)
    images = torch.randn(batch, 1, 128, 128, device=device)
    target = (torch.rand(batch, 128, 128, device=device) > 0.8).long()
    candidates = {}
    for method in ("deterministic", "ssn"):
        kwargs = {"rank": 10, "mc_samples": 20} if method == "ssn" else {}
        model = ssn.models.create("unet", method=method, num_classes=2, features=(32, 64, 128, 256), **kwargs).to(
            device
        )
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
        loss_of = torch.compile(model.loss) if args.compile else model.loss
        for name, dtype in PRECISIONS.items():

            def step(model=model, optimiser=optimiser, loss_of=loss_of, dtype=dtype, name=name):
                optimiser.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=dtype, enabled=name != "fp32"):
                    loss = loss_of(images, target)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                optimiser.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()

            candidates[f"{method} {name}"] = step
    rounds = time_interleaved(candidates, repeats=args.repeats, warmup=3 if args.compile else 2)
    seconds = medians(rounds)
    speed = {name: batch / t for name, t in seconds.items()}
    for name, value in speed.items():
        print(f"{name}: {value:.1f} images/s ({seconds[name] * 1000:.0f} ms per step of {batch})")
    ratios = {method: speed[f"{method} bf16"] / speed[f"{method} fp32"] for method in ("deterministic", "ssn")}
    print(
        f"bf16 / fp32: deterministic {ratios['deterministic']:.2f}, SSN {ratios['ssn']:.2f}; "
        f"SSN / deterministic at fp32 {speed['ssn fp32'] / speed['deterministic fp32']:.2f}"
    )
    write(
        "throughput-compiled" if args.compile else "throughput",
        {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "batch_size": batch,
            "compile": args.compile,
            "images_per_second": speed,
            "bf16_over_fp32": ratios,
            "repeats": args.repeats,
        },
    )


if __name__ == "__main__":
    main()

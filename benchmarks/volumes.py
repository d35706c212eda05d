"""Peak memory and time of 3D sampling and of a 3D training step, against the naive ways.

Each measurement runs in a fresh process and reports that process's peak resident memory
(``ru_maxrss``) and its resting memory before the work (Python, torch and the inputs):

- ``stream``: 100 label maps of a 240x240x155 volume with 4 classes at rank 10, drawn from the
  distribution two at a time (:func:`ssn.inference.sliding.stream_samples`), class counts
  accumulated as ``ssn sample`` does; the distribution's parameters are random.
- ``stream-half`` and ``naive-half``: the same at 120x120x78 voxels, streamed and the naive way
  (all 100 logit maps materialised by one ``rsample``, then the argmax). The naive way does not
  fit at full size: its logit maps alone take 100 x 4 x 8.9 M x 4 bytes = 14.3 GB.
- ``volume``: the whole path of ``ssn sample`` without a brain mask: sliding windows of 64^3
  (overlap 0.5) of a 3D U-Net (8, 16, 32, 64) over the full 240x240x155 volume with 2 channels,
  blended into one distribution, then 100 label maps streamed.
- ``step-ssn`` and ``step-deterministic``: one training step (forward, the method's loss,
  backward, Adam) on a batch of 2 patches of 64^3 with 2 channels and 4 classes, 3D U-Net
  (16, 32, 64, 128); SSN at rank 10 with 20 Monte Carlo samples. Median of 3 steps after one.
- ``step-ratio``: the same two steps alternating in one process (ABBA, 16 rounds after one of
  each): the median of the paired SSN / deterministic time ratios.

    python -m benchmarks.volumes            # all parts; writes benchmarks/results/volumes.json
    python -m benchmarks.volumes --parts step-ssn step-deterministic step-ratio
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import (
    RESULTS,
    ROOT,
    benchmark_parser,
    medians,
    paired_ratio,
    recorded_command,
    time_interleaved,
    write,
)

PARTS = ("stream", "stream-half", "naive-half", "volume", "step-ssn", "step-deterministic", "step-ratio")
FULL, HALF = (240, 240, 155), (120, 120, 78)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _distribution(shape, classes=4, rank=10):
    import torch

    from ssn import LowRankLogitDistribution

    generator = torch.Generator().manual_seed(0)
    loc = torch.randn(1, classes, *shape, generator=generator)
    factor = torch.randn(1, rank, classes, *shape, generator=generator).mul_(0.3)
    diag = torch.rand(1, classes, *shape, generator=generator).add_(0.1)
    return LowRankLogitDistribution(loc, factor, diag, validate_args=False)


def _stream(dist, samples: int) -> None:
    import torch

    from ssn.inference.sliding import stream_samples

    counts = torch.zeros((dist.num_classes, *dist.spatial_shape), dtype=torch.int32)
    for labels in stream_samples(dist, samples, 2, torch.Generator().manual_seed(1)):
        for c in range(dist.num_classes):
            counts[c] += labels == c
    assert int(counts.sum()) == samples * dist.spatial_shape.numel()


def measure(part: str, samples: int) -> dict:
    import torch

    torch.manual_seed(0)
    if part.startswith(("stream", "naive")):
        dist = _distribution(FULL if part == "stream" else HALF)
        resting, start = _rss_mb(), time.perf_counter()
        if part.startswith("stream"):
            _stream(dist, samples)
        else:
            labels = dist.rsample((samples,), generator=torch.Generator().manual_seed(1)).argmax(2).to(torch.uint8)
            assert labels.shape[0] == samples
        return {"seconds": time.perf_counter() - start, "resting_mb": resting, "peak_mb": _peak_mb()}
    if part == "volume":
        import numpy as np

        from ssn.inference.sliding import predict_volume
        from ssn.models import ModelSpec, build

        spec = ModelSpec(
            method="ssn",
            backbone="unet",
            spatial_dims=3,
            in_channels=2,
            num_classes=4,
            method_kwargs={"rank": 10},
            backbone_kwargs={"features": [8, 16, 32, 64]},
        )
        model = build(spec).eval()
        image = np.random.default_rng(0).standard_normal((2, *FULL), dtype=np.float32)
        roi = np.ones(FULL, bool)
        resting, start = _rss_mb(), time.perf_counter()
        box, stream = predict_volume(
            model, image, roi, samples, (64, 64, 64), 0.5, 1.0, torch.Generator().manual_seed(1)
        )
        blended = time.perf_counter() - start
        counts = torch.zeros((4, *FULL), dtype=torch.int32)
        for labels in stream:
            for c in range(4):
                counts[c] += labels == c
        return {
            "seconds": time.perf_counter() - start,
            "blend_seconds": blended,
            "resting_mb": resting,
            "peak_mb": _peak_mb(),
        }
    if part == "step-ratio":
        return _step_ratio()
    if part.startswith("step"):
        from ssn.models import ModelSpec, build

        method = "ssn" if part == "step-ssn" else "deterministic"
        spec = ModelSpec(
            method=method,
            backbone="unet",
            spatial_dims=3,
            in_channels=2,
            num_classes=4,
            method_kwargs={"rank": 10, "mc_samples": 20} if method == "ssn" else {},
            backbone_kwargs={"features": [16, 32, 64, 128]},
        )
        model = build(spec)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
        images = torch.randn(2, 2, 64, 64, 64)
        target = torch.randint(0, 4, (2, 64, 64, 64))
        resting, times = _rss_mb(), []
        for _ in range(4):
            start = time.perf_counter()
            optimiser.zero_grad(set_to_none=True)
            model.loss(images, target).backward()
            optimiser.step()
            times.append(time.perf_counter() - start)
        return {"seconds": statistics.median(times[1:]), "resting_mb": resting, "peak_mb": _peak_mb()}
    raise SystemExit(f"unknown part {part!r}; choose from {', '.join(PARTS)}")


def _step_ratio(rounds: int = 16) -> dict:
    """The SSN's 3D step against the deterministic one in one process, alternating (ABBA):
    the median over rounds of the paired time ratio, so drift of the machine cancels."""
    import torch

    from ssn.models import ModelSpec, build

    images = torch.randn(2, 2, 64, 64, 64)
    target = torch.randint(0, 4, (2, 64, 64, 64))
    steps = {}
    for method in ("ssn", "deterministic"):
        torch.manual_seed(0)
        spec = ModelSpec(
            method=method,
            backbone="unet",
            spatial_dims=3,
            in_channels=2,
            num_classes=4,
            method_kwargs={"rank": 10, "mc_samples": 20} if method == "ssn" else {},
            backbone_kwargs={"features": [16, 32, 64, 128]},
        )
        model = build(spec)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(model=model, optimiser=optimiser):
            optimiser.zero_grad(set_to_none=True)
            model.loss(images, target).backward()
            optimiser.step()

        steps[method] = step
    times = time_interleaved(steps, repeats=rounds, warmup=1)
    return {
        "seconds": medians(times)["ssn"],
        "deterministic_seconds": medians(times)["deterministic"],
        "ratio": paired_ratio(times, "ssn", "deterministic"),
        "rounds": rounds,
        "resting_mb": 0.0,
        "peak_mb": _peak_mb(),
    }


def main() -> None:
    parser = benchmark_parser("volumes", __doc__)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.samples)))
        return
    results = {}
    for part in args.parts:
        output = subprocess.run(
            [sys.executable, "-m", "benchmarks.volumes", "--child", part, "--samples", str(args.samples)],
            cwd=ROOT,  # where the benchmarks package is
            capture_output=True,
            text=True,
        )
        if output.returncode != 0:
            raise SystemExit(f"{part} failed:\n{output.stderr}")
        results[part] = json.loads(output.stdout.strip().splitlines()[-1])
        r = results[part]
        ratio = (
            f", SSN / deterministic {r['ratio']:.2f} (median of {r['rounds']} paired rounds)" if "ratio" in r else ""
        )
        print(
            f"{part}: peak {r['peak_mb']:.0f} MB (resting {r['resting_mb']:.0f} MB), {r['seconds']:.2f} s{ratio}",
            flush=True,
        )
    path = RESULTS / "volumes.json"
    previous = json.loads(path.read_text()).get("parts", {}) if path.is_file() else {}
    write(
        "volumes",
        {
            "samples": args.samples,
            "full": FULL,
            "half": HALF,
            "parts": {**previous, **results},
            "command": recorded_command("volumes", *sys.argv[1:]),
        },
    )


if __name__ == "__main__":
    main()

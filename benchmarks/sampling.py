"""Sampling speed and peak memory: LowRankLogitDistribution vs torch's LowRankMultivariateNormal.

Both draw the same Gaussian (the event flattened for torch). Speed: median of interleaved runs in
one process. Peak memory: each draw runs in a fresh subprocess; its peak resident set size is
reset just before the draw (Linux: /proc/self/clear_refs) and the growth of the peak (VmHWM) over
the resident size before the draw is reported, output included.

    python -m benchmarks.sampling          # writes benchmarks/results/sampling.json
    python -m benchmarks.sampling --volume-only   # only the whole-volume sample_labels memory

The whole-volume case: 100 label maps of a 240x240x155 map of 4 classes at rank 10 (a BraTS
volume), with sample_labels' default chunk (chosen from its memory budget) and with a chunk of 16.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from torch.distributions import LowRankMultivariateNormal

from benchmarks._common import ROOT, benchmark_parser, medians, paired_ratio, time_interleaved, write
from ssn import LowRankLogitDistribution

CASES = {
    "2d": {"shape": (4, 2, 128, 128), "rank": 10, "samples": 20, "repeats": 15},
    "3d": {"shape": (1, 4, 64, 64, 64), "rank": 10, "samples": 20, "repeats": 5},
    "volume": {"shape": (1, 4, 240, 240, 155), "rank": 10, "samples": 100, "repeats": 0},  # memory only
}


def build(shape, rank):
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(shape, generator=g)
    factor = torch.randn((shape[0], rank) + shape[1:], generator=g) / rank
    diag = torch.rand(shape, generator=g) + 0.1
    ours = LowRankLogitDistribution(loc, factor, diag, validate_args=False)
    theirs = LowRankMultivariateNormal(
        loc.reshape(shape[0], -1),
        factor.reshape(shape[0], rank, -1).transpose(1, 2),
        diag.reshape(shape[0], -1),
        validate_args=False,
    )
    return ours, theirs


def draw(method, ours, theirs, samples):
    with torch.no_grad():
        if method == "ssn":
            return ours.rsample((samples,))
        if method == "torch":
            return theirs.rsample((samples,))
        if method == "ssn_labels":
            return ours.sample_labels(samples, chunk_size=16)
        if method == "ssn_labels_default":  # the chunk chosen from the memory budget
            return ours.sample_labels(samples)
        if method == "argmax_all":  # the naive way to get labels: all logit maps at once
            return ours.rsample((samples,)).argmax(2).to(torch.uint8)
    raise ValueError(method)


def status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (e.g. VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(case: str, method: str, samples: int) -> None:
    spec = CASES[case]
    ours, theirs = build(spec["shape"], spec["rank"])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size to the current one
    before = status_bytes("VmRSS")
    out = draw(method, ours, theirs, samples)
    peak = status_bytes("VmHWM")
    print(json.dumps({"peak_extra_bytes": peak - before, "output_bytes": out.numel() * out.element_size()}))


def peak_memory(case: str, method: str, samples: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.sampling", "--worker", case, method, str(samples)],
        cwd=ROOT,  # where the benchmarks package is
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def volume_memory() -> dict:
    """Peak extra memory of 100 whole-volume label maps, default chunk vs a chunk of 16."""
    spec = CASES["volume"]
    measured = {m: peak_memory("volume", m, spec["samples"]) for m in ("ssn_labels_default", "ssn_labels")}
    figures = {m: v["peak_extra_bytes"] / 2**30 for m, v in measured.items()}
    print(
        f"volume {spec['shape']} rank {spec['rank']}, {spec['samples']} label maps: peak extra memory "
        f"default chunk {figures['ssn_labels_default']:.2f} GiB, chunk 16 {figures['ssn_labels']:.2f} GiB "
        f"(output {measured['ssn_labels']['output_bytes'] / 2**30:.2f} GiB)"
    )
    return {
        "shape": spec["shape"],
        "rank": spec["rank"],
        "samples": spec["samples"],
        "labels_peak_extra_GiB": figures,
        "output_GiB": measured["ssn_labels"]["output_bytes"] / 2**30,
    }


def main(volume_only: bool = False) -> None:
    torch.manual_seed(0)
    report = {}
    if volume_only:
        write("sampling_volume", {"volume": volume_memory()})
        return
    for case, spec in CASES.items():
        if case == "volume":
            report[case] = volume_memory()
            continue
        ours, theirs = build(spec["shape"], spec["rank"])
        n = spec["samples"]
        rounds = time_interleaved(
            {
                "ssn": lambda ours=ours, theirs=theirs, n=n: draw("ssn", ours, theirs, n),
                "torch": lambda ours=ours, theirs=theirs, n=n: draw("torch", ours, theirs, n),
            },
            repeats=spec["repeats"],
        )
        times = medians(rounds)
        memory = {m: peak_memory(case, m, n) for m in ("ssn", "torch")}
        labels_memory = {m: peak_memory(case, m, 100) for m in ("ssn_labels", "argmax_all")}
        report[case] = {
            "shape": spec["shape"],
            "rank": spec["rank"],
            "samples": n,
            "seconds": times,
            "speedup": paired_ratio(rounds, "torch", "ssn"),
            "peak_extra_MiB": {m: v["peak_extra_bytes"] / 2**20 for m, v in memory.items()},
            "output_MiB": memory["ssn"]["output_bytes"] / 2**20,
            "labels_100_peak_extra_MiB": {m: v["peak_extra_bytes"] / 2**20 for m, v in labels_memory.items()},
        }
        r = report[case]
        print(
            f"{case} {spec['shape']} rank {spec['rank']}, {n} samples: "
            f"ssn {1e3 * times['ssn']:.1f} ms, torch {1e3 * times['torch']:.1f} ms, "
            f"speed-up x{r['speedup']:.2f}; peak extra memory ssn {r['peak_extra_MiB']['ssn']:.0f} MiB, "
            f"torch {r['peak_extra_MiB']['torch']:.0f} MiB (output {r['output_MiB']:.0f} MiB); "
            f"100 label maps: sample_labels {r['labels_100_peak_extra_MiB']['ssn_labels']:.0f} MiB, "
            f"rsample+argmax {r['labels_100_peak_extra_MiB']['argmax_all']:.0f} MiB"
        )
    write("sampling", report)


if __name__ == "__main__":
    parser = benchmark_parser("sampling", __doc__)
    parser.add_argument("--worker", nargs=3, metavar=("CASE", "METHOD", "SAMPLES"), help=argparse.SUPPRESS)
    parser.add_argument("--volume-only", action="store_true", help="only the whole-volume memory case")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]))
    else:
        main(args.volume_only)

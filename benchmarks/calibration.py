"""The temperature sweep of ``ssn calibrate``: one network pass per temperature against one for all.

``ssn calibrate`` scores a grid of temperatures on validation slices with the same draws at every
temperature. A temperature only scales the spread drawn after the network's pass (the SSN's
N(mu, t^2 Sigma), the Prob. U-Net's prior latent), so the sweep runs the network once per batch
(``predict_batches_at``) instead of once per temperature (``predict_batches`` with the
temperature set, the sweep of ssn 0.7). Both sweeps are timed alternately in one process, on
LIDC validation slices, with GED^2 scored as calibrate scores it; the curves must agree exactly.

    python -m benchmarks.calibration            # writes benchmarks/results/calibration.json

Models: the shipped low-rank SSN (``pretrained:lidc-2d``) and a Prob. U-Net of the LIDC
benchmark's architecture (its weights as initialised: the timing does not depend on them).
"""

from __future__ import annotations

import numpy as np
import torch

import ssn
from benchmarks._common import (
    add_lidc_dir,
    benchmark_parser,
    lidc_files,
    medians,
    paired_ratio,
    recorded_command,
    time_interleaved,
    write,
)
from ssn.apps.calibrate import DEFAULT_TEMPERATURES
from ssn.data import load_arrays, select_split
from ssn.engine.checkpoints import load_run
from ssn.inference import predict_batches, predict_batches_at


def sweeps(model, images, masks, indices, temperatures, samples, batch_size):
    """(the sweep of one pass per temperature, the one-pass sweep): each returns its GED^2 curve."""

    def score(pairs):
        readers = {}
        totals = [ssn.metrics.GeneralizedEnergyDistance(model.num_classes) for _ in temperatures]
        for t_index, chunk, labels in pairs:
            if chunk[0] not in readers:
                readers[chunk[0]] = torch.from_numpy(np.ascontiguousarray(masks[chunk]))
            totals[t_index].update(labels, readers[chunk[0]])
        return [total.compute().mean for total in totals]

    def per_temperature():
        def pairs():
            for t_index, t in enumerate(temperatures):
                model.temperature = t
                for chunk, labels in predict_batches(model, images, indices, samples, batch_size, seed=0):
                    yield t_index, chunk, labels
            model.temperature = 1.0

        return score(pairs())

    def one_pass():
        def pairs():
            for chunk, labels in predict_batches_at(model, images, indices, temperatures, samples, batch_size, seed=0):
                for t_index, maps in enumerate(labels):
                    yield t_index, chunk, maps

        return score(pairs())

    return per_temperature, one_pass


def main() -> None:
    parser = benchmark_parser("calibration", __doc__)
    add_lidc_dir(parser)
    parser.add_argument("--images", type=int, default=64, help="validation slices per sweep (default 64)")
    parser.add_argument("--samples", type=int, default=16, help="samples per slice (default 16, as calibrate)")
    parser.add_argument("--repeats", type=int, default=3, help="timed sweeps of each kind (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    if args.images < 1 or args.samples < 2 or args.repeats < 1 or args.threads < 1:
        parser.error("--images, --repeats and --threads must be >= 1 and --samples >= 2")
    torch.set_num_threads(args.threads)
    data_path, split_path = lidc_files(args.data_dir)
    data = load_arrays(data_path)
    validation = select_split(data, "val", split_path)
    indices = np.sort(
        np.random.default_rng(0).choice(validation, size=min(args.images, validation.size), replace=False)
    )
    images, masks = data.images, data.masks
    temperatures = list(DEFAULT_TEMPERATURES)
    low_rank, _ = load_run("pretrained:lidc-2d", temperature=1.0)
    torch.manual_seed(0)
    prob_unet = ssn.models.create(
        "unet", method="prob-unet", num_classes=2, features=(16, 32, 64, 128), encoder_features=(16, 32, 64, 128)
    )
    results = {}
    for name, model in (("low-rank SSN (pretrained:lidc-2d)", low_rank), ("prob-unet", prob_unet)):
        model.eval()
        per_temperature, one_pass = sweeps(model, images, masks, indices, temperatures, args.samples, 16)
        curves = {"per_temperature": per_temperature(), "one_pass": one_pass()}
        if curves["per_temperature"] != curves["one_pass"]:
            raise SystemExit(f"{name}: the two sweeps disagree: {curves}")
        rounds = time_interleaved({"per_temperature": per_temperature, "one_pass": one_pass}, args.repeats, warmup=0)
        seconds = medians(rounds)
        speedup = paired_ratio(rounds, "per_temperature", "one_pass")
        results[name] = {
            "seconds_per_temperature_sweep": seconds["per_temperature"],
            "seconds_one_pass_sweep": seconds["one_pass"],
            "speedup": speedup,
            "curves_identical": True,
            "curve": dict(zip(temperatures, curves["one_pass"])),
        }
        print(
            f"{name}: {len(temperatures)} temperatures x {indices.size} slices x {args.samples} samples: "
            f"{seconds['per_temperature']:.1f} s one pass per temperature, {seconds['one_pass']:.1f} s one pass "
            f"for all ({speedup:.2f}x, median of {args.repeats} paired rounds); the curves are identical"
        )
    write(
        "calibration",
        {
            "command": recorded_command(
                "calibration",
                "--images",
                str(args.images),
                "--samples",
                str(args.samples),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ),
            "images": int(indices.size),
            "samples": args.samples,
            "temperatures": temperatures,
            "threads": args.threads,
            "models": results,
        },
    )


if __name__ == "__main__":
    main()

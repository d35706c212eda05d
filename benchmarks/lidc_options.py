"""LIDC-IDRI training options: images/s of each, and validation GED^2 for the same CPU time.

Two parts:

- ``throughput``: one SSN training step (U-Net 16-32-64-128 unless stated, rank 10, 20 samples,
  ``model.loss``, Adam) per option, all in one process and alternating (ABBA), so that each
  figure is a ratio to whole 128x128 slices at batch 8 measured alongside it: crops of 96 and
  64, batch norm, channels-last, batch 16, a narrower and a deeper U-Net, ``torch.compile``.
  Random inputs; the thread count is this process's (``--threads``).
- ``quality``: runs trained alike (``ssn train`` with the same wall budget, side by side) scored
  on 512 fixed validation slices with 16 samples: GED^2(16) with its standard error over slices,
  diversity, HM-IoU(16), Dice, and the share of empty samples on slices all four readers marked.

    python -m benchmarks.lidc_options throughput --threads 1
    python -m benchmarks.lidc_options quality --runs runs/pilot/whole runs/pilot/crop96 runs/pilot/crop64

Results go to ``benchmarks/results/lidc_options.json`` (each part keeps the other's figures).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import (
    RESULTS,
    add_lidc_dir,
    benchmark_parser,
    lidc_files,
    medians,
    paired_ratio,
    recorded_command,
    time_interleaved,
    write,
)

OPTIONS = {  # name: (side, norm, batch, channels_last, features, compiled)
    "whole 128x128, batch 8 (baseline)": (128, "instance", 8, False, (16, 32, 64, 128), False),
    "crops 96x96": (96, "instance", 8, False, (16, 32, 64, 128), False),
    "crops 64x64": (64, "instance", 8, False, (16, 32, 64, 128), False),
    "batch norm": (128, "batch", 8, False, (16, 32, 64, 128), False),
    "channels-last": (128, "instance", 8, True, (16, 32, 64, 128), False),
    "batch 16": (128, "instance", 16, False, (16, 32, 64, 128), False),
    "narrow U-Net 8-16-32-64": (128, "instance", 8, False, (8, 16, 32, 64), False),
    "deeper U-Net 16-32-64-128-256": (128, "instance", 8, False, (16, 32, 64, 128, 256), False),
    "torch.compile": (128, "instance", 8, False, (16, 32, 64, 128), True),
}
BASELINE = "whole 128x128, batch 8 (baseline)"


def throughput(rounds: int) -> dict:
    import ssn

    steps = {}
    for name, (side, norm, batch, channels_last, features, compiled) in OPTIONS.items():
        torch.manual_seed(0)
        model = ssn.models.create("unet", num_classes=2, rank=10, mc_samples=20, features=features, norm=norm)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        images = torch.randn(batch, 1, side, side)
        target = (torch.rand(batch, side, side) > 0.9).long()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        loss = torch.compile(model.loss) if compiled else model.loss

        def step(loss=loss, optimiser=optimiser, images=images, target=target):
            optimiser.zero_grad(set_to_none=True)
            loss(images, target).backward()
            optimiser.step()

        steps[name] = step
    times = time_interleaved(steps, repeats=rounds, warmup=2)  # compile happens in the warm-up
    median = medians(times)
    out = {}
    for name, (_, _, batch, *_rest) in OPTIONS.items():
        ratio = paired_ratio(times, BASELINE, name) * batch / OPTIONS[BASELINE][2]  # images/s relative
        out[name] = {"images_per_second": batch / median[name], "relative": ratio}
        print(f"{name:34s} {batch / median[name]:6.1f} images/s  x{ratio:.2f}")
    return {"options": out, "rounds": rounds}


def quality(runs: list[Path], data_dir: Path) -> dict:
    from ssn import metrics
    from ssn.data import load_arrays, select_split
    from ssn.engine import load_run
    from ssn.inference import predict_batches

    data_file, split_file = lidc_files(data_dir)
    data = load_arrays(data_file)
    val = select_split(data, "val", split_file)
    chosen = np.sort(np.random.default_rng(1).choice(val, size=min(512, val.size), replace=False))
    out = {}
    for run in runs:
        model, config = load_run(run)
        figures, empty = metrics.ImageMetrics(2, (16,)), []
        for index, labels in predict_batches(model, data.images, chosen, 16, 32, seed=0):
            annotations = torch.from_numpy(np.ascontiguousarray(data.masks[index]))
            figures.update(labels, annotations)
            marked = annotations.flatten(2).any(-1).sum(1)
            for k in torch.nonzero(marked == 4).flatten().tolist():
                empty.append(float((labels[k].flatten(1).sum(-1) == 0).float().mean()))
        computed = figures.compute()
        lines = (run / "metrics.jsonl").read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        out[run.name] = {
            "patch_size": config.get("patch_size"),
            "norm": config["architecture"]["backbone_kwargs"].get("norm"),
            "steps": last.get("step"),
            "minutes": last.get("minutes"),
            "cpu_minutes": last.get("cpu_minutes"),
            "ged_16": computed["ged"].as_dict(),
            "diversity": computed["diversity"].mean,
            "hm_iou_16": computed["hm_iou_16"].mean,
            "dice": computed["dice"].mean,
            "empty_share_all_four_marked": float(np.mean(empty)),
            "slices_all_four_marked": len(empty),
        }
        r = out[run.name]
        print(
            f"{run.name}: GED^2(16) {r['ged_16']['mean']:.3f} +- {r['ged_16']['stderr']:.3f}, diversity "
            f"{r['diversity']:.3f}, HM-IoU(16) {r['hm_iou_16']:.3f}, Dice {r['dice']:.3f}, empty "
            f"{100 * r['empty_share_all_four_marked']:.0f}% ({r['steps']} steps)"
        )
    return {"runs": out, "validation_slices": int(chosen.size), "samples": 16}


def main() -> None:
    parser = benchmark_parser("lidc_options", __doc__)
    parser.add_argument("part", choices=("throughput", "quality"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=Path, nargs="+", default=[])
    add_lidc_dir(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / "lidc_options.json"
    content = json.loads(path.read_text()) if path.is_file() else {}
    if args.part == "throughput":
        content["throughput"] = {**throughput(args.rounds), "threads": args.threads}
    else:
        if not args.runs:
            raise SystemExit("quality needs --runs: run directories trained alike")
        content["quality"] = quality(args.runs, args.data_dir)
    content.pop("machine", None)
    content["command_" + args.part] = recorded_command("lidc_options", *sys.argv[1:])
    write("lidc_options", content)


if __name__ == "__main__":
    main()

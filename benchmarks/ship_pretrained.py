"""Copy a trained LIDC run into the package as a pretrained model, with its model card.

    python -m benchmarks.ship_pretrained runs/lidc-v3/low-rank --name lidc-2d

Writes ``src/ssn/weights/NAME/``: ``best.safetensors`` (the weights), ``config.json`` (the
settings and architecture, with machine-specific paths removed), ``calibration.json`` (the
temperature chosen on validation) and ``MODEL_CARD.md`` (data, split, budget, test figures at
t = 1 and calibrated, licence and attribution). The figures come from the run's
``test_metrics.json`` and ``test_metrics_calibrated.json`` written by ``benchmarks/lidc.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks._common import ROOT, benchmark_parser, save_json
from ssn.files import write_atomically


def _figures(result: dict) -> str:
    return (
        f"GED²(100) {result['ged']['mean']:.3f} ± {result['ged']['stderr']:.3f}, "
        f"GED²(16) {result['ged_at']['16']['mean']:.3f}, HM-IoU(16) {result['hm_iou']['16']['mean']:.3f}, "
        f"diversity {result['diversity']['mean']:.3f}, Dice {result['dice']['mean']:.3f}, ECE {result['ece']['mean']:.4f}"
    )


def main() -> None:
    parser = benchmark_parser("ship_pretrained", __doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--name", default="lidc-2d")
    args = parser.parse_args()
    run, target = args.run, ROOT / "src" / "ssn" / "weights" / args.name
    config = json.loads((run / "config.json").read_text())
    calibration = json.loads((run / "calibration.json").read_text())
    test = json.loads((run / "test_metrics.json").read_text())
    calibrated = json.loads((run / "test_metrics_calibrated.json").read_text())
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    training, best = curve[-1], min(curve, key=lambda entry: entry["val_ged"])
    cpu = f", {training['cpu_minutes'] / 60:.2f} CPU-hours" if "cpu_minutes" in training else ""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "best.safetensors", target / "best.safetensors")
    for key in ("data", "out", "split_file"):
        config[key] = Path(config[key]).name if config.get(key) else config.get(key)
    config["resume"] = False
    config.setdefault("input_shape", [128, 128])  # the LIDC crops (runs before ssn 0.7 did not record it)
    save_json(target / "config.json", config)
    calibration = {k: v for k, v in calibration.items() if k != "data"}
    save_json(target / "calibration.json", calibration)
    arch = config["architecture"]
    card = f"""# Model card: `{args.name}`

A low-rank Stochastic Segmentation Network (Monteiro et al., NeurIPS 2020) for lung nodules in
2D CT crops, trained with `ssn` {config["ssn_version"]}. Load it offline:

```python
import ssn
model = ssn.pretrained("{args.name}")     # eval mode, at its calibrated temperature {calibration["temperature"]:g}
```

or from the command line: `ssn sample --run pretrained:{args.name} --input slice.png --samples 16`.

- **Input**: one-channel 128x128 CT crops centred on a nodule, intensities as uint8 scaled to
  [0, 1] (`image / 255`), as in `lidc_slices_128.npz`. Other sizes run (the U-Net pads and
  crops), but it was trained on 128x128 only.
- **Output**: a Gaussian over the 2-class logit map (background, nodule): rank
  {arch["method_kwargs"]["rank"]}, backbone `{arch["backbone"]}` with {json.dumps(arch["backbone_kwargs"])}.
- **Data**: LIDC-IDRI, 128x128 crops around nodules, four readers per slice; the patient-level
  split of `split.json` (train 9,414 / val 3,039 / test 3,095 slices). Trained on the train
  split, one reader drawn per slice per step; checkpoint and temperature chosen on the val split.
- **Budget**: {training["step"]} optimiser steps, batch {config["batch_size"]}, {training["minutes"]:.0f} minutes of training time{cpu} on a
  2-core CPU (no GPU), one thread, sharing the machine with other work. Settings: Adam lr
  {config["lr"]:g} ({config["lr_schedule"]} schedule), the mean alone for the first {config["mean_warmup"]:.0%} of the steps,
  variance init {config["variance_init"]}, EMA decay {config["ema_decay"]:g}, {config["mc_samples"]} antithetic MC samples; validation
  every {config["val_every"]} steps on 128 val slices (16 samples); the weights are the best
  of those checkpoints, step {best["step"]} (validation GED²(16) {best["val_ged"]:.3f}). The whole validation
  curve is in `metrics.jsonl` of the run and drawn in `benchmarks/lidc_curve.png` of the repository.
- **Test split figures** (3,095 slices, 100 samples each; ± standard error over slices):
  - at t = 1: {_figures(test)};
  - at the calibrated t = {calibration["temperature"]:g}: {_figures(calibrated)}.
  Readers' own diversity on these slices: 0.522 (mean 1 − IoU over distinct reader pairs).
  Paper (their split, 500k GPU iterations): GED²(100) 0.225.
- **Limits**: a research model, not a medical device. It has seen only crops centred on nodules
  annotated by LIDC readers; it says nothing about whole scans or other findings.

## Licence and attribution

The weights were learnt from the LIDC-IDRI collection of The Cancer Imaging Archive, licensed
CC BY 3.0, which asks for this attribution:

> Armato III, S. G., McLennan, G., Bidaut, L., et al. (2011). The Lung Image Database Consortium
> (LIDC) and Image Database Resource Initiative (IDRI): a completed reference database of lung
> nodules on CT scans. Medical Physics, 38(2), 915-931. Data: The Cancer Imaging Archive,
> LIDC-IDRI collection, CC BY 3.0.

The 128x128 crops are the set prepared for the Probabilistic U-Net (Kohl et al. 2018). The
method: Monteiro, M., et al. (2020). Stochastic Segmentation Networks: modelling spatially
correlated aleatoric uncertainty. NeurIPS 2020.
"""
    write_atomically(target / "MODEL_CARD.md", lambda temporary: temporary.write_text(card))
    print(f"wrote {target}: " + ", ".join(sorted(p.name for p in target.iterdir())))


if __name__ == "__main__":
    main()

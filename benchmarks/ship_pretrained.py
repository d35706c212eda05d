"""Copy a trained LIDC run into the package as a pretrained model, with its model card.

    python -m benchmarks.ship_pretrained runs/lidc-v3/low-rank --name lidc-2d
    python -m benchmarks.ship_pretrained runs/lidc3d-v1/low-rank --name lidc-3d

Writes ``src/ssn/weights/NAME/``: ``best.safetensors`` (the weights), ``config.json`` (the
settings and architecture, with machine-specific paths removed), ``calibration.json`` (the
temperature chosen on validation) and ``MODEL_CARD.md`` (data, split, budget, test figures at
t = 1 and calibrated, licence and attribution), and records the run in
``benchmarks/results/shipped.json``, which marks its rows in RESULTS.md. A 2D run's figures come from its
``test_metrics.json`` and ``test_metrics_calibrated.json`` written by ``benchmarks/lidc.py``; a 3D
run's from ``test_metrics_16.json`` and ``test_metrics_16_tT.json`` written by ``benchmarks/lidc3d.py``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from benchmarks._common import RESULTS, ROOT, benchmark_parser, save_json, update_json
from benchmarks.lidc3d import weights_digest
from ssn.files import write_atomically


def _figures(result: dict) -> str:
    return (
        f"GED²(100) {result['ged']['mean']:.3f} ± {result['ged']['stderr']:.3f}, "
        f"GED²(16) {result['ged_at']['16']['mean']:.3f}, HM-IoU(16) {result['hm_iou']['16']['mean']:.3f}, "
        f"diversity {result['diversity']['mean']:.3f}, Dice {result['dice']['mean']:.3f}, ECE {result['ece']['mean']:.4f}"
    )


ATTRIBUTION = """## Licence and attribution

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


def _mean_alone(config: dict) -> str:
    """The card's words for the mean-only warm-up (``--mean-warmup``), or its absence."""
    if config.get("mean_warmup"):
        return f"the mean alone for the first {config['mean_warmup']:.0%} of the steps"
    return "no mean-only warm-up"


def _copy(run: Path, target: Path, input_shape: list[int] | None) -> tuple[dict, dict, list[dict]]:
    """Copy the run's weights, config (machine paths removed) and calibration into ``target``;
    returns (config, calibration, validation curve)."""
    config = json.loads((run / "config.json").read_text())
    calibration = json.loads((run / "calibration.json").read_text())
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "best.safetensors", target / "best.safetensors")
    for key in ("data", "out", "split_file"):
        config[key] = Path(config[key]).name if config.get(key) else config.get(key)
    config["resume"] = False
    if input_shape:
        config.setdefault("input_shape", input_shape)  # runs before ssn 0.7 did not record it
    save_json(target / "config.json", config)
    save_json(target / "calibration.json", {k: v for k, v in calibration.items() if k != "data"})
    return config, calibration, curve


def _threads(run: Path) -> str:
    """How the run was timed: its threads from its ``lidc.json`` row, and CPU time over wall time."""
    rows = json.loads((ROOT / "benchmarks" / "results" / "lidc.json").read_text())["runs"]
    threads = {row.get("threads_per_process") for row in rows if Path(row.get("run", "")).resolve() == run.resolve()}
    threads.discard(None)
    if len(threads) != 1:
        return "one thread, sharing the machine with other work"  # runs before the rows recorded it
    (count,) = threads
    return f"{count} thread{'s' if count > 1 else ''}"


def _objective(config: dict) -> str:
    """The training objective's terms beyond the paper's Monte Carlo likelihood."""
    terms = []
    if config.get("marginal_weight"):
        terms.append(
            f"plus {config['marginal_weight']:g} x the pixels' marginal log-likelihood "
            f"(`--marginal-weight {config['marginal_weight']:g}`)"
        )
    if config.get("mean_weight"):
        terms.append(f"plus {config['mean_weight']:g} x the mean's cross-entropy (`--mean-weight`)")
    return "the Monte Carlo log-likelihood of the paper" + ("".join(", " + term for term in terms))


def _presence(run: Path) -> str:
    """The card's sentence on empty samples where every reader marked the nodule (from
    ``benchmarks/lidc_breakdown.py --presence``), or nothing where it was not measured."""
    path = ROOT / "benchmarks" / "results" / "lidc_presence.json"
    name = "/".join(run.resolve().parts[-2:])
    entries = [e for e in json.loads(path.read_text())["runs"] if e["run"] == name and e["split"] == "test"]
    shares = []
    for entry in sorted(entries, key=lambda e: e.get("temperature", 1.0)):
        (row,) = [r for r in entry["rows"] if r["readers_marking"] == 4] or [None]
        if row:
            shares.append((entry.get("temperature", 1.0), row["empty_sample_share"], row["slices"]))
    if not shares:
        return ""
    at = ", ".join(f"{share:.1%} at t = {t:g}" for t, share, _ in shares)
    return (
        f"  Empty samples on the {shares[0][2]} test slices that all four readers marked (16 samples each, "
        f"`benchmarks/lidc_breakdown.py --presence`): {at}.\n"
    )


def _other_seeds(run: Path) -> str:
    """The card's sentence on the other seeds trained alike (``benchmarks/lidc.py --seed``)."""
    rows = json.loads((ROOT / "benchmarks" / "results" / "lidc.json").read_text())["runs"]
    (own,) = [r for r in rows if Path(r.get("run", "")).resolve() == run.resolve()][:1] or [None]
    if own is None:
        return ""
    alike = [
        r
        for r in rows
        if r["name"] == own["name"]
        and r.get("variant") == own.get("variant")
        and r.get("training", {}).get("step") == own.get("training", {}).get("step")
        and r.get("seed") != own.get("seed")
        and r.get("seed") is not None
    ]
    if not alike:
        return "  One training seed: the ± leaves out training noise.\n"
    parts = []
    for r in alike:
        text = f"seed {r['seed']}: {r['ged']['mean']:.3f} ± {r['ged']['stderr']:.3f} at t = 1"
        if r.get("calibrated"):
            text += f", {r['calibrated']['ged']['mean']:.3f} at its calibrated t = {r['calibration']['temperature']:g}"
        parts.append(text)
    return f"  Trained alike with another seed, test GED²(100): {'; '.join(parts)}.{_seed_choice(own, alike)}\n"


def _seed_choice(own: dict, alike: list[dict]) -> str:
    """Why this seed is the shipped one, from the calibrated validation GED²(16) of each: the
    best, or (where another seed scores lower) by how much, against the validation standard error."""
    if not own.get("calibration") or not all(r.get("calibration") for r in alike):
        return ""
    chosen = [f"{own['calibration']['ged']:.4f} for this one"]
    chosen += [f"{r['calibration']['ged']:.4f} for seed {r['seed']}" for r in alike]
    best = min(alike, key=lambda r: r["calibration"]["ged"])
    lower = own["calibration"]["ged"] - best["calibration"]["ged"]
    if lower <= 0:
        return f" The shipped seed has the best calibrated validation GED²(16): {', '.join(chosen)}."
    curve = own["calibration"].get("curve", [])
    at = next((p for p in curve if p["temperature"] == own["calibration"]["temperature"]), {})
    spread = f", within its standard error ({at['stderr']:.3f})" if lower < at.get("stderr", 0.0) else ""
    return (
        f" Calibrated validation GED²(16): {', '.join(chosen)}; seed {best['seed']} is lower by {lower:.4f}"
        f"{spread}, and this seed, trained first, stays shipped."
    )


def _start_record(config: dict, run: Path) -> dict | None:
    """The ``shipped.json`` record of the shipped model that a warm-started run (``--init-from
    pretrained:NAME``) began with, or None. Shipping the same run again (under any name) keeps the
    start it recorded the first time: by then NAME may hold this run's own weights, or newer ones."""
    source = config.get("init_from") or ""
    if not source.startswith("pretrained:"):
        return None
    path = ROOT / "benchmarks" / "results" / "shipped.json"
    shipped = json.loads(path.read_text()) if path.is_file() else {}
    again = [entry for entry in shipped.values() if entry.get("run") == str(run.resolve())]
    before = again[0].get("started_from") if again else shipped.get(source.split(":", 1)[1])
    return {key: before[key] for key in ("run", "shipped", "ssn_version") if key in before} if before else None


def _started_from(config: dict, run: Path) -> str:
    """The card's sentence on the weights a warm-started run (``--init-from``) began with: for a
    shipped model, the run shipped under that name before it and its budget (from
    ``shipped.json`` and ``lidc.json``), since the name itself now holds other weights."""
    source = config.get("init_from")
    if not source:
        return ""
    text = f"  Training started from the weights of `{source}`"
    if source.startswith("pretrained:"):
        before = _start_record(config, run)
        rows = json.loads((ROOT / "benchmarks" / "results" / "lidc.json").read_text())["runs"]
        (row,) = [r for r in rows if before and r.get("run") == before["run"]][:1] or [None]
        if before and row:
            trained = row["training"]
            cpu = f", {trained['cpu_minutes'] / 60:.2f} CPU-hours" if "cpu_minutes" in trained else ""
            text += (
                f" as shipped on {before['shipped']} ({trained['step']} steps{cpu}; test GED²(100) "
                f"{row['ged']['mean']:.3f} at t = 1)"
            )
        text += ", so the figures below are those of both trainings together, not of this budget alone"
    return text + ".\n"


def card_2d(run: Path, name: str, config: dict, calibration: dict, curve: list[dict]) -> str:
    """The model card of a 2D LIDC run (figures from ``benchmarks/lidc.py``)."""
    test = json.loads((run / "test_metrics.json").read_text())
    calibrated = json.loads((run / "test_metrics_calibrated.json").read_text())
    training, best = curve[-1], min(curve, key=lambda entry: entry["val_ged"])
    cpu = f", {training['cpu_minutes'] / 60:.2f} CPU-hours" if "cpu_minutes" in training else ""
    threads = _threads(run)
    arch = config["architecture"]
    return f"""# Model card: `{name}`

A low-rank Stochastic Segmentation Network (Monteiro et al., NeurIPS 2020) for lung nodules in
2D CT crops, trained with `ssn` {config["ssn_version"]}. Load it offline:

```python
import ssn

model = ssn.pretrained("{name}")  # eval mode, at its calibrated temperature {calibration["temperature"]:g}
```

or from the command line: `ssn sample --run pretrained:{name} --input slice.png --samples 16`.

- **Input**: one-channel 128x128 CT crops centred on a nodule, intensities as uint8 scaled to
  [0, 1] (`image / 255`), as in `lidc_slices_128.npz`. Other sizes run (the U-Net pads and
  crops), but it was trained on 128x128 only.
- **Output**: a Gaussian over the 2-class logit map (background, nodule): rank
  {arch["method_kwargs"]["rank"]}, backbone `{arch["backbone"]}` with {json.dumps(arch["backbone_kwargs"])}.
- **Data**: LIDC-IDRI, 128x128 crops around nodules, four readers per slice; the patient-level
  split of `split.json` (train 9,414 / val 3,039 / test 3,095 slices). Trained on the train
  split, one reader drawn per slice per step; checkpoint and temperature chosen on the val split.
- **Budget**: {training["step"]} optimiser steps, batch {config["batch_size"]}, {training["minutes"]:.0f} minutes of training time{cpu} on a
  2-core CPU (no GPU), {threads}, seed {config["seed"]}. Objective: {_objective(config)}. Settings: Adam lr
  {config["lr"]:g} ({config["lr_schedule"]} schedule), {_mean_alone(config)},
  variance init {config["variance_init"]}, EMA decay {config["ema_decay"]:g}, {config["mc_samples"]} antithetic MC samples; validation
  every {config["val_every"]} steps on 128 val slices (16 samples); the weights are the best
  of those checkpoints, step {best["step"]} (validation GED²(16) {best["val_ged"]:.3f}). The whole validation
  curve is in `metrics.jsonl` of the run and drawn in `benchmarks/lidc_curve.png` of the repository.
{_started_from(config, run)}- **Test split figures** (3,095 slices, 100 samples each; ± standard error over slices):
  - at t = 1: {_figures(test)};
  - at the calibrated t = {calibration["temperature"]:g}: {_figures(calibrated)}.
{_other_seeds(run)}{_presence(run)}  Readers' own diversity on these slices: 0.522 (mean 1 − IoU over distinct reader pairs).
  Paper (their split, 500k GPU iterations): GED²(100) 0.225.
- **Limits**: a research model, not a medical device. It has seen only crops centred on nodules
  annotated by LIDC readers; it says nothing about whole scans or other findings.

{ATTRIBUTION}"""


def _figures_3d(summary: dict) -> str:
    nodule = summary["structures"]["class 1"]
    return (
        f"GED² {nodule['ged']['mean']:.3f} ± {nodule['ged']['stderr']:.3f}, "
        f"diversity {nodule['diversity']['mean']:.3f}, HM-IoU(16) {nodule['hm_iou_16']['mean']:.3f}, "
        f"Dice {nodule['dice']['mean']:.3f}"
    )


def _input_3d(config: dict) -> str:
    """The card's sentence on what a LIDC-3D run takes as input (its ``intensity`` setting)."""
    stored = config.get("intensity", "zscore") == "stored"
    common = (
        "one channel, 128x128 crops x any depth. `ssn convert lidc-3d` writes the crops' uint8 grey levels "
        "scaled to [0, 1] (`image / 255`)"
    )
    if stored:
        return (
            common + ", and the model takes them as they are (the run's `intensity: stored`, which `ssn "
            "evaluate`, `calibrate`, `sample` and `explore` follow), as the 2D model took its slices: call "
            "`model(x)` yourself with `x` = grey level / 255."
        )
    return (
        common + "; the volume pipeline (`ssn train`, `evaluate`, `sample` on a volume list) then z-scores each "
        "volume over its mask, and that is what the model was trained on: call `model(x)` yourself with `x` "
        "z-scored likewise (`ssn.data.nifti.normalise`)."
    )


def _slicewise() -> str:
    """The card's clause on the shipped 2D model run slice by slice (``lidc3d.py --slicewise-2d``)."""
    row = json.loads((ROOT / "benchmarks" / "results" / "lidc3d.json").read_text()).get("slicewise_2d", {})
    if row.get("run") != "pretrained:lidc-2d" or "shared" not in row:
        return ""
    if row.get("weights_sha256") != weights_digest("pretrained:lidc-2d"):
        return ""  # measured on weights shipped before (or not recorded which)
    return (
        f";\n  the shipped 2D SSN run slice by slice, one noise draw per sample (t = 1), scores "
        f"{row['shared']['ged']['mean']:.3f}"
    )


def card_3d(run: Path, name: str, config: dict, calibration: dict, curve: list[dict]) -> str:
    """The model card of a LIDC-3D run (figures from ``benchmarks/lidc3d.py``)."""
    temperature = calibration["temperature"]
    test = json.loads((run / "test_metrics_16.json").read_text())
    calibrated_path = run / f"test_metrics_16_t{temperature:g}.json"
    if temperature == 1 or calibrated_path.is_file():
        at_calibrated = _figures_3d(json.loads(calibrated_path.read_text()) if temperature != 1 else test)
    else:
        at_calibrated = "not measured (`benchmarks/lidc3d.py` evaluates it unless `--no-calibrate`)"
    warm_up = f", after a linear warm-up of {config['warmup_steps']} steps" if config.get("warmup_steps") else ""
    mean_alone = (
        f"the mean alone for the first {config['mean_warmup']:.0%} of the steps, variance init {config['variance_init']}"
        if config.get("mean_warmup")
        else "no mean-only warm-up"
    )
    start = (
        f" It started from the weights of `{config['init_from']}`, each 2D kernel on the middle slice of a 3D one "
        "(`ssn train --init-from`), so its training began from that network applied slice by slice."
        if config.get("init_from")
        else ""
    )
    training, best = curve[-1], min(curve, key=lambda entry: entry["val_ged"])
    cpu = f", {training['cpu_minutes'] / 60:.2f} CPU-hours" if "cpu_minutes" in training else ""
    arch = config["architecture"]
    patch = " x ".join(map(str, config["patch_size"]))
    trained = (
        f"Trained on the training nodules, patches of {patch} (half of them centred on a reader's nodule), one "
        f"reader drawn per patch per step; checkpoint chosen on {config['val_images']} validation nodules, the "
        "temperature on 64."
    )
    if training["step"] <= 1 and config["lr"] <= 1e-9:  # the run only wrote the inflated weights
        trained = (
            f"The 2D weights were trained on the training patients' slices; the temperature was chosen on 64 "
            f"validation nodules, through sliding windows of {patch}."
        )
        start = _start_record(config, run)
        when = f" as shipped on {start['shipped']}" if start else ""
        budget = (
            f"no 3D training. The weights are those of `{config['init_from']}`{when}, each 2D kernel on the middle "
            "slice of a 3D one (`ssn train --init-from`, one step at lr 1e-12 to write the run), with instance "
            "norm per slice, so the model is that 2D SSN applied slice by slice under one low-rank Gaussian over "
            "the volume: exactly, its mean logits within 4e-6 of the 2D model's. 3D training on patches of the "
            "training nodules did not improve the same start from an earlier 2D model (the paper's loss "
            "alone, shipped in ssn 0.6-0.7): 300 steps at lr 5e-5 (`benchmarks/lidc3d.py`) scored the validation nodules worse from "
            "step 50 on and the test nodules 0.002 ± 0.001 higher (paired), and with `--marginal-weight 1` "
            "0.311 ± 0.009 against that start's 0.313; it was not retried from the later 2D models."
        )
    else:
        budget = (
            f"{training['step']} optimiser steps, batch {config['batch_size']}, {training['minutes']:.0f} minutes of "
            f"training time{cpu} on a 2-core CPU (no GPU), one thread, sharing the machine with other work. Adam lr "
            f"{config['lr']:g} ({config['lr_schedule']}{warm_up}), {mean_alone}, {config['mc_samples']} antithetic MC "
            f"samples. The weights are the best validation checkpoint, step {best['step']} (validation "
            f"GED²({config['val_samples']}) {best['val_ged']:.3f}).{start}"
        )
    return f"""# Model card: `{name}`

A low-rank Stochastic Segmentation Network (Monteiro et al., NeurIPS 2020) for lung nodules in
3D CT crops (LIDC-3D: each nodule's 128x128 crops stacked in slice order), trained with `ssn`
{config["ssn_version"]}. Load it offline:

```python
import ssn

model = ssn.pretrained("{name}")  # eval mode, at its calibrated temperature {temperature:g}
```

or from the command line, on volumes that `ssn convert lidc-3d` wrote:
`ssn sample --run pretrained:{name} --input LIDC3D/lidc3d.json --split test --samples 16 --out samples/`.
Whole volumes go through sliding windows of the training patch ({" x ".join(map(str, config["patch_size"]))}).

- **Input**: {_input_3d(config)} The crops carry no voxel spacing: the volumes have an identity
  affine and the model has never seen millimetres.
- **Output**: a Gaussian over the 2-class logit map (background, nodule) of the whole volume:
  rank {arch["method_kwargs"]["rank"]}, backbone `{arch["backbone"]}` with {json.dumps(arch["backbone_kwargs"])}.
- **Data**: LIDC-IDRI, 2,630 nodule volumes (depth 1-56 slices, median 4), four readers each;
  nodules split by patient with `split.json` (train 1,631 / validation 496 / test 503). {trained}
- **Budget**: {budget}
- **Test figures** (the 503 test nodules, 16 samples each, the nodule's 1 − IoU over whole
  volumes; ± standard error over nodules):
  - at t = 1: {_figures_3d(test)};
  - at the calibrated t = {temperature:g}: {at_calibrated}.
  The readers' own diversity on these nodules is 0.533 (distinct pairs); their majority vote scores GED² 0.281{_slicewise()}.
  The whole comparison (deterministic and diagonal models trained alike) is in the repository's
  `benchmarks/RESULTS.md`.
- **Limits**: a research model, not a medical device. It has seen only crops centred on nodules
  that LIDC readers annotated, without spacing; it says nothing about whole scans.

{ATTRIBUTION}"""


def main() -> None:
    parser = benchmark_parser("ship_pretrained", __doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--name", default="lidc-2d")
    args = parser.parse_args()
    run, target = args.run, ROOT / "src" / "ssn" / "weights" / args.name
    dims = json.loads((run / "config.json").read_text())["architecture"]["spatial_dims"]
    config, calibration, curve = _copy(run, target, [128, 128] if dims == 2 else None)
    card = (card_2d if dims == 2 else card_3d)(run, args.name, config, calibration, curve)
    write_atomically(target / "MODEL_CARD.md", lambda temporary: temporary.write_text(card))
    record = {"run": str(run.resolve()), "shipped": time.strftime("%Y-%m-%d"), "ssn_version": config["ssn_version"]}
    start = _start_record(config, run)
    if start:
        record["started_from"] = start
    update_json(RESULTS / "shipped.json", lambda content: {**content, args.name: record})
    print(f"wrote {target}: " + ", ".join(sorted(p.name for p in target.iterdir())))


if __name__ == "__main__":
    main()

"""benchmarks/RESULTS.md, written from the result files of the quality benchmarks.

- ``results/lidc.json``      (``benchmarks/lidc.py``): the LIDC-IDRI test table and every run;
- ``results/ablation.json``  (``benchmarks/ablation.py``): training options on LIDC validation;
- ``results/agreeing.json``  (``benchmarks/agreeing.py``): small data where the readers agree;
- ``results/brats.json``     (``benchmarks/brats.py``): the BraTS demonstration;
- ``results/scaling.json``   (``benchmarks/scaling.py``): kill and resume, workers, processes.

Each benchmark calls :func:`write` at its end; ``python -m benchmarks.report`` rewrites it alone.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from benchmarks._common import BENCHMARKS, RESULTS, benchmark_parser
from benchmarks._training import MODEL_FLAGS
from ssn.files import write_atomically

HERE = BENCHMARKS
MODELS = tuple(MODEL_FLAGS)
PAPER = {  # Monteiro et al. 2020, Table 1 (LIDC, GED^2 with 100 samples, their own split)
    "deterministic": "0.607",
    "diagonal": "0.622",
    "low-rank": "0.225",
    "prob-unet": "0.252",
}
CITATION = (
    "Data: Armato III, S. G., McLennan, G., Bidaut, L., et al. (2011). The Lung Image Database "
    "Consortium (LIDC) and Image Database Resource Initiative (IDRI): a completed reference "
    "database of lung nodules on CT scans. Medical Physics, 38(2), 915-931. The Cancer Imaging "
    "Archive, LIDC-IDRI collection, CC BY 3.0."
)


def _load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _mean(entry: dict | None, digits: int = 3, stderr: bool = False) -> str:
    if not entry or entry.get("mean") is None:
        return ""
    text = f"{entry['mean']:.{digits}f}"
    if stderr and entry.get("stderr") is not None:
        text += f" ± {entry['stderr']:.{digits}f}"
    return text


def _figures(result: dict) -> list[str]:
    """GED²(100), GED²(16), HM-IoU(16) repeated, HM-IoU(16) rectangular, diversity, Dice, ECE of one evaluation."""
    rectangular = result.get("hm_iou_by_matching", {}).get("rectangular", {}).get("16")
    return [
        _mean(result.get("ged"), stderr=True),
        _mean(result.get("ged_at", {}).get("16")),
        _mean(result.get("hm_iou", {}).get("16")),
        _mean(rectangular),
        _mean(result.get("diversity")),
        _mean(result.get("dice")),
        _mean(result.get("ece"), 4),
    ]


HM_IOU_NOTE = (
    "HM-IoU(16) is the Hungarian-matched IoU of 16 samples with both sets repeated to lcm(16, 4) (CCDM's and "
    "MoSE's convention, `--matching repeat`, the default); *rect.* matches the 16 x 4 matrix as it is, so only "
    "the best 4 samples count (Flow-SSN's, `--matching rectangular`). For two classes the class conventions "
    "(`--classes present|all`) agree, so GED² and diversity compare with PHiSeg's, the official SSN's, "
    "CCDM's, MoSE's and Flow-SSN's code as they are."
)


_SCRIPT_FORM = re.compile(r"^(?:python )?benchmarks/([a-z_]+)\.py(?=\s|$)")


def _runnable(command: str) -> str:
    """A recorded command line as it runs now (``python -m benchmarks.NAME ...``).

    Runs recorded before the benchmarks became a package name the script file
    (``python benchmarks/NAME.py ...``); the result files keep that, the page shows the form that works.
    """
    return _SCRIPT_FORM.sub(r"python -m benchmarks.\1", command)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
    ]


def _run_at(runs: list[dict], source: str | None) -> dict | None:
    """The last of ``runs`` trained in the folder ``source``, or None."""
    matches = [r for r in runs if source and r.get("run") == source]
    return matches[-1] if matches else None


def _shipped_run(runs: list[dict], name: str) -> dict | None:
    """The LIDC run shipped as ``pretrained:NAME`` (``results/shipped.json``, written by
    ``benchmarks/ship_pretrained.py``), or None where it is not among ``runs``."""
    return _run_at(runs, _load("shipped").get(name, {}).get("run"))


def _shipped_start(runs: list[dict], name: str) -> dict | None:
    """The LIDC run that the model shipped as ``pretrained:NAME`` was trained on from
    (``started_from`` in ``results/shipped.json``, for a run started with ``--init-from
    pretrained:NAME``), or None."""
    return _run_at(runs, (_load("shipped").get(name, {}).get("started_from") or {}).get("run"))


def _rows_at_both_temperatures(run: dict, label: str, budget: str, paper: str) -> list[list[str]]:
    """A run's table row at t = 1 and, where it was calibrated, its row at that temperature."""
    rows = [[label, "1", *_figures(run), budget, paper]]
    if run.get("calibrated"):
        temperature = f"{run['calibrated']['temperature']:g}"
        rows.append([f"{label}, calibrated", temperature, *_figures(run["calibrated"]), "", ""])
    return rows


def lidc_section() -> list[str]:
    content = _load("lidc")
    runs, reference = content.get("runs", []), content.get("reference")
    if not runs:
        return []
    # the headline rows: the library's defaults (a run with a variant changes one of them), seed 0
    current = [r for r in runs if r.get("protocol") == 3 and r.get("seed", 0) == 0 and not r.get("variant")]
    latest = {r["name"]: r for r in current}
    header = [
        "model",
        "temperature",
        "GED²(100)",
        "GED²(16)",
        "HM-IoU(16)",
        "HM-IoU(16) rect.",
        "diversity",
        "Dice",
        "ECE",
        "training",
        "paper GED²(100)",
    ]
    rows = []
    for name in MODELS:
        if name not in latest:
            continue
        run = latest[name]
        budget = f"{run['training'].get('step', 0)} steps, {run['training'].get('minutes', 0):.0f} min"
        rows.append([name, "1", *_figures(run), budget, PAPER[name]])
        if run.get("calibrated"):
            rows.append(
                [f"{name}, calibrated", f"{run['calibrated']['temperature']:g}", *_figures(run["calibrated"]), "", ""]
            )
    shipped = _shipped_run(runs, "lidc-2d")
    start = _shipped_start(runs, "lidc-2d")
    if shipped is not None and shipped is not latest.get(shipped["name"]):  # a variant or another seed
        label = f"{_run_name(shipped)}, seed {shipped.get('seed', 0)}: **shipped** as `pretrained:lidc-2d`"
        budget = f"{shipped['training'].get('step', 0)} steps, {shipped['training'].get('minutes', 0):.0f} min"
        if start is not None:
            budget = (
                f"{start['training'].get('step', 0)} + {shipped['training'].get('step', 0)} steps "
                f"(its start's, then {shipped['training'].get('minutes', 0):.0f} min of its own)"
            )
        rows += _rows_at_both_temperatures(shipped, label, budget, PAPER[shipped["name"]])
    if start is not None and start is not latest.get(start["name"]):
        label = f"{_run_name(start)}, seed {start.get('seed', 0)}: the shipped model's start (shipped before it)"
        budget = f"{start['training'].get('step', 0)} steps, {start['training'].get('minutes', 0):.0f} min"
        rows += _rows_at_both_temperatures(start, label, budget, "")
    if reference:
        rows.append(["*empty prediction*", "", *_figures(reference["empty"]), "", ""])
        rows.append(["*readers' majority vote*", "", *_figures(reference["majority_vote"]), "", ""])
        votes = {"1": "at least 1 of 4 readers (their union)", "3": "at least 3 of 4 readers", "4": "all 4 readers"}
        for k, row in reference.get("readers_at_least", {}).items():
            rows.append([f"*marked by {votes.get(k, f'at least {k} readers')}*", "", *_figures(row), "", ""])
        rows.append(
            ["*the readers themselves*", "", "", "", "", "", f"{reference['reader_diversity']:.3f}", "", "", "", ""]
        )
    rows.append(["PHiSeg (paper)", "", "", "", "", "", "", "", "", "", "0.224"])
    headline = latest.get("low-rank", current[-1]) if current else None  # the shipped model's row
    settings = headline["settings"] if headline else []
    budgets = sorted({run["training"].get("step", 0) for run in current})
    mixed = (
        f"The rows were trained on different budgets ({', '.join(f'{b:,}' for b in budgets)} steps; the budget "
        "column says which): a row compares alike only with rows of its own budget."
        if len(budgets) > 1
        else ""
    )
    lines = [
        "## LIDC-IDRI test split",
        "",
        "Written by `benchmarks/lidc.py`. All models share the backbone, the optimiser settings and the "
        "budget in optimiser steps, and train with the library's defaults (below); the SSNs with 20 "
        "antithetic samples. Each is evaluated on the 3,095 test slices of `split.json` with 100 "
        "samples per slice, at t = 1 and at the temperature `ssn calibrate` chose on 512 validation "
        "slices (16 samples). Reference rows are measured on the same test slices: an empty "
        "prediction, the readers' majority vote (a single map: pixels that 2 of the 4 readers marked), the "
        "maps of the pixels that at least 1, 3 or all 4 readers marked, and the readers' own diversity "
        "(mean 1 − IoU over distinct pairs); the single maps show what a deterministic model's one map "
        "could score (`python -m benchmarks.lidc --references-only`). ± is the standard error over the test slices only "
        "(one training seed). The paper's figures come from its own split of the same patients and "
        "500k GPU iterations; the comparison is approximate.",
        "",
        *_table(header, rows),
        "",
        *([mixed, ""] if mixed else []),
        HM_IOU_NOTE,
        "",
        (
            f"Settings of the {headline['name']} row (the others differ only in their method flags, as listed "
            f"in `results/lidc.json`): `ssn train {' '.join(settings)}`"
        )
        if settings
        else "",
        "",
    ]
    if (HERE / "lidc_samples.png").is_file():
        lines += ["![LIDC samples](lidc_samples.png)", ""]
    lines += [
        "### Every LIDC run",
        "",
        *_table(
            [
                "model",
                "measured",
                "ssn",
                "seed",
                "temperature",
                "GED²(100)",
                "GED²(16)",
                "HM-IoU(16)",
                "HM-IoU(16) rect.",
                "diversity",
                "Dice",
                "ECE",
                "training",
                "command",
            ],
            [
                [
                    _run_name(r),
                    r["measured"],
                    r["ssn_version"],
                    str(r.get("seed", 0)),
                    "1",
                    *_figures(r),
                    f"{r['training'].get('step', 0)} steps, {r['training'].get('minutes', 0):.0f} min",
                    f"`{_runnable(r['command'])}`",
                ]
                for r in runs
            ],
        ),
        "",
    ]
    return lines


def _run_name(run: dict) -> str:
    """A LIDC run's model, with the variant of the defaults it trained with (``lidc.py --variant``)."""
    return f"{run['name']} ({run['variant']})" if run.get("variant") else run["name"]


def seeds_section() -> list[str]:
    """Training noise on LIDC: the models trained with several seeds on one budget, each seed's test
    figures and their mean and spread (max - min) over the seeds."""
    runs = [r for r in _load("lidc").get("runs", []) if r.get("protocol") == 3]
    groups: dict[tuple[str, int], dict[int, dict]] = {}
    for r in runs:  # the latest run of each (model and variant, budget, seed)
        groups.setdefault((_run_name(r), r["training"].get("step", 0)), {})[r.get("seed", 0)] = r
    rows = []
    for (name, steps), by_seed in groups.items():
        if len(by_seed) < 2:
            continue
        figures = {
            "ged": [r["ged"]["mean"] for r in by_seed.values()],
            "hm": [r["hm_iou"]["16"]["mean"] for r in by_seed.values()],
            "diversity": [r["diversity"]["mean"] for r in by_seed.values()],
            "calibrated": [r["calibrated"]["ged"]["mean"] for r in by_seed.values() if r.get("calibrated")],
        }
        for seed, r in sorted(by_seed.items()):
            calibrated = r.get("calibrated")
            at = (
                f"{_mean(calibrated['ged'], stderr=True)} (t = {r['calibration']['temperature']:g})"
                if calibrated
                else ""
            )
            rows.append([name, f"{steps:,}", str(seed), _mean(r["ged"], stderr=True), _mean(r["hm_iou"]["16"]),
                         _mean(r["diversity"]), at])  # fmt: skip
        rows.append(
            [f"**{name}, mean of {len(by_seed)} seeds**", f"{steps:,}", "",
             *(f"**{sum(v) / len(v):.3f}** (spread {max(v) - min(v):.3f})" if len(v) == len(by_seed) else ""
               for v in figures.values())]
        )  # fmt: skip
    if not rows:
        return []
    return [
        "### Training noise: several seeds",
        "",
        "The same settings and budget trained with other seeds (`benchmarks/lidc.py --seed S`), each evaluated "
        "alike on the test split (100 samples, t = 1). ± is the standard error over the test slices; the spread "
        "(max − min over the seeds) is the training noise, which the single-seed rows above do not include. "
        "*Calibrated*: GED²(100) at the temperature `ssn calibrate` chose on validation slices (the one "
        "`ssn.pretrained` and `load_run` sample at).",
        "",
        *_table(
            ["model", "budget (steps)", "seed", "GED²(100)", "HM-IoU(16)", "diversity", "calibrated GED²(100)"], rows
        ),
        "",
    ]


def options_section() -> list[str]:
    content = _load("lidc_options")
    if not content:
        return []
    lines = ["## Training efficiency on LIDC: images/s and validation GED² for the same CPU time", ""]
    throughput = content.get("throughput")
    if throughput:
        rows = [
            [name, f"{r['images_per_second']:.1f}", f"{r['relative']:.2f}"] for name, r in throughput["options"].items()
        ]
        lines += [
            f"Throughput (`{_runnable(content['command_throughput'])}`, {throughput['threads']} thread, measured "
            f"{content['machine']['date']}): one SSN step (rank 10, 20 samples) per option, all alternating in one "
            f"process ({throughput['rounds']} rounds), random inputs; *relative* is the median over rounds of the "
            "paired ratio to whole slices at batch 8 (images per second), *images/s* the median time's.",
            "",
            *_table(["option", "images/s", "relative"], rows),
            "",
        ]
    quality = content.get("quality")
    if quality:
        rows = [
            [
                name,
                str(r["patch_size"] or "whole 128x128"),
                str(r["steps"]),
                _mean(r["ged_16"], stderr=True),
                f"{r['diversity']:.3f}",
                f"{r['hm_iou_16']:.3f}",
                f"{r['dice']:.3f}",
                f"{100 * r['empty_share_all_four_marked']:.0f}%",
            ]
            for name, r in quality["runs"].items()
        ]
        lines += [
            f"Quality for the same CPU time (`{_runnable(content['command_quality'])}`): low-rank SSNs (U-Net 16-128, rank 10, "
            "batch 8, lr 2e-3, the library's defaults) trained side by side for 15 wall minutes each, three "
            "processes of one thread on the 2 cores (so about 10 CPU-minutes each), then scored on "
            f"{quality['validation_slices']} fixed validation slices (whole 128x128 slices) with {quality['samples']} "
            "samples; *empty* is the share of empty samples on the slices that all four readers marked. Training: "
            f"`{quality.get('training_command', '')}`.",
            "",
            *_table(
                ["run", "training input", "steps", "val GED²(16)", "diversity", "HM-IoU(16)", "Dice", "empty"], rows
            ),
            "",
        ]
    return lines


def curve_section() -> list[str]:
    content = _load("lidc_curve")
    if not content:
        return []
    rows = []
    for name, run in content["runs"].items():
        marks = [
            f"{m['val_ged']:.3f} (step {m['step']})" if m else ""
            for m in (run["marks"].get("40 min"), run["marks"].get("2 h"), run["marks"].get("end"))
        ]
        end = run["marks"].get("end") or {}
        if end and run.get("max_steps") and end["step"] < run["max_steps"]:
            marks[-1] += f", {100 * end['step'] / run['max_steps']:.0f}% of the budget (stopped or in progress)"
        rows.append(
            [
                name,
                run["method"]
                + (f", rank {run['rank']}" if run["method"] == "ssn" else "")
                + (f", mean weight {run['mean_weight']:g}" if run.get("mean_weight") else "")
                + (f", marginal weight {run['marginal_weight']:g}" if run.get("marginal_weight") else "")
                + (", all annotators" if run.get("annotators") == "all" else "")
                + (f", {run['lr_schedule']} lr" if run.get("lr_schedule", "constant") != "constant" else "")
                + (f", EMA {run['ema_decay']:g}" if run.get("ema_decay") else ""),
                str(run["seed"]),
                str(run["max_steps"]),
                *marks,
                f"{end.get('cpu_hours', 0):.2f}",
                ", ".join(run.get("processors") or ["not recorded"]),
            ]
        )
    return [
        "## Training for hours: the validation curve (LIDC)",
        "",
        "Written by `benchmarks/lidc_curve.py` from each run's `metrics.jsonl`: validation GED² (16 samples, the "
        "run's fixed 128 validation slices) against the CPU time of the training process, summed over the "
        "parts of the run (`python -m benchmarks.lidc --part-minutes`). *40 min* and *2 h* are the last validation at or "
        "before that much CPU time. CPU time compares only on one processor: the machine behind these runs "
        "has changed between sessions (an Intel Xeon in the results of 2026-11-27 and 28, an AMD EPYC at 2.0 GHz "
        "on 2026-12-06, on which a Prob. U-Net training step, batch 8, runs at 3.9 images/s on one thread, and "
        "`ssn train` at 4.1, while its runs of 2026-12-04, on one thread too, averaged 13.5 images/s over the "
        "whole training, validation included), so curves compare alike only when they ran side by side "
        "or name one processor. Runs logged before 2026-12-06 did not record theirs.",
        "",
        *_table(
            ["run", "method", "seed", "budget (steps)", "40 CPU-min", "2 CPU-h", "latest", "CPU-h so far", "processor"],
            rows,
        ),
        "",
        "![validation GED² against CPU-hours](lidc_curve.png)",
        "",
        *(
            [
                "The README's figure, the shipped setting, the Prob. U-Net and the deterministic U-Net, one colour per "
                "model (`python -m benchmarks.lidc_curve --select lidc-mg/low-rank lidc-mg-s1/low-rank "
                "lidc-pu10k-s0/prob-unet lidc-pu10k-s1/prob-unet lidc-v6/deterministic --out "
                "benchmarks/lidc_curve_models.png`):",
                "",
                "![validation GED² against CPU-hours, by model](lidc_curve_models.png)",
                "",
            ]
            if (BENCHMARKS / "lidc_curve_models.png").is_file()
            else []
        ),
    ]


def ablation_section() -> list[str]:
    runs = _load("ablation").get("runs", [])
    if not runs:
        return []
    rows = [
        [
            r["tag"],
            f"`{r['flags']}`" if r["flags"].strip() else "(the defaults)",
            _mean(r["val"]["ged"], stderr=True),
            _mean(r["val"]["diversity"]),
            _mean(r["val"].get("hm_iou", {}).get("16")),
            f"{r['steps']} steps, {r['train_minutes']:.0f} min",
            str(r["seed"]),
        ]
        for r in runs
    ]
    return [
        "## Training options (LIDC validation, low-rank SSN)",
        "",
        "Written by `benchmarks/ablation.py`: the low-rank SSN trained on the LIDC train split with the "
        "same budget in steps, each row adding or changing one option; evaluated on the whole "
        "validation split (3,039 slices) with 16 samples per slice. The test split is not used to "
        "choose anything.",
        "",
        *_table(["options", "flags", "val GED²(16)", "diversity", "HM-IoU(16)", "training", "seed"], rows),
        "",
        'Commands: one `python -m benchmarks.ablation --steps N --variant "NAME=FLAGS"` per row (in '
        "`benchmarks/results/ablation.json`). *training* minutes depend on what ran beside each run; "
        "the budget is the steps. The ± is the spread over the validation slices of one trained model per row; training noise is larger: in the 5,042-step LIDC run of the low-rank SSN the validation GED²(16) on 128 slices moved between 0.29 and 0.38 from one checkpoint (every 500 steps) to the next, so differences below about 0.04 here are not evidence either way.",
        "",
    ]


def agreeing_section() -> list[str]:
    content = _load("agreeing")
    runs, reference = content.get("runs", []), content.get("reference")
    if not runs:
        return []
    rows = []
    for r in runs:
        rows.append(
            [
                r["name"],
                r["tag"],
                "1",
                _mean(r["ged"], stderr=True),
                _mean(r["diversity"]),
                _mean(r["hm_iou"].get("16")),
                _mean(r["ece"], 4),
                f"{r['steps']} steps",
                str(r["seed"]),
            ]
        )
        c = r.get("calibrated")
        if c:
            rows.append(
                [
                    f"{r['name']}, calibrated",
                    r["tag"],
                    f"{c['temperature']:g}",
                    _mean(c["ged"], stderr=True),
                    _mean(c["diversity"]),
                    _mean(c["hm_iou"].get("16")),
                    _mean(c["ece"], 4),
                    "",
                    "",
                ]
            )
    if reference:
        rows.append(
            [
                "*readers' majority vote*",
                "",
                "",
                _mean(reference["majority_vote_ged"], stderr=True),
                "0",
                "",
                "",
                "",
                "",
            ]
        )
        rows.append(["*the readers themselves*", "", "", "", f"{reference['reader_diversity']:.3f}", "", "", "", ""])
    return [
        "## Small data where the readers agree (LIDC subset)",
        "",
        "Written by `benchmarks/agreeing.py`: LIDC slices where all four readers drew the nodule and "
        "agree closely (mean pairwise 1 − IoU ≤ 0.25): 48 training slices, 64 validation slices, and "
        f"all {reference['num_test_images'] if reference else ''} such test slices, evaluated with 100 samples "
        "(± over the test slices, one training seed). The stochastic models are also evaluated at the "
        "temperature `ssn calibrate` chose on the 64 validation slices. Every model validates every 50 "
        "steps and keeps its best checkpoint. A stochastic model should be as tight as its readers here.",
        "",
        *_table(
            ["model", "settings", "temperature", "GED²(100)", "diversity", "HM-IoU(16)", "ECE", "training", "seed"],
            rows,
        ),
        "",
        "Commands: " + "; ".join(sorted({f"`{_runnable(r['command'])}`" for r in runs})),
        "",
    ]


def _brats_schedule(content: dict) -> str:
    threads = f"{content['threads_per_model']} thread{'s' if content['threads_per_model'] > 1 else ''} each"
    if content["models_at_once"] == 1:
        return f"one model after another, {threads}"
    return f"{content['models_at_once']} models at once, {threads}"


def brats_section() -> list[str]:
    content = _load("brats")
    if not content:
        return []
    regions = ("whole tumour", "tumour core", "enhancing tumour")
    lines = [
        "## BraTS (3D), a demonstration on six real cases",
        "",
        f"Measured {content['measured']}: `{_runnable(content['command'])}`. The deterministic 3D U-Net, the diagonal and "
        f"the low-rank SSN (rank 10, 20 samples), U-Net features {content['features']}, patches of "
        f"{'x'.join(map(str, content['patch_size']))} (half centred on the tumour), batch 2, Adam 1e-3, "
        f"{content['steps']} optimiser steps each ({_brats_schedule(content)}, "
        f"{content['train_minutes_wall']:.0f} minutes of wall time), "
        "FLAIR and T1c of `brats_deepmedic` (train and validation folders, 4 cases; the 2 validation cases also "
        f"chose the checkpoint). Whole volumes through sliding windows, {content['samples']} samples each. "
        "With two test cases and one expert each, these figures show the path works; they are not a benchmark.",
        "",
    ]
    for tag, title in (
        ("deepmedic test", "the 2 `brats_deepmedic` test cases against the expert map"),
        ("tcga", "the 2 `brats_tcga` cases against five algorithms' maps (FLAIR and T1c, normalised in the brain)"),
    ):
        rows = []
        for name, run in content["runs"].items():
            versions = [(name, run[tag])]
            if "calibrated" in run:  # at the temperature chosen on the validation cases
                calibrated = run["calibrated"]
                versions.append((f"{name}, calibrated (t = {calibrated['temperature']:g})", calibrated[tag]))
            for label, figures in versions:
                whole = figures.get("multi-class", {})
                rows.append(
                    [label, str(run["steps"])]
                    + [f"{figures[r]['dice']:.3f}" for r in regions]
                    + [f"{figures[r]['ged']:.3f}" for r in regions]
                    + [f"{whole[c]['ged']:.3f}" if c in whole else "" for c in ("present", "all")]
                    + [f"{figures[r]['diversity']:.3f}" for r in regions]
                )
        raters = content.get("tcga raters") if tag == "tcga" else None
        if raters:
            rows.append(
                ["*the five algorithms themselves*", ""] + [""] * 8 + [f"{raters[r]['mean']:.3f}" for r in regions]
            )
        lines += [f"On {title}:", ""]
        lines += _table(
            ["model", "steps", "Dice WT", "Dice TC", "Dice ET", "GED² WT", "GED² TC", "GED² ET"]
            + ["GED² map (present)", "GED² map (all)", "diversity WT", "diversity TC", "diversity ET"],
            rows,
        )
        lines += [""]
    lines += [
        "*GED² map* scores the whole 4-class label map (background, necrotic and non-enhancing core, oedema, "
        "enhancing): *present* averages 1 − IoU over the classes present in either map (ours, Flow-SSN's and "
        "MoSE's), *all* over every foreground class, a class absent from both maps counting as IoU 1 (PHiSeg's, the "
        "official SSN's and CCDM's; `ssn evaluate --classes all`). The regions are binary maps, where the "
        "conventions agree. Diversity is the mean 1 − IoU over all ordered pairs of a model's samples (self-pairs "
        "included, as in GED²); the algorithms' own is over their distinct pairs. Rows at t = 1 unless named "
        "*calibrated*: those sample at the temperature `ssn calibrate` chose (GED² of the whole map, 8 samples) on "
        "the 2 `brats_deepmedic` validation cases, which the models also trained on, for want of another case "
        "(`python -m benchmarks.brats --calibrate`).",
        "",
    ]
    for name, run in content["runs"].items():
        if run.get("variant"):
            lines += [
                f"*{name}*: the settings above with `{run['extra']}` ({run['train_minutes_wall']:.0f} minutes of wall "
                f"time, {run['threads']} thread{'s' if run['threads'] > 1 else ''}): `{_runnable(run['command'])}`.",
                "",
            ]
    lines += ["![BraTS test case: expert map and samples of the low-rank SSN](brats_samples.png)", ""]
    for name, run in content["runs"].items():
        if run.get("figure"):
            lines += [f"![BraTS test case: samples of the {name}]({run['figure']})", ""]
    lines += [
        "Data: BraTS 2013 cases as repackaged in DeepMedic's examples (CC BY-NC-SA 3.0): Menze, B. H., Jakab, A., "
        "Bauer, S., et al. (2015). The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS). IEEE Transactions "
        "on Medical Imaging, 34(10), 1993-2024; Kamnitsas, K., Ledig, C., Newcombe, V. F. J., et al. (2017). Efficient "
        "multi-scale 3D CNN with fully connected CRF for accurate brain lesion segmentation. Medical Image Analysis, "
        "36, 61-78. TCGA glioma cases from BraTS Toolkit's tutorial data: Kofler, F., Berger, C., Waldmannstetter, D., "
        "et al. (2020). BraTS Toolkit. Frontiers in Neuroscience, 14, 125; images from The Cancer Imaging Archive "
        "(Clark, K., et al. (2013). Journal of Digital Imaging, 26(6), 1045-1057), CC BY 3.0.",
        "",
    ]
    return lines


def lidc3d_section() -> list[str]:
    """LIDC-3D: the nodule volumes, their reference rows, the models trained on them and why their samples spread."""
    content = _load("lidc3d")
    reference = content.get("reference")
    if not reference:
        return []
    runs = content.get("runs", [])
    shared = [r for r in runs if r.get("draws") != "per case"]
    rows = [
        [
            r["name"] + (" †" if r in shared else ""),
            f"{r['temperature']:g}",
            _mean(r["ged"], stderr=True),
            _mean(r["diversity"]),
            _mean(r.get("hm_iou", {}).get("16")),
            _mean(r.get("dice")),
            f"{r['steps']} steps" + (f", {r['cpu_hours']:.2f} CPU-h" if r.get("cpu_hours") else ""),
        ]
        for r in runs
    ]
    rows += [
        ["*empty prediction*", "", _mean(reference["empty"]["ged"], stderr=True), "0.000", "", "", ""],
        ["*readers' majority vote*", "", _mean(reference["majority_vote"]["ged"], stderr=True), "0.000", "", "", ""],
        ["*the readers themselves* (distinct pairs)", "", "", _mean(reference["reader_diversity"]), "", "", ""],
    ]
    slicewise = content.get("slicewise_2d")
    if slicewise:
        n = slicewise["num_samples"]
        rows += [
            [
                f"*`{slicewise['run']}` slice by slice, {mode} noise*",
                f"{slicewise['temperature']:g}",
                _mean(slicewise[mode]["ged"], stderr=True),
                _mean(slicewise[mode]["diversity"]),
                _mean(slicewise[mode].get(f"hm_iou_{n}")),
                _mean(slicewise[mode]["dice"]),
                f"2D, {slicewise['steps']} steps",
            ]
            for mode in ("independent", "shared latent", "shared")
            if mode in slicewise
        ]
    commands = sorted({_runnable(r["command"]) for r in runs if r.get("command")})
    first = runs[0] if runs else None
    lines = [
        "## LIDC-3D: nodule volumes with four readers",
        "",
        f"`ssn convert lidc-3d` stacks each nodule's crops into a volume; the {reference['num_cases']} test nodules, "
        f"GED² and diversity of the nodule (1 − IoU of whole volumes), ± the standard error over nodules "
        f"(one training seed). Reference rows: "
        f"`{_runnable(reference.get('command', 'python -m benchmarks.lidc3d --references-only'))}`."
        + ("" if runs else " No model has been trained on it yet (issue 20)."),
        "",
    ]
    if first:
        lines += [
            "The models share one 3D U-Net and budget (`ssn train --data LIDC3D/lidc3d.json "
            + " ".join(_without_paths(first["settings"]))
            + "`, the method flags apart), trained on patches of the training nodules and evaluated with "
            f"{first['num_samples']} samples per nodule through sliding windows of the training patch; *calibrated* "
            "rows use the temperature `ssn calibrate` chose on 64 validation nodules. HM-IoU(16) repeats both sets "
            "to lcm(16, 4). Commands: " + "; ".join(f"`{c}`" for c in commands) + ".",
            "",
        ]
    lines += [*_table(["model", "temperature", "GED²", "diversity", "HM-IoU(16)", "Dice", "training"], rows), ""]
    if shared:
        lines += [
            "† Evaluated before each nodule drew its own samples (ssn 0.7 and before): every nodule was drawn with "
            "the same seed, so all shared one set of latent draws and the mean over nodules keeps the Monte Carlo "
            "error of 16 samples. One model so evaluated at seeds 0, 1 and 2 scored 0.329, 0.304 and 0.355, where its "
            "standard error over nodules is 0.009. These rows share the same draws, so they compare with each other "
            "better than with the rows without †.",
            "",
        ]
    inflated = [r for r in runs if "--init-from" in r.get("settings", [])]
    if inflated:
        settings = inflated[0]["settings"]
        source = settings[settings.index("--init-from") + 1]
        each = {r["name"]: shlex.join(_without_paths(r["settings"])) for r in inflated if r["temperature"] == 1}
        lines += [
            f"Rows named *inflated* start from `{source}`'s weights as they were when the row ran (the rows' "
            "`measured` dates; *the marginal-weight lidc-2d* names the one shipped from 2026-12-03, trained with "
            "`--marginal-weight 1`; *the lidc-2d of 2026-12-07* that model trained 3,500 steps more, shipped "
            "since; the earlier rows the one trained with the paper's loss alone), each 2D kernel "
            "on the middle slice of a 3D one "
            "(`--init-from`, a U-Net pooling in-plane only, `--model-kwargs '{pool: [2, 2, 1]}'`), so that training "
            "starts from the 2D network applied slice by slice with one noise draw for the whole volume. Their "
            "settings: " + "; ".join(f"{name}: `{flags}`" for name, flags in each.items()) + ".",
            "",
        ]
    if slicewise:
        lines += [
            "The last rows are a yardstick, not a model trained alike: the shipped 2D SSN on each slice of the "
            f"nodules (`{_runnable(slicewise['command'])}`), its {slicewise['num_samples']} samples stacked in depth, "
            "with each slice's own noise, with one latent draw z for all the slices of a sample but each slice's own "
            "pixel noise (what a 3D model inflated from it draws), or with one draw of all the noise (so that the "
            "slices move together). A 3D model should beat it.",
            "",
        ]
    return lines + inflation_section() + spread3d_section()


def inflation_section() -> list[str]:
    """Why the inflated 3D start trails the 2D model slice by slice: the input scale (inflation.json)."""
    content = _load("inflation")
    if not content:
        return []
    seeds = content["seeds"]
    each = "; ".join(
        f"seed {seed}: {row['zscored']:.3f} z-scored, {row['stored']:.3f} stored, {row['difference']:+.3f} ± "
        f"{row['difference_stderr']:.3f}"
        for seed, row in seeds.items()
    )
    mean = sum(row["difference"] for row in seeds.values()) / len(seeds)
    return [
        "### The inflated start against the 2D model",
        "",
        "The inflated 3D model with per-slice instance norm computes the 2D network slice by slice, yet started "
        "behind it. Two causes, both fixed. The input: the volume pipeline z-scored each volume, where the 2D model "
        f"saw the stored intensities (/255). `{_runnable(content['command'])}` scores `{content['run']}` on "
        f"{content['cases']} validation nodules, whole volumes in one pass with {content['samples']} samples and the "
        f"same noise for both inputs ({each}; paired differences ± their standard error over nodules): stored "
        f"intensities score {-mean:.3f} lower on average (this probe, like ssn 0.7's evaluation, gives every "
        "nodule the same noise seed, hence the spread between seeds). `ssn train --intensity stored` now feeds them, "
        "and the inflated model then gives the 2D model's distribution exactly (largest difference of the mean "
        "logits 4e-6 on six test nodules, through the sliding windows). The draws: ssn 0.7 drew every nodule "
        "with the same seed, so that the means over nodules kept the error of one set of 16 draws; with each "
        "nodule's own draws the stored-intensity start scores 0.313 and 0.315 at evaluation seeds 0 and 1, "
        "against the yardstick's 0.309 (whose draws were always independent between nodules). Neither the sliding "
        "windows (one window per nodule scored as the default windows) nor the pixel noise (the 2D model's "
        "diagonal variance is almost zero) mattered.",
        "",
    ]


def _without_paths(flags: list[str]) -> list[str]:
    """Training flags without ``--data PATH`` and ``--out PATH`` (machine-specific)."""
    kept, skip = [], False
    for flag in flags:
        if skip:
            skip = False
        elif flag in ("--data", "--out"):
            skip = True
        else:
            kept.append(flag)
    return kept


def _calibration_sentence(calibration: dict | None) -> str:
    if not calibration or not calibration.get("curve"):
        return ""
    curve = {c["temperature"]: c["ged"] for c in calibration["curve"]}
    lowest = min(curve)
    return (
        f"Nor is the temperature the cure: `ssn calibrate` on its validation nodules found GED² "
        f"{calibration['ged_at_1']:.3f} at t = 1 and {calibration['ged']:.3f} at its best (t = "
        f"{calibration['temperature']:g}); lowering t empties more samples ({curve[lowest]:.3f} at t = {lowest:g})."
    )


def presence_section() -> list[str]:
    """Empty samples against the readers' empty maps, by readers marking (``lidc_breakdown --presence``)."""
    runs = _load("lidc_presence").get("runs", [])
    if not runs:
        return []

    def share(value) -> str:
        return "" if value is None else f"{value:.1%}"

    rows = []
    for r in runs:
        for row in r["rows"]:
            rows.append(
                [
                    f"`{r['run']}`",
                    r["split"],
                    f"{r.get('temperature', 1.0):g}",
                    str(row["readers_marking"]),
                    str(row["slices"]),
                    f"{row['readers_empty_share']:.0%}",
                    share(row["mean_map_empty_share"]),
                    share(row["empty_sample_share"]),
                    share(row["empty_sample_share_where_the_mean_is_not_empty"]),
                ]
            )
    commands = sorted({f"`{r['command']}`" for r in runs})
    return [
        "### Empty samples: does the model read the nodule's presence from the image?",
        "",
        "Written by `benchmarks/lidc_breakdown.py --presence`: on slices that k of the four readers marked, "
        "(4 − k)/4 of the readers' maps are empty. For each k, how often the mean map (the argmax of the mean "
        "logits) is empty, the share of empty samples (16 per slice, at the sampling temperature t), and that share on the slices whose "
        "mean map is not empty: the samples the covariance alone empties. Commands: " + "; ".join(commands) + ".",
        "",
        *_table(
            [
                "run",
                "split",
                "t",
                "readers marking",
                "slices",
                "readers' maps empty",
                "mean map empty",
                "samples empty",
                "samples empty where the mean is not",
            ],
            rows,
        ),
        "",
    ]


def spread3d_section() -> list[str]:
    """Why 3D samples spread (``benchmarks/spread3d.py``): each candidate cause, per run."""
    content = _load("spread3d")
    runs = content.get("runs", [])
    if not runs:
        return []

    def number(value, digits: int = 3) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    rows = []
    for r in runs:
        f = r["figures"]
        rows.append(
            [
                r["name"],
                f"{r['temperature']:g}",
                number(f.get("blend_diversity")),
                number(f.get("reader_diversity")),
                number(f.get("size_ratio"), 2),
                f"{number(f.get('size_cv'), 2)} / {number(f.get('reader_size_cv'), 2)}",
                number(f.get("empty_all_marked"), 2),
                number(f.get("mean_covers_majority"), 2),
                f"{number(f.get('leak'), 2)} / {number(f.get('reader_leak'), 2)}",
                f"{number(f.get('sd_near'), 2)} / {number(f.get('sd_far'), 2)}",
                f"{number(f.get('blend_ged'))} / {number(f.get('one_window_ged'))}",
                f"{number(f.get('blend_diversity'))} / {number(f.get('one_window_diversity'))}",
            ]
        )
    first = runs[0]
    f = first["figures"]
    findings = (
        f"What it shows for `{first['name']}` (t = {first['temperature']:g}): the mean misses the nodule (its logits say "
        f"nodule on {f['mean_covers_majority']:.0%} of the readers' majority region), so the samples find it through "
        f"the covariance alone, and the covariance is not local (the logit standard deviation is {f['sd_near']:.1f} "
        f"near the readers and {f['sd_far']:.1f} far from them): its factors shift the whole crop's logits together. "
        f"A draw that shifts them down is empty ({f['empty_any']:.0%} of all samples), one that shifts them up "
        f"grows the nodule and lights up the crop elsewhere ({f['leak']:.0%} of the samples' foreground lies far "
        f"from every reader, against {f['reader_leak']:.1%} of a reader's; the samples' mean volume is "
        f"{f['size_ratio']:.1f}x the readers'). The blend of windows is not the cause: one window over the whole "
        f"box scores {f['one_window_ged']:.3f} against {f['blend_ged']:.3f}. "
        + _calibration_sentence(first.get("calibration"))
        + (
            f" Checkpoints chosen on validation *patches* hid all this: the run's best patch GED² was "
            f"{min(c['val_ged'] for c in first['curve']):.2f}; `--val-volumes whole` (now the default) scores whole "
            "volumes instead."
            if first.get("curve")
            else ""
        )
    )
    others = [
        f"`{r['name']}` (patches {'x'.join(map(str, r['window']))}): GED² {r['figures']['blend_ged']:.3f}, the mean "
        f"covers {r['figures']['mean_covers_majority']:.0%}, {r['figures']['empty_any']:.0%} of samples empty, "
        f"{r['figures']['leak']:.0%} of their foreground far from every reader, logit sd far from them "
        f"{r['figures']['sd_far']:.1f}"
        for r in runs[1:]
    ]
    if others:
        findings += " On the same nodules, " + "; ".join(others) + "."
    return [
        "### Why the 3D samples spread",
        "",
        findings,
        "",
        f"`{_runnable(first['command'])}` on {first['figures']['num_cases']} {first['split']} cases, "
        f"{first['samples']} samples each: *size* is the samples' mean foreground volume over the readers'; *CV* the "
        "coefficient of variation of the foreground volume (samples / readers); *empty* the share of empty samples on "
        "nodules every reader marked; *mean covers* the share of the readers' majority region where the mean "
        f"logits say nodule; *leak* the share of foreground voxels more than {first['margin']} voxels from "
        "every reader's foreground (samples / each reader against the other readers); *sd* the median standard "
        "deviation of the nodule-minus-background logit near the readers' union and far from it; *blend / one window* "
        "the GED² and diversity through sliding windows of the training patch against one window over the whole box "
        "(same noise seed).",
        "",
        *_table(
            [
                "run",
                "t",
                "diversity",
                "readers",
                "size",
                "CV",
                "empty",
                "mean covers",
                "leak",
                "sd near / far",
                "GED² blend / one",
                "diversity blend / one",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]


def scaling_section() -> list[str]:
    content = _load("scaling")
    if not content:
        return []
    lines = [
        "## Training at scale: resuming, workers, processes (LIDC)",
        "",
        f"Measured {content['machine']['date']} on the 2-core CPU (no GPU was lent), each part with the command it "
        "names. The LIDC benchmark's U-Net (16-128), rank 10, 20 samples, batch 8, lr 1e-3, crops, on the train "
        "split; the timed parts ran with the machine to themselves.",
        "",
    ]
    resume = content.get("resume")
    if resume:
        kills = ", ".join(
            f"{k['after_seconds']} s after a start (last checkpoint: step {k['saved_step']})" for k in resume["kills"]
        )
        lines += [
            f"- **Kill and resume** (`{_runnable(resume['command'])}`): {resume['steps']} steps; SIGKILL {kills}; resumed each time with "
            f"`--resume`. Weights bitwise equal to the uninterrupted run's: {resume['weights_bitwise_equal']}; "
            f"optimiser state: {resume['optimiser_bitwise_equal']}; `metrics.jsonl` lines (steps, losses, "
            f"validation GED²): {resume['metrics_lines_equal']}."
        ]
    workers = content.get("workers")
    if workers:
        speed = {k: sum(v) / len(v) for k, v in workers["images_per_second"].items()}
        lines += [
            f"- **DataLoader workers** (`{_runnable(workers['command'])}`; {workers['steps']} steps, 2 threads, runs in the order 0, 1, 1, 0): "
            f"{speed['0']:.1f} images/s with none, {speed['1']:.1f} with one (ratio {workers['ratio_1_to_0']:.2f}; "
            f"on 2 cores a worker competes with the step). Weights bitwise equal: {workers['weights_bitwise_equal']}."
        ]
    processes = content.get("processes")
    if processes:
        speed = {k: sum(v) / len(v) for k, v in processes["images_per_second"].items()}
        ged = lambda values: ", ".join(f"{v:.4f}" for v in values)  # noqa: E731
        lines += [
            f"- **Two processes under torchrun** (`{_runnable(processes['command'])}`; gloo, 1 thread each) against one "
            f"process with 2 threads, same global batch, {processes['steps']} steps: {speed['2']:.1f} against "
            f"{speed['1']:.1f} images/s (ratio {processes['ratio_2_to_1']:.2f}). After one step the gradients agree "
            f"to {processes['first_step_largest_relative_gradient_difference']:.1e} of each tensor's largest value "
            f"(the order of the sums differs) and the parameters to "
            f"{processes['first_step_largest_parameter_difference']:.1e}. Adam divides each gradient component by "
            "its own running magnitude, so a component whose gradient is rounding noise (in a 1-step check without "
            "the mean warm-up: 6e-9 in one run and -3e-10 in the other, where the tensor's largest is 0.026) moves "
            "by up to the learning rate either way, and the runs "
            f"drift apart as training does under any change of rounding: after {processes['steps']} steps the "
            f"largest parameter difference is {processes['largest_parameter_difference']:.1e} (largest parameter "
            f"{processes['largest_parameter']:.2f}) and the validation GED² {ged(processes['val_ged']['2'])} "
            f"against {ged(processes['val_ged']['1'])}, within training noise. The test "
            "(`tests/test_distributed.py`, a U-Net of 8-16 channels, 8 steps) finds 1e-7."
        ]
    return lines + [""]


def calibration_section() -> list[str]:
    content = _load("calibration")
    if not content:
        return []
    rows = [
        [
            name,
            f"{model['seconds_per_temperature_sweep']:.1f}",
            f"{model['seconds_one_pass_sweep']:.1f}",
            f"{model['speedup']:.2f}",
            "yes" if model["curves_identical"] else "no",
        ]
        for name, model in content["models"].items()
    ]
    return [
        "## Calibration: the temperature sweep",
        "",
        f"Written by `benchmarks/calibration.py` (`{_runnable(content['command'])}`, measured "
        f"{content['machine']['date']}): `ssn calibrate`'s sweep of {len(content['temperatures'])} temperatures "
        f"on {content['images']} LIDC validation slices with {content['samples']} samples each, scored with GED² as "
        "calibrate scores it, one network pass per temperature (the sweep of ssn 0.7) against one pass for the "
        f"whole grid (`predict_batches_at`), {content['threads']} thread, the two alternating in one process; "
        "*speed-up* is the median of the paired ratios. The curves agree to the last bit."
        + (f" Note: {content['note']}." if content.get("note") else ""),
        "",
        *_table(["model", "pass per temperature (s)", "one pass (s)", "speed-up", "same curve"], rows),
        "",
    ]


def write() -> Path:
    lines = [
        "# Quality benchmarks",
        "",
        "Measured on this project's 2-core CPU machine (no GPU) unless a row says otherwise.",
        "",
    ]
    lines += (
        lidc_section()
        + seeds_section()
        + presence_section()
        + curve_section()
        + options_section()
        + ablation_section()
        + agreeing_section()
    )
    lines += brats_section() + lidc3d_section() + scaling_section() + calibration_section()
    lines += [CITATION, ""]
    path = HERE / "RESULTS.md"
    write_atomically(path, lambda temporary: temporary.write_text("\n".join(lines)))
    return path


if __name__ == "__main__":
    benchmark_parser("report", __doc__).parse_args()
    print(write().read_text())

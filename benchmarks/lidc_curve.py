"""LIDC-IDRI: validation GED^2 against CPU-hours of training, one curve per run.

Reads the ``metrics.jsonl`` that ``ssn train`` appends at each validation (GED^2 with
``val_samples`` samples on the run's fixed validation subset, and ``cpu_minutes``, the CPU time
of the training process, all its threads, summed over the parts of the run, with the
``processor`` that ran it), and draws them. CPU time compares only on one processor: each run
records the processors its parts ran on (none for runs logged before 2026-12-06).
Writes ``benchmarks/lidc_curve.png`` and ``benchmarks/results/lidc_curve.json`` (every point,
and each run's figure nearest 40 minutes, 2 hours and at its end).

    python -m benchmarks.lidc_curve runs/lidc-v6/low-rank runs/lidc-v6/prob-unet runs/lidc-v6/deterministic
    python -m benchmarks.lidc_curve runs/lidc-v6/*      # every run of a benchmark folder
    python -m benchmarks.lidc_curve --add runs/lidc-v6-seed1/low-rank   # keep the curves already recorded
    python -m benchmarks.lidc_curve --select lidc-mg/low-rank lidc-pu10k-s0/prob-unet \
        --out benchmarks/lidc_curve_models.png   # redraw recorded curves only, one colour per model

``--select`` changes no results: it draws the named recorded curves (their folders may be gone),
one colour per model and setting, one line style per seed, for a figure of few lines.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import _common
from benchmarks._common import BENCHMARKS, benchmark_parser, write

MARKS = {"40 min": 40 / 60, "2 h": 2.0}


def curve(run: Path) -> list[dict]:
    """The run's validation points: step, CPU-hours, wall-hours, GED^2, diversity."""
    points = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("cpu_minutes") is None:
            raise SystemExit(f"{run}: metrics.jsonl has no cpu_minutes (written before ssn 0.6); retrain it")
        points.append(
            {
                "step": entry["step"],
                "cpu_hours": entry["cpu_minutes"] / 60,
                "hours": entry["minutes"] / 60,
                "val_ged": entry["val_ged"],
                "val_diversity": entry["val_diversity"],
                "val_samples": entry["val_samples"],
                "processor": entry.get("processor"),  # logged since 2026-12-06
            }
        )
    return points


def nearest(points: list[dict], hours: float) -> dict | None:
    """The last point at or before ``hours`` CPU-hours, once the run has trained that long
    (within 2%); None before."""
    if not points or points[-1]["cpu_hours"] < hours * 0.98:
        return None
    before = [p for p in points if p["cpu_hours"] <= hours * 1.02]
    return before[-1] if before else None


def label(entry: dict) -> str:
    """A reader's name for a recorded run's model and setting, without its seed."""
    if entry["method"] == "prob-unet":
        name = "Prob. U-Net"
    elif entry["method"] == "deterministic":
        name = "deterministic U-Net"
    else:
        name = "low-rank SSN" if entry.get("rank") else "diagonal SSN"
    for key, words in (("mean_weight", "mean weight"), ("marginal_weight", "marginal weight")):
        if entry.get(key):
            name += f", {words} {entry[key]:g}"
    if entry.get("lr_schedule", "constant") != "constant":
        name += f", {entry['lr_schedule']} lr"
    if entry.get("ema_decay"):
        name += f", EMA {entry['ema_decay']:g}"
    return name


def draw(curves: dict[str, dict], out: Path, by_model: bool = False) -> None:
    """Validation GED^2 against CPU-hours, one line per run; ``by_model``: one colour per
    model and setting, solid for seed 0, dashed for other seeds, labelled by model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4.2))
    colours: dict[str, str] = {}
    for name, entry in curves.items():
        xs = [p["cpu_hours"] for p in entry["points"]]
        ys = [p["val_ged"] for p in entry["points"]]
        if by_model:
            model = label(entry)
            colour = colours.setdefault(model, f"C{len(colours)}")
            style = "-" if entry["seed"] == 0 else "--"
            axis.plot(xs, ys, marker="o", markersize=3, color=colour, linestyle=style,
                      label=f"{model}, seed {entry['seed']}")  # fmt: skip
        else:
            axis.plot(xs, ys, marker="o", markersize=3, label=f"{name} (seed {entry['seed']})")
    for mark, hours in MARKS.items():
        axis.axvline(hours, color="grey", linewidth=0.6, linestyle=":")
        axis.text(hours, axis.get_ylim()[1], f" {mark}", fontsize=7, va="top", color="grey")
    samples = {p["val_samples"] for e in curves.values() for p in e["points"]}
    axis.set_xlabel("CPU-hours of training (the training process, all its threads)")
    axis.set_ylabel(f"validation GED²({'/'.join(map(str, sorted(samples)))})")
    axis.set_title("LIDC-IDRI validation slices (data: Armato et al. 2011, TCIA, CC BY 3.0)", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")


def main() -> None:
    parser = benchmark_parser("lidc_curve", __doc__)
    parser.add_argument("runs", nargs="*", type=Path, help="run directories of ssn train")
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "lidc_curve.png")
    parser.add_argument(
        "--add",
        action="store_true",
        help="keep the curves already in results/lidc_curve.json (their run folders may be gone) and add these",
    )
    parser.add_argument(
        "--select",
        nargs="+",
        metavar="NAME",
        help="only redraw these recorded curves (names as in results/lidc_curve.json), one colour per model",
    )
    args = parser.parse_args()
    recorded = _common.RESULTS / "lidc_curve.json"
    if args.select:
        if args.runs or args.add:
            parser.error("--select redraws recorded curves: give no run folders and no --add")
        known = json.loads(recorded.read_text())["runs"] if recorded.is_file() else {}
        missing = [name for name in args.select if name not in known]
        if missing:
            parser.error(f"not recorded in {recorded}: {', '.join(missing)} (recorded: {', '.join(known) or 'none'})")
        draw({name: known[name] for name in args.select}, args.out, by_model=True)
        return
    if not args.runs:
        parser.error("give the run folders to draw (or --select recorded curves)")
    runs = [r for r in args.runs if (r / "metrics.jsonl").is_file()]
    if not runs:
        raise SystemExit("none of the given folders holds a metrics.jsonl")
    curves = json.loads(recorded.read_text())["runs"] if args.add and recorded.is_file() else {}
    for run in runs:
        config = json.loads((run / "config.json").read_text())
        points = curve(run)
        curves[f"{run.parent.name}/{run.name}"] = {
            "method": config["method"],
            "rank": config.get("rank"),
            "mean_weight": config.get("mean_weight", 0.0),
            "marginal_weight": config.get("marginal_weight", 0.0),
            "annotators": config.get("annotators", "one"),
            "lr_schedule": config.get("lr_schedule", "constant"),
            "ema_decay": config.get("ema_decay", 0.0),
            "seed": config["seed"],
            "patch_size": config.get("patch_size"),
            "max_steps": config.get("max_steps"),
            "points": points,
            "processors": sorted({p["processor"] for p in points if p["processor"]}),
            "marks": {**{k: nearest(points, h) for k, h in MARKS.items()}, "end": points[-1] if points else None},
        }
    draw(curves, args.out)
    for name, entry in curves.items():
        marks = ", ".join(f"{k}: {v['val_ged']:.3f} (step {v['step']})" for k, v in entry["marks"].items() if v)
        print(f"{name}: {marks}")
    write("lidc_curve", {"runs": curves})


if __name__ == "__main__":
    main()

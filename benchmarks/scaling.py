"""Training at scale on real LIDC slices: exact resumption after SIGKILL, DataLoader workers,
and two processes under torchrun against one, each checked for the same weights.

Three parts, each training the LIDC benchmark's U-Net (16-128, rank 10, 20 samples, batch 8,
lr 1e-3) on the patient-level train split for a few dozen steps:

- ``resume``: one uninterrupted run; one run killed with SIGKILL twice at random moments
  (after a random number of seconds), each time resumed with ``--resume``; the final weights,
  optimiser state and metrics lines are compared with the uninterrupted run's.
- ``workers``: 0 and 1 DataLoader workers, in the order 0, 1, 1, 0; images per second of
  training time and whether the weights are bitwise equal.
- ``processes``: one process with 2 threads against ``torchrun --nproc_per_node 2`` with 1
  thread each (gloo), at the same global batch; images per second, the largest parameter
  difference at the end, and after one step the gradients' and the parameters' differences.

    python -m benchmarks.scaling [--steps 120]     # writes benchmarks/results/scaling.json

Needs the machine to itself for its timings. Set SSN_LIDC_DIR or --data-dir for the data.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks._common import RESULTS, ROOT, add_lidc_dir, benchmark_parser, lidc_files, recorded_command, write
from benchmarks._training import ssn_command, thread_env


def train_args(data_dir: Path, out: Path, steps: int, extra=()) -> list[str]:
    return [
        "train",
        "--data",
        str(data_dir / "lidc_slices_128.npz"),
        "--split-file",
        str(data_dir / "split.json"),
        "--out",
        str(out),
        "--features",
        "16",
        "32",
        "64",
        "128",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--max-steps",
        str(steps),
        "--val-every",
        str(steps // 2),
        "--val-images",
        "16",
        "--crop-scale",
        "0.766",
        "--checkpoint-minutes",
        "0.05",
        *extra,
    ]


def run(args: list[str], threads: int, processes: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    env = thread_env(threads)
    if processes == 1:
        command = ssn_command(*args)
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "ssn",
            *args,
        ]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=check)


def state(out: Path) -> dict:
    return torch.load(out / "state.pt", weights_only=True)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def images_per_second(out: Path, steps: int) -> float:
    return steps * 8 / (60 * metrics(out)[-1]["minutes"])


def largest_difference(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def resume_part(data_dir: Path, work: Path, steps: int, seed: int) -> dict:
    whole, broken = work / "whole", work / "broken"
    run(train_args(data_dir, whole, steps, ["--overwrite"]), threads=2)
    rng = random.Random(seed)
    kills = []
    env = thread_env(2)
    first = ssn_command(*train_args(data_dir, broken, steps, ["--overwrite"]))
    again = ssn_command(*train_args(data_dir, broken, steps, ["--resume"]))
    for attempt in range(2):
        process = subprocess.Popen(
            first if attempt == 0 else again, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait = rng.uniform(12, 25)
        time.sleep(wait)
        if process.poll() is not None:
            raise SystemExit("the run ended before it was killed: raise --steps")
        process.send_signal(signal.SIGKILL)
        process.wait()
        saved = state(broken)["progress"]
        kills.append(
            {"after_seconds": round(wait, 1), "saved_step": saved["step"], "saved_position": saved["position"]}
        )
        print(f"  killed; the last complete checkpoint holds step {saved['step']}")
    run(train_args(data_dir, broken, steps, ["--resume"]), threads=2)
    a, b = state(whole), state(broken)
    weights_equal = all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    optimiser_equal = all(
        torch.equal(x, y)
        for sa, sb in zip(a["optimiser"]["state"].values(), b["optimiser"]["state"].values())
        for x, y in zip(sa.values(), sb.values())
    )
    lines_whole, lines_broken = metrics(whole), metrics(broken)
    same_lines = [m["step"] for m in lines_whole] == [m["step"] for m in lines_broken] and all(
        x["val_ged"] == y["val_ged"] and x["train_loss"] == y["train_loss"] for x, y in zip(lines_whole, lines_broken)
    )
    result = {
        "steps": steps,
        "kills": kills,
        "weights_bitwise_equal": weights_equal,
        "optimiser_bitwise_equal": optimiser_equal,
        "metrics_lines_equal": same_lines,
        "largest_weight_difference": largest_difference(a["model"], b["model"]),
    }
    print(
        f"resume: killed at saved steps {[k['saved_step'] for k in kills]}; weights bitwise equal {weights_equal}, "
        f"optimiser {optimiser_equal}, metrics lines {same_lines}"
    )
    return result


def workers_part(data_dir: Path, work: Path, steps: int) -> dict:
    speeds: dict[int, list[float]] = {0: [], 1: []}
    for k, workers in enumerate([0, 1, 1, 0]):
        out = work / f"workers{workers}-{k}"
        run(train_args(data_dir, out, steps, ["--overwrite", "--workers", str(workers)]), threads=2)
        speeds[workers].append(images_per_second(out, steps))
    equal = all(
        torch.equal(state(work / "workers0-0")["model"][k], state(work / "workers1-1")["model"][k])
        for k in state(work / "workers0-0")["model"]
    )
    result = {
        "steps": steps,
        "images_per_second": {str(w): v for w, v in speeds.items()},
        "ratio_1_to_0": sum(speeds[1]) / sum(speeds[0]),
        "weights_bitwise_equal": equal,
    }
    print(
        f"workers: 0 workers {speeds[0]} images/s, 1 worker {speeds[1]}; ratio {result['ratio_1_to_0']:.2f}; "
        f"weights bitwise equal {equal}"
    )
    return result


def processes_part(data_dir: Path, work: Path, steps: int) -> dict:
    speeds: dict[int, list[float]] = {1: [], 2: []}
    for k, processes in enumerate([1, 2, 2, 1]):
        out = work / f"processes{processes}-{k}"
        done = run(
            train_args(data_dir, out, steps, ["--overwrite", "--workers", "0"]),
            threads=2 // processes,
            processes=processes,
        )
        speeds[processes].append(images_per_second(out, steps))
        if processes == 2:
            assert json.loads((out / "config.json").read_text())["world_size"] == 2, done.stderr[-2000:]
    one, two = state(work / "processes1-0"), state(work / "processes2-1")
    m1, m2 = metrics(work / "processes1-0"), metrics(work / "processes2-1")
    # the first step's gradients: Adam's first moment after one step is 0.1 times the gradient
    first = {}
    for processes in (1, 2):
        out = work / f"first-step-{processes}"
        run(
            train_args(data_dir, out, 1, ["--overwrite", "--workers", "0", "--val-every", "1"]),
            threads=2 // processes,
            processes=processes,
        )
        first[processes] = state(out)
    moments = [
        (first[1]["optimiser"]["state"][i]["exp_avg"], first[2]["optimiser"]["state"][i]["exp_avg"])
        for i in first[1]["optimiser"]["state"]
    ]
    gradient_difference = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)) for a, b in moments)
    result = {
        "steps": steps,
        "images_per_second": {str(p): v for p, v in speeds.items()},
        "ratio_2_to_1": sum(speeds[2]) / sum(speeds[1]),
        "largest_parameter_difference": largest_difference(one["model"], two["model"]),
        "first_step_largest_relative_gradient_difference": gradient_difference,
        "first_step_largest_parameter_difference": largest_difference(first[1]["model"], first[2]["model"]),
        "largest_parameter": max(float(t.abs().max()) for t in one["model"].values()),
        "val_ged": {"1": [m["val_ged"] for m in m1], "2": [m["val_ged"] for m in m2]},
        "train_loss": {"1": [m["train_loss"] for m in m1], "2": [m["train_loss"] for m in m2]},
    }
    print(
        f"processes: 1 x 2 threads {speeds[1]} images/s, 2 x 1 thread {speeds[2]}; ratio {result['ratio_2_to_1']:.2f}; "
        f"largest parameter difference {result['largest_parameter_difference']:.2e}; val GED^2 {result['val_ged']}; "
        f"first step: gradients agree to {gradient_difference:.1e} (relative), parameters to "
        f"{result['first_step_largest_parameter_difference']:.1e}"
    )
    return result


def main() -> None:
    parser = benchmark_parser("scaling", __doc__)
    add_lidc_dir(parser)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--parts", nargs="+", default=["resume", "workers", "processes"])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "scaling")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lidc_files(args.data_dir)  # before any work: the data is there
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    command = recorded_command("scaling", *sys.argv[1:])
    if "resume" in args.parts:
        results["resume"] = {"command": command, **resume_part(args.data_dir, args.work, args.steps * 2, args.seed)}
    if "workers" in args.parts:
        results["workers"] = {"command": command, **workers_part(args.data_dir, args.work, args.steps)}
    if "processes" in args.parts:
        results["processes"] = {"command": command, **processes_part(args.data_dir, args.work, args.steps)}
    previous = RESULTS / "scaling.json"
    kept = json.loads(previous.read_text()) if previous.is_file() else {}
    kept = {k: v for k, v in kept.items() if k in ("resume", "workers", "processes") and k not in results}
    write("scaling", {"command": command, **kept, **results})
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()

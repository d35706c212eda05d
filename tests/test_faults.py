"""Faults in training: a non-finite loss or gradient never reaches the weights."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ssn.apps.cli import main
from ssn.data.arrays import save_arrays
from ssn.data.synthetic import make_synthetic
from ssn.networks import register_backbone, unregister_backbone


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "synthetic.npz"
    save_arrays(path, make_synthetic(32, size=32, seed=0))
    return path


def _all_finite(run) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(run / "last.safetensors")).values())


@pytest.mark.parametrize("method", ["ssn", "deterministic"])
def test_a_learning_rate_of_10_never_makes_a_nan_model(data, tmp_path, capsys, method):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(run),
            "--method",
            method,
            "--features",
            "4",
            "8",
            "--lr",
            "10",
            "--max-steps",
            "40",
            "--batch-size",
            "8",
            "--val-images",
            "4",
            "--val-every",
            "10",
        ]
    )
    err = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:  # it may stop: then with the reason, and the weights saved before are finite
        assert "non-finite loss or gradients" in err.err and "Lower --lr" in err.err
    assert _all_finite(run)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        assert np.isfinite(entry["train_loss"]) or entry["train_loss"] != entry["train_loss"]  # NaN only if all skipped


class _Poisoned(nn.Module):
    """A backbone whose features turn NaN from its third call on."""

    out_channels = 4

    def __init__(self, spatial_dims=2, in_channels=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        features = self.conv(x)
        return features * float("nan") if self.calls > 2 else features


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(data, tmp_path, capsys):
    register_backbone("poisoned")(_Poisoned)
    try:
        run = tmp_path / "run"
        code = main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                "--model",
                "poisoned",
                "--max-steps",
                "50",
                "--batch-size",
                "8",
                "--val-images",
                "4",
                "--val-every",
                "2",
                "--max-bad-steps",
                "3",
                "--mean-warmup",
                "0",
            ]
        )
    finally:
        unregister_backbone("poisoned")
    printed = capsys.readouterr()
    assert code == 2
    assert "training stopped at step 5: 3 steps in a row had a non-finite loss or gradients" in printed.err
    assert printed.out.count("step skipped") == 3 and "step 3: non-finite loss or gradients" in printed.out
    assert _all_finite(run)  # the two good steps' weights, never a NaN


def _train_command(data, out, *extra):
    import sys

    return [
        sys.executable,
        "-m",
        "ssn",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--features",
        "4",
        "8",
        "--max-steps",
        "24",
        "--batch-size",
        "4",
        "--val-images",
        "4",
        "--val-every",
        "8",
        "--checkpoint-minutes",
        "0.000001",
        *extra,
    ]


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights_bitwise(data, tmp_path):
    """SIGKILL in the middle of an epoch, --resume, and the weights equal an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(_train_command(data, whole), env=env, check=True, capture_output=True)
    process = subprocess.Popen(
        _train_command(data, broken), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and process.poll() is None:
        state_path = broken / "state.pt"
        if state_path.is_file():
            try:
                step = torch.load(state_path, weights_only=True)["progress"]["step"]
            except Exception:  # caught between writes: the rename is atomic, but be safe
                step = 0
            if step >= 11:
                process.send_signal(signal.SIGKILL)
                process.wait()
                killed_at = step
                break
        time.sleep(0.05)
    assert killed_at is not None and killed_at < 24, "the run ended before it could be killed mid-way"
    subprocess.run(_train_command(data, broken, "--resume"), env=env, check=True, capture_output=True)
    a = torch.load(whole / "state.pt", weights_only=True)
    b = torch.load(broken / "state.pt", weights_only=True)
    assert a["progress"]["step"] == b["progress"]["step"] == 24
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"{name} differs after the resume at step {killed_at}"
    lines = [json.loads(line) for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in lines] == [8, 16, 24]  # no line lost or repeated by the resume
    from ssn.engine.trainer import processor

    assert {entry["processor"] for entry in lines} == {processor()} != {""}  # whose CPU time each line counts
    whole_lines = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [e["val_ged"] for e in lines] == [e["val_ged"] for e in whole_lines]


def test_resume_restores_the_runs_settings_and_refuses_a_conflicting_one(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                "--features",
                "4",
                "8",
                "--rank",
                "3",
                "--max-steps",
                "4",
                "--batch-size",
                "4",
                "--lr",
                "0.003",
                "--val-images",
                "4",
            ]
        )
        == 0
    )
    # the documented example: only --out and --resume, and a longer budget
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "6"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["rank"] == 3 and config["features"] == [4, 8] and config["lr"] == 0.003 and config["max_steps"] == 6
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6
    capsys.readouterr()
    for flag, value in (("--rank", "5"), ("--lr", "0.01"), ("--batch-size", "8"), ("--mc-samples", "4")):
        assert main(["train", "--out", str(run), "--resume", flag, value]) == 2
        err = capsys.readouterr().err
        assert "settings differ" in err and flag[2:].replace("-", "_") in err
    assert json.loads((run / "config.json").read_text()) == config  # untouched by the refusals


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):
    from ssn.files import write_atomically

    def fails(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomically(tmp_path / "out.npz", fails)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_run_is_never_mixed_with_a_new_one(data, tmp_path, capsys):
    run = tmp_path / "run"
    command = [
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--features",
        "4",
        "8",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--val-images",
        "4",
    ]
    assert main(command) == 0
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(command) == 2
    assert "already holds a run" in capsys.readouterr().err and (run / "metrics.jsonl").read_text() == before
    assert main(command + ["--overwrite", "--max-steps", "3"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["step"] == 3  # the old run's lines are gone
    assert main(command + ["--overwrite", "--resume"]) == 2


def test_an_unwritable_evaluate_out_is_refused_before_the_work(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                "--features",
                "4",
                "8",
                "--max-steps",
                "1",
                "--batch-size",
                "4",
                "--val-images",
                "4",
            ]
        )
        == 0
    )
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--out", str(blocker / "m.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssn: error: cannot write") and "images" not in err  # refused before any image
    assert main(["train", "--data", str(data), "--out", str(blocker / "run")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_ctrl_c_ends_the_step_saves_its_state_and_the_resume_is_exact(data, tmp_path):
    """SIGINT (Ctrl-C) mid-epoch: exit code 130 with the resume command, state.pt at the step
    where it stopped, and the resumed run reaches the uninterrupted run's weights bitwise."""
    import os
    import signal
    import subprocess
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    slow = ("--checkpoint-minutes", "60")  # only Ctrl-C (and validation) save the state here
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    subprocess.run(_train_command(data, whole, *slow), env=env, check=True, capture_output=True)
    process = subprocess.Popen(
        _train_command(data, stopped, *slow), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (stopped / "metrics.jsonl").is_file():  # the first validation, step 8
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    step = torch.load(stopped / "state.pt", weights_only=True)["progress"]["step"]
    assert 8 <= step < 24  # the state of the step it stopped after, not of the last validation only
    subprocess.run(_train_command(data, stopped, *slow, "--resume"), env=env, check=True, capture_output=True)
    a = torch.load(whole / "state.pt", weights_only=True)["model"]
    b = torch.load(stopped / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_sigterm_ends_the_step_saves_its_state_like_ctrl_c(data, tmp_path):
    """SIGTERM (``kill``, a batch scheduler's notice) mid-epoch: the step ends, its state is
    saved, the exit says how to resume, and --resume finishes the budget."""
    import os
    import signal
    import subprocess
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    slow = ("--checkpoint-minutes", "60")
    stopped = tmp_path / "stopped"
    process = subprocess.Popen(
        _train_command(data, stopped, *slow), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (stopped / "metrics.jsonl").is_file():
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-2000:]
    assert "second SIGTERM" in err and "--resume" in err and "Traceback" not in err
    assert 8 <= torch.load(stopped / "state.pt", weights_only=True)["progress"]["step"] < 24
    subprocess.run(_train_command(data, stopped, *slow, "--resume"), env=env, check=True, capture_output=True)
    assert torch.load(stopped / "state.pt", weights_only=True)["progress"]["step"] == 24


def test_a_run_in_parts_equals_the_run_in_one_go_bitwise(data, tmp_path, capsys):
    """--stop-after-minutes ends each part with its state saved; --resume parts until the budget is spent."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(_train_command(data, whole)[3:]) == 0
    assert main([*_train_command(data, parts)[3:], "--stop-after-minutes", "0.001"]) == 0
    count = 1
    while "continue with: ssn train --resume" in capsys.readouterr().out:
        step = torch.load(parts / "state.pt", weights_only=True)["progress"]["step"]
        assert 0 < step < 24
        assert main(["train", "--resume", "--out", str(parts), "--stop-after-minutes", "0.001"]) == 0
        count += 1
    assert count >= 3, "each part should have ended long before the 24 steps"
    a = torch.load(whole / "state.pt", weights_only=True)
    b = torch.load(parts / "state.pt", weights_only=True)
    assert a["progress"]["step"] == b["progress"]["step"] == 24
    assert b["progress"]["cpu_seconds"] > 0
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"{name} differs after {count} parts"
    lines = [json.loads(line) for line in (parts / "metrics.jsonl").read_text().splitlines()]
    whole_lines = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [8, 16, 24]
    assert [e["val_ged"] for e in lines] == [e["val_ged"] for e in whole_lines]
    assert all(e["cpu_minutes"] > 0 for e in lines)


def test_resuming_from_python_compares_the_settings_with_the_run(data, tmp_path, capsys):
    """ssn.engine.train(TrainConfig(resume=True, ...)) holds to the run's settings as the CLI does."""
    from ssn.engine import TrainConfig, train
    from ssn.engine.rundir import RunDir
    from ssn.errors import ConfigError

    run = tmp_path / "run"
    assert main(_train_command(data, run)[3:]) == 0
    common = dict(data=str(data), out=str(run), features=[4, 8], batch_size=4, val_images=4, val_every=8)
    with pytest.raises(ConfigError, match="lr: the run has 0.001, the command gives 0.01"):
        train(TrainConfig(**common, max_steps=30, lr=0.01, resume=True))
    settings = RunDir(run).resumed_settings({"out": str(run), "max_steps": 32, "resume": True})
    summary = train(TrainConfig(**settings))
    assert summary["steps"] == 32 and summary["finished"]
    assert [e["step"] for e in RunDir(run).metrics()] == [8, 16, 24, 32]

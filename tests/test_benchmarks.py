"""The benchmarks' shared helpers, and every benchmark script importing as a module of the package.

No data and no training: the scripts are imported and asked for ``--help``, and the helpers run
on temporary folders and tiny child processes.
"""

import fcntl
import importlib
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import _common, _training, report

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
PARSE_FIRST = [s for s in SCRIPTS if s not in ("report", "sampling")]  # their parsers are in `if __name__`


def test_every_script_imports_as_a_module_without_running():
    assert {"lidc", "brats", "ablation", "report"} <= set(SCRIPTS)
    for name in SCRIPTS:
        module = importlib.import_module(f"benchmarks.{name}")
        assert module.__doc__, name
    sources = {p.name: p.read_text() for p in (ROOT / "benchmarks").glob("*.py")}
    assert not [name for name, text in sources.items() if "sys.path.insert" in text]
    bare = re.compile(r"^\s*(from _common |import report\b)", re.M)  # imports that need the folder on sys.path
    assert not [name for name, text in sources.items() if bare.search(text)]


@pytest.mark.parametrize("name", PARSE_FIRST)
def test_the_usage_line_says_how_the_script_runs(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit:
        importlib.import_module(f"benchmarks.{name}").main()
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m benchmarks.{name} ")


def test_write_gives_valid_json_with_the_machine_block_and_no_temporary(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    path = _common.write("speed", {"seconds": [0.5, 0.25], "name": "ü"})
    assert path == tmp_path / "results" / "speed.json"
    content = json.loads(path.read_text())
    assert list(content) == ["machine", "seconds", "name"]
    assert {"date", "cpu", "torch", "python", "torch_threads"} <= set(content["machine"])
    assert content["seconds"] == [0.5, 0.25] and content["name"] == "ü"
    assert path.read_text().endswith("}\n") and '\n  "seconds"' in path.read_text()  # indented, one newline
    assert [p.name for p in path.parent.iterdir()] == ["speed.json"]
    assert f"wrote {path}" in capsys.readouterr().out


def test_sigterm_reaches_the_running_jobs_which_end_cleanly_and_no_other_starts(tmp_path):
    """``kill`` on a benchmark must not orphan its ``ssn train`` children: they get SIGTERM
    (ssn train then saves its step's state), are waited for, and the queue stops."""
    import signal
    import threading

    from benchmarks import _training

    child = (
        "import signal, sys, time, pathlib\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "def stop(*_):\n"
        "    time.sleep(0.3); out.write_text('saved'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "out.with_suffix('.up').write_text('up')\n"
        "time.sleep(120)\n"
    )
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    jobs = [_training.Job(name, [sys.executable, "-c", child, str(path)], tmp_path / f"{name}.log")
            for name, path in (("first", first), ("second", second))]  # fmt: skip

    def kill_when_up() -> None:
        deadline = time.time() + 60
        while not first.with_suffix(".up").is_file() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=kill_when_up, daemon=True).start()
    started = time.time()
    with pytest.raises(SystemExit, match=r"stopped \(SIGTERM\).*same command resumes"):
        _training.run_jobs(jobs, os.environ, at_once=1, poll_seconds=0.05)
    assert time.time() - started < 60
    assert first.read_text() == "saved"  # the child got SIGTERM and ended by its own handler
    assert not second.with_suffix(".up").exists()  # the queued job never started
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is put back


def test_the_curve_keeps_recorded_runs_with_add_and_marks_40_minutes(tmp_path, monkeypatch):
    from benchmarks import lidc_curve

    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")

    def run(name: str, seed: int) -> Path:
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        config = {"method": "ssn", "rank": 10, "seed": seed, "max_steps": 30, "marginal_weight": float(seed)}
        (folder / "config.json").write_text(json.dumps(config))
        points = [{"step": 10 * k, "minutes": 30.0 * k, "cpu_minutes": 25.0 * k, "val_ged": 0.5 - 0.05 * k,
                   "val_diversity": 0.6, "val_samples": 16} for k in (1, 2, 3)]  # fmt: skip
        if seed:  # resumed on another machine for its last part; run a logged before processors were
            points = [{**p, "processor": "CPU X" if p["step"] < 30 else "CPU Y"} for p in points]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
        return folder

    first, second = run("a", 0), run("b", 1)
    monkeypatch.setattr(sys, "argv", ["lidc_curve", str(first), "--out", str(tmp_path / "c.png")])
    lidc_curve.main()
    monkeypatch.setattr(sys, "argv", ["lidc_curve", "--add", str(second), "--out", str(tmp_path / "c.png")])
    lidc_curve.main()
    curves = json.loads((tmp_path / "results" / "lidc_curve.json").read_text())["runs"]
    assert sorted(curves) == ["runs/a", "runs/b"] and curves["runs/b"]["seed"] == 1
    assert curves["runs/a"]["marginal_weight"] == 0.0 and curves["runs/b"]["marginal_weight"] == 1.0
    assert curves["runs/a"]["marks"]["40 min"]["step"] == 10  # 25 CPU-min is the last point before 40
    assert curves["runs/a"]["marks"]["2 h"] is None  # it never trained 2 CPU-hours
    assert curves["runs/a"]["processors"] == [] and curves["runs/b"]["processors"] == ["CPU X", "CPU Y"]
    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    rows = {line.split(" | ")[0]: line for line in report.curve_section() if line.startswith("| runs/")}
    assert rows["| runs/a"].endswith("| not recorded |") and rows["| runs/b"].endswith("| CPU X, CPU Y |")
    monkeypatch.setattr(sys, "argv", ["lidc_curve", str(second), "--out", str(tmp_path / "c.png")])
    lidc_curve.main()  # without --add, only the given runs
    assert list(json.loads((tmp_path / "results" / "lidc_curve.json").read_text())["runs"]) == ["runs/b"]


def test_the_curve_redraws_selected_recorded_runs_by_model_and_refuses_unknown_names(tmp_path, monkeypatch, capsys):
    from benchmarks import lidc_curve

    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    point = {"step": 10, "cpu_hours": 0.5, "hours": 0.5, "val_ged": 0.3, "val_diversity": 0.5, "val_samples": 16}
    runs = {
        "x/low-rank": {"method": "ssn", "rank": 10, "marginal_weight": 1.0, "seed": 0, "points": [point]},
        "x-s1/low-rank": {"method": "ssn", "rank": 10, "marginal_weight": 1.0, "seed": 1, "points": [point]},
        "y/prob-unet": {"method": "prob-unet", "seed": 0, "points": [point]},
    }
    _common.save_json(tmp_path / "results" / "lidc_curve.json", {"runs": runs})
    before = (tmp_path / "results" / "lidc_curve.json").read_text()
    assert lidc_curve.label(runs["x/low-rank"]) == "low-rank SSN, marginal weight 1"
    assert lidc_curve.label({"method": "ssn", "rank": 0, "ema_decay": 0.998, "lr_schedule": "cosine"}) == (
        "diagonal SSN, cosine lr, EMA 0.998"
    )
    out = tmp_path / "models.png"
    monkeypatch.setattr(sys, "argv", ["lidc_curve", "--select", "x/low-rank", "y/prob-unet", "--out", str(out)])
    lidc_curve.main()
    assert out.read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "results" / "lidc_curve.json").read_text() == before  # a redraw changes no results
    for argv in (["--select", "z/low-rank"], ["--select", "x/low-rank", "--add"], []):
        monkeypatch.setattr(sys, "argv", ["lidc_curve", *argv, "--out", str(out)])
        with pytest.raises(SystemExit) as exit_:
            lidc_curve.main()
        assert exit_.value.code == 2
    assert "not recorded" in capsys.readouterr().err


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = _common.save_json(tmp_path / "lidc.json", {"runs": [1]})
    with pytest.raises(TypeError):
        _common.save_json(path, {"runs": [object()]})
    assert json.loads(path.read_text()) == {"runs": [1]}
    assert [p.name for p in tmp_path.iterdir()] == ["lidc.json"]


def test_update_json_reads_the_file_as_it_is_now(tmp_path):
    path = tmp_path / "results" / "ablation.json"
    seen = []

    def append(run):
        def change(content):
            seen.append(content)
            return {"reference": "r", "runs": content.get("runs", []) + [run]}

        return change

    _common.update_json(path, append("a"))
    written = _common.update_json(path, append("b"))
    assert seen == [{}, {"reference": "r", "runs": ["a"]}]
    assert written == json.loads(path.read_text()) == {"reference": "r", "runs": ["a", "b"]}


def test_the_folder_lock_keeps_other_writers_out(tmp_path):
    other = os.open(tmp_path, os.O_RDONLY)
    try:
        with _common.locked(tmp_path):
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again once the writer is done
    finally:
        os.close(other)


def test_the_data_folders_come_from_the_environment_or_the_shared_folder(tmp_path, monkeypatch):
    for variable, function, folder in (
        ("SSN_LIDC_DIR", _common.lidc_dir, "lidc"),
        ("SSN_BRATS_DIR", _common.brats_dir, "brats_deepmedic"),
        ("SSN_BRATS_TCGA_DIR", _common.brats_tcga_dir, "brats_tcga"),
    ):
        monkeypatch.delenv(variable, raising=False)
        assert function() == ROOT.parent / "shared" / "data" / folder
        monkeypatch.setenv(variable, str(tmp_path))
        assert function() == tmp_path


def test_lidc_files_says_how_to_point_at_the_data(tmp_path):
    with pytest.raises(SystemExit, match="LIDC data not found in .*; set SSN_LIDC_DIR or --data-dir"):
        _common.lidc_files(tmp_path)
    for name in ("lidc_slices_128.npz", "split.json"):
        (tmp_path / name).write_bytes(b"")
    assert _common.lidc_files(tmp_path) == (tmp_path / "lidc_slices_128.npz", tmp_path / "split.json")


def test_the_recorded_command_and_the_report_show_the_package_form():
    assert _common.recorded_command("lidc", "--steps", "10") == "python -m benchmarks.lidc --steps 10"
    assert report._runnable("python benchmarks/lidc.py --steps 5042") == "python -m benchmarks.lidc --steps 5042"
    assert (
        report._runnable("benchmarks/scaling.py --parts processes") == "python -m benchmarks.scaling --parts processes"
    )
    assert report._runnable("benchmarks/scaling.py") == "python -m benchmarks.scaling"
    assert report._runnable("python -m benchmarks.brats --steps 1") == "python -m benchmarks.brats --steps 1"
    assert report._runnable("ssn train --data benchmarks/x.py") == "ssn train --data benchmarks/x.py"


def test_thread_env_sets_both_variables_and_keeps_the_rest(monkeypatch):
    monkeypatch.setenv("SSN_SOMETHING", "kept")
    env = _training.thread_env(3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert env["SSN_SOMETHING"] == "kept"


def test_the_model_table_gives_each_models_flags():
    assert list(_training.MODEL_FLAGS) == ["deterministic", "diagonal", "low-rank", "prob-unet"]
    assert _training.model_flags("deterministic") == ["--method", "deterministic"]
    assert _training.model_flags("diagonal") == ["--rank", "0"]
    assert _training.model_flags("low-rank") == ["--rank", "10"]
    assert _training.model_flags("prob-unet") == ["--method", "prob-unet"]
    flags = _training.model_flags("low-rank")
    flags.append("--overwrite")
    assert _training.model_flags("low-rank") == ["--rank", "10"]  # a new list each time
    with pytest.raises(ValueError, match="unknown model 'rank-5'; choose from deterministic, diagonal"):
        _training.model_flags("rank-5")
    assert set(_training.SSN_AND_BASELINES) < set(_training.MODEL_FLAGS)
    assert tuple(_training.MODEL_FLAGS) == report.MODELS


@pytest.mark.parametrize("model", list(_training.MODEL_FLAGS))
def test_the_lidc_benchmark_gives_each_model_only_the_flags_its_method_takes(model, tmp_path):
    from benchmarks import lidc
    from ssn.apps.cli import build_parser, train_settings
    from ssn.errors import ConfigError

    shared = ["--data", str(tmp_path / "d.npz"), "--max-steps", "10", "--features", "8", "16", "--seed", "1"]
    flags = lidc.model_settings(shared, model, [8, 16])
    settings = train_settings(build_parser().parse_args(["train", "--out", str(tmp_path / model), *flags]))
    assert settings.get("method", "ssn") == ("ssn" if model in ("diagonal", "low-rank") else model)
    assert settings["features"] == [8, 16] and settings["seed"] == 1
    if model == "prob-unet":
        assert settings["encoder_features"] == [8, 16]
    elif model != "deterministic":
        assert settings["mc_samples"] == 20 and settings["rank"] == (0 if model == "diagonal" else 10)
    with pytest.raises(ConfigError, match="drop it"):  # what the check refuses: another method's setting
        other = ["--mc-samples", "20"] if model in ("deterministic", "prob-unet") else ["--beta", "1"]
        train_settings(build_parser().parse_args(["train", "--out", str(tmp_path / model), *flags, *other]))


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_jobs_runs_them_with_logs_and_reports_each(tmp_path):
    jobs = _training.logged_jobs(
        {name: _python(f"import os; print('{name}', os.environ['OMP_NUM_THREADS'])") for name in ("a", "b", "c")},
        tmp_path,
        "train",
    )
    done = []
    _training.run_jobs(jobs, _training.thread_env(2), at_once=2, when_done=lambda job, minutes: done.append(job.name))
    assert sorted(done) == ["a", "b", "c"]
    for name in "abc":
        assert (tmp_path / f"{name}.train.log").read_text() == f"{name} 2\n"


def test_run_jobs_names_the_log_of_a_failed_job_and_starts_no_more(tmp_path):
    jobs = [
        _training.Job("broken", _python("import sys; sys.exit('no data')"), tmp_path / "broken.log"),
        _training.Job("later", _python("print('ran')"), tmp_path / "later.log"),
    ]
    with pytest.raises(SystemExit, match=f"broken failed; see {tmp_path / 'broken.log'}"):
        _training.run_jobs(jobs, os.environ, at_once=1, poll_seconds=0.1)
    assert "no data" in (tmp_path / "broken.log").read_text()
    assert not (tmp_path / "later.log").exists()
    _training.run_jobs([], os.environ)  # nothing to run is no error


def test_the_lidc3d_benchmark_converts_trains_in_parts_evaluates_and_writes_its_contract(tmp_path, monkeypatch):
    import subprocess

    rng = np.random.default_rng(0)
    depths = {("LIDC-IDRI-0001", "nodule-0"): 3, ("LIDC-IDRI-0002", "nodule-0"): 2, ("LIDC-IDRI-0003", "nodule-0"): 4}
    rows = [(p, n, s) for (p, n), depth in depths.items() for s in range(depth)]
    masks = np.zeros((len(rows), 4, 16, 16), np.uint8)
    masks[:, :2, 6:10, 6:10] = 1
    npz = tmp_path / "slices.npz"
    np.savez(npz, images=rng.integers(0, 255, (len(rows), 16, 16), dtype=np.uint8), masks=masks,
             patient=np.array([r[0] for r in rows]), nodule=np.array([r[1] for r in rows]), slice=np.array([r[2] for r in rows]))  # fmt: skip
    split = {"splits": {"train": ["LIDC-IDRI-0001"], "val": ["LIDC-IDRI-0003"], "test": ["LIDC-IDRI-0002"]}}
    (tmp_path / "split.json").write_text(json.dumps(split))
    results = tmp_path / "lidc3d.json"
    command = [sys.executable, "-m", "benchmarks.lidc3d", "--npz", str(npz), "--out", str(tmp_path / "runs"),
               "--models", "low-rank", "--steps", "2", "--patch", "16", "16", "4", "--features", "4", "8",
               "--batch-size", "2", "--val-images", "1", "--val-every", "1", "--samples", "2", "--results", str(results),
               "--intensity", "stored", "--extra", "--marginal-weight 0.5", "--tag", "marginal 0.5"]  # fmt: skip
    done = subprocess.run(command, cwd=_common.ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((tmp_path / "runs" / "low-rank" / "config.json").read_text())
    assert config["intensity"] == "stored" and config["marginal_weight"] == 0.5  # --extra reaches ssn train
    content = json.loads(results.read_text())
    run, *calibrated = content["runs"]
    assert (
        run["name"] == "low-rank (marginal 0.5)"
        and run["num_cases"] == 1
        and run["steps"] == 2
        and run["temperature"] == 1
    )
    assert run["draws"] == "per case"  # each nodule its own draws
    assert {"mean", "stderr"} <= set(run["ged"]) and "mean" in run["diversity"]
    assert content["reference"]["num_cases"] == 1 and "mean" in content["reference"]["majority_vote"]["ged"]
    chosen = json.loads((tmp_path / "runs" / "low-rank" / "calibration.json").read_text())  # on the validation nodule
    assert chosen["split"] == "validation"
    # a second row at the chosen temperature, unless calibration chose t = 1
    assert [(r["name"], r["temperature"]) for r in calibrated] == (
        [] if chosen["temperature"] == 1 else [("low-rank (marginal 0.5), calibrated", chosen["temperature"])]
    )
    again = subprocess.run(
        command, cwd=_common.ROOT, capture_output=True, text=True, timeout=300
    )  # nothing left to train
    assert again.returncode == 0 and len(json.loads(results.read_text())["runs"]) == 1 + len(calibrated)

    # why the samples spread, on the same run: the test nodule (2 slices) fits in one window, so
    # sliding windows and one window give the same draws
    spread = tmp_path / "spread3d.json"
    command = [sys.executable, "-m", "benchmarks.spread3d", "--runs", str(tmp_path / "runs" / "low-rank"),
               "--data", str(tmp_path / "runs" / "volumes" / "lidc3d.json"), "--samples", "4", "--results", str(spread)]  # fmt: skip
    done = subprocess.run(command, cwd=_common.ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(spread.read_text())["runs"]
    figures = row["figures"]
    assert figures["num_cases"] == 1 and row["curve"] and row["window"] == [16, 16, 4]
    assert figures["blend_ged"] == figures["one_window_ged"]
    assert figures["blend_diversity"] == figures["one_window_diversity"]
    assert 0 <= figures["leak"] <= 1 and 0 <= figures["empty_all_marked"] <= 1 and figures["sd_near"] > 0


def test_slices_stacked_with_shared_noise_move_together_and_with_their_own_do_not():
    """Independent, shared-latent and shared noise for a stack of slice distributions."""
    import torch

    from benchmarks import lidc3d
    from ssn.distributions import LowRankLogitDistribution

    torch.manual_seed(0)
    one = (torch.randn(1, 2, 8, 8), torch.randn(1, 3, 2, 8, 8), torch.rand(1, 2, 8, 8) + 0.5)
    dist = LowRankLogitDistribution(*(part.expand(5, *part.shape[1:]) for part in one))  # 5 equal slices
    drawn = lidc3d.stacked_samples(dist, 6, torch.Generator().manual_seed(0))
    assert drawn["shared"].shape == drawn["independent"].shape == (6, 8, 8, 5)
    shared, independent = drawn["shared"], drawn["independent"]
    assert all(torch.equal(shared[..., k], shared[..., 0]) for k in range(5))
    assert not all(torch.equal(independent[..., k], independent[..., 0]) for k in range(5))
    latent = drawn["shared latent"]  # one z, each slice its own pixel noise
    assert latent.shape == shared.shape and not all(torch.equal(latent[..., k], latent[..., 0]) for k in range(5))
    no_pixel_noise = LowRankLogitDistribution(dist.loc, dist.cov_factor, torch.full_like(dist.cov_diag, 1e-12))
    alike = lidc3d.stacked_samples(no_pixel_noise, 6, torch.Generator().manual_seed(0))["shared latent"]
    assert all(torch.equal(alike[..., k], alike[..., 0]) for k in range(5))  # without D, z alone moves them
    assert not torch.equal(shared[0], shared[1])  # still one sample from the next


def test_the_inflation_probe_scores_stored_and_zscored_inputs_with_the_same_noise(tmp_path):
    """benchmarks.inflation on a converted synthetic LIDC-3D list (two validation nodules) with
    the shipped 3D model: both inputs scored per seed, and the paired difference is theirs."""
    from benchmarks import inflation
    from ssn.apps.cli import main

    rng = np.random.default_rng(0)
    rows = [(f"LIDC-IDRI-000{p}", "nodule-0", s) for p in (1, 2) for s in range(2)]
    masks = np.zeros((4, 4, 128, 128), np.uint8)
    masks[:, :2, 60:70, 58:66] = 1
    np.savez(tmp_path / "crops.npz", images=rng.integers(0, 255, (4, 128, 128), dtype=np.uint8), masks=masks,
             patient=np.array([r[0] for r in rows]), nodule=np.array([r[1] for r in rows]),
             slice=np.array([r[2] for r in rows]))  # fmt: skip
    split = {"splits": {"train": [], "val": ["LIDC-IDRI-0001", "LIDC-IDRI-0002"], "test": []}}
    (tmp_path / "split.json").write_text(json.dumps(split))
    assert main(["convert", "lidc-3d", str(tmp_path / "crops.npz"), "--out", str(tmp_path / "v")]) == 0
    result = inflation.score("pretrained:lidc-3d", tmp_path / "v" / "lidc3d.json", cases=5, seeds=[0, 3], samples=4)
    assert result["cases"] == 2 and set(result["seeds"]) == {"0", "3"}
    for row in result["seeds"].values():
        assert 0 <= row["zscored"] <= 2 and 0 <= row["stored"] <= 2
        assert row["difference"] == pytest.approx(row["stored"] - row["zscored"])


@pytest.mark.parametrize("bias, mean_empty", [(-20.0, 1.0), (20.0, 0.0)])
def test_presence_counts_empty_mean_maps_and_samples_by_readers_marking(bias, mean_empty):
    """A model with (almost) no spread: its samples are empty exactly where its mean map is, and
    the readers' share of empty maps is (R - k)/R for slices that k readers marked."""
    import ssn
    from benchmarks.lidc_breakdown import presence

    torch.manual_seed(0)
    model = ssn.models.create("unet", features=(4, 8), rank=2, variance_init=1e-6).eval()
    with torch.no_grad():
        for name in ("factor", "log_diag"):
            for p in getattr(model.head, name).parameters():
                p.zero_()
        model.head.log_diag.bias.fill_(-30.0)
        model.head.mean.bias.copy_(torch.tensor([0.0, bias]))
        model.head.mean.weight.zero_()
    masks = np.zeros((8, 4, 16, 16), np.uint8)
    marking = np.array([1, 1, 2, 2, 3, 3, 4, 4])
    for i, k in enumerate(marking):
        masks[i, :k, 4:8, 4:8] = 1
    data = {"images": np.random.default_rng(0).random((8, 1, 16, 16), dtype=np.float32), "masks": masks}
    rows = presence(model, data, np.arange(8), marking, count=0, samples=4)
    assert [r["readers_marking"] for r in rows] == [1, 2, 3, 4] and all(r["slices"] == 2 for r in rows)
    assert [r["readers_empty_share"] for r in rows] == [0.75, 0.5, 0.25, 0.0]
    for r in rows:
        assert r["mean_map_empty_share"] == mean_empty and r["empty_sample_share"] == mean_empty
        assert r["empty_sample_share_where_the_mean_is_not_empty"] == (None if mean_empty else 0.0)


def test_presence_draws_at_the_given_temperature():
    """One latent shifts the whole foreground map (factor 10 on class 1, mean 0.5): at t = 1 about
    half the samples are empty (P(0.5 + 10 z < 0) = 0.48), at t = 0 none is (the mean map)."""
    import ssn
    from benchmarks.lidc_breakdown import presence

    torch.manual_seed(0)
    model = ssn.models.create("unet", features=(4, 8), rank=2, variance_init=1e-6).eval()
    with torch.no_grad():
        for name in ("mean", "factor", "log_diag"):
            for p in getattr(model.head, name).parameters():
                p.zero_()
        model.head.log_diag.bias.fill_(-30.0)
        model.head.mean.bias.copy_(torch.tensor([0.0, 0.5]))
        model.head.factor.bias[1] = 10.0  # channel r * C + c for r = 0, c = 1
    masks = np.ones((8, 4, 16, 16), np.uint8)
    data = {"images": np.random.default_rng(0).random((8, 1, 16, 16), dtype=np.float32), "masks": masks}
    marking = np.full(8, 4)
    model.temperature = 1.0
    (warm,) = presence(model, data, np.arange(8), marking, count=0, samples=64)
    model.temperature = 0.0
    (cold,) = presence(model, data, np.arange(8), marking, count=0, samples=64)
    assert warm["mean_map_empty_share"] == cold["mean_map_empty_share"] == 0.0
    assert 0.35 < warm["empty_sample_share"] < 0.6 and cold["empty_sample_share"] == 0.0


@pytest.mark.parametrize("value", ["warm", "-1", "nan"])
def test_presence_refuses_a_temperature_that_is_not_one(monkeypatch, capsys, value):
    from benchmarks import lidc_breakdown

    monkeypatch.setattr(sys, "argv", ["lidc_breakdown", "--presence", "pretrained:lidc-2d", "--temperature", value])
    with pytest.raises(SystemExit) as raised:
        lidc_breakdown.main()
    assert raised.value.code == 2 and "--temperature takes a number >= 0 or 'calibrated'" in capsys.readouterr().err


def test_a_variant_of_the_defaults_stays_out_of_the_headline_and_is_named_elsewhere(monkeypatch, tmp_path):
    def run(name, ged, variant=None, seed=0):
        figures = {"ged": {"mean": ged, "stderr": 0.004}, "diversity": {"mean": 0.6}, "hm_iou": {"16": {"mean": 0.5}}}
        return {
            "name": name, "measured": "2026-12-02", "ssn_version": "0.8", "seed": seed, "protocol": 3,
            "command": "python -m benchmarks.lidc", "settings": ["--rank", "10"], "training": {"step": 10000},
            **({"variant": variant} if variant else {}), **figures,
        }  # fmt: skip

    runs = [run("low-rank", 0.268), run("low-rank", 0.268, seed=1), run("low-rank", 0.250, "mean weight 1")]
    (tmp_path / "lidc.json").write_text(json.dumps({"runs": runs}))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    text = "\n".join(report.lidc_section())
    headline = text.split("### Every LIDC run")[0]
    assert "| low-rank | 1 | 0.268 ± 0.004" in headline and "0.250" not in headline
    assert "| low-rank (mean weight 1) | 2026-12-02" in text
    seeds = "\n".join(report.seeds_section())
    assert "low-rank, mean of 2 seeds" in seeds and "mean weight 1" not in seeds  # one seed of the variant


def test_the_seeds_table_gives_each_seed_its_calibrated_figure_and_their_mean(monkeypatch, tmp_path):
    def run(seed, ged, calibrated=None):
        figures = {"ged": {"mean": ged, "stderr": 0.004}, "diversity": {"mean": 0.6}, "hm_iou": {"16": {"mean": 0.5}}}
        if calibrated:
            t, value = calibrated
            figures |= {"calibrated": {"ged": {"mean": value, "stderr": 0.003}}, "calibration": {"temperature": t}}
        return {"name": "low-rank", "seed": seed, "protocol": 3, "training": {"step": 10000}, **figures}

    (tmp_path / "lidc.json").write_text(
        json.dumps({"runs": [run(0, 0.277, (1.5, 0.258)), run(1, 0.281, (1.25, 0.262))]})
    )
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    seeds = "\n".join(report.seeds_section())
    assert "| 0.258 ± 0.003 (t = 1.5) |" in seeds and "| 0.262 ± 0.003 (t = 1.25) |" in seeds
    assert "**0.260** (spread 0.004)" in seeds and "**0.279** (spread 0.004)" in seeds
    (tmp_path / "lidc.json").write_text(json.dumps({"runs": [run(0, 0.277, (1.5, 0.258)), run(1, 0.281)]}))
    mean_row = [line for line in report.seeds_section() if "mean of 2 seeds" in line][0]
    assert mean_row.rstrip().endswith("|  |")  # no mean of one calibrated seed


def test_the_calibration_section_gives_both_sweeps_and_their_ratio(monkeypatch, tmp_path):
    model = {"seconds_per_temperature_sweep": 30.3, "seconds_one_pass_sweep": 5.8, "speedup": 5.85}
    content = {
        "machine": {"date": "2026-12-05"},
        "command": "python -m benchmarks.calibration --images 16",
        "temperatures": [0.5, 1.0],
        "images": 16,
        "samples": 16,
        "threads": 1,
        "models": {"low-rank": {**model, "curves_identical": True}, "prob-unet": {**model, "curves_identical": False}},
    }
    (tmp_path / "calibration.json").write_text(json.dumps(content))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    section = report.calibration_section()
    assert "| low-rank | 30.3 | 5.8 | 5.85 | yes |" in section and "| prob-unet | 30.3 | 5.8 | 5.85 | no |" in section
    assert "sweep of 2 temperatures on 16 LIDC validation slices" in section[2] and "Note:" not in section[2]
    content["note"] = "shared cores"
    (tmp_path / "calibration.json").write_text(json.dumps(content))
    assert report.calibration_section()[2].endswith("Note: shared cores.")


def test_the_lidc_benchmark_asks_to_name_a_change_of_the_defaults(monkeypatch, capsys):
    from benchmarks import lidc

    monkeypatch.setattr(sys, "argv", ["lidc", "--steps", "10", "--extra", "--mean-weight 1"])
    with pytest.raises(SystemExit) as stopped:
        lidc.main()
    assert stopped.value.code == 2 and "name the change with --variant" in capsys.readouterr().err


def test_the_lidc3d_benchmark_asks_to_name_a_change_of_the_settings(monkeypatch, capsys):
    from benchmarks import lidc3d

    monkeypatch.setattr(sys, "argv", ["lidc3d", "--steps", "10", "--extra", "--marginal-weight 1"])
    with pytest.raises(SystemExit) as stopped:
        lidc3d.main()
    assert stopped.value.code == 2 and "name the change with --tag" in capsys.readouterr().err


def test_the_brats_benchmark_asks_to_name_a_change_of_the_defaults(monkeypatch, capsys):
    from benchmarks import brats

    monkeypatch.setattr(sys, "argv", ["brats", "--steps", "10", "--extra", "--marginal-weight 1"])
    with pytest.raises(SystemExit) as stopped:
        brats.main()
    assert stopped.value.code == 2 and "name the change with --variant" in capsys.readouterr().err


def test_a_brats_variant_row_sits_beside_the_defaults_with_its_flags_and_command(monkeypatch, tmp_path):
    def figures(dice):
        regions = {
            r: {"dice": dice, "ged": 0.5, "diversity": 0.2} for r in ("whole tumour", "tumour core", "enhancing tumour")
        }
        return regions | {"multi-class": {c: {"ged": 0.6, "diversity": 0.3} for c in ("present", "all")}}

    def entry(dice, **more):
        return {"steps": 1000, "deepmedic test": figures(dice), "tcga": figures(dice), **more}

    variant = {
        "variant": "marginal weight 1", "extra": "--marginal-weight 1", "train_minutes_wall": 41.2, "threads": 1,
        "command": "python -m benchmarks.brats --models low-rank --variant 'marginal weight 1'",
        "figure": "brats_samples.marginal-weight-1.png",
    }  # fmt: skip
    content = {
        "measured": "2026-12-02", "command": "python -m benchmarks.brats --steps 1000", "features": [8, 16, 32, 64],
        "patch_size": [48, 48, 48], "steps": 1000, "threads_per_model": 1, "models_at_once": 1,
        "train_minutes_wall": 101.0, "samples": 20,
        "runs": {"low-rank": entry(0.724), "low-rank (marginal weight 1)": entry(0.801, **variant)},
    }  # fmt: skip
    calibrated = {"temperature": 0.6, "deepmedic test": figures(0.733), "tcga": figures(0.612)}
    content["runs"]["low-rank (marginal weight 1)"]["calibrated"] = calibrated
    (tmp_path / "brats.json").write_text(json.dumps(content))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    text = "\n".join(report.brats_section())
    assert "| low-rank | 1000 | 0.724 |" in text and "| low-rank (marginal weight 1) | 1000 | 0.801 |" in text
    # the calibrated figures sit in their own row under their run, on each set of cases
    assert "| low-rank (marginal weight 1), calibrated (t = 0.6) | 1000 | 0.733 |" in text
    assert "| low-rank (marginal weight 1), calibrated (t = 0.6) | 1000 | 0.612 |" in text
    assert text.count("calibrated (t = ") == 2
    assert "*low-rank (marginal weight 1)*: the settings above with `--marginal-weight 1` (41 minutes" in text
    assert "(brats_samples.marginal-weight-1.png)" in text and "(brats_samples.png)" in text


def _lidc_row(seed, ged, run, variant=None, calibrated=None):
    row = {
        "name": "low-rank",
        "seed": seed,
        "protocol": 3,
        "run": run,
        "training": {"step": 10000, "minutes": 88.0},
        "settings": [],
        "measured": "2026-12-03",
        "ssn_version": "0.7.0",
        "command": "python -m benchmarks.lidc",
        "ged": {"mean": ged, "stderr": 0.004},
        "diversity": {"mean": 0.6},
        "hm_iou": {"16": {"mean": 0.5}},
    }
    if variant:
        row["variant"] = variant
    if calibrated:
        t, value, on_validation = calibrated
        row["calibrated"] = {"ged": {"mean": value, "stderr": 0.003}, "temperature": t}
        row["calibration"] = {"temperature": t, "ged": on_validation}
    return row


def test_the_lidc_table_marks_a_shipped_variant_with_its_rows_at_both_temperatures(monkeypatch, tmp_path):
    defaults = _lidc_row(0, 0.268, "/runs/v6/low-rank")
    shipped = _lidc_row(0, 0.277, "/runs/mg/low-rank", "marginal weight 1", (1.5, 0.258, 0.2672))
    (tmp_path / "lidc.json").write_text(json.dumps({"runs": [defaults, shipped]}))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    assert "**shipped**" not in "\n".join(report.lidc_section())  # no shipped.json: nothing marked
    (tmp_path / "shipped.json").write_text(json.dumps({"lidc-2d": {"run": "/runs/mg/low-rank"}}))
    lines = [line for line in report.lidc_section() if "**shipped**" in line]
    assert len(lines) == 2
    assert lines[0].startswith("| low-rank (marginal weight 1), seed 0: **shipped** as `pretrained:lidc-2d` | 1 |")
    assert "0.277 ± 0.004" in lines[0] and "| 1.5 | 0.258 ± 0.003 |" in lines[1]
    (tmp_path / "shipped.json").write_text(json.dumps({"lidc-2d": {"run": "/runs/v6/low-rank"}}))
    assert "**shipped**" not in "\n".join(report.lidc_section())  # the defaults' row is already there


def test_the_lidc_table_shows_a_warm_started_shipped_model_beside_its_start_with_both_budgets(monkeypatch, tmp_path):
    defaults = _lidc_row(0, 0.268, "/runs/v6/low-rank")
    start = _lidc_row(0, 0.277, "/runs/mg/low-rank", "marginal weight 1", (1.5, 0.258, 0.2672))
    shipped = _lidc_row(0, 0.274, "/runs/ft/low-rank", "then 3,500 steps more", (1.5, 0.249, 0.253))
    shipped["training"] = {"step": 3500, "minutes": 59.0}
    (tmp_path / "lidc.json").write_text(json.dumps({"runs": [defaults, start, shipped]}))
    record = {"run": "/runs/ft/low-rank", "started_from": {"run": "/runs/mg/low-rank", "shipped": "2026-12-03"}}
    (tmp_path / "shipped.json").write_text(json.dumps({"lidc-2d": record}))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    lines = report.lidc_section()
    marked = [line for line in lines if "**shipped**" in line]
    assert len(marked) == 2 and "0.274 ± 0.004" in marked[0] and "| 1.5 | 0.249 ± 0.003 |" in marked[1]
    assert "| 10000 + 3500 steps (its start's, then 59 min of its own) |" in marked[0]
    starts = [line for line in lines if "the shipped model's start" in line]
    assert len(starts) == 2 and starts[0].startswith(
        "| low-rank (marginal weight 1), seed 0: the shipped model's start"
    )
    assert "0.277 ± 0.004" in starts[0] and "| 10000 steps, 88 min |" in starts[0] and "| 1.5 | 0.258" in starts[1]
    del record["started_from"]
    (tmp_path / "shipped.json").write_text(json.dumps({"lidc-2d": record}))
    assert not [line for line in report.lidc_section() if "start" in line]


def test_the_model_card_names_the_objective_the_other_seeds_and_the_empty_samples(monkeypatch, tmp_path):
    from benchmarks import ship_pretrained

    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    run = tmp_path / "runs" / "mg" / "low-rank"
    rows = [
        _lidc_row(0, 0.277, str(run), "marginal weight 1", (1.5, 0.258, 0.2672)),
        _lidc_row(1, 0.267, "/elsewhere/mg-s1/low-rank", "marginal weight 1", (1.1, 0.263, 0.2786)),
        _lidc_row(1, 0.269, "/elsewhere/v6-s1/low-rank"),  # the defaults: not trained alike
    ]
    rows[0]["threads_per_process"] = 2
    (results / "lidc.json").write_text(json.dumps({"runs": rows}))
    four = {"readers_marking": 4, "slices": 915, "empty_sample_share": 0.224}
    entries = [
        {"run": "mg/low-rank", "split": "test", "temperature": 1.5, "rows": [dict(four, empty_sample_share=0.287)]},
        {"run": "mg/low-rank", "split": "test", "temperature": 1.0, "rows": [four]},
        {"run": "mg/low-rank", "split": "val", "temperature": 1.0, "rows": [dict(four, empty_sample_share=0.5)]},
    ]
    (results / "lidc_presence.json").write_text(json.dumps({"runs": entries}))
    monkeypatch.setattr(ship_pretrained, "ROOT", tmp_path)

    assert ship_pretrained._objective({"marginal_weight": 1.0, "mean_weight": 0.0}) == (
        "the Monte Carlo log-likelihood of the paper, plus 1 x the pixels' marginal log-likelihood "
        "(`--marginal-weight 1`)"
    )
    assert ship_pretrained._objective({}) == "the Monte Carlo log-likelihood of the paper"
    assert ship_pretrained._threads(run) == "2 threads"
    assert ship_pretrained._mean_alone({"mean_warmup": 0.25}) == "the mean alone for the first 25% of the steps"
    assert ship_pretrained._mean_alone({"mean_warmup": 0.0}) == "no mean-only warm-up"
    seeds = ship_pretrained._other_seeds(run)
    assert "seed 1: 0.267 ± 0.004 at t = 1, 0.263 at its calibrated t = 1.1" in seeds
    assert (
        "0.269" not in seeds and "best calibrated validation GED²(16): 0.2672 for this one, 0.2786 for seed 1" in seeds
    )
    # where the other seed scores the validation nodules lower, the card says by how much, not "best"
    rows[1]["calibration"] = {"temperature": 1.1, "ged": 0.2670}
    rows[0]["calibration"]["curve"] = [{"temperature": 1.5, "ged": 0.2672, "stderr": 0.010}]
    (results / "lidc.json").write_text(json.dumps({"runs": rows}))
    seeds = ship_pretrained._other_seeds(run)
    assert "best" not in seeds and "0.2672 for this one, 0.2670 for seed 1; seed 1 is lower by 0.0002" in seeds
    assert "within its standard error (0.010)" in seeds
    presence = ship_pretrained._presence(run)
    assert "915 test slices" in presence and "22.4% at t = 1, 28.7% at t = 1.5." in presence
    assert ship_pretrained._presence(tmp_path / "runs" / "other" / "low-rank") == ""


def test_a_warm_started_card_names_the_model_it_started_from_with_that_models_budget(monkeypatch, tmp_path):
    from benchmarks import ship_pretrained

    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    row = _lidc_row(0, 0.277, "/runs/mg/low-rank", "marginal weight 1")
    row["training"] = {"step": 10000, "minutes": 88.0, "cpu_minutes": 171.5}
    (results / "lidc.json").write_text(json.dumps({"runs": [row]}))
    shipped = {"lidc-2d": {"run": "/runs/mg/low-rank", "shipped": "2026-12-03", "ssn_version": "0.7.0"}}
    (results / "shipped.json").write_text(json.dumps(shipped))
    monkeypatch.setattr(ship_pretrained, "ROOT", tmp_path)

    new_run = tmp_path / "runs" / "ft" / "low-rank"
    warm = {"init_from": "pretrained:lidc-2d"}
    text = ship_pretrained._started_from(warm, new_run)
    assert "`pretrained:lidc-2d` as shipped on 2026-12-03 (10000 steps, 2.86 CPU-hours; test GED²(100) 0.277" in text
    assert "both trainings together" in text and text.endswith(".\n")
    assert ship_pretrained._started_from({"init_from": "/runs/other"}, new_run) == (
        "  Training started from the weights of `/runs/other`.\n"
    )
    assert (
        ship_pretrained._started_from({"init_from": None}, new_run) == ship_pretrained._started_from({}, new_run) == ""
    )
    # shipping the run again, once the name holds its own weights, keeps the start recorded the first time
    start = ship_pretrained._start_record(warm, new_run)
    assert start == shipped["lidc-2d"]
    shipped["lidc-2d"] = {"run": str(new_run.resolve()), "shipped": "2026-12-07", "started_from": start}
    (results / "shipped.json").write_text(json.dumps(shipped))
    assert ship_pretrained._start_record(warm, new_run) == start
    assert ship_pretrained._started_from(warm, new_run) == text
    # another run started from the new weights names those, and keeps naming them once shipped
    next_run = tmp_path / "runs" / "next"
    assert ship_pretrained._start_record(warm, next_run)["run"] == str(new_run.resolve())
    shipped["lidc-3d"] = {"run": str(next_run.resolve()), "started_from": {"run": str(new_run.resolve())}}
    shipped["lidc-2d"] = {"run": "/runs/newer/low-rank", "shipped": "2026-12-09"}
    (results / "shipped.json").write_text(json.dumps(shipped))
    assert ship_pretrained._start_record(warm, next_run) == {"run": str(new_run.resolve())}


def test_the_3d_card_quotes_the_slicewise_yardstick_only_for_the_weights_it_measured(monkeypatch, tmp_path):
    from benchmarks import ship_pretrained
    from benchmarks.lidc3d import weights_digest

    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    monkeypatch.setattr(ship_pretrained, "ROOT", tmp_path)
    row = {"run": "pretrained:lidc-2d", "shared": {"ged": {"mean": 0.3012}}}
    for digest, expected in [(None, ""), ("0" * 64, ""), (weights_digest("pretrained:lidc-2d"), "scores 0.301")]:
        (results / "lidc3d.json").write_text(json.dumps({"slicewise_2d": {**row, "weights_sha256": digest}}))
        clause = ship_pretrained._slicewise()
        assert (expected in clause) if expected else clause == ""


def test_the_curve_table_names_the_loss_weights_of_each_run(tmp_path, monkeypatch):
    from benchmarks import report

    end = {"step": 10, "cpu_hours": 0.5, "val_ged": 0.3}
    runs = {
        "runs/plain": {"method": "ssn", "rank": 10, "seed": 0, "max_steps": 10, "marks": {"end": end}},
        "runs/mg": {
            "method": "ssn",
            "rank": 10,
            "marginal_weight": 1.0,
            "seed": 1,
            "max_steps": 10,
            "marks": {"end": end},
        },
    }
    monkeypatch.setattr(report, "_load", lambda name: {"runs": runs} if name == "lidc_curve" else None)
    rows = {line.split(" | ")[0]: line for line in report.curve_section() if line.startswith("| runs/")}
    assert "| ssn, rank 10 |" in rows["| runs/plain"] and "marginal" not in rows["| runs/plain"]
    assert "| ssn, rank 10, marginal weight 1 |" in rows["| runs/mg"]


def test_the_readers_votes_score_as_single_maps_as_computed_by_hand(tmp_path, monkeypatch):
    """Slice A: readers 0-2 mark one block, reader 3 nothing; slice B: reader 0 alone marks it.
    GED^2 of one map S: 2 E d(S, Y) - E d(Y, Y') over ordered pairs with self-pairs, here
    E d(Y, Y') = 6/16 on both slices. A at least 1 or 3 of 4 (the block): 2/4 - 6/16 = 0.125;
    A all 4 (empty): 6/4 - 6/16 = 1.125; B at least 1 (the block): 1.125; B at least 3, all 4 and
    the majority (empty): 0.125."""
    from benchmarks import lidc

    masks = np.zeros((3, 4, 8, 8), np.uint8)
    masks[0, :3, 2:5, 2:5] = 1
    masks[1, 0, 2:5, 2:5] = 1
    masks[2, :, 1:3, 1:3] = 1  # a training slice: not scored
    patients = np.array(["LIDC-IDRI-0001", "LIDC-IDRI-0001", "LIDC-IDRI-0002"])
    np.savez(tmp_path / "lidc_slices_128.npz", images=np.zeros((3, 8, 8), np.uint8), masks=masks, patient=patients,
             nodule=np.zeros(3, int), slice=np.arange(3))  # fmt: skip
    split = {"splits": {"train": ["LIDC-IDRI-0002"], "val": [], "test": ["LIDC-IDRI-0001"]}}
    (tmp_path / "split.json").write_text(json.dumps(split))
    reference = lidc.references(tmp_path / "lidc_slices_128.npz", tmp_path / "split.json")
    ged = {k: row["ged"]["mean"] for k, row in reference["readers_at_least"].items()}
    assert ged == pytest.approx({"1": 0.625, "3": 0.125, "4": 0.625})
    assert reference["majority_vote"]["ged"]["mean"] == pytest.approx(0.125)
    assert reference["empty"]["ged"]["mean"] == pytest.approx(0.625) and reference["num_images"] == 2
    (tmp_path / "lidc.json").write_text(
        json.dumps({"runs": [_lidc_row(0, 0.268, "/runs/v6/low-rank")], "reference": reference})
    )
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    table = "\n".join(report.lidc_section())
    assert "| *marked by at least 3 of 4 readers* |  | 0.125 ± 0.000 |" in table
    assert "| *marked by all 4 readers* |  | 0.625 ± 0.500 |" in table


def test_a_bare_calibrate_flag_calibrates_every_stochastic_model_of_the_lidc_benchmark():
    from benchmarks import lidc

    models = ["deterministic", "diagonal", "low-rank", "prob-unet"]
    every = ["diagonal", "low-rank", "prob-unet"]
    parsed = lidc.calibrated_models
    assert parsed(models, None) == every and parsed(models, []) == every
    assert parsed(models, ["low-rank"]) == ["low-rank"] and parsed(["deterministic"], []) == []


def test_every_figure_that_the_results_and_the_docs_name_is_in_the_repository():
    """A figure drawn in a worktree and never copied back leaves a dead image in RESULTS.md."""
    image = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.png)\)")
    missing = []
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    missing += [name for name in image.findall(results) if not (ROOT / "benchmarks" / name).is_file()]
    for source in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        text = source.read_text()
        missing += [f"{source.name}: {name}" for name in re.findall(r'"figure": "([^"]+)"', text)
                    if not (ROOT / "benchmarks" / name).is_file()]  # fmt: skip
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    missing += [f"docs/hooks.py: {path}" for path in hooks.FIGURES if not (ROOT / path).is_file()]
    assets = {Path(path).name for path in hooks.FIGURES}
    for page in sorted((ROOT / "docs").glob("*.md")):
        for name in image.findall(page.read_text()):
            if name.startswith("assets/") and name.removeprefix("assets/") not in assets:
                missing.append(f"{page.name}: {name} (not among docs/hooks.py's FIGURES)")
            elif not name.startswith(("assets/", "http")) and not (page.parent / name).is_file():
                missing.append(f"{page.name}: {name}")
    assert not missing, missing

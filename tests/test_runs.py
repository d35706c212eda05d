"""What a run remembers: the images it held out, where its calibration went, which split was used."""

import json

import pytest

from ssn.apps.cli import main
from ssn.data.arrays import save_arrays
from ssn.data.synthetic import make_synthetic
from ssn.engine.pretrained import pretrained_dir

TINY = ["--features", "4", "8", "--max-steps", "1", "--batch-size", "2", "--val-images", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    data = folder / "synthetic.npz"
    save_arrays(data, make_synthetic(20, size=32, seed=0))
    run = folder / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *TINY]) == 0
    return run, data


def test_a_run_without_a_split_file_records_its_hold_out_and_evaluate_uses_it(trained, tmp_path):
    run, data = trained
    split = json.loads((run / "split.json").read_text())["splits"]
    assert len(split["val"]) == 2 and len(split["train"]) == 18 and not set(split["val"]) & set(split["train"])
    out = tmp_path / "val.json"
    assert (
        main(
            ["evaluate", "--run", str(run), "--data", str(data), "--split", "val", "--samples", "2", "--out", str(out)]
        )
        == 0
    )
    assert json.loads(out.read_text())["num_images"] == 2  # the held-out images, not all 20
    assert json.loads(out.read_text())["split"] == "val"
    calibration = tmp_path / "calibration.json"
    calibrate = ["calibrate", "--run", str(run), "--data", str(data), "--samples", "2", "--temperatures", "0.5", "1"]
    assert main([*calibrate, "--split", "val", "--out", str(calibration)]) == 0
    assert json.loads(calibration.read_text())["num_images"] == 2
    assert json.loads(calibration.read_text())["split"] == "val"


def test_calibration_records_the_split_it_ran_on(trained, tmp_path):
    run, data = trained
    patients = json.loads((run / "split.json").read_text())["splits"]
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"splits": patients}))
    out = tmp_path / "calibration.json"
    calibrate = ["calibrate", "--run", str(run), "--data", str(data), "--samples", "2", "--temperatures", "1"]
    assert main([*calibrate, "--split-file", str(split_file), "--out", str(out)]) == 0  # the default split, val
    assert json.loads(out.read_text())["split"] == "val"


def test_a_shipped_model_is_calibrated_into_out_never_into_the_package(trained, tmp_path, capsys):
    _, data = trained
    shipped = pretrained_dir("lidc-2d")
    before = {p.name: p.stat().st_mtime_ns for p in shipped.iterdir()}
    calibrate = ["calibrate", "--run", "pretrained:lidc-2d", "--data", str(data), "--samples", "2"]
    capsys.readouterr()
    assert main([*calibrate, "--temperatures", "1"]) == 2
    err = capsys.readouterr().err
    assert "give --out FILE" in err and "t = 1" not in capsys.readouterr().out  # refused before the sweep
    out = tmp_path / "lidc-calibration.json"
    assert main([*calibrate, "--temperatures", "0.5", "1", "--max-images", "4", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["temperature"] in (0.5, 1.0) and "--temperature" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in shipped.iterdir()} == before


def test_resuming_a_finished_run_says_there_is_nothing_to_do(trained, capsys):
    run, data = trained
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--out", str(run), "--resume", "--max-steps", "1"]) == 0
    out = capsys.readouterr()
    assert "nothing to train" in out.out + out.err and "resume with a larger" in out.out + out.err
    assert (run / "metrics.jsonl").read_text() == before


def test_the_epoch_of_a_validation_inside_an_epoch_is_the_one_the_progress_shows(tmp_path):
    data = tmp_path / "synthetic.npz"
    save_arrays(data, make_synthetic(40, size=32, seed=0))  # 36 training images: 9 steps of 4 an epoch
    run = tmp_path / "run"
    flags = ["--features", "4", "8", "--batch-size", "4", "--val-images", "2", "--val-every", "4", "--max-steps", "12"]
    assert main(["train", "--data", str(data), "--out", str(run), *flags]) == 0
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(e["step"], e["epoch"]) for e in entries] == [(4, 1), (8, 1), (12, 2)]


def test_a_finished_run_ends_with_its_best_validation_its_weights_and_the_next_commands(tmp_path, capsys):
    data = tmp_path / "synthetic.npz"
    save_arrays(data, make_synthetic(20, size=32, seed=0))
    run = tmp_path / "run"
    flags = ["--features", "4", "8", "--batch-size", "4", "--val-images", "2", "--val-every", "2", "--max-steps", "4"]
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--out", str(run), *flags]) == 0
    out = capsys.readouterr().out
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = min(entries, key=lambda e: e["val_ged"])
    assert "done: 4 steps" in out
    assert f"best validation GED^2(16) {best['val_ged']:.4f} at step {best['step']}" in out
    assert f"weights: {run / 'best.safetensors'}" in out
    assert f"ssn calibrate --run {run} --data {data} --split val" in out
    assert f"ssn evaluate --run {run} --data TEST_DATA" in out and f"ssn sample --run {run}" in out

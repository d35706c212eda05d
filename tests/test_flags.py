"""Flags that contradict each other or make no sense for the run are refused in one line."""

import json

import pytest

from ssn.apps.cli import build_parser, main
from ssn.data.arrays import save_arrays
from ssn.data.synthetic import make_synthetic, make_synthetic_volumes

TINY = ["--features", "4", "8", "--max-steps", "1", "--batch-size", "2", "--val-images", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flags")
    data = folder / "synthetic.npz"
    save_arrays(data, make_synthetic(8, size=32, seed=0))
    assert main(["train", "--data", str(data), "--out", str(folder / "run2d"), *TINY]) == 0
    lists = make_synthetic_volumes(folder / "volumes", num_cases=3, shape=(16, 16, 8), splits=(1, 1))
    assert (
        main(["train", "--data", str(lists), "--out", str(folder / "run3d"), "--patch-size", "8", "8", "8", *TINY]) == 0
    )
    return {"data": data, "lists": lists, "2d": folder / "run2d", "3d": folder / "run3d"}


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssn: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("window", [["0", "8", "8"], ["-4", "8", "8"]])
def test_a_window_side_below_one_voxel_is_refused(runs, tmp_path, capsys, window):
    evaluate = ["evaluate", "--run", str(runs["3d"]), "--data", str(runs["lists"]), "--samples", "2"]
    assert "three sides of at least 1 voxel" in _error(capsys, [*evaluate, "--window", *window])
    sample = ["sample", "--run", str(runs["3d"]), "--input", str(runs["lists"]), "--out", str(tmp_path / "s")]
    assert "three sides of at least 1 voxel" in _error(capsys, [*sample, "--window", *window])


def test_window_on_a_2d_run_is_refused_not_ignored(runs, tmp_path, capsys):
    evaluate = ["evaluate", "--run", str(runs["2d"]), "--data", str(runs["data"]), "--samples", "2"]
    assert "2D images are predicted whole" in _error(capsys, [*evaluate, "--window", "8", "8", "8"])
    assert "2D images are predicted whole" in _error(capsys, [*evaluate, "--overlap", "0.25"])
    sample = ["sample", "--run", str(runs["2d"]), "--input", str(runs["data"]), "--out", str(tmp_path / "s")]
    assert "2D images are predicted whole" in _error(capsys, [*sample, "--window", "8", "8", "8"])


def test_contradicting_method_flags_are_refused(runs, tmp_path, capsys):
    train = ["train", "--data", str(runs["data"]), "--out", str(tmp_path / "run"), *TINY]
    assert "--deterministic and --method prob-unet contradict" in _error(
        capsys, [*train, "--deterministic", "--method", "prob-unet"]
    )
    err = _error(capsys, [*train, "--method", "deterministic", "--rank", "5"])
    assert "--rank: a setting of the ssn method, which --method deterministic does not take" in err
    assert "--latent-dim" in _error(capsys, [*train, "--latent-dim", "4"])  # the default method, ssn
    assert not (tmp_path / "run").exists()
    assert main([*train, "--deterministic"]) == 0  # the alias alone still works
    assert json.loads((tmp_path / "run" / "config.json").read_text())["method"] == "deterministic"


def test_a_temperature_of_zero_is_allowed_wherever_temperatures_are_given(runs, capsys):
    calibrate = ["calibrate", "--run", str(runs["2d"]), "--data", str(runs["data"]), "--samples", "2"]
    assert main([*calibrate, "--temperatures", "0", "1", "--max-images", "4"]) == 0
    evaluate = ["evaluate", "--run", str(runs["2d"]), "--data", str(runs["data"]), "--samples", "2"]
    assert main([*evaluate, "--temperature", "0"]) == 0
    assert "temperatures must be numbers >= 0" in _error(capsys, [*calibrate, "--temperatures", "-1", "1"])


def test_every_run_flag_says_that_a_pretrained_model_works_there():
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("evaluate", "calibrate", "sample", "explore"):
        run = next(a for a in commands[name]._actions if a.dest == "run")
        assert "pretrained:NAME" in run.help, name


def test_threads_sets_torchs_threads_over_the_environment(runs, capsys, monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    try:
        evaluate = ["evaluate", "--run", str(runs["2d"]), "--data", str(runs["data"]), "--samples", "2"]
        assert main([*evaluate, "--threads", "1"]) == 0 and torch.get_num_threads() == 1
        assert "--threads needs at least 1" in _error(capsys, [*evaluate, "--threads", "0"])
    finally:
        torch.set_num_threads(before)


def test_volume_means_name_their_channels_and_the_evaluate_csv_has_ece(runs, tmp_path):
    import csv

    import nibabel

    out = tmp_path / "samples"
    sample = ["sample", "--run", str(runs["3d"]), "--input", str(runs["lists"]), "--split", "test", "--samples", "2"]
    assert main([*sample, "--out", str(out)]) == 0
    case = next(p for p in out.iterdir() if p.is_dir())
    described = json.loads((case / "mean.json").read_text())
    channels = nibabel.load(str(case / "mean.nii.gz")).shape[-1]
    assert [c["channel"] for c in described["channels"]] == list(range(channels))
    assert all({"class", "file_value"} <= set(c) for c in described["channels"])
    header = nibabel.load(str(case / "mean.nii.gz")).header["descrip"].tobytes().decode().strip("\x00")
    assert "mean.json" in header
    metrics_out = tmp_path / "m.json"
    evaluate = ["evaluate", "--run", str(runs["2d"]), "--data", str(runs["data"]), "--samples", "2"]
    assert main([*evaluate, "--out", str(metrics_out)]) == 0
    rows = list(csv.DictReader(metrics_out.with_suffix(".csv").open()))
    assert rows and all(0 <= float(r["ece"]) <= 1 for r in rows)


@pytest.mark.parametrize("shape, warned", [((1, 1), True), ((12, 30), True), ((200, 200), True), ((48, 24), False)])
def test_an_image_far_from_the_training_size_is_warned_about(runs, tmp_path, capsys, shape, warned):
    import numpy as np

    config = json.loads((runs["2d"] / "config.json").read_text())
    assert config["input_shape"] == [32, 32]
    image = tmp_path / "image.npy"
    np.save(image, np.random.default_rng(0).random(shape, dtype=np.float32))
    capsys.readouterr()
    argv = ["sample", "--run", str(runs["2d"]), "--input", str(image), "--samples", "2", "--out", str(tmp_path / "s")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert ("ssn: warning: " in err and "trained on 32x32 inputs" in err) == warned, err


def test_a_window_larger_than_the_volume_is_warned_about(runs, tmp_path, capsys):
    sample = ["sample", "--run", str(runs["3d"]), "--input", str(runs["lists"]), "--split", "test", "--samples", "2"]
    capsys.readouterr()
    assert main([*sample, "--out", str(tmp_path / "s"), "--window", "8", "8", "12"]) == 0
    assert "is larger than the volume 16x16x8 along axis 2" in capsys.readouterr().err
    assert main([*sample, "--out", str(tmp_path / "t")]) == 0
    assert "larger than the volume" not in capsys.readouterr().err


def test_the_shipped_model_warns_on_the_sizes_users_tried():
    from ssn.engine.checkpoints import read_config
    from ssn.engine.pretrained import pretrained_dir
    from ssn.inference.predict import size_warning

    config = read_config(pretrained_dir("lidc-2d"))
    assert all(size_warning(config, shape) for shape in ((1, 1), (2000, 2000), (37, 101)))
    assert size_warning(config, (128, 128)) is None and size_warning(config, (96, 160)) is None

"""Training, evaluation and sampling from the command line, on synthetic data with a known answer."""

import json

import numpy as np
import pytest

from ssn.cli import main
from ssn.data import make_synthetic, save_arrays

TRAIN = ["--features", "8", "16", "32", "--batch-size", "16", "--lr", "3e-3", "--val-images", "32", "--val-samples", "8"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    data = make_synthetic(320, size=32, seed=0)
    save_arrays(root / "data.npz", data)
    patients = [str(p) for p in data.patient]
    split = {"train": patients[:256], "val": patients[256:288], "test": patients[288:]}
    (root / "split.json").write_text(json.dumps({"splits": split}))
    common = ["--data", str(root / "data.npz"), "--split-file", str(root / "split.json"), "--epochs", "14", *TRAIN]
    assert main(["train", "--out", str(root / "ssn"), "--rank", "10", *common]) == 0
    assert main(["train", "--out", str(root / "det"), "--deterministic", *common]) == 0
    return root


def evaluate(workspace, run, samples=32):
    out = workspace / f"{run}_metrics.json"
    code = main(["evaluate", "--run", str(workspace / run), "--data", str(workspace / "data.npz"), "--split", "test",
                 "--split-file", str(workspace / "split.json"), "--samples", str(samples), "--out", str(out)])
    assert code == 0
    return json.loads(out.read_text()), out


def test_training_writes_a_complete_run_directory(workspace):
    run = workspace / "ssn"
    for name in ("config.json", "best.safetensors", "last.safetensors", "state.pt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    config = json.loads((run / "config.json").read_text())
    assert config["rank"] == 10 and config["num_classes"] == 2 and config["spatial_dims"] == 2
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 14
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert last["train_loss"] < first["train_loss"]


def test_the_ssn_beats_the_deterministic_baseline_against_the_exact_truth(workspace):
    ssn_metrics, out = evaluate(workspace, "ssn")
    det_metrics, _ = evaluate(workspace, "det")
    assert ssn_metrics["ged_truth"]["mean"] < det_metrics["ged_truth"]["mean"] - 0.1
    assert ssn_metrics["ged"]["mean"] < det_metrics["ged"]["mean"]
    assert det_metrics["diversity"]["mean"] == 0.0 and ssn_metrics["diversity"]["mean"] > 0.1
    for key in ("ged", "diversity", "hm_iou", "dice", "ece", "num_samples"):
        assert key in ssn_metrics
    assert ssn_metrics["ged"]["num_samples"] == 32 and ssn_metrics["hm_iou"]["16"]["num_samples"] == 16
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert len(rows) == 1 + 32 and rows[0].startswith("index,patient,ged,diversity")


def test_resume_continues_from_the_last_epoch(workspace, tmp_path):
    args = ["--data", str(workspace / "data.npz"), "--out", str(tmp_path / "r"), *TRAIN]
    assert main(["train", "--epochs", "1", *args]) == 0
    assert main(["train", "--epochs", "2", "--resume", *args]) == 0
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_yaml_config_with_flags_overriding(workspace, tmp_path):
    (tmp_path / "c.yaml").write_text("rank: 3\nepochs: 1\nfeatures: [4, 8]\nval_images: 8\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--rank", "2", "--data", str(workspace / "data.npz"), "--out", str(tmp_path / "y")]) == 0
    config = json.loads((tmp_path / "y" / "config.json").read_text())
    assert config["rank"] == 2 and config["features"] == [4, 8] and config["epochs"] == 1


@pytest.mark.parametrize("kind", ["npz", "png", "npy", "nii"])
def test_sample_writes_samples_and_figures(workspace, tmp_path, kind):
    from PIL import Image

    image = (np.load(workspace / "data.npz")["images"][0, 0] * 255).clip(0, 255).astype(np.uint8)  # (H, W)
    path = tmp_path / f"input.{kind}"
    if kind == "npz":
        path = workspace / "data.npz"
    elif kind == "png":
        Image.fromarray(image).save(path)
    elif kind == "npy":
        np.save(path, image.astype(np.float32) / 255)
    else:
        import nibabel

        path = tmp_path / "input.nii.gz"
        nibabel.save(nibabel.Nifti1Image(image.astype(np.float32)[..., None][..., 0] / 255, np.eye(4)), str(path))
    out = tmp_path / "samples"
    assert main(["sample", "--run", str(workspace / "ssn"), "--input", str(path), "--samples", "6", "--out", str(out), "--figures", "2"]) == 0
    result = np.load(out / "samples.npz")
    count = 320 if kind == "npz" else 1
    assert result["samples"].shape == (count, 6, 32, 32) and result["samples"].dtype == np.uint8
    assert result["mean"].shape == (count, 2, 32, 32) and result["entropy"].shape == (count, 32, 32)
    assert (out / "image_0000.png").is_file()
    assert len(list(out.glob("image_*.png"))) == min(count, 2)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "missing.npz", "--out", "x"], "no such data file"),
        (["train", "--out", "x"], "required: --data"),
        (["train", "--data", "d.npz", "--out", "x", "--rank", "ten"], "invalid int value"),
        (["train", "--data", "d.npz", "--out", "x", "--deterministic", "maybe"], "expected true or false"),
        (["evaluate", "--run", "nowhere", "--data", "d.npz"], "not a run directory"),
        (["sample", "--run", "nowhere", "--input", "x.png"], "not a run directory"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_give_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images, masks = np.zeros((2, 8, 8), np.uint8), np.zeros((2, 1, 8, 8), np.uint8)
    np.savez(tmp_path / "d.npz", images=images, masks=masks)
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_every_command_has_help_with_examples(capsys):
    for command in ("train", "evaluate", "sample", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_volumes_train_evaluate_and_sample(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((12, 1, 8, 16, 16)).astype(np.float32)
    masks = np.zeros((12, 2, 8, 16, 16), np.uint8)
    masks[:, 0, 2:6, 4:12, 4:12] = 1
    masks[:, 1, 3:6, 5:11, 5:11] = 1
    np.savez(tmp_path / "vol.npz", images=images, masks=masks)
    run = tmp_path / "run"
    args = ["--data", str(tmp_path / "vol.npz"), "--out", str(run), "--epochs", "2", "--features", "4", "8", "--batch-size", "4", "--rank", "3", "--val-images", "2", "--val-samples", "4"]
    assert main(["train", *args]) == 0
    assert json.loads((run / "config.json").read_text())["spatial_dims"] == 3
    assert main(["evaluate", "--run", str(run), "--data", str(tmp_path / "vol.npz"), "--samples", "4", "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["num_images"] == 12
    np.save(tmp_path / "one.npy", images[0])
    assert main(["sample", "--run", str(run), "--input", str(tmp_path / "one.npy"), "--samples", "3", "--out", str(tmp_path / "s")]) == 0
    assert np.load(tmp_path / "s" / "samples.npz")["samples"].shape == (1, 3, 8, 16, 16)

"""Training, evaluation and sampling from the command line, on synthetic data with a known answer."""

import json

import numpy as np
import pytest
import torch

import ssn
from ssn.apps.cli import main
from ssn.data import make_synthetic, save_arrays
from ssn.engine.checkpoints import load_run
from ssn.inference import images_to_predict, predict_batches

TRAIN = [
    "--features",
    "8",
    "16",
    "32",
    "--batch-size",
    "16",
    "--lr",
    "3e-3",
    "--val-images",
    "32",
    "--val-samples",
    "8",
]


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
    code = main(
        [
            "evaluate",
            "--run",
            str(workspace / run),
            "--data",
            str(workspace / "data.npz"),
            "--split",
            "test",
            "--split-file",
            str(workspace / "split.json"),
            "--samples",
            str(samples),
            "--out",
            str(out),
        ]
    )
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


def test_evaluate_reports_the_matched_iou_in_both_conventions(workspace, tmp_path):
    out = tmp_path / "m.json"
    args = [
        "evaluate",
        "--run",
        str(workspace / "ssn"),
        "--data",
        str(workspace / "data.npz"),
        "--split",
        "test",
        "--split-file",
        str(workspace / "split.json"),
        "--samples",
        "32",
    ]
    assert main([*args, "--matching", "rectangular", "--classes", "all", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["conventions"] == {"classes": "all", "matching": "rectangular"}
    both = summary["hm_iou_by_matching"]
    assert summary["hm_iou"] == both["rectangular"]
    for n in ("16", "32"):  # the best min(N, A) samples only: at least the repeated matching's mean
        assert both["rectangular"][n]["mean"] >= both["repeat"][n]["mean"] - 1e-12
    default, _ = evaluate(workspace, "ssn")
    assert default["conventions"] == {"classes": "present", "matching": "repeat"}
    assert default["hm_iou"] == default["hm_iou_by_matching"]["repeat"]
    # two classes: the class conventions agree, and the matching leaves GED^2 alone
    assert summary["ged"]["mean"] == pytest.approx(default["ged"]["mean"], abs=1e-12)
    assert default["hm_iou_by_matching"]["rectangular"] == summary["hm_iou_by_matching"]["rectangular"]


def test_training_on_image_crops_validates_on_whole_images(workspace, tmp_path, capsys):
    run = tmp_path / "crops"
    common = [
        "--data",
        str(workspace / "data.npz"),
        "--split-file",
        str(workspace / "split.json"),
        "--epochs",
        "1",
        *TRAIN,
    ]
    assert (
        main(
            ["train", "--out", str(run), "--rank", "4", "--patch-size", "16", "16", "--foreground-share", "1", *common]
        )
        == 0
    )
    assert "one crop of 16x16 each" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["patch_size"] == [16, 16]
    out = tmp_path / "m.json"
    assert (
        main(
            ["evaluate", "--run", str(run), "--data", str(workspace / "data.npz"), "--samples", "4", "--out", str(out)]
        )
        == 0
    )
    assert json.loads(out.read_text())["num_images"] == 320  # whole 32x32 images
    for size, message in ((["64", "64"], "larger than the images"), (["16", "16", "16"], "2 sizes for 2D images")):
        assert main(["train", "--out", str(tmp_path / "bad"), "--patch-size", *size, *common]) == 2
        assert message in capsys.readouterr().err


def test_resume_continues_from_the_last_epoch(workspace, tmp_path):
    args = ["--data", str(workspace / "data.npz"), "--out", str(tmp_path / "r"), *TRAIN]
    assert main(["train", "--epochs", "1", *args]) == 0
    assert main(["train", "--epochs", "2", "--resume", *args]) == 0
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_yaml_config_with_flags_overriding(workspace, tmp_path):
    (tmp_path / "c.yaml").write_text("rank: 3\nepochs: 1\nfeatures: [4, 8]\nval_images: 8\n")
    assert (
        main(
            [
                "train",
                "--config",
                str(tmp_path / "c.yaml"),
                "--rank",
                "2",
                "--data",
                str(workspace / "data.npz"),
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 0
    )
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
    assert (
        main(
            [
                "sample",
                "--run",
                str(workspace / "ssn"),
                "--input",
                str(path),
                "--samples",
                "6",
                "--out",
                str(out),
                "--figures",
                "2",
            ]
        )
        == 0
    )
    result = np.load(out / "samples.npz")
    count = 320 if kind == "npz" else 1
    assert result["samples"].shape == (count, 6, 32, 32) and result["samples"].dtype == np.uint8
    assert result["mean"].shape == (count, 2, 32, 32) and result["entropy"].shape == (count, 32, 32)
    if kind == "npz":  # a dataset's figures by image index
        assert (out / "image_0000.png").is_file()
        assert len(list(out.glob("image_*.png"))) == min(count, 2)
    else:  # one image's figure after its name (issue 19: image_0000.png said nothing of the input)
        assert sorted(p.name for p in out.glob("*.png")) == ["input.png"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "missing.npz", "--out", "x"], "no such data file"),
        (["train", "--out", "x"], "the setting data is required"),
        (["train", "--data", "d.npz", "--out", "x", "--rank", "ten"], "invalid int value"),
        (["train", "--data", "d.npz", "--out", "x", "--augment", "maybe"], "expected true or false"),
        (["train", "--data", "d.npz", "--out", "x", "--lr", "-1"], "lr must be > 0"),
        (["train", "--data", "d.npz", "--out", "x", "--batch-size", "0"], "batch_size must be >= 1"),
        (["train", "--data", "d.npz", "--out", "x", "--mc-samples", "7"], "mc_samples must be even"),
        (["train", "--data", "d.npz", "--out", "x", "--method", "bayes"], "invalid choice: 'bayes'"),
        (["train", "--data", "d.npz", "--out", "x", "--model", "resnet"], "unknown backbone 'resnet'"),
        (["train", "--data", "d.npz", "--out", "x", "--features", "0", "8"], "features must be one or more positive"),
        (["train", "--data", "d.npz", "--out", "x", "--model-kwargs", "{width: 8}"], "takes no argument 'width'"),
        (["train", "--data", "d.npz", "--out", "x", "--model-kwargs", "[1]"], "expected a YAML or JSON mapping"),
        (
            ["train", "--data", "d.npz", "--out", "x", "--model", "monai:BasicUNet", "--features", "4"],
            "features is the U-Nets' shorthand",
        ),
        (["train", "--data", "d.npz", "--out", "x", "--device", "cuda:0"], "no CUDA device"),
        (["train", "--data", "d.npz", "--out", "x", "--config", "nowhere.yaml"], "no such config file"),
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
    args = [
        "--data",
        str(tmp_path / "vol.npz"),
        "--out",
        str(run),
        "--epochs",
        "2",
        "--features",
        "4",
        "8",
        "--batch-size",
        "4",
        "--rank",
        "3",
        "--val-images",
        "2",
        "--val-samples",
        "4",
    ]
    assert main(["train", *args]) == 0
    assert json.loads((run / "config.json").read_text())["spatial_dims"] == 3
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(run),
                "--data",
                str(tmp_path / "vol.npz"),
                "--samples",
                "4",
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "m.json").read_text())["num_images"] == 12
    np.save(tmp_path / "one.npy", images[0])
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--input",
                str(tmp_path / "one.npy"),
                "--samples",
                "3",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "s" / "samples.npz")["samples"].shape == (1, 3, 8, 16, 16)


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("augment: 'false'\n", "augment must be true or false; got 'false'"),
        ("epochs: 0\n", "epochs must be >= 1; got 0"),
        ("batch_size: -1\n", "batch_size must be >= 1; got -1"),
        ("features: [0, 8]\n", "features must be one or more positive"),
        ("epochs: 2.5\n", "epochs must be an integer; got 2.5"),
        ("rank: [1]\n", "rank must be an integer"),
        ("model_kwargs: 3\n", "model_kwargs must be a mapping"),
        ("lr: fast\n", "lr must be a number; got 'fast'"),
        ("in_channels: 3\n", "unknown settings in_channels"),
        ("rnak: 3\n", "unknown settings rnak"),
        ("- rank\n", "must be a YAML mapping"),
    ],
)
def test_a_wrong_config_value_gives_one_line_exit_2_and_writes_nothing(yaml_text, message, capsys, tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 8, 8), np.uint8), masks=np.zeros((4, 1, 8, 8), np.uint8))
    (tmp_path / "c.yaml").write_text(yaml_text)
    code = main(
        [
            "train",
            "--config",
            str(tmp_path / "c.yaml"),
            "--data",
            str(tmp_path / "d.npz"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_yaml_numbers_written_without_a_dot_are_numbers(tmp_path):
    """PyYAML reads `lr: 1e-3` as the string '1e-3'; the configuration takes it as the number."""
    from ssn.engine import TrainConfig
    from ssn.engine.config import read_yaml

    (tmp_path / "c.yaml").write_text(
        "lr: 1e-3\nweight_decay: 1e-5\nmethod: deterministic\nmodel_kwargs: {norm: batch}\n"
    )
    config = TrainConfig(data="d.npz", out="o", **read_yaml(tmp_path / "c.yaml"))
    assert config.lr == 1e-3 and config.weight_decay == 1e-5 and config.method == "deterministic"
    assert config.model_kwargs == {"norm": "batch"}


class Widthy(torch.nn.Module):
    """A backbone with its own argument ``width`` and no ``features``."""

    def __init__(self, spatial_dims, in_channels, width=6):
        super().__init__()
        self.out_channels = width
        self.conv = torch.nn.Conv2d(in_channels, width, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


def test_a_backbone_registered_with_its_own_arguments_trains_from_a_yaml_config(workspace, tmp_path):
    import ssn

    ssn.models.register_backbone("test-yaml-widthy")(Widthy)
    try:
        (tmp_path / "c.yaml").write_text(
            "model: test-yaml-widthy\nmodel_kwargs: {width: 5}\nrank: 2\nepochs: 1\nval_images: 8\nbatch_size: 32\n"
        )
        run = tmp_path / "run"
        assert (
            main(
                [
                    "train",
                    "--config",
                    str(tmp_path / "c.yaml"),
                    "--data",
                    str(workspace / "data.npz"),
                    "--out",
                    str(run),
                ]
            )
            == 0
        )
        architecture = json.loads((run / "config.json").read_text())["architecture"]
        assert architecture["backbone"] == "test-yaml-widthy" and architecture["backbone_kwargs"] == {"width": 5}
        assert architecture["feature_channels"] == 5 and architecture["method_kwargs"]["rank"] == 2
        assert main(["evaluate", "--run", str(run), "--data", str(workspace / "data.npz"), "--samples", "4"]) == 0
    finally:
        ssn.models.unregister_backbone("test-yaml-widthy")


def test_the_method_flag_and_its_alias_record_the_method(workspace, tmp_path):
    common = ["--data", str(workspace / "data.npz"), "--epochs", "1", "--features", "4", "8", "--val-images", "8"]
    assert main(["train", "--out", str(tmp_path / "a"), "--method", "deterministic", *common]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), "--deterministic", *common]) == 0
    for run in ("a", "b"):
        config = json.loads((tmp_path / run / "config.json").read_text())
        assert config["method"] == "deterministic" and config["architecture"]["method"] == "deterministic"
        assert config["architecture"]["method_kwargs"] == {}


def test_an_internal_error_shows_its_traceback_and_exits_1(workspace, tmp_path):
    """A bug is not a user mistake: no one-line message, the traceback, exit code 1."""
    import subprocess
    import sys

    script = (
        "import sys, ssn.engine.trainer as trainer\n"
        "def broken(spec):\n"
        "    raise TypeError('injected internal error')\n"
        "trainer.build = broken\n"
        "from ssn.apps.cli import main\n"
        f"sys.exit(main(['train', '--data', {str(workspace / 'data.npz')!r}, '--out', {str(tmp_path / 'r')!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 1
    assert (
        "Traceback (most recent call last)" in result.stderr and "TypeError: injected internal error" in result.stderr
    )
    assert "ssn: error" not in result.stderr


def test_the_old_deterministic_switch_in_yaml_is_an_alias_and_checked(tmp_path):
    from ssn import ConfigError
    from ssn.engine.config import read_yaml

    (tmp_path / "a.yaml").write_text("deterministic: true\n")
    assert read_yaml(tmp_path / "a.yaml") == {"method": "deterministic"}
    (tmp_path / "b.yaml").write_text("deterministic: 'false'\n")
    with pytest.raises(ConfigError, match="deterministic must be true or false"):
        read_yaml(tmp_path / "b.yaml")


def test_validation_every_n_steps_with_a_schedule_and_a_weight_average(workspace, tmp_path):
    run = tmp_path / "ema"
    args = [
        "--data",
        str(workspace / "data.npz"),
        "--out",
        str(run),
        "--features",
        "4",
        "8",
        "--batch-size",
        "16",
        "--val-images",
        "8",
        "--val-samples",
        "4",
        "--max-steps",
        "25",
        "--val-every",
        "10",
        "--lr-schedule",
        "cosine",
        "--warmup-steps",
        "3",
        "--ema-decay",
        "0.9",
        "--variance-init",
        "0.01",
        "--factor-weight-decay",
        "1e-4",
        "--crop-scale",
        "0.8",
    ]
    assert main(["train", *args]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 20, 25]  # and at the end of the budget
    assert lines[0]["lr"] > lines[1]["lr"] > lines[2]["lr"] > 0  # cosine decay over the 25 steps
    from safetensors.torch import load_file

    saved = load_file(str(run / "last.safetensors"))
    trained = torch.load(run / "state.pt", weights_only=True)["model"]
    name = "head.mean.weight"
    assert not torch.equal(saved[name], trained[name])  # the checkpoint holds the average, not the last step
    config = json.loads((run / "config.json").read_text())
    assert config["architecture"]["method_kwargs"]["variance_init"] == 0.01


def test_calibrate_stores_a_temperature_that_evaluate_and_sample_use(workspace, tmp_path, capsys):
    data, split = str(workspace / "data.npz"), str(workspace / "split.json")
    run = workspace / "ssn"
    assert (
        main(
            [
                "calibrate",
                "--run",
                str(run),
                "--data",
                data,
                "--split",
                "val",
                "--split-file",
                split,
                "--samples",
                "4",
                "--temperatures",
                "0.01",
                "1",
                "3",
            ]
        )
        == 0
    )
    calibration = json.loads((run / "calibration.json").read_text())
    curve = {point["temperature"]: point["ged"] for point in calibration["curve"]}
    assert set(curve) == {0.01, 1.0, 3.0} and calibration["temperature"] == min(curve, key=curve.get)
    assert calibration["split"] == "val" and calibration["num_images"] == 32
    # the one-pass sweep gives the curve of one sweep per temperature with the same draws
    model, _ = load_run(run)
    data_set, indices = images_to_predict(model, data, "val", split, default_split="val")
    for t, ged in curve.items():
        model.temperature = t
        score = ssn.metrics.GeneralizedEnergyDistance(model.num_classes)
        for chunk, labels in predict_batches(model, data_set.images, indices, 4, seed=0):
            score.update(labels, torch.from_numpy(data_set.masks[chunk]))
        assert score.compute().mean == pytest.approx(ged, abs=1e-12)
    try:
        calibrated, _ = evaluate(workspace, "ssn", samples=4)
        assert calibrated["temperature"] == calibration["temperature"]
        out = tmp_path / "t1.json"
        assert (
            main(
                [
                    "evaluate",
                    "--run",
                    str(run),
                    "--data",
                    data,
                    "--samples",
                    "4",
                    "--temperature",
                    "1",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        assert json.loads(out.read_text())["temperature"] == 1.0
    finally:
        (run / "calibration.json").unlink()  # the other tests use the run at t = 1
    assert main(["calibrate", "--run", str(workspace / "det"), "--data", data]) == 2
    assert "no spread to calibrate" in capsys.readouterr().err


def test_training_on_every_annotators_map(workspace, tmp_path, capsys):
    """--annotators all: each example carries all four maps (A, H, W), the augmentation applied
    to them alike; the SSN (here with the marginal term) and the deterministic U-Net train on
    them, the Prob. U-Net refuses; the ssn's loss weight on another method is refused."""
    from types import SimpleNamespace

    from ssn.data import load_arrays
    from ssn.engine.loading import TrainingExamples
    from ssn.engine.sources import ArraySource

    data = load_arrays(workspace / "data.npz")
    config = SimpleNamespace(
        seed=0, augment=True, crop_scale=1.0, annotators="all", patch_size=None, foreground_share=0.5,
        split_file=None,
    )  # fmt: skip
    source = ArraySource(data, config)
    image, target, roi, _ = TrainingExamples(source, config)[(0, 3, 5)]
    assert image.shape == (1, 32, 32) and target.shape == (4, 32, 32) and roi is None
    one = TrainingExamples(source, SimpleNamespace(**{**vars(config), "annotators": "one"}))[(0, 3, 5)][1]
    assert one.shape == (32, 32) and any(torch.equal(one, t) for t in target)  # the same flips, one of the maps
    common = ["--data", str(workspace / "data.npz"), "--split-file", str(workspace / "split.json"), "--epochs", "1"]
    for method, extra in (("ssn", ["--marginal-weight", "1"]), ("deterministic", [])):
        run = tmp_path / method
        args = ["train", "--out", str(run), "--method", method, "--annotators", "all", *extra, *common, *TRAIN]
        assert main(args) == 0
        config = json.loads((run / "config.json").read_text())
        assert config["annotators"] == "all" and config["marginal_weight"] == (1.0 if method == "ssn" else 0.0)
        assert (run / "best.safetensors").is_file()
    capsys.readouterr()
    wrong = ["train", "--out", str(tmp_path / "d2"), "--method", "deterministic", "--marginal-weight", "1", *common]
    assert main(wrong) == 2
    assert "--marginal-weight: a setting of the ssn method" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "pu"), "--method", "prob-unet", "--annotators", "all", *common]) == 2
    assert "use --annotators one" in capsys.readouterr().err

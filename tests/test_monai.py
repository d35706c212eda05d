"""MONAI networks as backbones: built by name with their own arguments, trained in 2D and 3D."""

import json

import numpy as np
import pytest
import torch

import ssn
from ssn import ConfigError
from ssn.apps.cli import main
from ssn.data import make_synthetic, save_arrays

pytest.importorskip("monai", reason="MONAI is an optional extra: pip install 'ssn[monai]'")


@pytest.mark.parametrize(
    "name, spatial_dims, kwargs",
    [
        ("monai:BasicUNet", 2, {"features": (4, 4, 8, 8, 16, 4)}),
        ("monai:UNet", 2, {"channels": (4, 8, 16), "strides": (2, 2)}),
        ("monai:SegResNet", 3, {"init_filters": 8}),
        ("monai:DynUNet", 3, {}),
    ],
)
def test_monai_networks_keep_any_input_size(name, spatial_dims, kwargs):
    model = ssn.models.create(name, spatial_dims=spatial_dims, num_classes=3, rank=2, out_channels=6, **kwargs)
    spatial = (13, 10, 7)[:spatial_dims] if spatial_dims == 3 else (33, 21)
    dist = model(torch.randn(2, 1, *spatial))
    assert dist.event_shape == (3, *spatial) and model.spec.feature_channels == 6


def test_monai_arguments_are_checked_with_the_list_of_those_it_takes():
    with pytest.raises(ConfigError, match="takes no argument 'widht'; it takes: .*init_filters"):
        ssn.models.create("monai:SegResNet", widht=4)
    with pytest.raises(ConfigError, match="monai:SegResNet refused its arguments"):
        ssn.models.create("monai:SegResNet", init_filters=4)  # 4 channels in 8 groups
    with pytest.raises(ConfigError, match="has no network 'Nope'"):
        ssn.models.create("monai:Nope")


def test_train_evaluate_and_sample_a_2d_basic_unet(tmp_path):
    data = make_synthetic(96, size=32, seed=0)
    save_arrays(tmp_path / "data.npz", data)
    run = tmp_path / "run"
    kwargs = "{features: [8, 8, 16, 16, 32, 8], out_channels: 8}"
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "data.npz"),
                "--out",
                str(run),
                "--model",
                "monai:BasicUNet",
                "--model-kwargs",
                kwargs,
                "--rank",
                "4",
                "--epochs",
                "3",
                "--batch-size",
                "8",
                "--lr",
                "3e-3",
                "--val-images",
                "8",
                "--val-samples",
                "4",
            ]
        )
        == 0
    )
    losses = [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    architecture = json.loads((run / "config.json").read_text())["architecture"]
    assert architecture["backbone"] == "monai:BasicUNet" and architecture["feature_channels"] == 8
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(run),
                "--data",
                str(tmp_path / "data.npz"),
                "--samples",
                "4",
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "m.json").read_text())["num_images"] == 96
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--input",
                str(tmp_path / "data.npz"),
                "--samples",
                "3",
                "--out",
                str(tmp_path / "s"),
                "--figures",
                "1",
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "s" / "samples.npz")["samples"].shape == (96, 3, 32, 32)


def test_train_evaluate_and_sample_a_3d_segresnet(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((8, 1, 12, 16, 16)).astype(np.float32)
    masks = np.zeros((8, 2, 12, 16, 16), np.uint8)
    masks[:, 0, 2:8, 4:12, 4:12] = 1
    masks[:, 1, 3:8, 5:11, 5:11] = 1
    images[:, 0, 2:8, 4:12, 4:12] += 1.0
    np.savez(tmp_path / "vol.npz", images=images, masks=masks)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "vol.npz"),
                "--out",
                str(run),
                "--model",
                "monai:SegResNet",
                "--model-kwargs",
                "{init_filters: 8, out_channels: 8}",
                "--rank",
                "3",
                "--epochs",
                "3",
                "--batch-size",
                "4",
                "--lr",
                "3e-3",
                "--val-images",
                "2",
                "--val-samples",
                "4",
            ]
        )
        == 0
    )
    losses = [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
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
    assert np.load(tmp_path / "s" / "samples.npz")["samples"].shape == (1, 3, 12, 16, 16)


def test_info_lists_segmentation_networks_and_a_classifier_is_refused_in_one_line():
    from ssn.networks import monai_nets

    listed = monai_nets.available()
    assert {"monai:BasicUNet", "monai:UNet", "monai:SegResNet", "monai:DynUNet"} <= set(listed)
    assert not {"monai:DenseNet121", "monai:PatchDiscriminator", "monai:VQVAE"} & set(listed)
    for spatial_dims in (2, 3):
        model = ssn.models.create("monai:DenseNet121", num_classes=2, rank=2, spatial_dims=spatial_dims, in_channels=1)
        with pytest.raises(ConfigError, match="not a feature map|features of the image.s spatial size"):
            model.eval().sample_labels(torch.rand(1, 1, *([32] * spatial_dims)), 2)

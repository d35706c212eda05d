"""A 3D U-Net pooling in-plane only, started from a 2D run's weights ("inflated"): it is the 2D
network applied slice by slice, and ``ssn train --init-from`` starts a 3D run from it."""

import copy
import json

import numpy as np
import pytest
import torch

from ssn.apps.cli import main
from ssn.engine.checkpoints import load_run
from ssn.errors import ConfigError
from ssn.models import ModelSpec, build
from ssn.networks import UNet
from ssn.networks.inflate import inflate_state_dict, inflate_weight


def _spec(method="ssn", spatial_dims=2, norm=None, pool=2, rank=3):
    return ModelSpec(
        method=method,
        backbone="unet",
        spatial_dims=spatial_dims,
        in_channels=1,
        num_classes=2,
        method_kwargs={"rank": rank} if method == "ssn" else {},
        backbone_kwargs={"features": [4, 8, 16], "norm": norm, "pool": pool},
    )


def _trained_like(model):
    """Random, non-zero weights everywhere (biases too), as a trained model has."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.15)
    return model.eval()


def test_pooling_in_plane_only_keeps_any_depth_and_checks_its_factors():
    net = UNet(3, 1, [4, 8, 16], pool=[2, 2, 1])
    assert net.divisor == (4, 4, 1)
    for shape in [(12, 10, 1), (16, 16, 3), (9, 7, 5)]:
        assert net(torch.randn(1, 1, *shape)).shape == (1, 4, *shape)
    for bad in ([2, 2], [2, 3, 1], 4, [2, 2, True]):
        with pytest.raises(ConfigError, match="pool"):
            UNet(3, 1, [4, 8], pool=bad)


def test_an_inflated_kernel_holds_the_2d_kernel_on_its_middle_slice():
    weight = torch.randn(5, 3, 3, 3)
    inflated = inflate_weight(weight, (5, 3, 3, 3, 3))
    torch.testing.assert_close(inflated[..., 1], weight)
    assert inflated[..., 0].abs().sum() == 0 and inflated[..., 2].abs().sum() == 0
    assert torch.equal(inflate_weight(weight, (5, 3, 3, 3, 1))[..., 0], weight)
    with pytest.raises(ConfigError, match="even size"):
        inflate_weight(weight, (5, 3, 3, 3, 2))
    with pytest.raises(ConfigError, match="cannot be inflated"):
        inflate_weight(weight, (5, 4, 3, 3, 3))


@pytest.mark.parametrize("norm, norm_3d", [(None, None), ("batch", "batch"), ("instance", "slice-instance")])
@pytest.mark.parametrize("depth", [5, 1])
def test_the_inflated_ssn_is_the_2d_ssn_slice_by_slice(norm, norm_3d, depth):
    """Exact with no normalisation, batch norm in eval mode, or instance norm taken per slice
    (``slice-instance``); a one-slice volume is not padded in depth."""
    two = _trained_like(build(_spec(norm=norm)))
    three = build(_spec(spatial_dims=3, norm=norm_3d, pool=[2, 2, 1]))
    state, fresh, unused = inflate_state_dict(two.state_dict(), three)
    assert fresh == [] and unused == []
    three.load_state_dict(state)
    three.eval()
    volume = torch.randn(1, 1, 12, 8, depth)  # (B, channels, H, W, depth)
    slices = volume[0].permute(3, 0, 1, 2)  # (depth, channels, H, W)
    with torch.no_grad():
        d3, d2 = three.distribution(volume), two.distribution(slices)
    torch.testing.assert_close(d3.loc[0], d2.loc.permute(1, 2, 3, 0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d3.cov_diag[0], d2.cov_diag.permute(1, 2, 3, 0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d3.cov_factor[0], d2.cov_factor.permute(1, 2, 3, 4, 0), atol=1e-5, rtol=1e-5)


def test_instance_norm_over_the_volume_is_not_the_2d_model_and_slice_instance_needs_a_volume():
    two = _trained_like(build(_spec(norm="instance")))
    three = build(_spec(spatial_dims=3, norm="instance", pool=[2, 2, 1]))
    three.load_state_dict(inflate_state_dict(two.state_dict(), three)[0])
    volume = torch.cat([torch.randn(1, 1, 12, 8, 2), 3 + 2 * torch.randn(1, 1, 12, 8, 2)], -1)  # unlike slices
    with torch.no_grad():
        gap = three.eval().distribution(volume).loc[0] - two.distribution(volume[0].permute(3, 0, 1, 2)).loc.permute(
            1, 2, 3, 0
        )
    assert gap.abs().max() > 0.05
    with pytest.raises(ConfigError, match="slice-instance.*3 spatial dimensions"):
        build(_spec(norm="slice-instance"))


def test_a_deterministic_or_diagonal_model_takes_what_it_uses_of_a_low_rank_one():
    two = _trained_like(build(_spec()))
    det = build(_spec("deterministic", 3, pool=[2, 2, 1]))
    state, fresh, unused = inflate_state_dict(two.state_dict(), det)
    assert fresh == [] and sorted(unused) == sorted(
        k for k in two.state_dict() if k.startswith("head.") and ".mean." not in k
    )
    det.load_state_dict(state)
    volume = torch.randn(1, 1, 8, 8, 3)
    with torch.no_grad():
        logits, mean = det.eval()(volume)[0], two.distribution(volume[0].permute(3, 0, 1, 2)).loc
    torch.testing.assert_close(logits, mean.permute(1, 2, 3, 0), atol=1e-5, rtol=1e-5)
    diagonal = build(_spec(spatial_dims=3, pool=[2, 2, 1], rank=0))
    _, fresh, unused = inflate_state_dict(two.state_dict(), diagonal)
    assert fresh == [] and all(k.startswith("head.factor") for k in unused)


def test_a_unet_pooling_across_slices_or_of_other_widths_is_refused():
    two = _trained_like(build(_spec()))
    with pytest.raises(ConfigError, match=r"pool: \[2, 2, 1\]"):
        inflate_state_dict(two.state_dict(), build(_spec(spatial_dims=3)))
    wider = copy.deepcopy(_spec(spatial_dims=3, pool=[2, 2, 1]))
    wider.backbone_kwargs["features"] = [4, 8, 32]
    with pytest.raises(ConfigError, match="same backbone widths"):
        inflate_state_dict(two.state_dict(), build(wider))


def _slices(tmp_path):
    """A tiny LIDC-like .npz of 3 nodules (16x16 crops, 2 readers) and its split."""
    rng = np.random.default_rng(0)
    rows = [(f"P{p}", "nodule-0", s) for p in range(3) for s in range(3)]
    images = rng.integers(0, 255, (len(rows), 16, 16), dtype=np.uint8)
    masks = np.zeros((len(rows), 2, 16, 16), np.uint8)
    masks[:, :, 5:10, 5:10] = 1
    path = tmp_path / "slices.npz"
    np.savez(path, images=images, masks=masks, patient=np.array([r[0] for r in rows]),
             nodule=np.array([r[1] for r in rows]), slice=np.array([r[2] for r in rows]))  # fmt: skip
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"splits": {"train": ["P0"], "val": ["P1"], "test": ["P2"]}}))
    return path, split


def test_ssn_train_init_from_starts_a_3d_run_as_the_2d_run(tmp_path, capsys):
    npz, split = _slices(tmp_path)
    common = ["--features", "4", "8", "--batch-size", "2", "--val-images", "1", "--val-samples", "2"]
    two_d = tmp_path / "two_d"
    assert main(["train", "--data", str(npz), "--split-file", str(split), "--out", str(two_d),
                 "--max-steps", "2", *common]) == 0  # fmt: skip
    assert main(["convert", "lidc-3d", str(npz), "--out", str(tmp_path / "v"), "--split-file", str(split)]) == 0
    capsys.readouterr()
    three_d = tmp_path / "three_d"
    flags = ["train", "--data", str(tmp_path / "v" / "lidc3d.json"), "--out", str(three_d), "--patch-size", "16", "16", "4",
             "--init-from", str(two_d), "--lr", "1e-9", "--mean-warmup", "0", "--max-steps", "1", *common]  # fmt: skip
    assert main([*flags, "--model-kwargs", "{pool: [2, 2, 1]}"]) == 0
    assert f"started from the weights of {two_d}" in capsys.readouterr().out
    started, _ = load_run(three_d, "last")
    source, _ = load_run(two_d)
    expected, _, _ = inflate_state_dict(source.state_dict(), started)
    for key, value in started.state_dict().items():  # one step at lr 1e-9 leaves the inflated weights
        torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=0)
    assert json.loads((three_d / "config.json").read_text())["init_from"] == str(two_d)
    assert main([*flags, "--overwrite"]) == 2  # pooling across slices: one line, exit 2
    assert "pool: [2, 2, 1]" in capsys.readouterr().err

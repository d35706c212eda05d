"""SSNHead, the U-Net backbone, the two model kinds and the registry."""

import pytest
import torch
from torch import nn

import ssn
from ssn import LowRankLogitDistribution, SSNHead, StochasticSegmentationNetwork
from ssn.backbones import UNet
from ssn.models import DeterministicSegmentationNetwork


@pytest.mark.parametrize("spatial_dims, spatial", [(1, (9,)), (2, (6, 7)), (3, (3, 4, 5))])
def test_head_gives_a_distribution_of_the_documented_shapes(spatial_dims, spatial):
    head = SSNHead(in_channels=5, num_classes=3, rank=4, spatial_dims=spatial_dims)
    dist = head(torch.randn(2, 5, *spatial))
    assert isinstance(dist, LowRankLogitDistribution)
    assert dist.loc.shape == (2, 3, *spatial)
    assert dist.cov_factor.shape == (2, 4, 3, *spatial)
    assert dist.cov_diag.shape == (2, 3, *spatial)
    assert (dist.cov_diag >= head.eps).all()


def test_head_factor_channels_are_rank_major():
    head = SSNHead(in_channels=4, num_classes=3, rank=2)
    features = torch.randn(1, 4, 5, 5)
    raw = head.factor(features)  # (1, R * C, 5, 5)
    dist = head(features)
    for r in range(2):
        for c in range(3):
            torch.testing.assert_close(dist.cov_factor[0, r, c], raw[0, r * 3 + c])
    torch.testing.assert_close(dist.cov_diag, head.log_diag(features).exp() + head.eps)
    torch.testing.assert_close(dist.loc, head.mean(features))


@pytest.mark.parametrize("mask_shape", [(2, 1, 6, 6), (2, 6, 6)])
def test_head_mask_zeroes_the_factor_and_floors_the_diagonal_outside(mask_shape):
    head = SSNHead(in_channels=4, num_classes=2, rank=3, eps=1e-5)
    features = torch.randn(2, 4, 6, 6)
    mask = torch.zeros(mask_shape, dtype=torch.bool)
    mask[..., :3, :] = True
    dist = head(features, mask=mask)
    unmasked = head(features)
    outside = (slice(None), slice(None), slice(3, None))
    assert (dist.cov_factor[:, :, :, 3:] == 0).all()
    torch.testing.assert_close(dist.cov_diag[outside], torch.full_like(dist.cov_diag[outside], 1e-5))
    torch.testing.assert_close(dist.cov_factor[:, :, :, :3], unmasked.cov_factor[:, :, :, :3])
    torch.testing.assert_close(dist.loc, unmasked.loc)
    with pytest.raises(ValueError, match="mask must have shape"):
        head(features, mask=torch.ones(2, 5, 5))


def test_rank_zero_head_is_the_diagonal_model():
    dist = SSNHead(4, 2, rank=0)(torch.randn(1, 4, 5, 5))
    assert dist.rank == 0
    assert dist.rsample((3,)).shape == (3, 1, 2, 5, 5)


@pytest.mark.parametrize("kwargs, message", [({"num_classes": 1}, "num_classes"), ({"rank": -1}, "rank"), ({"eps": 0}, "eps")])
def test_head_rejects_bad_settings(kwargs, message):
    settings = {"in_channels": 4, "num_classes": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        SSNHead(**settings)


@pytest.mark.parametrize("spatial_dims, spatial", [(1, (37,)), (2, (30, 19)), (3, (9, 10, 7))])
def test_unet_keeps_any_input_size(spatial_dims, spatial):
    net = UNet(spatial_dims, in_channels=2, features=(4, 8, 16))
    out = net(torch.randn(2, 2, *spatial))
    assert out.shape == (2, 4, *spatial)
    with pytest.raises(ValueError, match="expects"):
        net(torch.randn(2, 2, *spatial, 3))


def test_tiny_inputs_are_zero_padded_when_reflection_is_impossible():
    net = UNet(2, 1, features=(4, 8, 16, 32))  # needs multiples of 8
    assert net(torch.randn(1, 1, 3, 2)).shape == (1, 4, 3, 2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_registry_builds_both_kinds_on_the_same_backbone(spatial_dims):
    shape = (1, 1) + (12,) * spatial_dims
    model = ssn.models.create("unet", spatial_dims=spatial_dims, in_channels=1, num_classes=3, rank=5, features=(4, 8))
    baseline = ssn.models.create("unet", spatial_dims=spatial_dims, num_classes=3, deterministic=True, features=(4, 8))
    assert isinstance(model, StochasticSegmentationNetwork)
    assert isinstance(baseline, DeterministicSegmentationNetwork)
    assert model.rank == 5 and model.num_classes == 3
    dist = model(torch.randn(shape))
    assert dist.event_shape == (3,) + shape[2:]
    assert baseline(torch.randn(shape)).shape == (1, 3) + shape[2:]
    assert type(model.backbone) is type(baseline.backbone)


def test_registry_lists_names_and_refuses_unknown_ones():
    assert "unet" in ssn.models.available_backbones()
    with pytest.raises(ValueError, match="unknown backbone 'resnet'; available: .*unet"):
        ssn.models.create("resnet")


class Identityish(nn.Module):
    def __init__(self, spatial_dims, in_channels, width=6):
        super().__init__()
        self.out_channels = width
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


def test_any_backbone_can_be_registered_or_wrapped():
    ssn.models.register_backbone("test-identityish")(Identityish)
    model = ssn.models.create("test-identityish", in_channels=3, num_classes=2, rank=2, width=7)
    assert model(torch.randn(2, 3, 8, 8)).event_shape == (2, 8, 8)
    with pytest.raises(ValueError, match="already registered"):
        ssn.models.register_backbone("test-identityish")(Identityish)
    wrapped = StochasticSegmentationNetwork(Identityish(2, 1), feature_channels=6, num_classes=2, rank=1)
    assert wrapped(torch.randn(1, 1, 4, 4)).rank == 1


def test_a_backbone_that_changes_the_size_is_reported():
    shrinking = nn.Conv2d(1, 4, 3)  # no padding: 8x8 -> 6x6
    model = StochasticSegmentationNetwork(shrinking, 4, 2)
    with pytest.raises(ValueError, match="same spatial size|image's spatial size"):
        model(torch.randn(1, 1, 8, 8))


def test_model_trains_end_to_end():
    """A few optimiser steps of backbone + head + loss lower the loss on a fixed batch."""
    torch.manual_seed(0)
    model = ssn.models.create("unet", features=(8, 16), rank=4)
    images = torch.randn(4, 1, 16, 16)
    target = (images[:, 0] > 0).long()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = ssn.ssn_loss(model(images), target, num_samples=10)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

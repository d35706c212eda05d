"""SSNHead, the U-Net backbone, the method interface, the two methods and the registries."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssn
from ssn import ConfigError, LowRankLogitDistribution, SegmentationModel, SSNHead, StochasticSegmentationNetwork
from ssn.models import DeterministicSegmentationNetwork
from ssn.networks import UNet


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


@pytest.mark.parametrize(
    "kwargs, message", [({"num_classes": 1}, "num_classes"), ({"rank": -1}, "rank"), ({"eps": 0}, "eps")]
)
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
def test_registry_builds_both_methods_on_the_same_backbone(spatial_dims):
    shape = (1, 1) + (12,) * spatial_dims
    model = ssn.models.create("unet", spatial_dims=spatial_dims, in_channels=1, num_classes=3, rank=5, features=(4, 8))
    baseline = ssn.models.create(
        "unet", method="deterministic", spatial_dims=spatial_dims, num_classes=3, features=(4, 8)
    )
    assert isinstance(model, StochasticSegmentationNetwork) and isinstance(model, SegmentationModel)
    assert isinstance(baseline, DeterministicSegmentationNetwork) and isinstance(baseline, SegmentationModel)
    assert model.rank == 5 and model.num_classes == 3
    dist = model(torch.randn(shape))
    assert dist.event_shape == (3,) + shape[2:]
    assert baseline(torch.randn(shape)).shape == (1, 3) + shape[2:]
    assert type(model.backbone) is type(baseline.backbone)


def test_registry_lists_names_and_refuses_unknown_ones():
    assert "unet" in ssn.models.available_backbones()
    assert ssn.models.available_methods() == ["deterministic", "prob-unet", "ssn"]
    with pytest.raises(ConfigError, match="unknown backbone 'resnet'; available: .*unet"):
        ssn.models.create("resnet")
    with pytest.raises(ConfigError, match="unknown method 'bayes'"):
        ssn.models.create("unet", method="bayes")


def test_settings_go_to_the_method_and_the_rest_to_the_backbone():
    model = ssn.models.create("unet", rank=3, mc_samples=8, features=(4, 8), norm="batch")
    assert model.rank == 3 and model.mc_samples == 8
    assert isinstance(model.backbone.encoders[0][1], nn.BatchNorm2d)
    with pytest.raises(ConfigError, match="'rank': not a setting of method 'deterministic'"):
        ssn.models.create("unet", method="deterministic", rank=3)
    with pytest.raises(
        ConfigError, match="backbone 'unet' takes no argument 'width'; it takes: features, norm, dropout"
    ):
        ssn.models.create("unet", width=8)
    with pytest.raises(ConfigError, match="features must be one or more positive"):
        ssn.models.create("unet", features=[0, 8])


class Widthy(nn.Module):
    """A backbone with its own argument and no ``out_channels`` attribute."""

    def __init__(self, spatial_dims, in_channels, width=6):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


@pytest.fixture
def widthy():
    ssn.models.register_backbone("test-widthy")(Widthy)
    yield "test-widthy"
    ssn.models.unregister_backbone("test-widthy")


def test_a_registered_backbone_gets_its_own_arguments_and_a_dry_run_finds_its_channels(widthy):
    model = ssn.models.create(widthy, in_channels=3, num_classes=2, rank=2, width=7)
    assert model.spec.feature_channels == 7 and model.head.mean.in_channels == 7
    assert model.spec.backbone_kwargs == {"width": 7}
    assert model(torch.randn(2, 3, 8, 8)).event_shape == (2, 8, 8)
    with pytest.raises(ConfigError, match="already registered"):
        ssn.models.register_backbone(widthy)(Widthy)
    wrapped = StochasticSegmentationNetwork(Widthy(2, 1), feature_channels=6, num_classes=2, rank=1)
    assert wrapped(torch.randn(1, 1, 4, 4)).rank == 1


def test_the_spec_names_every_argument_and_rebuilds_the_same_model():
    model = ssn.models.create("unet", rank=4, features=(4, 8))
    spec = model.spec.as_dict()
    assert spec["method_kwargs"] == {
        "rank": 4,
        "eps": 1e-5,
        "mc_samples": 20,
        "antithetic": True,
        "variance_init": None,
        "mean_weight": 0.0,  # recorded since 0.8 (runs without it rebuild with the paper's loss)
        "marginal_weight": 0.0,  # recorded since 0.8 (likewise)
    }
    assert spec["backbone_kwargs"] == {
        "features": [4, 8],
        "norm": "instance",
        "dropout": 0.0,
        "convs_per_level": 2,
        "upsample": "transposed",  # recorded since 0.7 (runs without it rebuild with this default)
        "pool": 2,  # recorded since 0.8 (likewise)
    }
    rebuilt = ssn.models.build(ssn.models.ModelSpec.from_dict(json.loads(json.dumps(spec))))
    rebuilt.load_state_dict(model.state_dict())
    images = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(rebuilt.eval()(images).loc, model.eval()(images).loc)


def test_a_backbone_that_changes_the_size_is_reported_as_a_configuration_error():
    shrinking = nn.Conv2d(1, 4, 3)  # no padding: 8x8 -> 6x6
    for model in (StochasticSegmentationNetwork(shrinking, 4, 2), DeterministicSegmentationNetwork(shrinking, 4, 2)):
        with pytest.raises(ConfigError, match=r"image's spatial size \(8, 8\); it returned \(6, 6\)"):
            model.sample_labels(torch.randn(1, 1, 8, 8), 2)


@pytest.mark.parametrize("method", ["ssn", "deterministic", "prob-unet"])
@pytest.mark.parametrize("spatial", [(16, 16), (6, 8, 8)])
def test_every_method_implements_the_interface(method, spatial):
    """loss (scalar), sample_labels (N, B, *S) uint8, mean_probabilities (B, C, *S) summing to 1."""
    torch.manual_seed(0)
    settings = {"ssn": {"rank": 3}, "prob-unet": {"encoder_features": (4, 8)}}.get(method, {})
    model = ssn.models.create(
        "unet", method=method, spatial_dims=len(spatial), num_classes=3, features=(4, 8), **settings
    )
    images, target = torch.randn(2, 1, *spatial), torch.randint(0, 3, (2, *spatial))
    loss = model.loss(images, target)
    assert loss.shape == () and loss.requires_grad
    labels = model.sample_labels(images, 5)
    assert labels.shape == (5, 2, *spatial) and labels.dtype == torch.uint8 and labels.max() < 3
    probabilities = model.mean_probabilities(images)
    assert probabilities.shape == (2, 3, *spatial)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(2, *spatial))


def test_the_deterministic_loss_is_the_summed_cross_entropy_and_its_samples_the_argmax():
    torch.manual_seed(0)
    model = ssn.models.create("unet", method="deterministic", num_classes=3, features=(4, 8))
    images, target = torch.randn(2, 1, 10, 10), torch.randint(0, 3, (2, 10, 10))
    expected = F.cross_entropy(model(images), target, reduction="sum") / 2
    torch.testing.assert_close(model.loss(images, target), expected)
    mask = torch.zeros(2, 10, 10, dtype=torch.bool)
    mask[:, :5] = True
    inside = F.cross_entropy(model(images), target, reduction="none")[mask].sum() / 2
    torch.testing.assert_close(model.loss(images, target, mask=mask), inside)
    labels = model.sample_labels(images, 4)
    assert (labels == model(images).argmax(1).to(torch.uint8)).all()
    torch.testing.assert_close(model.mean_probabilities(images), model(images).softmax(1))


def test_the_ssn_loss_is_ssn_loss_of_its_distribution():
    model = ssn.models.create("unet", num_classes=3, rank=2, mc_samples=6, features=(4, 8))
    images, target = torch.randn(2, 1, 10, 10), torch.randint(0, 3, (2, 10, 10))
    torch.manual_seed(1)
    loss = model.loss(images, target)
    torch.manual_seed(1)
    expected = ssn.ssn_loss(model.distribution(images), target, num_samples=6, antithetic=True)
    torch.testing.assert_close(loss, expected)


def test_ssn_mean_probabilities_match_the_gaussian_integral_of_the_sigmoid():
    """Two classes: p(fg) = E[sigmoid(m + s z)], m and s^2 of the log-odds, by Gauss-Hermite quadrature."""
    torch.manual_seed(0)
    model = ssn.models.create("unet", num_classes=2, rank=2, features=(4, 8)).eval()
    images = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        contrast = model(images).class_contrast(1, 0)
    m, s = contrast.loc[0, 0].double(), contrast.variance[0, 0].double().sqrt()
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)  # weight exp(-z^2 / 2)
    nodes, weights = torch.tensor(nodes), torch.tensor(weights) / math.sqrt(2 * math.pi)
    exact = (torch.sigmoid(m[..., None] + s[..., None] * nodes) * weights).sum(-1)
    estimate = model.mean_probabilities(images, num_samples=4000, generator=torch.Generator().manual_seed(0))[0, 1]
    assert (estimate.double() - exact).abs().max() < 0.02  # 4000 draws: standard error <= 0.008


def test_sampling_with_a_generator_repeats():
    model = ssn.models.create("unet", rank=2, features=(4, 8)).eval()
    images = torch.randn(2, 1, 12, 12)
    first = model.sample_labels(images, 6, generator=torch.Generator().manual_seed(3))
    second = model.sample_labels(images, 6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)


def test_model_trains_end_to_end():
    """A few optimiser steps of backbone + head + loss lower the loss on a fixed batch."""
    torch.manual_seed(0)
    model = ssn.models.create("unet", features=(8, 16), rank=4, mc_samples=10)
    images = torch.randn(4, 1, 16, 16)
    target = (images[:, 0] > 0).long()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = model.loss(images, target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_variance_init_starts_the_head_near_zero_variance():
    torch.manual_seed(0)
    features = torch.randn(2, 8, 6, 6)
    default = SSNHead(8, 3, rank=4)(features)
    small = SSNHead(8, 3, rank=4, variance_init=1e-3)(features)
    torch.testing.assert_close(small.cov_diag, torch.full_like(small.cov_diag, 1e-3 + 1e-5))
    assert small.variance.mean() < 0.01 < 0.5 < default.variance.mean()
    assert small.cov_factor.abs().max() > 0  # not zero: a zero factor gets no gradient


def test_variance_init_is_a_recorded_setting_of_the_ssn():
    model = ssn.models.create("unet", features=(4, 8), variance_init=0.01)
    assert model.spec.method_kwargs["variance_init"] == 0.01
    with pytest.raises(ConfigError, match="variance_init"):
        ssn.models.create("unet", features=(4, 8), variance_init=-1.0)


def test_the_phiseg_unet_has_seven_levels_of_three_convolutions_with_batch_norm():
    backbone = ssn.networks.build_backbone("phiseg-unet", 2, 1)
    assert len(backbone.encoders) == 7 and backbone.divisor == 64 and backbone.out_channels == 32
    convs = [m for m in backbone.encoders[0] if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and any(isinstance(m, nn.BatchNorm2d) for m in backbone.encoders[0])
    assert [block[0].out_channels for block in backbone.encoders] == [32, 64, 128, 192, 192, 192, 192]
    narrow = ssn.models.create("phiseg-unet", features=(4, 4, 4, 4, 4, 4, 4))
    assert narrow.sample_labels(torch.randn(1, 1, 40, 30), 2).shape == (2, 1, 40, 30)


def test_the_temperature_scales_the_deviation_of_each_sample_from_the_mean():
    torch.manual_seed(0)
    model = ssn.models.create("unet", rank=3, num_classes=3, features=(4, 8)).eval()
    images = torch.randn(1, 1, 10, 10)
    dist = model(images)
    model.temperature = 0.0
    assert torch.equal(model.sample_labels(images, 3)[0, 0], dist.loc.argmax(1)[0].to(torch.uint8))
    hot = dist.scaled(2.0)
    torch.testing.assert_close(hot.variance, 4 * dist.variance)
    draw = dist.rsample((2,), generator=torch.Generator().manual_seed(5))
    hot_draw = hot.rsample((2,), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(hot_draw - dist.loc, 2 * (draw - dist.loc))


@pytest.mark.parametrize("method", ["ssn", "prob-unet", "deterministic"])
def test_samples_at_several_temperatures_are_those_drawn_at_each_temperature_alone(method):
    """sample_labels_at (one network pass for the SSN and the Prob. U-Net) gives, map for map,
    what sample_labels gives with the temperature set and the same per-image generators."""
    torch.manual_seed(0)
    settings = {"ssn": {"rank": 3}, "prob-unet": {"encoder_features": (4, 8), "latent_dim": 3}}.get(method, {})
    model = ssn.models.create("unet", method=method, num_classes=3, features=(4, 8), **settings).eval()
    with torch.no_grad():  # a mean and a spread large enough for the temperatures to change the maps
        for parameter in model.parameters():
            parameter.mul_(4)
    images = torch.randn(2, 1, 12, 10)
    temperatures = [0.0, 0.5, 1.0, 2.5]
    model.temperature = 0.7
    generators = lambda: ssn.randomness.generators_for(3, [11, 12])  # noqa: E731
    together = model.sample_labels_at(images, temperatures, 6, generators=generators)
    assert model.temperature == 0.7  # left as it was
    alone = []
    for t in temperatures:
        model.temperature = t
        alone.append(model.sample_labels(images, 6, generator=generators()))
    assert [maps.shape for maps in together] == [(6, 2, 12, 10)] * 4
    for t, mine, reference in zip(temperatures, together, alone):
        assert torch.equal(mine, reference), t
    if method != "deterministic":  # the temperatures do change the samples
        assert not torch.equal(together[1], together[3]) and together[0].unique(dim=0).shape[0] == 1


def test_the_mean_loss_is_the_ssn_loss_at_zero_covariance_and_leaves_the_covariance_head_alone():
    torch.manual_seed(0)
    model = ssn.models.create("unet", rank=2, features=(4, 8), mc_samples=4)
    images, target = torch.randn(2, 1, 10, 10), torch.randint(0, 2, (2, 10, 10))
    dist = model(images)
    frozen = LowRankLogitDistribution(
        dist.loc, torch.zeros_like(dist.cov_factor), torch.full_like(dist.cov_diag, 1e-12)
    )
    torch.testing.assert_close(
        model.mean_loss(images, target), ssn.ssn_loss(frozen, target, num_samples=4), rtol=1e-4, atol=1e-3
    )
    model.mean_loss(images, target).backward()
    assert model.head.factor.weight.grad is None and model.head.log_diag.weight.grad is None
    assert model.head.mean.weight.grad.abs().sum() > 0


def test_mean_weight_adds_that_multiple_of_the_mean_cross_entropy_to_the_papers_loss():
    torch.manual_seed(0)
    plain = ssn.models.create("unet", rank=2, features=(4, 8), mc_samples=4)
    weighted = ssn.models.create("unet", rank=2, features=(4, 8), mc_samples=4, mean_weight=0.5)
    weighted.load_state_dict(plain.state_dict())
    images, target = torch.randn(2, 1, 10, 10), torch.randint(0, 2, (2, 10, 10))
    mask = torch.ones(2, 10, 10, dtype=torch.bool)
    mask[:, :3] = False
    for roi in (None, mask):
        paper = plain.loss(images, target, roi, generator=torch.Generator().manual_seed(1))
        both = weighted.loss(images, target, roi, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(both, paper + 0.5 * plain.mean_loss(images, target, roi))
    assert weighted.mean_weight == 0.5 and "mean_weight=0.5" in repr(weighted)
    with pytest.raises(ConfigError, match="mean_weight must be 0 or more"):
        ssn.models.create("unet", features=(4, 8), mean_weight=-1)


def test_marginal_weight_reaches_the_loss_and_is_recorded_in_the_spec():
    torch.manual_seed(0)
    model = ssn.models.create("unet", rank=2, features=(4, 8), mc_samples=4, marginal_weight=0.25)
    images, target = torch.randn(2, 1, 10, 10), torch.randint(0, 2, (2, 10, 10))
    got = model.loss(images, target, generator=torch.Generator().manual_seed(1))
    want = ssn.ssn_loss(model(images), target, num_samples=4, generator=torch.Generator().manual_seed(1),
                        marginal_weight=0.25)  # fmt: skip
    torch.testing.assert_close(got, want)
    assert model.spec.as_dict()["method_kwargs"]["marginal_weight"] == 0.25
    assert "marginal_weight=0.25" in repr(model)
    with pytest.raises(ConfigError, match="marginal_weight must be 0 or more"):
        ssn.models.create("unet", features=(4, 8), marginal_weight=-1)


@pytest.mark.parametrize("spatial", [(25, 23, 19), (31, 29)])
def test_deepmedic_gives_features_of_the_input_size_and_trains(spatial):
    from ssn.models import ModelSpec, build

    spec = ModelSpec(
        method="ssn",
        backbone="deepmedic",
        spatial_dims=len(spatial),
        in_channels=2,
        num_classes=4,
        method_kwargs={"rank": 3},
        backbone_kwargs={"channels": [8, 8, 16], "fc_channels": [16]},
    )
    model = build(spec)
    images, target = torch.randn(2, 2, *spatial), torch.randint(0, 4, (2, *spatial))
    loss = model.loss(images, target)
    loss.backward()
    assert model(images).loc.shape == (2, 4, *spatial)
    context = model.backbone.context[0].weight.grad
    assert context is not None and context.abs().sum() > 0  # the subsampled pathway is used


def test_deepmedic_refuses_bad_arguments():
    from ssn.errors import ConfigError
    from ssn.networks.deepmedic import DeepMedic

    with pytest.raises(ConfigError, match="subsample"):
        DeepMedic(subsample=1)
    with pytest.raises(ConfigError, match="2 or 3"):
        DeepMedic(spatial_dims=1)


def test_the_unet_can_upsample_by_interpolation_without_the_transposed_lattice():
    from torch import nn

    from ssn.networks.unet import UNet

    for spatial_dims, shape in ((2, (1, 1, 37, 50)), (3, (1, 1, 12, 16, 9))):
        net = UNet(spatial_dims, 1, (4, 8, 16), upsample="linear")
        assert not any(isinstance(m, nn.modules.conv._ConvTransposeNd) for m in net.modules())
        assert net(torch.randn(shape)).shape == (1, 4, *shape[2:])
    # a constant image: interpolation gives constant features inside (no period-2 stamp); transposed does not
    flat = torch.ones(1, 1, 32, 32)
    torch.manual_seed(0)
    linear = UNet(2, 1, (4, 8, 16), norm=None, upsample="linear")(flat)[0, :, 8:24, 8:24]
    torch.manual_seed(0)
    transposed = UNet(2, 1, (4, 8, 16), norm=None)(flat)[0, :, 8:24, 8:24]
    checker = lambda x: float((x[:, ::2, ::2] - x[:, 1::2, ::2]).abs().mean())  # noqa: E731
    assert 100 * checker(linear) < checker(transposed)  # (the borders reach in a little: not exactly 0)
    with pytest.raises(ConfigError, match="upsample must be"):
        UNet(2, 1, (4, 8), upsample="nearest")

"""The Probabilistic U-Net (Kohl et al. 2018): its loss, its prior sampling, and a toy with two modes."""

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import kl_divergence

import ssn
from ssn.errors import ConfigError


def small(**kwargs):
    return ssn.models.create("unet", method="prob-unet", features=(4, 8), encoder_features=(4, 8), **kwargs)


def test_the_loss_is_cross_entropy_at_a_posterior_latent_plus_beta_kl():
    torch.manual_seed(0)
    model = small(num_classes=3, beta=2.5)
    images, target = torch.randn(2, 1, 12, 12), torch.randint(0, 3, (2, 12, 12))
    torch.manual_seed(1)
    loss = model.loss(images, target)
    torch.manual_seed(1)  # the same posterior draw
    posterior = model.posterior(torch.cat([images, F.one_hot(target, 3).movedim(-1, 1).float()], 1))
    z = posterior.rsample()
    ce = F.cross_entropy(model.logits(model.features(images), z), target, reduction="none").sum((1, 2))
    expected = (ce + 2.5 * kl_divergence(posterior, model.prior(images))).mean()
    torch.testing.assert_close(loss, expected)


def test_samples_come_from_the_prior_and_repeat_with_a_generator():
    """Samples are the argmax of the logits (the fast path splits the first 1x1 convolution)."""
    model = small().eval()
    images = torch.randn(2, 1, 12, 12)
    first = model.sample_labels(images, 5, generator=torch.Generator().manual_seed(0))
    again = model.sample_labels(images, 5, generator=torch.Generator().manual_seed(0))
    assert first.shape == (5, 2, 12, 12) and torch.equal(first, again)
    with torch.no_grad():
        prior = model.prior(images).base_dist
        noise = torch.randn((5, *prior.loc.shape), generator=torch.Generator().manual_seed(0))  # (n, B, latent)
        features = model.features(images)
        expected = torch.stack([model.logits(features, prior.loc + prior.scale * e).argmax(1) for e in noise])
    assert torch.equal(first, expected.to(torch.uint8))


def test_it_learns_a_toy_with_two_modes():
    """One blank image, labelled half of the time with a square and half of the time empty:
    the samples are whole squares or empty (coherent), about half of each."""
    torch.manual_seed(0)
    model = ssn.models.create("unet", method="prob-unet", features=(8, 16), encoder_features=(8, 16))
    images = torch.zeros(16, 1, 16, 16)
    square = torch.zeros(16, 16, dtype=torch.long)
    square[4:12, 4:12] = 1
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        marked = torch.rand(16, generator=generator) < 0.5
        target = torch.where(marked[:, None, None], square, torch.zeros_like(square))
        loss = model.loss(images, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    labels = model.eval().sample_labels(images[:1], 400, generator=torch.Generator().manual_seed(1))[:, 0]
    inside = labels[:, 4:12, 4:12].float().mean((1, 2))
    assert ((inside > 0.95) | (inside < 0.05)).float().mean() > 0.9  # whole squares or none
    assert 0.25 < (inside > 0.5).float().mean() < 0.75  # both modes, neither dominating
    assert labels.sum((1, 2)).sub(labels[:, 4:12, 4:12].sum((1, 2))).float().mean() < 3  # nothing outside


def test_the_mean_probabilities_average_the_prior_samples():
    model = small().eval()
    images = torch.randn(1, 1, 12, 12)
    probabilities = model.mean_probabilities(images, num_samples=8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        prior = model.prior(images).base_dist
        noise = torch.randn((8, *prior.loc.shape), generator=torch.Generator().manual_seed(0))
        features = model.features(images)
        expected = sum(model.logits(features, prior.loc + prior.scale * e).softmax(1) for e in noise) / 8
    torch.testing.assert_close(probabilities, expected)


@pytest.mark.parametrize("kwargs, message", [({"latent_dim": 0}, "latent_dim"), ({"beta": -1.0}, "beta")])
def test_bad_settings_are_configuration_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        small(**kwargs)


def test_it_reads_images_of_several_channels():
    model = small(in_channels=3, num_classes=4)
    assert model.loss(torch.randn(2, 3, 8, 8), torch.randint(0, 4, (2, 8, 8))).isfinite()


def test_no_nan_under_a_learning_rate_of_ten():
    """The stress test of the scale issue: the clamped log standard deviations keep the KL and the
    samples finite while Adam at lr 10 throws the weights about."""
    torch.manual_seed(0)
    model = small()
    optimiser = torch.optim.Adam(model.parameters(), lr=10.0)
    images, target = torch.randn(4, 1, 16, 16), torch.randint(0, 2, (4, 16, 16))
    for _ in range(30):
        loss = model.loss(images, target)
        assert torch.isfinite(loss)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.eval().sample_labels(images, 3).shape == (3, 4, 16, 16)


def test_a_non_finite_latent_gives_a_non_finite_loss_not_an_exception():
    """Training skips a non-finite step on every process alike; an exception on one would stall the others."""
    model = small(num_classes=2)
    images = torch.full((2, 1, 12, 12), float("nan"))
    loss = model.loss(images, torch.zeros(2, 12, 12, dtype=torch.long))
    assert not torch.isfinite(loss)

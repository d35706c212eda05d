"""Steering samples: kept draws, class scales, temperature, traversals, interpolation, marks."""

import math

import pytest
import torch

from ssn import LogitNoise, LowRankLogitDistribution, labels_from_logits
from ssn.steering import interpolate, latent_traversal, sample_with_marks


def _random(batch=2, classes=3, rank=4, spatial=(5, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return LowRankLogitDistribution(
        torch.randn(batch, classes, *spatial, generator=g),
        torch.randn(batch, rank, classes, *spatial, generator=g),
        torch.rand(batch, classes, *spatial, generator=g) + 0.1,
    )


def _dense(dist, noise):
    """mu + P z + sqrt(D) eps, written out per draw, image and pixel."""
    n, batch = noise.z.shape[:2]
    out = torch.empty(n, *dist.loc.shape)
    for i in range(n):
        for b in range(batch):
            factor = dist.cov_factor[b].reshape(dist.rank, -1)  # (R, N)
            value = (
                dist.loc[b].flatten()
                + factor.T @ noise.z[i, b]
                + dist.cov_diag[b].flatten().sqrt() * noise.eps[i, b].flatten()
            )
            out[i, b] = value.view(dist.loc.shape[1:])
    return out


def test_logits_from_noise_are_the_samples_of_those_draws():
    dist = _random()
    noise = dist.draw_noise(3, torch.Generator().manual_seed(1))
    assert noise.z.shape == (3, 2, 4) and noise.eps.shape == (3, 2, 3, 5, 6)
    torch.testing.assert_close(dist.logits_from_noise(noise), _dense(dist, noise))


def test_class_scales_one_reproduce_zero_give_the_mean_minus_one_mirror():
    dist = _random()
    noise = dist.draw_noise(2, torch.Generator().manual_seed(1))
    sample = dist.logits_from_noise(noise)
    torch.testing.assert_close(dist.logits_from_noise(noise, class_scales=[1.0, 1.0, 1.0]), sample)
    torch.testing.assert_close(dist.logits_from_noise(noise, class_scales=[0.0, 0.0, 0.0]), dist.loc.expand_as(sample))
    torch.testing.assert_close(dist.logits_from_noise(noise, class_scales=[-1.0, -1.0, -1.0]), 2 * dist.loc - sample)
    # one class at a time, per draw: class 1 scaled by 3 in draw 0 and by -2 in draw 1, the rest kept
    scales = torch.tensor([[1.0, 3.0, 1.0], [1.0, -2.0, 1.0]])
    edited = dist.logits_from_noise(noise, class_scales=scales)
    deviation = sample - dist.loc
    torch.testing.assert_close(
        edited[:, :, 1], dist.loc[:, 1] + torch.tensor([3.0, -2.0]).view(2, 1, 1, 1) * deviation[:, :, 1]
    )
    torch.testing.assert_close(edited[:, :, [0, 2]], sample[:, :, [0, 2]])
    with pytest.raises(ValueError, match="class_scales"):
        dist.logits_from_noise(noise, class_scales=[1.0, 2.0])


def test_temperature_scales_every_class_as_the_scaled_distribution_does():
    dist = _random()
    noise = dist.draw_noise(2, torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        dist.logits_from_noise(noise, temperature=0.6), dist.scaled(0.6).logits_from_noise(noise)
    )
    torch.testing.assert_close(
        dist.logits_from_noise(noise, class_scales=[2.0, 2.0, 2.0], temperature=0.5), dist.logits_from_noise(noise)
    )


def test_labels_from_logits_is_the_class_argmax():
    logits = torch.randn(3, 2, 5, 7, 4)
    assert torch.equal(labels_from_logits(logits), logits.argmax(2).to(torch.uint8))


def test_a_traversal_moves_one_latent_factor_and_holds_the_rest():
    dist = _random()
    noise = dist.draw_noise(1, torch.Generator().manual_seed(2))
    path = latent_traversal(noise, 2, [-2.0, 0.0, 2.0])
    logits = dist.logits_from_noise(path)
    assert torch.equal(path.z[:, :, 2], torch.tensor([[-2.0, -2.0], [0.0, 0.0], [2.0, 2.0]]))
    assert torch.equal(path.z[:, :, [0, 1, 3]], noise.z[:, :, [0, 1, 3]].expand(3, -1, -1))
    # logits move along column 2 of P only: (v - v') P_2
    torch.testing.assert_close(logits[2] - logits[0], 4.0 * dist.cov_factor[:, 2])


def test_interpolation_follows_the_great_circle_between_two_draws():
    dist = _random(batch=1)
    a, b = dist.draw_noise(1, torch.Generator().manual_seed(3)), dist.draw_noise(1, torch.Generator().manual_seed(4))
    path = interpolate(a, b, 5)
    torch.testing.assert_close(path.select(0).z, a.z)
    torch.testing.assert_close(path.select(4).eps, b.eps)
    norms = [torch.cat([path.z[i].flatten(), path.eps[i].flatten()]).norm() for i in range(5)]
    ends = [torch.cat([x.z.flatten(), x.eps.flatten()]).norm() for x in (a, b)]
    # on the great circle the norm stays between the ends' (equal norms: constant); a straight
    # line shrinks towards the middle (by about 1/sqrt(2) for long independent draws)
    assert min(norms) >= min(ends) * 0.999 and max(norms) <= max(ends) * 1.001
    middle = (a.z + b.z) / 2, (a.eps + b.eps) / 2
    assert torch.cat([middle[0].flatten(), middle[1].flatten()]).norm() < 0.9 * min(norms)


def _object_in_or_out(loc_inside: float):
    """Two classes on 12x12; a 4x4 object whose foreground log-odds move together (one latent
    factor of weight 2 on it) with mean ``loc_inside``; the rest is surely background."""
    loc = torch.zeros(1, 2, 12, 12)
    loc[0, 1] = -30.0
    loc[0, 1, 4:8, 4:8] = loc_inside
    factor = torch.zeros(1, 1, 2, 12, 12)
    factor[0, 0, 1, 4:8, 4:8] = 2.0
    return LowRankLogitDistribution(loc, factor, torch.full((1, 2, 12, 12), 1e-4))


@pytest.mark.parametrize("loc_inside, method", [(0.0, "rejection"), (-7.0, "optimisation")])
def test_marking_part_of_an_object_switches_the_whole_object(loc_inside, method):
    """In (p = 1/2) or rare (p = Phi(-3.5) ~ 2e-4 under the model): marking one pixel of the
    object as foreground turns the whole object on in every sample, and nothing else."""
    dist = _object_in_or_out(loc_inside)
    free = dist.sample_labels(400, generator=torch.Generator().manual_seed(0))[:, 0, 5, 5].float().mean()
    assert float(free) == pytest.approx(0.5, abs=0.1) if loc_inside == 0 else float(free) < 0.01
    marks = torch.full((1, 12, 12), -1)
    marks[0, 5, 5] = 1
    out = sample_with_marks(dist, marks, num_samples=16, generator=torch.Generator().manual_seed(1), max_draws=512)
    assert out.method == [method] and out.agreement == [1.0]
    expected = torch.zeros(12, 12, dtype=torch.uint8)
    expected[4:8, 4:8] = 1
    assert out.labels.shape == (16, 1, 12, 12) and bool((out.labels == expected).all())
    if method == "optimisation":
        assert out.acceptance[0] < 16 / 512  # too rare for rejection


def test_marking_the_object_off_switches_it_off_everywhere():
    dist = _object_in_or_out(0.0)
    marks = torch.full((1, 12, 12), -1)
    marks[0, 7, 4] = 0
    out = sample_with_marks(dist, marks, num_samples=8, generator=torch.Generator().manual_seed(2))
    assert out.method == ["rejection"] and int(out.labels.sum()) == 0
    assert 0.3 < out.acceptance[0] < 0.7


def test_optimisation_keeps_the_noise_of_unmarked_pixels():
    dist = _object_in_or_out(-7.0)
    marks = torch.full((1, 12, 12), -1)
    marks[0, 5, 5] = 1
    start = dist.draw_noise(4, torch.Generator().manual_seed(5))
    from ssn.steering import _by_optimisation

    moved = _by_optimisation(dist, marks, marks >= 0, start, 300, 0.1, 0.5, None, 1.0)
    unmarked = (marks < 0).expand(4, 1, 12, 12)
    for c in range(2):
        assert torch.equal(moved.eps[:, :, c][unmarked], start.eps[:, :, c][unmarked])
    assert (moved.z - start.z).abs().max() > 1  # the shared factor carried the object


def test_bad_marks_and_noise_are_refused():
    dist = _random(batch=1, classes=3)
    with pytest.raises(ValueError, match="marks must have shape"):
        sample_with_marks(dist, torch.full((1, 4, 4), -1))
    with pytest.raises(ValueError, match="class in"):
        sample_with_marks(dist, torch.full((1, 5, 6), 3))
    with pytest.raises(ValueError, match="LogitNoise"):
        dist.logits_from_noise(LogitNoise(torch.zeros(1, 1, 2), torch.zeros(1, 1, 3, 5, 6)))
    assert math.isfinite(float(dist.logits_from_noise(dist.draw_noise(1)).sum()))

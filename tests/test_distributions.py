"""LowRankLogitDistribution: the specification of the logit-map Gaussian."""

import math

import pytest
import torch
from torch.distributions import LowRankMultivariateNormal

from ssn import LowRankLogitDistribution


def make(batch=2, classes=3, spatial=(4, 5), rank=2, dtype=torch.float64, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, classes, *spatial, generator=g, dtype=dtype)
    factor = 0.5 * torch.randn(batch, rank, classes, *spatial, generator=g, dtype=dtype)
    diag = torch.rand(batch, classes, *spatial, generator=g, dtype=dtype) + 0.1
    return LowRankLogitDistribution(loc, factor, diag, **kwargs)


def torch_reference(dist):
    """The same Gaussian as torch's LowRankMultivariateNormal on the flattened event."""
    batch = dist.loc.shape[0]
    return LowRankMultivariateNormal(
        dist.loc.reshape(batch, -1),
        dist.cov_factor.reshape(batch, dist.rank, -1).transpose(1, 2),
        dist.cov_diag.reshape(batch, -1),
    )


SPATIAL = [(7,), (4, 5), (3, 4, 2)]


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("rank", [0, 1, 3])
def test_shapes(spatial, rank):
    dist = make(spatial=spatial, rank=rank)
    assert dist.batch_shape == (2,)
    assert dist.event_shape == (3, *spatial)
    assert dist.rsample().shape == (2, 3, *spatial)
    assert dist.rsample((5,)).shape == (5, 2, 3, *spatial)
    assert dist.rsample((2, 3)).shape == (2, 3, 2, 3, *spatial)
    assert dist.sample_labels(6).shape == (6, 2, *spatial)
    assert dist.log_prob(dist.rsample((5,))).shape == (5, 2)
    assert dist.entropy().shape == (2,)
    assert dist.event_size == 3 * math.prod(spatial)


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("rank", [0, 1, 4])
def test_log_prob_and_entropy_equal_torch_low_rank_normal(spatial, rank):
    dist = make(spatial=spatial, rank=rank)
    reference = torch_reference(dist) if rank else None
    value = dist.rsample((3,))
    ours = dist.log_prob(value)
    if reference is None:  # rank 0: independent Gaussians
        normal = torch.distributions.Normal(dist.loc, dist.cov_diag.sqrt())
        expected = normal.log_prob(value).flatten(2).sum(-1)
        expected_entropy = normal.entropy().flatten(1).sum(-1)
    else:
        expected = reference.log_prob(value.flatten(2))
        expected_entropy = reference.entropy()
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(dist.entropy(), expected_entropy, rtol=1e-10, atol=1e-8)


def test_variance_is_the_diagonal_of_the_full_covariance():
    dist = make()
    covariance = torch_reference(dist).covariance_matrix
    torch.testing.assert_close(dist.variance.flatten(1), covariance.diagonal(dim1=-2, dim2=-1))
    torch.testing.assert_close(dist.stddev, dist.variance.sqrt())
    assert dist.mean is dist.loc


@pytest.mark.parametrize("antithetic", [False, True])
def test_samples_have_the_right_mean_and_covariance(antithetic):
    dist = make(batch=1, classes=2, spatial=(3,), rank=2)
    g = torch.Generator().manual_seed(1)
    samples = dist.rsample((200_000,), antithetic=antithetic, generator=g)[:, 0].flatten(1)
    covariance = torch_reference(dist).covariance_matrix[0]
    empirical_mean = samples.mean(0)
    empirical_cov = torch.cov(samples.T)
    torch.testing.assert_close(empirical_mean, dist.loc[0].flatten(), atol=0.02 if not antithetic else 1e-10, rtol=0)
    torch.testing.assert_close(empirical_cov, covariance, atol=0.03, rtol=0.03)


def test_samples_are_coherent_through_the_factor():
    """One shared factor and tiny diagonal: every pixel moves together."""
    loc = torch.zeros(1, 1, 8, 8)
    factor = torch.ones(1, 1, 1, 8, 8)
    diag = torch.full((1, 1, 8, 8), 1e-6)
    samples = LowRankLogitDistribution(loc, factor, diag).rsample((100,))[:, 0, 0].flatten(1)
    correlation = torch.corrcoef(samples.T)
    assert correlation.min() > 0.999


def test_antithetic_samples_come_in_mirrored_pairs():
    dist = make()
    samples = dist.rsample((6,), antithetic=True)
    torch.testing.assert_close(samples[:3] + samples[3:], 2 * dist.loc.expand(3, *dist.loc.shape))
    with pytest.raises(ValueError, match="even number"):
        dist.rsample((5,), antithetic=True)


def test_rsample_is_reparameterised():
    dist = make(dtype=torch.float32)
    for tensor in (dist.loc, dist.cov_factor, dist.cov_diag):
        tensor.requires_grad_(True)
    dist.rsample((4,)).pow(2).sum().backward()
    for tensor in (dist.loc, dist.cov_factor, dist.cov_diag):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    assert not dist.sample((2,)).requires_grad


def test_generator_makes_draws_reproducible():
    dist = make()
    a = dist.rsample((3,), generator=torch.Generator().manual_seed(5))
    b = dist.rsample((3,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_sample_labels_is_the_argmax_of_logit_samples():
    dist = make(classes=3)
    labels = dist.sample_labels(8, chunk_size=8, generator=torch.Generator().manual_seed(3))
    logits = dist.rsample((8,), generator=torch.Generator().manual_seed(3))
    assert labels.dtype == torch.uint8
    assert torch.equal(labels.long(), logits.argmax(2))


def test_sample_labels_draws_chunk_by_chunk():
    sizes = []

    class Recording(LowRankLogitDistribution):
        def rsample(self, sample_shape=(), antithetic=False, generator=None):
            sizes.append(tuple(sample_shape))
            return super().rsample(sample_shape, antithetic, generator)

    base = make()
    dist = Recording(base.loc, base.cov_factor, base.cov_diag)
    out = dist.sample_labels(23, chunk_size=5)
    assert out.shape == (23, 2, 4, 5)
    assert sizes == [(5,)] * 4 + [(3,)]


def test_sample_labels_frequencies_match_the_marginal_probabilities():
    # One pixel, two classes, independent: P(label 1) = P(eta1 - eta0 > 0) = Phi(mu_diff / sd).
    loc = torch.tensor([[[0.0], [0.5]]], dtype=torch.float64)
    diag = torch.tensor([[[1.0], [1.0]]], dtype=torch.float64)
    dist = LowRankLogitDistribution(loc, loc.new_zeros(1, 0, 2, 1), diag)
    frequency = dist.sample_labels(40_000, chunk_size=1000, antithetic=True).double().mean()
    expected = 0.5 * (1 + math.erf(0.5 / math.sqrt(2.0) / math.sqrt(2.0)))
    assert abs(frequency - expected) < 0.01


def test_sample_labels_dtype_for_many_classes():
    dist = make(classes=300, spatial=(2, 2), rank=1)
    assert dist.sample_labels(2).dtype == torch.int64


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda loc, f, d: (loc[0, 0], f, d), ValueError, "loc must have shape"),
        (lambda loc, f, d: (loc, f, d[..., :-1]), ValueError, "cov_diag must have the shape"),
        (lambda loc, f, d: (loc, f[:, :, :-1], d), ValueError, r"cov_factor must have shape \(B, R, C, \*S\)"),
        (lambda loc, f, d: (loc, f[0], d), ValueError, "cov_factor must have shape"),
        (lambda loc, f, d: (loc, f.float(), d), TypeError, "cov_factor has dtype"),
        (lambda loc, f, d: (loc.long(), f, d), TypeError, "loc must be a floating-point"),
        (lambda loc, f, d: (loc, f.to("meta"), d), ValueError, "move them to one device"),
        (lambda loc, f, d: (loc.numpy(), f, d), TypeError, "loc must be a torch.Tensor"),
    ],
)
def test_construction_rejects_bad_parameters(change, error, message):
    base = make()
    with pytest.raises(error, match=message):
        LowRankLogitDistribution(*change(base.loc, base.cov_factor, base.cov_diag))


def test_value_validation_names_the_problem():
    base = make()
    loc = base.loc.clone()
    loc[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite parameters: 1 values of loc"):
        LowRankLogitDistribution(loc, base.cov_factor, base.cov_diag, validate_args=True)
    diag = base.cov_diag.clone()
    diag[1, 1, 1, 1] = 0.0
    with pytest.raises(ValueError, match="strictly positive"):
        LowRankLogitDistribution(base.loc, base.cov_factor, diag, validate_args=True)
    diag[1, 1, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="overflowed"):
        LowRankLogitDistribution(base.loc, base.cov_factor, diag, validate_args=True)
    # With validation off nothing is checked eagerly (and nothing is computed eagerly).
    dist = LowRankLogitDistribution(base.loc, base.cov_factor, diag, validate_args=False)
    assert "_capacitance_tril" not in dist.__dict__


def test_log_prob_is_lazy_and_cached():
    dist = make()
    assert "_capacitance_tril" not in dist.__dict__
    dist.rsample((2,))
    assert "_capacitance_tril" not in dist.__dict__
    dist.log_prob(dist.loc)
    assert "_capacitance_tril" in dist.__dict__


def test_log_prob_rejects_a_wrong_shape():
    dist = make()
    with pytest.raises(ValueError, match="log_prob expects logit maps"):
        dist.log_prob(dist.loc[:, :2])


def test_log_prob_gradients_flow():
    dist = make(dtype=torch.float64)
    for tensor in (dist.loc, dist.cov_factor, dist.cov_diag):
        tensor.requires_grad_(True)
    value = dist.sample((2,))
    dist.log_prob(value).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (dist.loc, dist.cov_factor, dist.cov_diag))


def test_class_contrast_is_the_gaussian_of_a_logit_difference():
    dist = make(classes=3, spatial=(2, 3), rank=2)
    contrast = dist.class_contrast(positive=2, negative=0)
    assert contrast.event_shape == (1, 2, 3)
    # eta_2 - eta_0 = A eta with A picking +class 2 and -class 0 at each pixel.
    pixels = 6
    a = torch.zeros(pixels, 3 * pixels, dtype=torch.float64)
    a[torch.arange(pixels), 2 * pixels + torch.arange(pixels)] = 1.0
    a[torch.arange(pixels), torch.arange(pixels)] = -1.0
    covariance = torch_reference(dist).covariance_matrix
    torch.testing.assert_close(torch_reference(contrast).covariance_matrix, a @ covariance @ a.T)
    torch.testing.assert_close(contrast.loc.flatten(1), (a @ dist.loc.flatten(1).T).T)
    with pytest.raises(ValueError, match="not in"):
        dist.class_contrast(3, 0)
    with pytest.raises(ValueError, match="different"):
        dist.class_contrast(1, 1)


def test_support_and_argument_constraints_cover_the_whole_event():
    dist = make(spatial=(4, 5))
    assert dist.support.event_dim == len(dist.event_shape) == 3
    assert dist.support.check(dist.rsample((2,))).shape == (2, 2)  # one verdict per map
    sample = dist.rsample()
    sample[0, 0, 0, 0] = math.nan  # torch's real constraint rejects NaN only
    assert dist.support.check(sample).tolist() == [False, True]
    assert dist.arg_constraints["cov_diag"].check(dist.cov_diag).all()
    assert not dist.arg_constraints["cov_diag"].check(-dist.cov_diag).any()


def test_expand_repeats_one_image_as_views_and_refuses_other_batches():
    dist = make(batch=1)
    expanded = dist.expand((3,))
    assert expanded.batch_shape == (3,) and expanded.event_shape == dist.event_shape
    assert expanded.cov_factor.data_ptr() == dist.cov_factor.data_ptr()  # a view, no copy
    value = dist.rsample((2,))
    torch.testing.assert_close(
        expanded.log_prob(value.expand(2, 3, *value.shape[2:])), dist.log_prob(value).expand(2, 3)
    )
    assert make(batch=2).expand((2,)).batch_shape == (2,)
    with pytest.raises(ValueError, match="one-dimensional batch"):
        make(batch=2).expand((3,))
    with pytest.raises(ValueError, match="one-dimensional batch"):
        dist.expand((2, 3))


def test_marginal_is_the_law_of_a_region_and_shares_the_draws():
    dist = make(classes=2, spatial=(3, 4, 5), rank=2)
    region = dist.marginal(slice(1, 3), slice(None), 4)  # an int drops its axis
    assert region.event_shape == (2, 2, 4)
    # The marginal covariance is the full covariance's block of the region's coordinates.
    picked = torch.zeros(2, 3, 4, 5, dtype=torch.bool)
    picked[:, 1:3, :, 4] = True
    rows = picked.flatten().nonzero().squeeze(1)
    full = torch_reference(dist).covariance_matrix
    torch.testing.assert_close(torch_reference(region).covariance_matrix, full[:, rows][:, :, rows])
    # Draws from the same latent z: the region's draws are the whole map's, restricted.
    noise = dist.draw_noise(3, torch.Generator().manual_seed(1))
    whole = dist.logits_from_noise(noise)
    mine = region.logits_from_noise(type(noise)(noise.z, noise.eps[:, :, :, 1:3, :, 4]))
    torch.testing.assert_close(mine, whole[:, :, :, 1:3, :, 4])
    with pytest.raises(IndexError, match="4 indices for a map with 3 spatial axes"):
        dist.marginal(0, 0, 0, 0)


def test_the_default_chunk_fits_the_memory_budget():
    from ssn.distributions import SAMPLE_MEMORY_BYTES

    def expanded(shape, rank):  # a distribution of that shape without allocating it (stride-0 views)
        zero = torch.zeros(1)
        return LowRankLogitDistribution(
            zero.expand(*shape), zero.expand(shape[0], rank, *shape[1:]), zero.expand(*shape) + 1, validate_args=False
        )

    volume = expanded((1, 4, 240, 240, 155), rank=10)
    chunk = volume.default_chunk_size()
    assert chunk == 2 and 3 * chunk * volume.event_size * 4 <= SAMPLE_MEMORY_BYTES
    assert expanded((16, 2, 128, 128), rank=10).default_chunk_size() == 16  # small maps keep 16
    assert volume.default_chunk_size(budget=1) == 1
    small = make(classes=3, spatial=(6, 5), rank=2, dtype=torch.float32)
    drawn = small.sample_labels(20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(drawn, small.sample_labels(20, chunk_size=16, generator=torch.Generator().manual_seed(3)))

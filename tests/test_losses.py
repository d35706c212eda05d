"""ssn_loss / SSNLoss: the Monte Carlo log-likelihood of the whole label map."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssn import LowRankLogitDistribution, SSNLoss, monte_carlo_log_likelihood, ssn_loss


def make(batch=2, classes=3, spatial=(6, 5), rank=3, scale=1.0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, classes, *spatial, generator=g).to(dtype)
    factor = scale * torch.randn(batch, rank, classes, *spatial, generator=g).to(dtype)
    diag = scale**2 * (torch.rand(batch, classes, *spatial, generator=g) + 0.1).to(dtype)
    return LowRankLogitDistribution(loc, factor, diag)


def labels(dist, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, dist.num_classes, dist.batch_shape + dist.spatial_shape, generator=g)


def numpy_reference(samples, target):
    """-(1/B) sum_b [logsumexp_m sum_i log softmax(eta)_{i, y_i} - log M], in float64 numpy."""
    eta = samples.detach().double().numpy()  # (M, B, C, *S)
    y = target.numpy()
    shifted = eta - eta.max(axis=2, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=2, keepdims=True))
    picked = np.take_along_axis(log_softmax, y[None, :, None].repeat(eta.shape[0], 0), axis=2)[:, :, 0]
    per_sample = picked.reshape(eta.shape[0], eta.shape[1], -1).sum(-1)  # (M, B)
    top = per_sample.max(0)
    lse = top + np.log(np.exp(per_sample - top).sum(0))
    return -(lse - math.log(eta.shape[0])).mean()


@pytest.mark.parametrize("spatial", [(9,), (6, 5), (3, 4, 5)])
@pytest.mark.parametrize("antithetic", [False, True])
def test_loss_equals_a_float64_reference_on_the_same_samples(spatial, antithetic):
    dist = make(spatial=spatial)
    target = labels(dist)
    torch.manual_seed(11)
    loss = ssn_loss(dist, target, num_samples=20, antithetic=antithetic)
    torch.manual_seed(11)
    samples = dist.rsample((20,), antithetic=antithetic)
    assert loss.item() == pytest.approx(numpy_reference(samples, target), rel=1e-5)


@pytest.mark.parametrize("antithetic", [False, True])
def test_two_class_loss_equals_the_reference_on_the_same_log_odds_samples(antithetic):
    """With two classes the loss samples eta_1 - eta_0 directly (class_contrast)."""
    dist = make(classes=2)
    target = labels(dist)
    torch.manual_seed(5)
    loss = ssn_loss(dist, target, num_samples=20, antithetic=antithetic)
    torch.manual_seed(5)
    margin = dist.class_contrast(1, 0).rsample((20,), antithetic=antithetic)  # (M, B, 1, *S)
    logits = torch.cat([torch.zeros_like(margin), margin], dim=2)  # same softmax as eta
    assert loss.item() == pytest.approx(numpy_reference(logits, target), rel=1e-5)


def numpy_marginal(samples, target, mask=None):
    """(1/B) sum_b sum_i -log (1/M) sum_m softmax(eta^m)_{b, i, y_i}, over the pixels in mask, in float64 numpy."""
    eta = samples.detach().double().numpy()  # (M, B, C, *S)
    probs = np.exp(eta - eta.max(axis=2, keepdims=True))
    probs /= probs.sum(axis=2, keepdims=True)
    picked = np.take_along_axis(probs, target.numpy()[None, :, None].repeat(eta.shape[0], 0), axis=2)[:, :, 0]
    pixels = -np.log(picked.mean(0))  # (B, *S)
    if mask is not None:
        pixels = pixels * mask.numpy()
    return pixels.reshape(eta.shape[1], -1).sum(-1).mean()


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_the_marginal_weight_adds_that_multiple_of_the_pixels_marginal_term_on_the_same_samples(classes, masked):
    """ssn_loss(marginal_weight=lam) = the paper's term + lam x the pixels' marginal negative
    log-likelihood, both from the same draws (two classes: from the same log-odds draws)."""
    dist = make(classes=classes, scale=1.5)
    target = labels(dist)
    mask = torch.rand(2, 6, 5, generator=torch.Generator().manual_seed(3)) > 0.3 if masked else None
    options = dict(num_samples=12, mask=mask)
    paper = ssn_loss(dist, target, generator=torch.Generator().manual_seed(4), **options)
    both = ssn_loss(dist, target, generator=torch.Generator().manual_seed(4), marginal_weight=0.5, **options)
    draw = dict(antithetic=True, generator=torch.Generator().manual_seed(4))
    if classes == 2:
        margin = dist.class_contrast(1, 0).rsample((12,), **draw)
        samples = torch.cat([torch.zeros_like(margin), margin], dim=2)  # the same softmax as eta
    else:
        samples = dist.rsample((12,), **draw)
    assert (both - paper).item() == pytest.approx(0.5 * numpy_marginal(samples, target, mask), rel=1e-5)
    with pytest.raises(ValueError, match="marginal_weight must be 0 or more"):
        ssn_loss(dist, target, marginal_weight=-1.0)


def test_loss_tends_to_summed_cross_entropy_as_the_covariance_vanishes():
    dist = make(scale=1e-6)
    target = labels(dist)
    expected = F.cross_entropy(dist.loc, target, reduction="sum") / dist.loc.shape[0]
    assert ssn_loss(dist, target).item() == pytest.approx(expected.item(), rel=1e-4)


def exact_log_likelihood(loc, factor, diag, target):
    """log p(y) for two binary pixels by Gauss-Hermite quadrature over the logit differences."""
    # delta_i = eta_{1,i} - eta_{0,i} is Gaussian; p(y) = E[prod_i sigmoid(s_i delta_i)], s = +-1.
    a = np.zeros((2, 4))
    a[0, [2, 0]] = [1, -1]  # flattened event is (class, pixel): index = class * 2 + pixel
    a[1, [3, 1]] = [1, -1]
    covariance = factor @ factor.T + np.diag(diag)
    mean, cov = a @ loc, a @ covariance @ a.T
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    chol = np.linalg.cholesky(cov)
    u1, u2 = np.meshgrid(nodes, nodes, indexing="ij")
    points = mean[:, None, None] + np.einsum("ij,jab->iab", chol, np.stack([u1, u2]))
    signs = np.where(target == 1, 1.0, -1.0)
    likelihood = 1 / (1 + np.exp(-signs[0] * points[0])) / (1 + np.exp(-signs[1] * points[1]))
    return math.log((weights[:, None] * weights[None, :] * likelihood).sum() / (2 * math.pi))


@pytest.mark.parametrize("target", [[0, 0], [1, 0], [1, 1]])
def test_loss_converges_to_the_exact_negative_log_likelihood(target):
    loc = torch.tensor([[[0.3, -0.5], [0.8, 0.1]]], dtype=torch.float64)
    factor = torch.tensor([[[[1.5, 1.2], [-1.0, -0.7]]]], dtype=torch.float64)
    diag = torch.tensor([[[0.3, 0.2], [0.4, 0.5]]], dtype=torch.float64)
    dist = LowRankLogitDistribution(loc, factor, diag)
    y = torch.tensor([target])
    torch.manual_seed(0)
    estimate = ssn_loss(dist, y, num_samples=400_000).item()
    exact = -exact_log_likelihood(
        loc[0].flatten().numpy(), factor[0].reshape(1, -1).T.numpy(), diag[0].flatten().numpy(), np.array(target)
    )
    assert estimate == pytest.approx(exact, abs=3e-3)


def test_few_samples_underestimate_the_likelihood_on_average():
    """Jensen: E[log mean of likelihoods] <= log p, so the loss with few samples is larger."""
    dist = make(batch=1, spatial=(3, 3), scale=2.0, dtype=torch.float64)
    target = labels(dist)
    torch.manual_seed(0)
    few = np.mean([ssn_loss(dist, target, num_samples=2).item() for _ in range(400)])
    many = ssn_loss(dist, target, num_samples=100_000).item()
    assert few > many


def test_ignore_index_and_mask_leave_pixels_out():
    dist = make(scale=1e-6)
    target = labels(dist)
    keep = torch.rand(target.shape, generator=torch.Generator().manual_seed(1)) > 0.4
    per_pixel = F.cross_entropy(dist.loc, target, reduction="none")
    expected = (per_pixel * keep).sum() / target.shape[0]
    ignored = torch.where(keep, target, torch.full_like(target, 255))
    assert ssn_loss(dist, ignored, ignore_index=255).item() == pytest.approx(expected.item(), rel=1e-4)
    assert ssn_loss(dist, target, mask=keep).item() == pytest.approx(expected.item(), rel=1e-4)
    assert ssn_loss(dist, target, mask=keep[:, None]).item() == pytest.approx(expected.item(), rel=1e-4)
    # Per-pixel normalisation divides each image's term by its own count of kept pixels.
    normalised = ssn_loss(dist, target, mask=keep, normalize_by_pixels=True, reduction="none")
    torch.testing.assert_close(
        normalised, (per_pixel * keep).flatten(1).sum(1) / keep.flatten(1).sum(1), rtol=1e-4, atol=0
    )


def test_reductions():
    dist = make()
    target = labels(dist)
    torch.manual_seed(0)
    per_image = ssn_loss(dist, target, reduction="none")
    torch.manual_seed(0)
    total = ssn_loss(dist, target, reduction="sum")
    torch.manual_seed(0)
    mean = ssn_loss(dist, target)
    assert per_image.shape == (2,)
    torch.testing.assert_close(total, per_image.sum())
    torch.testing.assert_close(mean, per_image.mean())


def test_module_form_matches_the_function():
    dist = make()
    target = labels(dist)
    torch.manual_seed(3)
    a = SSNLoss(num_samples=10)(dist, target)
    torch.manual_seed(3)
    b = ssn_loss(dist, target, num_samples=10)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="even"):
        SSNLoss(num_samples=7)


@pytest.mark.parametrize("classes", [2, 4])
def test_monte_carlo_log_likelihood_of_given_samples(classes):
    dist = make(classes=classes)
    target = labels(dist)
    samples = dist.rsample((8,))
    assert -monte_carlo_log_likelihood(samples, target).mean().item() == pytest.approx(
        numpy_reference(samples, target), rel=1e-5
    )


@pytest.mark.parametrize(
    "target, kwargs, message",
    [
        (lambda y: y + 3, {}, r"labels outside \[0, 3\)"),
        (lambda y: y - 1, {}, r"labels outside \[0, 3\)"),
        (lambda y: torch.where(y == 0, 255, y), {"ignore_index": 254}, r"labels outside"),
        (lambda y: y[:, None], {}, "squeeze the channel dimension"),
        (lambda y: y[:, :-1], {}, r"target must have shape \(B, \*S\)"),
        (lambda y: y.float(), {}, "integer class labels"),
        (lambda y: y, {"reduction": "avg"}, "reduction must be one of"),
        (lambda y: y, {"num_samples": 7}, "even number"),
        (lambda y: y, {"mask": torch.ones(2, 3, 3)}, "mask must have shape"),
    ],
)
def test_bad_inputs_raise_value_errors_that_name_the_problem(target, kwargs, message):
    dist = make()
    with pytest.raises(ValueError, match=message):
        ssn_loss(dist, target(labels(dist)), **kwargs)


def test_non_finite_parameters_raise_even_without_distribution_validation():
    base = make()
    loc = base.loc.clone()
    loc[1, 2, 3, 4] = float("inf")
    dist = LowRankLogitDistribution(loc, base.cov_factor, base.cov_diag, validate_args=False)
    with pytest.raises(ValueError, match="non-finite"):
        ssn_loss(dist, labels(base))


def test_ignored_pixels_are_left_out_of_the_sum_even_out_of_range():
    """A pixel labelled ignore_index counts for nothing: the loss equals the float64 reference
    computed on the same samples without that pixel."""
    dist = make()
    target = labels(dist)
    target[0, 0, 0] = -100
    torch.manual_seed(3)
    loss = ssn_loss(dist, target, num_samples=20, ignore_index=-100)
    torch.manual_seed(3)
    samples = dist.rsample((20,), antithetic=True)
    # Without the pixel: give it a label and a logit sample that makes its log-probability 0.
    kept_target = target.clone()
    kept_target[0, 0, 0] = 0
    samples = samples.detach().clone()
    samples[:, 0, :, 0, 0] = torch.tensor([1e4] + [0.0] * (dist.num_classes - 1))
    assert loss.item() == pytest.approx(numpy_reference(samples, kept_target), rel=1e-5)
    assert loss.item() != pytest.approx(ssn_loss(dist, kept_target, num_samples=20).item(), rel=1e-3)


@pytest.mark.parametrize("variance", [1e-10, 1e-4, 1.0, 1e3, 1e6])
def test_loss_and_gradients_stay_finite_for_extreme_logits_and_variances(variance):
    g = torch.Generator().manual_seed(0)
    loc = (1e4 * torch.randn(2, 2, 16, 16, generator=g)).requires_grad_()
    factor = (math.sqrt(variance) * torch.randn(2, 10, 2, 16, 16, generator=g) / 4).requires_grad_()
    diag = torch.full((2, 2, 16, 16), variance).requires_grad_()
    target = torch.randint(0, 2, (2, 16, 16), generator=g)
    loss = ssn_loss(LowRankLogitDistribution(loc, factor, diag), target)
    loss.backward()
    assert torch.isfinite(loss)
    for tensor in (loc, factor, diag):
        assert torch.isfinite(tensor.grad).all()


def test_fitting_the_loss_learns_coherent_samples_only_with_a_low_rank_factor():
    """Each 6x6 label map is all background or all foreground, half the time each.

    Fitting mu, P, D by the loss, the rank-1 model draws whole maps of one class; the
    independent (rank-0) model can only draw per-pixel noise.
    """
    torch.manual_seed(0)
    targets = torch.zeros(2, 6, 6, dtype=torch.long)
    targets[1] = 1

    def fit(rank):
        loc = torch.zeros(1, 2, 6, 6, requires_grad=True)
        factor = (0.1 * torch.randn(1, rank, 2, 6, 6)).requires_grad_()
        log_diag = torch.zeros(1, 2, 6, 6, requires_grad=True)
        optimiser = torch.optim.Adam([loc, factor, log_diag], lr=0.1)
        for step in range(600):
            y = targets[step % 2 : step % 2 + 1]
            dist = LowRankLogitDistribution(loc, factor, log_diag.exp() + 1e-5)
            optimiser.zero_grad()
            ssn_loss(dist, y, num_samples=20).backward()
            optimiser.step()
        with torch.no_grad():
            dist = LowRankLogitDistribution(loc, factor, log_diag.exp() + 1e-5)
            return dist.sample_labels(200)[:, 0].flatten(1).float()

    coherent = fit(rank=1)
    share = coherent.mean(1)
    whole_maps = ((share == 0) | (share == 1)).float().mean()
    assert whole_maps > 0.85
    assert 0.25 < coherent.mean() < 0.75  # both modes are drawn
    independent = fit(rank=0)
    share = independent.mean(1)
    assert ((share == 0) | (share == 1)).float().mean() < 0.05


@pytest.mark.parametrize("dtype, antithetic", [(torch.float64, True), (torch.float32, True), (torch.float64, False)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("num_classes", [2, 4])
@pytest.mark.parametrize("rank", [5, 0])
@pytest.mark.parametrize("marginal_weight", [0.0, 0.7])
def test_the_streamed_monte_carlo_term_of_volumes_is_the_same_estimator_with_the_same_gradients(
    monkeypatch,
    marginal_weight,
    rank,
    num_classes,
    masked,
    dtype,
    antithetic,
):
    """Large maps take the samples a few at a time and accumulate the gradients in the same pass
    (a streaming log-sum-exp): value and gradients equal autograd's through the same draws kept
    in memory. In float64 to 1e-10 (the maths is exact); in float32 the map sums of hundreds of
    nats carry rounding of about 1e-5 relative into the sample weights exp(l_m - max), on
    either path, so to 1e-4. Rank 0 is the diagonal SSN: no factor. With a marginal weight, the
    pixels' marginal term is streamed with per-pixel weights, against the same reference."""
    import ssn.losses as losses

    torch.manual_seed(0)
    shape = (2, num_classes, 12, 10, 6)
    loc = torch.randn(shape, dtype=dtype, requires_grad=True)
    factor = (0.3 * torch.randn(2, rank, *shape[1:], dtype=dtype)).requires_grad_()
    diag = (torch.rand(shape, dtype=dtype) + 0.1).requires_grad_()
    target = torch.randint(0, num_classes, (2, 12, 10, 6))
    mask = torch.rand(2, 12, 10, 6) > 0.3 if masked else None
    dist = LowRankLogitDistribution(loc, factor, diag)
    _, weights = losses.prepare_target(target, (2, 12, 10, 6), num_classes, None, mask)

    torch.manual_seed(1)  # the same draws, kept: chunks of SAMPLES_PER_CHUNK antithetic samples
    source = dist.class_contrast(1, 0) if num_classes == 2 else dist
    parts = []
    for _ in range(0, 20, losses.SAMPLES_PER_CHUNK):
        draws = LowRankLogitDistribution(source.loc, source.cov_factor, source.cov_diag).rsample(
            (losses.SAMPLES_PER_CHUNK,), antithetic=antithetic
        )
        parts.append(
            losses._binary_pixel_log_likelihoods(draws[:, :, 0], target)
            if num_classes == 2
            else losses._pixel_log_likelihoods(draws, target)
        )
    joint, marginal = losses._joint_and_marginal(torch.cat(parts), weights)
    kept = -(joint + marginal_weight * marginal).mean()
    unused = dict(allow_unused=True, materialize_grads=True)  # rank 0: an empty factor
    expected = torch.autograd.grad(kept, [loc, factor, diag], **unused)

    monkeypatch.setattr(losses, "CHUNK_ABOVE", 0)
    torch.manual_seed(1)
    streamed = ssn_loss(dist, target, num_samples=20, mask=mask, antithetic=antithetic, marginal_weight=marginal_weight)
    tolerance = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(streamed, kept, **tolerance)
    for got, want in zip(torch.autograd.grad(streamed, [loc, factor, diag], **unused), expected):
        assert got.shape == want.shape
        if want.numel():
            torch.testing.assert_close(got / want.abs().max(), want / want.abs().max(), **tolerance)


def test_the_streamed_term_draws_each_image_from_its_own_generator(monkeypatch):
    """Per-image generators: an image's loss and gradients are the same alone or in a batch."""
    import ssn.losses as losses
    from ssn.randomness import generators_for

    monkeypatch.setattr(losses, "CHUNK_ABOVE", 0)
    torch.manual_seed(0)
    loc = torch.randn(3, 3, 8, 8, 4, requires_grad=True)
    factor = (0.3 * torch.randn(3, 4, 3, 8, 8, 4)).requires_grad_()
    diag = (torch.rand(3, 3, 8, 8, 4) + 0.1).requires_grad_()
    target = torch.randint(0, 3, (3, 8, 8, 4))
    batch = ssn_loss(
        LowRankLogitDistribution(loc, factor, diag),
        target,
        num_samples=8,
        reduction="none",
        generator=generators_for(7, [0, 1, 2]),
    )
    (grad_loc,) = torch.autograd.grad(batch[1], [loc])
    alone = ssn_loss(
        LowRankLogitDistribution(loc[1:2], factor[1:2], diag[1:2]),
        target[1:2],
        num_samples=8,
        reduction="none",
        generator=generators_for(7, [1]),
    )
    (grad_alone,) = torch.autograd.grad(alone[0], [loc])
    torch.testing.assert_close(alone[0], batch[1])
    torch.testing.assert_close(grad_alone, grad_loc)
    assert grad_loc[0].abs().max() == 0 and grad_loc[1].abs().max() > 0


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("masked, normalize", [(False, False), (True, True)])
def test_every_annotators_map_is_scored_with_the_same_samples_and_the_loss_averaged(classes, masked, normalize):
    """Targets (B, A, *S): the mean over annotators of each one's loss, from one set of draws
    (the same generator state gives each single-annotator call the same draws)."""
    dist = make(batch=3, classes=classes)
    target = torch.stack([labels(dist, seed=a) for a in range(4)], 1)  # (B, 4, *S)
    mask = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(9)) > 0.3 if masked else None
    options = dict(num_samples=8, mask=mask, normalize_by_pixels=normalize, reduction="none")
    together = ssn_loss(dist, target, generator=torch.Generator().manual_seed(5), all_annotators=True, **options)
    each = [ssn_loss(dist, target[:, a], generator=torch.Generator().manual_seed(5), **options) for a in range(4)]
    assert together.shape == (3,)
    torch.testing.assert_close(together, torch.stack(each).mean(0))
    assert not torch.allclose(each[0], each[1])  # the annotators' maps differ, and so do their terms


def test_the_streamed_term_scores_every_annotator_with_its_own_draws(monkeypatch):
    """Large maps with (B, A, *S) targets: the batch repeated once per annotator, each image's
    generator drawing its repeats in turn; gradients reach the parameters."""
    import ssn.losses as losses
    from ssn.randomness import generators_for

    monkeypatch.setattr(losses, "CHUNK_ABOVE", 0)
    torch.manual_seed(0)
    loc = torch.randn(2, 2, 6, 5, 4, requires_grad=True)
    factor = (0.3 * torch.randn(2, 3, 2, 6, 5, 4)).requires_grad_()
    diag = (torch.rand(2, 2, 6, 5, 4) + 0.1).requires_grad_()
    target = torch.randint(0, 2, (2, 3, 6, 5, 4))
    together = ssn_loss(
        LowRankLogitDistribution(loc, factor, diag), target, num_samples=8, reduction="none",
        generator=generators_for(7, [0, 1]), all_annotators=True,
    )  # fmt: skip
    repeated = [g for g in generators_for(7, [0, 1]) for _ in range(3)]
    expanded = LowRankLogitDistribution(*(t.repeat_interleave(3, 0) for t in (loc, factor, diag)))
    alone = ssn_loss(expanded, target.flatten(0, 1), num_samples=8, reduction="none", generator=repeated)
    torch.testing.assert_close(together, alone.view(2, 3).mean(1))
    grads = torch.autograd.grad(together.sum(), [loc, factor, diag])
    assert all(bool(g.abs().sum() > 0) for g in grads)


def test_the_cross_entropy_of_several_annotators_is_the_mean_of_theirs():
    from ssn.losses import per_image_cross_entropy

    logits = torch.randn(2, 3, 5, 4)
    target = torch.randint(0, 3, (2, 4, 5, 4))
    each = torch.stack([per_image_cross_entropy(logits, target[:, a], 3) for a in range(4)])
    torch.testing.assert_close(per_image_cross_entropy(logits, target, 3, all_annotators=True), each.mean(0))
    with pytest.raises(ValueError, match=r"\(B, A, \*S\)"):
        per_image_cross_entropy(logits, target[:, 0], 3, all_annotators=True)
    with pytest.raises(ValueError, match=r"target must have shape \(B, A, \*S\)"):
        ssn_loss(make(), torch.zeros(2, 6, 5, dtype=torch.long), all_annotators=True)

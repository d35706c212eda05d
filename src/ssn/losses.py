"""The SSN objective: a Monte Carlo estimate of the log-likelihood of the whole label map.

With M logit samples eta^m ~ N(mu, P P^T + D) of image b (Monteiro et al. 2020, eq. 6),

    log p(y_b | x_b) ~= logsumexp_m  sum_i log softmax(eta_b^m)_{i, y_i}  -  log M

    L = -(1/B) sum_b [ logsumexp_m sum_i log softmax(eta_b^m)_{i, y_i} - log M ].

The sum over pixels sits inside the logsumexp: the label map is scored as a whole, which is what
makes the model learn coherent variation rather than per-pixel noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributions import LowRankLogitDistribution
from .randomness import Generators, standard_normal

__all__ = ["ssn_loss", "SSNLoss", "monte_carlo_log_likelihood", "prepare_target", "per_image_cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


def monte_carlo_log_likelihood(
    logit_samples: Tensor,
    target: Tensor,
    ignore_index: int | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Monte Carlo estimate of log p(y | x) per image from given logit samples.

    Args:
        logit_samples: (M, B, C, *S) samples of the logit map.
        target: (B, *S) integer labels in [0, C) (or ``ignore_index``).
        ignore_index: a label whose pixels are left out of the sum.
        mask: optional (B, *S) or (B, 1, *S); pixels where it is 0/False are left out.

    Returns:
        (B,) estimates of log p(y_b | x_b): logsumexp over samples of the summed per-pixel
        log-probabilities, minus log M.
    """
    if logit_samples.dim() < 4:
        raise ValueError(f"logit_samples must have shape (M, B, C, *S); got {tuple(logit_samples.shape)}")
    _, batch, num_classes, *spatial = logit_samples.shape
    target, weights = prepare_target(target, (batch, *spatial), num_classes, ignore_index, mask)
    return _log_likelihood(logit_samples, target, weights)


def _log_likelihood(logit_samples: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
    """(M, B, C, *S) samples, validated (B, *S) int64 labels, optional weights -> (B,)."""
    if logit_samples.shape[2] == 2:
        margin = logit_samples.select(2, 1) - logit_samples.select(2, 0)
        return _binary_log_likelihood(margin, target, weights)
    return _log_mean_exp(_map_log_likelihoods(logit_samples, target, weights))


def _binary_log_likelihood(margin: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
    """Two classes, from samples of the log-odds eta_1 - eta_0, (M, B, *S) -> (B,).

    log softmax(eta)_y = log sigmoid(+-(eta_1 - eta_0)), + for y = 1 and - for y = 0.
    """
    return _log_mean_exp(_binary_map_log_likelihoods(margin, target, weights))


def _binary_map_log_likelihoods(margin: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
    return _map_sums(_binary_pixel_log_likelihoods(margin, target), weights)


def _binary_pixel_log_likelihoods(margin: Tensor, target: Tensor) -> Tensor:
    """log softmax(eta^m)_{i, y_i} from (M, B, *S) log-odds samples -> (M, B, *S)."""
    sign = (2 * target - 1).to(margin.dtype)
    return F.logsigmoid(margin * sign)


def _map_log_likelihoods(logit_samples: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
    """sum_i log softmax(eta^m)_{i, y_i} for (M, B, C, *S) samples -> (M, B)."""
    return _map_sums(_pixel_log_likelihoods(logit_samples, target), weights)


def _pixel_log_likelihoods(logit_samples: Tensor, target: Tensor) -> Tensor:
    """log softmax(eta^m)_{i, y_i} for (M, B, C, *S) samples -> (M, B, *S)."""
    num_samples = logit_samples.shape[0]
    index = target.unsqueeze(0).unsqueeze(2).expand(num_samples, -1, 1, *target.shape[1:])
    picked = logit_samples.gather(2, index).squeeze(2)
    return picked - torch.logsumexp(logit_samples, dim=2)


def _joint_and_marginal(pixel_log_lik: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-pixel log-likelihoods l_{m,i} of M samples (M, B, *S) -> two (B,) estimates:

    the whole map's  log (1/M) sum_m exp(sum_i l_{m,i})   (the paper's term), and
    the pixels'      sum_i log (1/M) sum_m exp(l_{m,i})   (each pixel's marginal, then summed).
    """
    joint = _log_mean_exp(_map_sums(pixel_log_lik, weights))
    marginal = torch.logsumexp(pixel_log_lik, dim=0) - math.log(pixel_log_lik.shape[0])  # (B, *S)
    return joint, _map_sums(marginal.unsqueeze(0), weights)[0]


def _map_sums(pixel_log_lik: Tensor, weights: Tensor | None) -> Tensor:
    """Per-pixel log-likelihoods (M, B, *S) -> the whole maps' (M, B), over the counted pixels."""
    if weights is not None:
        pixel_log_lik = pixel_log_lik * weights.to(pixel_log_lik.dtype)
    return pixel_log_lik.flatten(2).sum(-1)


def _log_mean_exp(map_log_lik: Tensor) -> Tensor:
    """logsumexp_m l_m - log M: (M, B) -> (B,)."""
    return torch.logsumexp(map_log_lik, dim=0) - math.log(map_log_lik.shape[0])


# Above this many logit values per image (M * C * prod(S)) the Monte Carlo term is streamed: a
# few samples at a time, its gradient accumulated in the same pass (_StreamedLogLikelihood). The
# choice is made per image, never on the batch size, so that an image draws the same noise in a
# batch of any size (or a process's share of one under torchrun): the two paths read its
# generator in different orders.
CHUNK_ABOVE = 2**22
SAMPLES_PER_CHUNK = 4


class _StreamedLogLikelihood(torch.autograd.Function):
    """The (B,) Monte Carlo log-likelihoods of large maps and their gradients in one pass.

    With l_m the map log-likelihood of draw eta^m = mu + s_m (P z_m + sqrt(D) eps_m) (s_m = +-1
    for antithetic pairs) and a_m = softmax_m(l_m) its weight in the log-mean-exp,

        d/dmu      logmeanexp_m l_m = sum_m a_m g_m,                    g_m = dl_m / deta^m,
        d/dP       ...              = sum_m a_m s_m g_m z_m^T,
        d/dsqrt(D) ...              = sum_m a_m s_m g_m * eps_m,

    and for the pixel terms g_m is w (onehot(y) - softmax(eta^m)) (for two classes, from the
    log-odds: w t sigmoid(-t eta^m), t = 2y - 1). The forward pass draws ``SAMPLES_PER_CHUNK``
    samples at a time and accumulates these sums with a running maximum of l (the streaming
    log-sum-exp), so memory holds one chunk of logit maps and the gradients (the size of the
    parameters), and each sample is drawn once: the same estimator and gradients as autograd
    through all M samples kept in memory, at the cost of the draws alone.

    With ``marginal``, the second output is the pixels' marginal term sum_i logmeanexp_m l_{m,i}
    (:func:`ssn_loss`'s ``marginal_weight``), streamed alike: its weights b_{m,i} =
    softmax_m(l_{m,i}) are per pixel, with a running maximum per pixel, and pixel i's gradient
    takes b_{m,i} in place of a_m. Otherwise the second output is zeros, with no gradient.
    """

    @staticmethod
    def forward(ctx, loc, factor, diag, target, weights, num_samples, antithetic, binary, generator, marginal):
        batch = loc.shape[0]
        mu, scale = loc.reshape(batch, -1), diag.reshape(batch, -1).sqrt()  # (B, N)
        rank = factor.shape[1]
        p = factor.reshape(batch, rank, mu.shape[1])  # (B, R, N)
        w = None if weights is None else weights.reshape(batch, -1).to(mu.dtype)  # (B, S)
        y = target.reshape(batch, -1)
        if binary:
            sign_y = (2 * y - 1).to(mu.dtype)  # (B, N): one channel, N = S
        signs = torch.tensor([1.0, -1.0] if antithetic else [1.0], dtype=mu.dtype, device=mu.device)
        run_max = total = grad_mu = grad_scale = grad_p = None
        pixel_max = pixel_total = m_mu = m_scale = m_p = None  # the marginal term's, per pixel
        per_draw = 2 if antithetic else 1
        step = max(per_draw, SAMPLES_PER_CHUNK - SAMPLES_PER_CHUNK % per_draw)
        for start in range(0, num_samples, step):
            draws = min(step, num_samples - start) // per_draw
            # the order of rsample's draws (eps, then z), so that a generator gives the same samples
            eps = standard_normal((batch, draws, mu.shape[1]), generator, 0, dtype=mu.dtype, device=mu.device)
            deviation = eps * scale.unsqueeze(1)  # (B, h, N)
            if rank > 0:
                z = standard_normal((batch, draws, rank), generator, 0, dtype=mu.dtype, device=mu.device)
                deviation.baddbmm_(z, p)
            eta = torch.addcmul(mu[:, None, None], deviation.unsqueeze(1), signs.view(1, -1, 1, 1))  # (B, s, h, N)
            del deviation
            if binary:
                x = eta.mul_(sign_y[:, None, None])
                grad = torch.sigmoid(x.neg()).mul_(sign_y[:, None, None])
                pixel_log_lik = F.logsigmoid(x)
            else:
                classes = eta.view(*eta.shape[:3], loc.shape[1], -1)  # (B, s, h, C, S)
                log_p = torch.log_softmax(classes, dim=3)
                del eta, classes
                index = y[:, None, None, None].expand(*log_p.shape[:3], 1, -1)
                pixel_log_lik = log_p.gather(3, index).squeeze(3)  # (B, s, h, S)
                grad = log_p.exp_().neg_().scatter_add_(3, index, torch.ones_like(pixel_log_lik.unsqueeze(3)))
            if w is not None:
                pixel_log_lik = pixel_log_lik * w[:, None, None]
                grad.mul_(w[:, None, None] if binary else w[:, None, None, None])
            g = grad.view(batch, -1, mu.shape[1])  # (B, k, N), draws k = (s, h)
            if marginal:
                l_pixel = pixel_log_lik.reshape(batch, -1, pixel_log_lik.shape[-1])  # (B, k, S)
                chunk_pixel_max = l_pixel.amax(1)
                new_pixel_max = chunk_pixel_max if pixel_max is None else torch.maximum(pixel_max, chunk_pixel_max)
                if pixel_max is not None:
                    rescale = torch.exp(pixel_max - new_pixel_max)  # (B, S)
                    pixel_total.mul_(rescale)
                    per_logit = rescale if binary else rescale.repeat(1, loc.shape[1])  # (B, N): C x S
                    m_mu.mul_(per_logit)
                    m_scale.mul_(per_logit)
                    if rank > 0:
                        m_p.mul_(per_logit.unsqueeze(1))
                b = torch.exp(l_pixel - new_pixel_max.unsqueeze(1))  # (B, k, S)
                pixel_total = _accumulate(pixel_total, b.sum(1))
                b_logit = b if binary else b.unsqueeze(2).expand(-1, -1, loc.shape[1], -1).reshape_as(g)
                gb = g * b_logit  # (B, k, N): b_{m,i} g_m
                m_mu = _accumulate(m_mu, gb.sum(1))
                if rank > 0:
                    signed_zk = (signs.view(1, -1, 1, 1) * z.unsqueeze(1)).view(batch, -1, rank)  # (B, k, R)
                    m_p = _accumulate_product(m_p, signed_zk.transpose(1, 2), gb)
                gb.view(batch, len(signs), draws, -1).mul_(signs.view(1, -1, 1, 1) * eps.unsqueeze(1))
                m_scale = _accumulate(m_scale, gb.sum(1))
                del gb, b, b_logit
                pixel_max = new_pixel_max
            log_lik = pixel_log_lik.sum(-1)  # (B, s, h)
            chunk_max = log_lik.flatten(1).amax(1)
            new_max = chunk_max if run_max is None else torch.maximum(run_max, chunk_max)
            a = torch.exp(log_lik - new_max[:, None, None])  # (B, s, h)
            if run_max is not None and bool((new_max != run_max).any()):  # a better sample: the sums so far shrink
                rescale = torch.exp(run_max - new_max)
                total.mul_(rescale)
                grad_mu.mul_(rescale[:, None, None])
                grad_scale.mul_(rescale[:, None, None])
                if rank > 0:
                    grad_p.mul_(rescale[:, None, None])
            # The sums over the chunk's draws k = (s, h) as (B, 1 or R, k) @ (B, k, N) products
            # of the per-draw gradients g_k, so that no weighted copy of them is made.
            signed_a = (a * signs.view(1, -1, 1)).view(batch, 1, -1)  # (B, 1, k): s a
            total = _accumulate(total, a.flatten(1).sum(1))
            grad_mu = _accumulate_product(grad_mu, a.view(batch, 1, -1), g)
            if rank > 0:
                signed_z = (signed_a.view(batch, len(signs), draws, 1) * z.unsqueeze(1)).view(batch, -1, rank)
                grad_p = _accumulate_product(grad_p, signed_z.transpose(1, 2), g)  # (B, R, N)
            g.view(batch, len(signs), draws, -1).mul_(eps.unsqueeze(1))  # g_k * eps_k
            grad_scale = _accumulate_product(grad_scale, signed_a, g)
            run_max = new_max
        if rank == 0:
            grad_p = p.new_zeros(p.shape)
        # The sums still lack the division by total, which backward folds into grad_output's scale.
        saved = [
            grad_mu.view_as(loc),
            grad_p.view_as(factor),
            grad_scale.div_(2 * scale.unsqueeze(1)).view_as(diag),  # d sqrt(D) / dD = 1 / (2 sqrt(D))
            total,
        ]
        if marginal:  # per pixel, divided here by the pixel's total
            per_logit_total = pixel_total if binary else pixel_total.repeat(1, loc.shape[1])
            m_mu.div_(per_logit_total)
            m_p = p.new_zeros(p.shape) if rank == 0 else m_p.div_(per_logit_total.unsqueeze(1))
            m_scale.div_(per_logit_total).div_(2 * scale)
            saved += [m_mu.view_as(loc), m_p.view_as(factor), m_scale.view_as(diag)]
            pixels = pixel_max + pixel_total.log() - math.log(num_samples)  # (B, S)
            marginal_value = (pixels if w is None else pixels * w).sum(1)
        else:
            marginal_value = mu.new_zeros(batch)
            ctx.mark_non_differentiable(marginal_value)
        ctx.save_for_backward(*saved)
        return run_max + total.log() - math.log(num_samples), marginal_value

    @staticmethod
    def backward(ctx, grad_output, grad_marginal):
        grad_loc, grad_factor, grad_diag, total, *marginal = ctx.saved_tensors
        g = (grad_output / total).view(-1, *([1] * (grad_loc.dim() - 1)))
        grads = [g * grad_loc, g.unsqueeze(1) * grad_factor, g * grad_diag]
        if marginal and grad_marginal is not None:
            gm = grad_marginal.view_as(g)
            grads = [grads[0] + gm * marginal[0], grads[1] + gm.unsqueeze(1) * marginal[1], grads[2] + gm * marginal[2]]
        return (*grads, None, None, None, None, None, None, None)


def _accumulate(total: Tensor | None, value: Tensor) -> Tensor:
    return value if total is None else total.add_(value)


def _accumulate_product(total: Tensor | None, left: Tensor, right: Tensor) -> Tensor:
    """total + left @ right (batched), the product written into ``total`` after the first."""
    return torch.bmm(left, right) if total is None else total.baddbmm_(left, right)


def ssn_loss(
    distribution: LowRankLogitDistribution,
    target: Tensor,
    num_samples: int = 20,
    antithetic: bool = True,
    ignore_index: int | None = None,
    mask: Tensor | None = None,
    normalize_by_pixels: bool = False,
    reduction: str = "mean",
    check_inputs: bool = True,
    generator: Generators = None,
    all_annotators: bool = False,
    marginal_weight: float = 0.0,
) -> Tensor:
    """Negative Monte Carlo log-likelihood of label maps under an SSN's logit distribution.

    Args:
        distribution: the model's output, batch (B,), event (C, *S).
        target: (B, *S) integer labels in [0, C), or (B, A, *S) with ``all_annotators``.
        num_samples: M, the logit samples per image (the paper used 20).
        antithetic: draw M / 2 deviations e and use mu + e and mu - e (halves the variance
            of the estimate; M must be even).
        ignore_index: label to leave out of the sum.
        mask: optional (B, *S) or (B, 1, *S) region; pixels outside it are left out.
        normalize_by_pixels: divide each image's term by its number of counted pixels (a
            per-pixel scale, convenient for learning rates tuned on cross-entropy).
        reduction: ``"mean"`` over the batch (the paper's objective), ``"sum"`` or ``"none"`` (B,).
        check_inputs: raise ``ValueError`` on NaN or infinite distribution parameters even
            when the distribution was built without value validation.
        generator: the noise's source: ``None`` (PyTorch's global generator), one generator,
            or one per image, so that an image's noise is the same in any batch (:mod:`ssn.randomness`).
        all_annotators: ``target`` is (B, A, *S), the maps of A annotators of each image, each
            scored with the same M samples (maps large enough to be streamed: with draws of
            their own), and each image's loss is the mean over them. The same objective in
            expectation as one annotator drawn at random per image (the paper's), with less noise.
        marginal_weight: lambda; where > 0, add lambda x the pixels' marginal negative
            log-likelihood, - sum_i log (1/M) sum_m softmax(eta^m)_{i, y_i}, estimated from the
            same samples (see below). 0, the default: the paper's loss alone.

    The whole map's likelihood charges little for a mode of the covariance that empties some
    samples: with a third of the samples empty on an image every reader marked, the image's
    term loses log(3/2) = 0.4 nats, whatever the lesion's size. The marginal term charges
    every pixel of the lesion for it, so the share of samples that show a structure follows
    the share of annotators who drew it, image by image; the joint term still shapes how
    the pixels vary together.

    Returns:
        A scalar (or (B,) with ``reduction="none"``).
    """
    if not isinstance(distribution, LowRankLogitDistribution):
        raise TypeError(
            f"ssn_loss needs a LowRankLogitDistribution (the output of an SSN); got "
            f"{type(distribution).__name__}. For plain logits use torch.nn.functional.cross_entropy."
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}; got {reduction!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1; got {num_samples}")
    if not marginal_weight >= 0:
        raise ValueError(f"marginal_weight must be 0 or more; got {marginal_weight}")
    if check_inputs and not distribution.values_checked:
        distribution.check_values()
    expected = distribution.batch_shape + distribution.spatial_shape
    if all_annotators and target.dim() != len(expected) + 1:
        raise ValueError(
            f"with all_annotators, target must have shape (B, A, *S) = ({expected[0]}, A, "
            f"{', '.join(map(str, expected[1:]))}); got {tuple(target.shape)}"
        )
    maps = target.unbind(1) if all_annotators else (target,)
    # Check the targets before drawing samples: a bad label should fail fast and clearly.
    prepared = [prepare_target(t, tuple(expected), distribution.num_classes, ignore_index, mask) for t in maps]
    binary = distribution.num_classes == 2
    values = num_samples * distribution.loc[0, : 1 if binary else None].numel()  # per image
    if values > CHUNK_ABOVE and (num_samples > SAMPLES_PER_CHUNK) and torch.is_grad_enabled():
        # Large maps (volumes): a few samples at a time, the gradients accumulated as they go.
        # Several annotators: each scored with its own draws, the batch repeated once per annotator.
        source = distribution.class_contrast(1, 0) if binary else distribution
        count = len(prepared)
        parameters = [source.loc, source.cov_factor, source.cov_diag]
        targets, weights = prepared[0]
        if count > 1:  # no copies for one annotator, the usual case of volumes
            parameters = [t.repeat_interleave(count, 0) for t in parameters]
            targets = torch.stack([t for t, _ in prepared], 1).flatten(0, 1)
            if any(w is not None for _, w in prepared):  # each map's counted pixels (all, where None)
                kept = [torch.ones_like(t, dtype=torch.bool) if w is None else w for t, w in prepared]
                weights = torch.stack(kept, 1).flatten(0, 1)
            if isinstance(generator, (list, tuple)):
                generator = [g for g in generator for _ in range(count)]
        joint, marginal = _StreamedLogLikelihood.apply(
            *parameters, targets, weights, num_samples, antithetic, binary, generator, bool(marginal_weight)
        )
        per_map = -(joint + marginal_weight * marginal if marginal_weight else joint).view(-1, count)
        losses = [_normalized(per_map[:, a], w, expected, normalize_by_pixels) for a, (_, w) in enumerate(prepared)]
    else:
        if binary:  # only the log-odds eta_1 - eta_0 matter: sample them directly, with half the draws
            contrast = distribution.class_contrast(1, 0)
            margin = contrast.rsample((num_samples,), antithetic=antithetic, generator=generator)[:, :, 0]
        else:
            logit_samples = distribution.rsample((num_samples,), antithetic=antithetic, generator=generator)
        losses = []
        for t, w in prepared:
            if binary:
                pixel_log_lik = _binary_pixel_log_likelihoods(margin, t)
            else:
                pixel_log_lik = _pixel_log_likelihoods(logit_samples, t)
            if marginal_weight:
                joint, marginal = _joint_and_marginal(pixel_log_lik, w)
                log_lik = joint + marginal_weight * marginal
            else:
                log_lik = _log_mean_exp(_map_sums(pixel_log_lik, w))
            losses.append(_normalized(-log_lik, w, expected, normalize_by_pixels))
    loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean(0)  # the mean over annotators
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _normalized(loss: Tensor, weights: Tensor | None, expected, normalize_by_pixels: bool) -> Tensor:
    """(B,) per-image losses, divided by each image's counted pixels where ``normalize_by_pixels``."""
    if not normalize_by_pixels:
        return loss
    if weights is None:
        return loss / float(math.prod(expected[1:]))
    return loss / weights.flatten(1).sum(-1).clamp_min(1).to(loss.dtype)


class SSNLoss(nn.Module):
    """Module form of :func:`ssn_loss`; call it as ``loss_fn(distribution, target, mask=None)``."""

    def __init__(
        self,
        num_samples: int = 20,
        antithetic: bool = True,
        ignore_index: int | None = None,
        normalize_by_pixels: bool = False,
        reduction: str = "mean",
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}; got {reduction!r}")
        if antithetic and num_samples % 2:
            raise ValueError(f"antithetic sampling needs an even num_samples; got {num_samples}")
        self.num_samples = num_samples
        self.antithetic = antithetic
        self.ignore_index = ignore_index
        self.normalize_by_pixels = normalize_by_pixels
        self.reduction = reduction
        self.check_inputs = check_inputs

    def forward(self, distribution: LowRankLogitDistribution, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return ssn_loss(
            distribution,
            target,
            num_samples=self.num_samples,
            antithetic=self.antithetic,
            ignore_index=self.ignore_index,
            mask=mask,
            normalize_by_pixels=self.normalize_by_pixels,
            reduction=self.reduction,
            check_inputs=self.check_inputs,
        )

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, antithetic={self.antithetic}, "
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"
        )


def prepare_target(
    target: Tensor,
    expected_shape: tuple[int, ...],
    num_classes: int,
    ignore_index: int | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Check a label map against the model's output; shared by every method's loss.

    Args:
        target: (B, *S) integer labels; expected_shape: (B, *S).
        ignore_index: a label whose pixels are left out; mask: (B, *S) or (B, 1, *S) region.

    Returns:
        int64 labels safe to gather with (ignored pixels set to 0), and a bool (B, *S) map of
        the pixels to count, or ``None`` when all count.
    """
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor of int64 labels; got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class labels (int64); got dtype {target.dtype}")
    if tuple(target.shape) != tuple(expected_shape):
        hint = ""
        if target.dim() == len(expected_shape) + 1 and target.shape[1] == 1:
            hint = " (squeeze the channel dimension: target[:, 0])"
        raise ValueError(f"target must have shape (B, *S) = {tuple(expected_shape)}; got {tuple(target.shape)}{hint}")
    target = target.long()
    weights = None
    if ignore_index is not None:
        valid = target != ignore_index
        weights = valid
        target = torch.where(valid, target, torch.zeros_like(target))
        out_of_range = valid & ((target < 0) | (target >= num_classes))
    else:
        out_of_range = (target < 0) | (target >= num_classes)
    if bool(out_of_range.any()):
        bad = torch.unique(target[out_of_range])[:5].tolist()
        raise ValueError(
            f"target has labels outside [0, {num_classes}) (e.g. {bad}); the model has "
            f"{num_classes} classes. Remap the labels or set ignore_index."
        )
    if mask is not None:
        if tuple(mask.shape) == (expected_shape[0], 1, *expected_shape[1:]):
            mask = mask[:, 0]
        if tuple(mask.shape) != tuple(expected_shape):
            raise ValueError(
                f"mask must have shape (B, *S) = {tuple(expected_shape)} or (B, 1, *S); got {tuple(mask.shape)}"
            )
        mask = mask.to(device=target.device) != 0
        weights = mask if weights is None else weights & mask
    return target, weights


def per_image_cross_entropy(
    logits: Tensor, target: Tensor, num_classes: int, mask: Tensor | None = None, all_annotators: bool = False
) -> Tensor:
    """The cross-entropy of logits (B, C, *S) against labels (B, *S), summed over the pixels
    inside ``mask`` (all by default): shape (B,). The scale of every method's loss here.
    With ``all_annotators``, labels (B, A, *S), the maps of A annotators: the mean of their cross-entropies."""
    if all_annotators:
        if target.dim() != logits.dim():
            raise ValueError(f"with all_annotators, target must be (B, A, *S); got {tuple(target.shape)}")
        return torch.stack([per_image_cross_entropy(logits, t, num_classes, mask) for t in target.unbind(1)]).mean(0)
    target, keep = prepare_target(target, (logits.shape[0], *logits.shape[2:]), num_classes, None, mask)
    pixel_loss = F.cross_entropy(logits, target, reduction="none")
    if keep is not None:
        pixel_loss = pixel_loss * keep
    return pixel_loss.flatten(1).sum(1)

"""Steering an SSN's samples: latent traversals, interpolation, and samples that agree with marks.

A sample is eta = mu + P z + sqrt(D) eps with z ~ N(0, I_R) and eps ~ N(0, I_N) (the draws are a
:class:`~ssn.distributions.LogitNoise`). Keeping the draws lets one edit them:

- :func:`latent_traversal`: one draw with its k-th latent factor z_k set to given values, the
  rest held: how factor k changes the segmentation;
- :func:`interpolate`: draws along the great circle between two draws (spherical interpolation
  of the whole standard normal vector (z, eps)), so that the intermediate draws keep the norm of
  typical draws, which a straight line between two of them does not;
- :func:`sample_with_marks`: samples whose labels agree with pixels (or voxels) a user marked
  as a class.

Any edited :class:`LogitNoise` becomes logit maps with
:meth:`~ssn.LowRankLogitDistribution.logits_from_noise` (class scales, temperature) and label maps
with :func:`~ssn.distributions.labels_from_logits`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .distributions import LogitNoise, LowRankLogitDistribution, labels_from_logits

__all__ = ["latent_traversal", "interpolate", "MarkedSamples", "sample_with_marks"]


def latent_traversal(noise: LogitNoise, direction: int, values: Sequence[float]) -> LogitNoise:
    """``len(values)`` copies of one draw (``noise`` with n = 1) with z[..., direction] set to each value."""
    if noise.z.shape[0] != 1:
        raise ValueError(f"latent_traversal edits one draw; got {noise.z.shape[0]} (use noise.select(i))")
    rank = noise.z.shape[-1]
    if not 0 <= direction < rank:
        raise ValueError(f"direction must be in [0, {rank}); got {direction}")
    count = len(values)
    z = noise.z.expand(count, *noise.z.shape[1:]).clone()
    z[..., direction] = torch.as_tensor(list(values), dtype=z.dtype, device=z.device).view(count, 1)
    return LogitNoise(z, noise.eps.expand(count, *noise.eps.shape[1:]))


def interpolate(start: LogitNoise, end: LogitNoise, steps: int) -> LogitNoise:
    """``steps`` draws from ``start`` to ``end`` (both n = 1, endpoints included) along the great
    circle through them, per image: x(s) = sin((1-s) w) / sin w a + sin(s w) / sin w b, with w the
    angle between the whole draws a = (z, eps) and b."""
    if start.z.shape[0] != 1 or end.z.shape[0] != 1 or start.eps.shape != end.eps.shape or start.z.shape != end.z.shape:
        raise ValueError("interpolate takes two single draws (n = 1) of one distribution")
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (the two ends); got {steps}")
    batch = start.z.shape[1]
    a = torch.cat([start.z[0].reshape(batch, -1), start.eps[0].reshape(batch, -1)], 1).double()
    b = torch.cat([end.z[0].reshape(batch, -1), end.eps[0].reshape(batch, -1)], 1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    omega = torch.arccos(cos.clamp(-1, 1)).unsqueeze(0).unsqueeze(-1)  # (1, B, 1)
    s = torch.linspace(0, 1, steps, dtype=torch.float64).view(steps, 1, 1)
    small = omega.abs() < 1e-6  # (almost) the same direction: a straight line is the circle
    sin = torch.sin(omega).where(~small, torch.ones_like(omega))
    weight_a = torch.where(small, 1 - s, torch.sin((1 - s) * omega) / sin)
    weight_b = torch.where(small, s, torch.sin(s * omega) / sin)
    mixed = (weight_a * a + weight_b * b).to(start.z.dtype)  # (steps, B, R + N)
    rank = start.z.shape[-1]
    return LogitNoise(
        mixed[..., :rank].reshape(steps, *start.z.shape[1:]), mixed[..., rank:].reshape(steps, *start.eps.shape[1:])
    )


@dataclass
class MarkedSamples:
    """Samples under marks and how they were found.

    Attributes:
        labels: (n, B, *S) label maps.
        noise: the draws behind them (n, B, ...), for further editing.
        method: per image, ``"rejection"`` (exact samples of the model given the marks) or
            ``"optimisation"`` (each of n draws moved to the nearest draw that meets the marks).
        agreement: per image, the share of marked pixels whose sampled label is the mark,
            averaged over the n samples (1.0: every mark met by every sample).
        acceptance: per image, the share of free draws that met every mark.
    """

    labels: Tensor
    noise: LogitNoise
    method: list[str]
    agreement: list[float]
    acceptance: list[float]


def sample_with_marks(
    dist: LowRankLogitDistribution,
    marks: Tensor,
    num_samples: int = 16,
    generator: torch.Generator | None = None,
    max_draws: int = 2048,
    chunk: int = 64,
    steps: int = 300,
    lr: float = 0.1,
    margin: float = 0.5,
    class_scales=None,
    temperature: float = 1.0,
) -> MarkedSamples:
    """Samples of ``dist`` whose labels agree with ``marks``.

    First by rejection: up to ``max_draws`` free draws per image, keeping those that meet every
    mark; these are exact samples of the model conditioned on the marks. Where fewer than
    ``num_samples`` pass (a rare event under the model), by optimisation: ``num_samples`` fresh
    draws are each moved, by ``steps`` Adam steps on (z, eps), to minimise
    |z - z0|^2 / 2 + |eps - eps0|^2 / 2 plus a hinge on every marked pixel's logit margin (the
    marked class ahead of the others by ``margin``, its weight growing while marks stay unmet).
    Each result is the draw nearest to its start that meets the marks; as eps of an unmarked pixel touches only that pixel, unmarked pixels
    change only through the shared latent factors z, as the covariance implies.

    Args:
        marks: (B, *S) integer, the class marked at each pixel, -1 where unmarked.
        class_scales: as in :meth:`~ssn.LowRankLogitDistribution.logits_from_noise`.
        temperature: as in :meth:`~ssn.LowRankLogitDistribution.logits_from_noise`.
    """
    expected = dist.batch_shape + dist.spatial_shape
    if tuple(marks.shape) != tuple(expected):
        raise ValueError(
            f"marks must have shape (B, *S) = {tuple(expected)}, -1 where unmarked; got {tuple(marks.shape)}"
        )
    if marks.numel() and (int(marks.max()) >= dist.num_classes or int(marks.min()) < -1):
        raise ValueError(f"marks must be -1 (unmarked) or a class in [0, {dist.num_classes})")
    labels, noises, methods, agreements, acceptances = [], [], [], [], []
    for b in range(marks.shape[0]):
        single = LowRankLogitDistribution(
            dist.loc[b : b + 1], dist.cov_factor[b : b + 1], dist.cov_diag[b : b + 1], validate_args=False
        )
        marked = marks[b : b + 1] >= 0
        noise, acceptance = _by_rejection(
            single, marks[b : b + 1], marked, num_samples, generator, max_draws, chunk, class_scales, temperature
        )
        method = "rejection"
        if noise is None:
            method = "optimisation"
            noise = _by_optimisation(
                single,
                marks[b : b + 1],
                marked,
                single.draw_noise(num_samples, generator),
                steps,
                lr,
                margin,
                class_scales,
                temperature,
            )
        drawn = labels_from_logits(single.logits_from_noise(noise, class_scales, temperature))
        met = (drawn == marks[b : b + 1].to(drawn.dtype)) & marked
        agreement = float(met.flatten(1).sum(1).double().mean() / max(int(marked.sum()), 1)) if marked.any() else 1.0
        labels.append(drawn)
        noises.append(noise)
        methods.append(method)
        agreements.append(agreement)
        acceptances.append(acceptance)
    return MarkedSamples(
        torch.cat(labels, 1),
        LogitNoise(torch.cat([n.z for n in noises], 1), torch.cat([n.eps for n in noises], 1)),
        methods,
        agreements,
        acceptances,
    )


def _meets(dist, noise, marks, marked, class_scales, temperature) -> Tensor:
    drawn = labels_from_logits(dist.logits_from_noise(noise, class_scales, temperature))
    return ((drawn == marks.to(drawn.dtype)) | ~marked).flatten(1).all(1)  # (n,)


def _by_rejection(dist, marks, marked, num_samples, generator, max_draws, chunk, class_scales, temperature):
    kept, drawn_total, accepted_total = [], 0, 0
    while drawn_total < max_draws:
        count = min(chunk, max_draws - drawn_total)
        noise = dist.draw_noise(count, generator)
        ok = _meets(dist, noise, marks, marked, class_scales, temperature)
        drawn_total += count
        accepted_total += int(ok.sum())
        if ok.any():
            kept.append(noise.select(torch.nonzero(ok).flatten()))
        if accepted_total >= num_samples:
            return LogitNoise.cat(kept).select(slice(0, num_samples)), accepted_total / drawn_total
    return None, accepted_total / max(drawn_total, 1)


def _by_optimisation(
    dist, marks, marked, start: LogitNoise, steps, lr, margin, class_scales, temperature
) -> LogitNoise:
    z = start.z.clone().requires_grad_(True)
    eps = start.eps.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z, eps], lr=lr)
    target = marks.clamp_min(0).unsqueeze(0).unsqueeze(2)  # (1, 1, 1, *S)
    weight = 10.0
    for step in range(steps):
        if step and step % 50 == 0:
            weight = min(weight * 4, 1e5)  # marks still unmet: a stiffer penalty (they are reachable: full support)
        with torch.enable_grad():
            logits = dist.logits_from_noise(LogitNoise(z, eps), class_scales, temperature)  # (n, 1, C, *S)
            chosen = logits.gather(2, target.expand(logits.shape[0], -1, 1, *logits.shape[3:])).squeeze(2)
            others = logits.scatter(2, target.expand(logits.shape[0], -1, 1, *logits.shape[3:]), -math.inf).amax(2)
            violation = torch.relu(others - chosen + margin) * marked
            if not bool((violation > 0).any()):
                break
            prior = 0.5 * ((z - start.z) ** 2).flatten(1).sum(1) + 0.5 * ((eps - start.eps) ** 2).flatten(1).sum(1)
            loss = (prior + weight * violation.flatten(1).sum(1)).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return LogitNoise(z.detach(), eps.detach())

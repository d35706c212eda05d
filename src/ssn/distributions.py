"""The low-rank Gaussian over a whole logit map, the distribution at the heart of an SSN.

Monteiro et al. (NeurIPS 2020) model the logit map of an image as one joint Gaussian,

    eta ~ N(mu, Sigma),   Sigma = P P^T + D,

over all classes and pixels at once, where ``P`` has a small rank ``R`` and ``D`` is diagonal.
Because the pixels share the ``R`` latent factors, samples are spatially coherent.

Shapes (``S`` are 1, 2 or 3 spatial dimensions, ``N = C * prod(S)`` is the event size):

- ``loc``         (B, C, *S)     the mean logits mu
- ``cov_factor``  (B, R, C, *S)  the factor P; ``cov_factor[b, r].flatten()`` is column r of P
- ``cov_diag``    (B, C, *S)     the diagonal of D (positive)

Sampling costs one matrix product of the latent draws with the factor, never an expanded
copy of the factor per sample, so 20 samples of a 128x128 map are cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.utils import lazy_property

from .randomness import Generators, standard_normal

__all__ = ["LowRankLogitDistribution", "LogitNoise", "labels_from_logits", "NonFiniteError"]

_LOG_2PI = math.log(2 * math.pi)

#: The memory :meth:`LowRankLogitDistribution.sample_labels` lets one chunk of draws take by
#: default, in bytes (1 GiB): a 240x240x155 volume of 4 classes then stays under 4 GiB in all.
SAMPLE_MEMORY_BYTES = 1 << 30


def _as_size(sample_shape: int | Sequence[int] | torch.Size) -> torch.Size:
    if isinstance(sample_shape, int):
        return torch.Size((sample_shape,))
    return torch.Size(sample_shape)


class LowRankLogitDistribution(Distribution):
    """A Gaussian over logit maps with covariance ``P P^T + diag(D)``.

    It is a :class:`torch.distributions.Distribution` with ``batch_shape`` ``(B,)`` and
    ``event_shape`` ``(C, *S)``: anything written for ``torch.distributions`` works with it.

    Args:
        loc: mean logits mu, shape (B, C, *S).
        cov_factor: low-rank factor P, shape (B, R, C, *S), ``R >= 0``. ``R = 0`` gives
            independent per-pixel Gaussians (the paper's "diagonal" ablation).
        cov_diag: diagonal of D, shape (B, C, *S), strictly positive.
        validate_args: also check values (finite mean and factor, finite positive diagonal).
            Shapes, dtypes and devices are always checked. ``None`` follows
            ``torch.distributions.Distribution``'s default.

    Example:
        >>> import torch
        >>> from ssn import LowRankLogitDistribution
        >>> loc = torch.zeros(4, 2, 32, 32)
        >>> dist = LowRankLogitDistribution(loc, torch.randn(4, 10, 2, 32, 32), torch.ones(4, 2, 32, 32))
        >>> dist.rsample((20,)).shape
        torch.Size([20, 4, 2, 32, 32])
        >>> dist.sample_labels(16).shape, dist.sample_labels(16).dtype
        (torch.Size([16, 4, 32, 32]), torch.uint8)
    """

    has_rsample = True

    def __init__(
        self,
        loc: Tensor,
        cov_factor: Tensor,
        cov_diag: Tensor,
        validate_args: bool | None = None,
    ) -> None:
        _check_parameters(loc, cov_factor, cov_diag)
        self.loc = loc
        self.cov_factor = cov_factor
        self.cov_diag = cov_diag
        # The base class would print whole tensors on a bad value; we check values ourselves.
        super().__init__(loc.shape[:1], loc.shape[1:], validate_args=False)
        self._validate_args = Distribution._validate_args if validate_args is None else validate_args
        #: whether the values were checked on construction (see :meth:`check_values`).
        self.values_checked = bool(self._validate_args)
        if self.values_checked:
            self.check_values()

    # ------------------------------------------------- the torch.distributions protocol
    # Shapes: batch (B,) and event (C, *S), so the constraints hold over the whole event.
    @property
    def arg_constraints(self) -> dict:
        event_dims = len(self.event_shape)
        return {
            "loc": constraints.independent(constraints.real, event_dims),
            "cov_factor": constraints.independent(constraints.real, event_dims + 1),
            "cov_diag": constraints.independent(constraints.positive, event_dims),
        }

    @property
    def support(self) -> constraints.Constraint:
        """Real logit maps: ``independent(real, len(event_shape))``."""
        return constraints.independent(constraints.real, len(self.event_shape))

    def check_values(self) -> None:
        """Raise ``ValueError`` naming the problem if a parameter is NaN or infinite, or the
        diagonal is not positive (one device synchronisation)."""
        _check_values(self.loc, self.cov_factor, self.cov_diag)

    # ----------------------------------------------------------------------------- sizes
    @property
    def rank(self) -> int:
        """The rank R of the covariance factor."""
        return self.cov_factor.shape[1]

    @property
    def num_classes(self) -> int:
        """The number of classes C."""
        return self.loc.shape[1]

    @property
    def spatial_shape(self) -> torch.Size:
        """The spatial shape S of the logit map."""
        return self.loc.shape[2:]

    @property
    def event_size(self) -> int:
        """N = C * prod(S), the dimension of the Gaussian."""
        return self.loc[0].numel()

    # --------------------------------------------------------------- flat (B, ..., N) views
    @property
    def _loc_flat(self) -> Tensor:  # (B, N)
        return self.loc.reshape(self.loc.shape[0], -1)

    @property
    def _diag_flat(self) -> Tensor:  # (B, N)
        return self.cov_diag.reshape(self.cov_diag.shape[0], -1)

    @property
    def _factor_flat(self) -> Tensor:  # (B, R, N): row r is column r of P
        return self.cov_factor.reshape(self.cov_factor.shape[0], self.rank, self.event_size)

    # ------------------------------------------------------------------------- moments
    @property
    def mean(self) -> Tensor:
        """mu, shape (B, C, *S)."""
        return self.loc

    @property
    def mode(self) -> Tensor:
        """mu, shape (B, C, *S)."""
        return self.loc

    @property
    def variance(self) -> Tensor:
        """The marginal variances diag(P P^T) + D, shape (B, C, *S)."""
        return self.cov_factor.pow(2).sum(1) + self.cov_diag

    def class_contrast(self, positive: int = 1, negative: int = 0) -> LowRankLogitDistribution:
        """The distribution of eta_positive - eta_negative, a logit map with one channel.

        A difference of jointly Gaussian logits is a low-rank Gaussian again: mean
        mu_p - mu_n, factor P_p - P_n, diagonal D_p + D_n. With two classes the softmax depends
        on the logits only through eta_1 - eta_0, the foreground log-odds, so this halves the
        work of anything that needs only class probabilities. Shapes: (B, 1, *S) events.
        """
        for name, index in (("positive", positive), ("negative", negative)):
            if not 0 <= index < self.num_classes:
                raise ValueError(f"{name} class {index} is not in [0, {self.num_classes})")
        if positive == negative:
            raise ValueError("positive and negative must be different classes")
        # Weighted sums over the class dimension: their gradients are one broadcast product,
        # where slicing would fill and copy a zero tensor of the whole factor per slice.
        weight = self.loc.new_zeros(self.num_classes)
        weight[positive], weight[negative] = 1.0, -1.0
        class_weight = weight.view(-1, *([1] * len(self.spatial_shape)))  # (C, 1, ..)
        return LowRankLogitDistribution(
            (self.loc * class_weight).sum(1, keepdim=True),
            (self.cov_factor * class_weight).sum(2, keepdim=True),
            (self.cov_diag * class_weight.abs()).sum(1, keepdim=True),
            validate_args=False,
        )

    def marginal(self, *index: int | slice) -> LowRankLogitDistribution:
        """The joint law of the logits of a region of the map: ``index`` picks along the spatial
        axes (an int drops its axis), as ``loc[:, :, *index]`` would.

        A Gaussian's marginal over some coordinates keeps their mean, their rows of the factor
        and their diagonal, so this is exact, and draws made from the same latent ``z`` are the
        region's part of whole-map draws. Example: one axial slice of a volume,
        ``dist.marginal(slice(None), slice(None), k)``: (B, C, X, Y, Z) -> (B, C, X, Y).
        """
        if len(index) > len(self.spatial_shape):
            raise IndexError(f"{len(index)} indices for a map with {len(self.spatial_shape)} spatial axes")
        spatial = (slice(None), slice(None), *index)
        return LowRankLogitDistribution(
            self.loc[spatial], self.cov_factor[(slice(None), *spatial)], self.cov_diag[spatial], validate_args=False
        )

    def scaled(self, temperature: float) -> LowRankLogitDistribution:
        """The distribution of mu + t (eta - mu): the same mean, the covariance times t^2.

        The factor is multiplied by t and the diagonal by t^2, so a draw at temperature t is
        the mean plus t times a draw's deviation (with the same noise). t = 1 is this
        distribution, t = 0 its mean; a temperature chosen on validation data corrects a
        model whose samples spread too much (t < 1) or too little (t > 1).
        """
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0; got {temperature}")
        if temperature == 1:
            return self
        return LowRankLogitDistribution(
            self.loc, self.cov_factor * temperature, self.cov_diag * temperature**2, validate_args=False
        )

    # ------------------------------------------------------------------------ sampling
    def rsample(
        self,
        sample_shape: int | Sequence[int] | torch.Size = torch.Size(),
        antithetic: bool = False,
        generator: Generators = None,
    ) -> Tensor:
        """Draw reparameterised logit maps, shape (*sample_shape, B, C, *S).

        eta = mu + P z + sqrt(D) eps with z ~ N(0, I_R) and eps ~ N(0, I_N).

        Args:
            sample_shape: how many maps to draw (prepended to the shape).
            antithetic: draw ``n / 2`` deviations e = P z + sqrt(D) eps and return the pairs
                mu + e and mu - e: along the flattened sample dimensions, sample ``i`` and
                sample ``i + n / 2`` form a pair. ``n`` must then be even.
            generator: an optional ``torch.Generator`` for reproducible draws, or one per batch
                element (see :mod:`ssn.randomness`).
        """
        sample_shape = _as_size(sample_shape)
        n = sample_shape.numel()
        if antithetic and n % 2:
            raise ValueError(
                f"antithetic sampling draws pairs (mu + e, mu - e), so it needs an even number "
                f"of samples; got {n}. Ask for {n + 1} or set antithetic=False."
            )
        num_draws = n // 2 if antithetic else n
        deviation = self._draw_deviation(num_draws, generator)  # (B, n', N)
        loc = self._loc_flat.unsqueeze(1)  # (B, 1, N)
        if antithetic:
            # One fused pass: (B, 2, n/2, N) = loc + sign * deviation, sign = +1 then -1.
            sign = torch.tensor([1.0, -1.0], dtype=loc.dtype, device=loc.device).view(1, 2, 1, 1)
            flat = torch.addcmul(loc.unsqueeze(1), deviation.unsqueeze(1), sign).view(deviation.shape[0], n, -1)
        else:
            flat = deviation.add_(loc)  # in place: no autograd node needs the deviation itself
        # (B, n, N) -> (n, B, N) is a view; splitting n and N into their shapes is one too.
        return flat.transpose(0, 1).view(sample_shape + self.batch_shape + self.event_shape)

    def _draw_deviation(self, num: int, generator: Generators) -> Tensor:
        """P z + sqrt(D) eps for ``num`` draws, shape (B, num, N), without expanding P."""
        batch, size = self._loc_flat.shape
        options: dict[str, Any] = dict(dtype=self.loc.dtype, device=self.loc.device)
        scale = self._diag_flat.sqrt().unsqueeze(1)  # (B, 1, N)
        deviation = standard_normal((batch, num, size), generator, 0, **options)
        # In place where autograd allows it: every buffer of n maps counts at 3D sizes.
        deviation = deviation * scale if scale.requires_grad else deviation.mul_(scale)
        if self.rank > 0:
            z = standard_normal((batch, num, self.rank), generator, 0, **options)
            # (B, num, R) @ (B, R, N): one batched product for all samples.
            deviation.baddbmm_(z, self._factor_flat)
        return deviation

    def sample_labels(
        self,
        num_samples: int,
        chunk_size: int | None = None,
        antithetic: bool = False,
        generator: Generators = None,
    ) -> Tensor:
        """Draw label maps: the per-pixel argmax of ``num_samples`` logit samples.

        Logit samples are drawn ``chunk_size`` at a time and reduced to labels at once, so
        memory is bounded by one chunk of logit maps plus the output, whatever
        ``num_samples`` is. By default the chunk is 16 samples, fewer where 16 would take more
        than :data:`SAMPLE_MEMORY_BYTES` (:meth:`default_chunk_size`): 2 for a 240x240x155 map
        of 4 classes. The draws depend on the chunk size, so give it to reproduce a draw exactly.

        Returns:
            (num_samples, B, *S), ``uint8`` when C <= 256, otherwise ``int64``.
        """
        if chunk_size is None:
            chunk_size = self.default_chunk_size()
        if num_samples < 0 or chunk_size < 1:
            raise ValueError(f"need num_samples >= 0 and chunk_size >= 1; got {num_samples} and {chunk_size}")
        if antithetic and chunk_size % 2:
            chunk_size += 1
        dtype = torch.uint8 if self.num_classes <= 256 else torch.int64
        out = torch.empty((num_samples,) + self.batch_shape + self.spatial_shape, dtype=dtype, device=self.loc.device)
        with torch.no_grad():
            # Two classes: the argmax is the sign of eta_1 - eta_0, drawn directly (half the work).
            binary = self.class_contrast(1, 0) if self.num_classes == 2 else None
            for start in range(0, num_samples, chunk_size):
                count = min(chunk_size, num_samples - start)
                pairs = antithetic and count % 2 == 0
                if binary is not None:
                    margin = binary.rsample((count,), antithetic=pairs, generator=generator)
                    out[start : start + count] = margin[:, :, 0] > 0
                else:
                    logits = self.rsample((count,), antithetic=pairs, generator=generator)
                    out[start : start + count] = _class_argmax(logits, dtype)
        return out

    def default_chunk_size(self, budget: int | None = None) -> int:
        """The samples per chunk of :meth:`sample_labels`: 16, or as many as fit ``budget`` bytes
        (default :data:`SAMPLE_MEMORY_BYTES`), at least 1.

        A chunk of n samples holds about three float buffers of n x B x N values at once (the
        noise, the deviation and the logits, or the class contrast's for two classes, which has
        N / C values per map).
        """
        budget = SAMPLE_MEMORY_BYTES if budget is None else budget
        per_map = self.event_size // self.num_classes if self.num_classes == 2 else self.event_size
        per_sample = 3 * self.batch_shape.numel() * per_map * self.loc.element_size()
        return int(max(1, min(16, budget // max(per_sample, 1))))

    # --------------------------------------------------------------- steering the draws
    def draw_noise(self, num_samples: int, generator: Generators = None) -> LogitNoise:
        """The standard normal draws behind ``num_samples`` samples, kept so that they can be
        replayed, rescaled or edited: z (n, B, R) and eps (n, B, C, *S)."""
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0; got {num_samples}")
        options: dict[str, Any] = dict(dtype=self.loc.dtype, device=self.loc.device)
        return LogitNoise(
            standard_normal((num_samples, *self.batch_shape, self.rank), generator, 1, **options),
            standard_normal((num_samples, *self.batch_shape, *self.event_shape), generator, 1, **options),
        )

    def deviation_from_noise(self, noise: LogitNoise) -> Tensor:
        """P z + sqrt(D) eps for each draw, (n, B, C, *S): a sample minus the mean."""
        self._check_noise(noise)
        n = noise.z.shape[0]
        flat = noise.eps.reshape(n, *self.batch_shape, -1) * self._diag_flat.sqrt()  # (n, B, N)
        if self.rank > 0:
            # (n, B, R) x (B, R, N) -> (n, B, N): one product for all draws
            flat = flat + torch.einsum("nbr,brk->nbk", noise.z, self._factor_flat)
        return flat.view(noise.eps.shape)

    def logits_from_noise(
        self,
        noise: LogitNoise,
        class_scales: Tensor | Sequence[float] | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """Logit maps from kept draws, (n, B, C, *S): mu + w_c t (P z + sqrt(D) eps).

        Args:
            noise: from :meth:`draw_noise` (or edited: traversals, interpolations).
            class_scales: w, shape (C,) or (n, C): each class's deviation from its mean is
                scaled by w_c. 1 reproduces the sample, 0 gives the mean, -1 mirrors the deviation.
            temperature: t, scales every class alike (as :meth:`scaled`).
        """
        deviation = self.deviation_from_noise(noise)
        scale = torch.as_tensor(temperature, dtype=deviation.dtype, device=deviation.device)
        if class_scales is not None:
            w = torch.as_tensor(class_scales, dtype=deviation.dtype, device=deviation.device)
            n = deviation.shape[0]
            if w.shape not in ((self.num_classes,), (n, self.num_classes)):
                raise ValueError(
                    f"class_scales must have shape ({self.num_classes},) or ({n}, {self.num_classes}); "
                    f"got {tuple(w.shape)}"
                )
            w = w.expand(n, self.num_classes).view(n, 1, self.num_classes, *([1] * len(self.spatial_shape)))
            scale = scale * w
        return self.loc + scale * deviation

    def _check_noise(self, noise: LogitNoise) -> None:
        expected_eps = self.batch_shape + self.event_shape
        if (
            not isinstance(noise, LogitNoise)
            or noise.z.shape[1:] != self.batch_shape + (self.rank,)
            or noise.eps.shape[1:] != expected_eps
            or noise.z.shape[0] != noise.eps.shape[0]
        ):
            got = (
                (tuple(noise.z.shape), tuple(noise.eps.shape))
                if isinstance(noise, LogitNoise)
                else type(noise).__name__
            )
            raise ValueError(
                f"noise must be a LogitNoise with z (n, {', '.join(map(str, self.batch_shape))}, {self.rank}) and "
                f"eps (n, {', '.join(map(str, expected_eps))}), as draw_noise gives; got {got}"
            )

    # ---------------------------------------------------------------------- densities
    @lazy_property
    def _capacitance_tril(self) -> Tensor:
        """Cholesky factor of the capacitance matrix K = I_R + P^T D^-1 P, shape (B, R, R)."""
        factor = self._factor_flat  # (B, R, N)
        capacitance = torch.matmul(factor / self._diag_flat.unsqueeze(1), factor.mT)
        capacitance = capacitance + torch.eye(self.rank, dtype=factor.dtype, device=factor.device)
        return torch.linalg.cholesky(capacitance)

    @lazy_property
    def _log_det_covariance(self) -> Tensor:
        """log|P P^T + D| = log|K| + log|D| (matrix determinant lemma), shape (B,)."""
        log_det_k = 2 * self._capacitance_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return log_det_k + self._diag_flat.log().sum(-1)

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact log density of logit maps ``value`` (*sample_shape, B, C, *S) -> (*sample_shape, B).

        Costs O(N R^2): the Woodbury identity
        (P P^T + D)^-1 = D^-1 - D^-1 P K^-1 P^T D^-1 gives the Mahalanobis term and the
        matrix determinant lemma the log determinant.
        """
        expected = self.batch_shape + self.event_shape
        if value.shape[-len(expected) :] != expected:
            raise ValueError(
                f"log_prob expects logit maps of shape (*sample_shape, {', '.join(map(str, expected))}); "
                f"got {tuple(value.shape)}"
            )
        diff = (value - self.loc).flatten(-len(self.event_shape))  # (..., B, N)
        diag = self._diag_flat
        mahalanobis = (diff.pow(2) / diag).sum(-1)
        if self.rank > 0:
            # u = P^T D^-1 diff, (..., B, R); subtract u^T K^-1 u = |L^-1 u|^2.
            u = torch.einsum("brn,...bn->...br", self._factor_flat, diff / diag)
            whitened = torch.linalg.solve_triangular(self._capacitance_tril, u.unsqueeze(-1), upper=False)
            mahalanobis = mahalanobis - whitened.squeeze(-1).pow(2).sum(-1)
        return -0.5 * (self.event_size * _LOG_2PI + self._log_det_covariance + mahalanobis)

    def entropy(self) -> Tensor:
        """Differential entropy of the logit map, shape (B,)."""
        return 0.5 * (self.event_size * (1.0 + _LOG_2PI) + self._log_det_covariance)

    def expand(self, batch_shape, _instance=None) -> LowRankLogitDistribution:
        """The same distribution for a batch of ``batch_shape = (B',)`` images, as views.

        The batch must stay one-dimensional (the parameters are laid out (B, ...)); a batch of
        one image expands to any B', a batch of B only to itself, as in ``Tensor.expand``.
        """
        batch_shape = torch.Size(batch_shape)
        if len(batch_shape) != 1 or self.loc.shape[0] not in (1, batch_shape[0]):
            raise ValueError(
                f"LowRankLogitDistribution keeps a one-dimensional batch (B,) of images; it can expand "
                f"batch {tuple(self.batch_shape)} to (B',) when B is 1 or B' = B, not to {tuple(batch_shape)}"
            )
        count = batch_shape[0]
        return LowRankLogitDistribution(
            self.loc.expand(count, *self.loc.shape[1:]),
            self.cov_factor.expand(count, *self.cov_factor.shape[1:]),
            self.cov_diag.expand(count, *self.cov_diag.shape[1:]),
            validate_args=False,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch={self.loc.shape[0]}, classes={self.num_classes}, "
            f"spatial={tuple(self.spatial_shape)}, rank={self.rank}, dtype={self.loc.dtype}, "
            f"device={self.loc.device})"
        )


class NonFiniteError(ValueError):
    """A distribution's parameters are NaN or infinite (or its diagonal not positive): raised by
    :meth:`LowRankLogitDistribution.check_values`. Training skips such a step (see ``max_bad_steps``)."""


class LogitNoise(NamedTuple):
    """The standard normal draws behind samples of a :class:`LowRankLogitDistribution`:
    ``z`` (n, B, R), the latent factors' weights, and ``eps`` (n, B, C, *S), the per-pixel noise.
    A sample is mu + P z + sqrt(D) eps."""

    z: Tensor
    eps: Tensor

    def select(self, index) -> LogitNoise:
        """Some of the draws (an int, a slice or indices along n), still (n', ...) shaped."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return LogitNoise(self.z[index], self.eps[index])

    @classmethod
    def cat(cls, parts: Sequence[LogitNoise]) -> LogitNoise:
        """Draws of several :class:`LogitNoise` one after another along n."""
        return cls(torch.cat([p.z for p in parts]), torch.cat([p.eps for p in parts]))


def labels_from_logits(logits: Tensor) -> Tensor:
    """The per-pixel class of logit maps (n, B, C, *S) -> (n, B, *S), uint8 for C <= 256."""
    if logits.dim() < 4:
        raise ValueError(f"logits must have shape (n, B, C, *S); got {tuple(logits.shape)}")
    return _class_argmax(logits, torch.uint8 if logits.shape[2] <= 256 else torch.int64)


def _class_argmax(logits: Tensor, dtype: torch.dtype) -> Tensor:
    """``logits.argmax(dim=2)`` for (n, B, C, *S), as ``dtype``: one running maximum over the
    classes, elementwise over the voxels (several times faster on the CPU than a reduction along
    the strided class axis). Ties go to the lower class, as with ``argmax``."""
    best = logits[:, :, 0].clone()
    labels = torch.zeros(best.shape, dtype=dtype, device=logits.device)
    for c in range(1, logits.shape[2]):
        candidate = logits[:, :, c]
        labels.masked_fill_(candidate > best, c)
        torch.maximum(best, candidate, out=best)
    return labels


def _check_parameters(loc: Tensor, cov_factor: Tensor, cov_diag: Tensor) -> None:
    """Shape, dtype and device checks, all free of device synchronisation."""
    for name, tensor in (("loc", loc), ("cov_factor", cov_factor), ("cov_diag", cov_diag)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got {tensor.dtype}")
    if not 3 <= loc.dim() <= 5:
        raise ValueError(f"loc must have shape (B, C, *S) with 1 to 3 spatial dimensions; got {tuple(loc.shape)}")
    batch, classes, *spatial = loc.shape
    if cov_diag.shape != loc.shape:
        raise ValueError(f"cov_diag must have the shape of loc {tuple(loc.shape)}; got {tuple(cov_diag.shape)}")
    if cov_factor.dim() != loc.dim() + 1 or cov_factor.shape[:1] + cov_factor.shape[2:] != loc.shape:
        raise ValueError(
            f"cov_factor must have shape (B, R, C, *S) = ({batch}, R, {classes}, "
            f"{', '.join(map(str, spatial))}) for loc of shape {tuple(loc.shape)}; "
            f"got {tuple(cov_factor.shape)}"
        )
    for name, tensor in (("cov_factor", cov_factor), ("cov_diag", cov_diag)):
        if tensor.dtype != loc.dtype:
            raise TypeError(f"{name} has dtype {tensor.dtype} but loc has {loc.dtype}; use one dtype")
        if tensor.device != loc.device:
            raise ValueError(f"{name} is on {tensor.device} but loc is on {loc.device}; move them to one device")


def _check_values(loc: Tensor, cov_factor: Tensor, cov_diag: Tensor) -> None:
    """Value checks, with one device synchronisation.

    A sum is finite exactly when every term is (barring overflow of huge finite values), so
    three sums and a minimum decide; the slower per-element counts run only to word an error.
    """
    if loc.numel() == 0:
        return
    summary = torch.stack([loc.sum(), cov_factor.sum(), cov_diag.sum(), cov_diag.amin()])
    loc_sum, factor_sum, diag_sum, diag_min = summary.tolist()
    if all(math.isfinite(v) for v in (loc_sum, factor_sum, diag_sum)) and diag_min > 0:
        return
    bad_loc = int((~torch.isfinite(loc)).sum())
    bad_factor = int((~torch.isfinite(cov_factor)).sum())
    if bad_loc or bad_factor:
        raise NonFiniteError(
            f"non-finite parameters: {bad_loc} values of loc and {bad_factor} of cov_factor are NaN "
            "or infinite. Check the input images for NaN and lower the learning rate."
        )
    bad_diag = int((~torch.isfinite(cov_diag)).sum())
    if bad_diag:
        raise NonFiniteError(
            f"cov_diag has {bad_diag} NaN or infinite values: exp() of the log-variance overflowed "
            "or the features are NaN. Lower the learning rate or clip gradients."
        )
    non_positive = int((cov_diag <= 0).sum())
    if non_positive:
        raise NonFiniteError(f"cov_diag must be strictly positive; {non_positive} values are <= 0. Pass exp(x) + eps.")
    raise NonFiniteError("the parameters are finite but so large that their sums overflow; rescale the logits")

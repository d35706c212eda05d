"""The SSN head: from a feature map to a low-rank Gaussian over the logit map."""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributions import LowRankLogitDistribution
from ..errors import ConfigError
from .layers import conv_layer

__all__ = ["SSNHead"]

_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class SSNHead(nn.Module):
    """Three 1x1 convolutions giving the parameters of a :class:`LowRankLogitDistribution`.

    From features h (B, in_channels, *S):

    - ``mean``:       mu = conv(h),                     (B, C, *S)
    - ``log_diag``:   D  = exp(conv(h)) + eps,          (B, C, *S)
    - ``factor``:     P  = conv(h), with ``R * C`` output channels laid out rank-major:
      channel ``r * C + c`` is factor ``r`` of class ``c``; reshaped to (B, R, C, *S).

    Args:
        in_channels: feature channels of the backbone.
        num_classes: C.
        rank: R >= 0. ``0`` drops the factor (independent per-pixel Gaussians).
        spatial_dims: 1, 2 or 3.
        eps: added to the diagonal so that D stays positive (the paper's 1e-5).
        variance_init: ``None`` or 0 (the paper): PyTorch's default initialisation, which starts
            with a logit variance of about 1 + R * 0.1 per pixel. A number v starts near zero
            variance instead: the diagonal at exactly v (its weights zero, its bias log v) and
            the factor's weights scaled by sqrt(v), so that training begins as the deterministic
            model and adds variance where the data asks for it. Not zero: with antithetic
            samples a zero factor has zero gradient and would never grow.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rank: int = 10,
        spatial_dims: int = 2,
        eps: float = 1e-5,
        variance_init: float | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2 (background and one class); got {num_classes}")
        if rank < 0:
            raise ConfigError(f"rank must be >= 0; got {rank}")
        if eps <= 0:
            raise ConfigError(f"eps must be > 0 so that the diagonal stays positive; got {eps}")
        if variance_init is not None and not 0 <= variance_init <= 10:
            raise ConfigError(
                f"variance_init must be in [0, 10] (0 or None: the default initialisation); got {variance_init}"
            )
        conv = conv_layer(spatial_dims)
        self.num_classes = num_classes
        self.rank = rank
        self.spatial_dims = spatial_dims
        self.eps = eps
        self.mean = conv(in_channels, num_classes, 1)
        self.log_diag = conv(in_channels, num_classes, 1)
        self.factor = conv(in_channels, rank * num_classes, 1) if rank > 0 else None
        self.variance_init = variance_init
        if variance_init:
            with torch.no_grad():
                self.log_diag.weight.zero_()
                cast(Tensor, self.log_diag.bias).fill_(math.log(variance_init))  # built with a bias
                if self.factor is not None:
                    self.factor.weight.mul_(math.sqrt(variance_init))
                    cast(Tensor, self.factor.bias).zero_()

    def forward(self, features: Tensor, mask: Tensor | None = None) -> LowRankLogitDistribution:
        """Features (B, in_channels, *S) -> distribution over (B, C, *S) logit maps.

        Args:
            mask: optional region of interest, (B, 1, *S) or (B, *S), bool or {0, 1}. Outside
                it the factor is zero and the diagonal is ``eps``, so the logits there are
                (almost) deterministic, as the paper did with a brain mask; the mean is kept.
        """
        if features.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"SSNHead with spatial_dims={self.spatial_dims} expects features of shape "
                f"(B, channels, *S) with {self.spatial_dims} spatial dims; got {tuple(features.shape)}"
            )
        batch, _, *spatial = features.shape
        loc, log_diag, *rest = self._convolutions(features)
        diag_scale = log_diag.exp()
        if rest:
            factor = rest[0].view(batch, self.rank, self.num_classes, *spatial)
        else:
            factor = loc.new_zeros((batch, 0, self.num_classes, *spatial))
        if mask is not None:
            mask = _mask_as_channel(mask, features)
            diag_scale = diag_scale * mask
            factor = factor * mask.unsqueeze(1)
        return LowRankLogitDistribution(loc, factor, diag_scale + self.eps)

    def _convolutions(self, features: Tensor) -> list[Tensor]:
        """The outputs of ``mean``, ``log_diag`` and ``factor`` from one convolution whose weights
        are the three stacked: the features are read once, about twice as fast on a CPU as three
        convolutions, with the same parameters (and state dict) as three."""
        layers = [self.mean, self.log_diag] + ([self.factor] if self.factor is not None else [])
        weight = torch.cat([layer.weight for layer in layers])
        bias = torch.cat([cast(Tensor, layer.bias) for layer in layers])
        outputs = _CONVOLUTIONS[self.spatial_dims](features, weight, bias)
        return list(outputs.split([layer.out_channels for layer in layers], dim=1))

    def extra_repr(self) -> str:
        init = "" if self.variance_init is None else f", variance_init={self.variance_init}"
        return f"num_classes={self.num_classes}, rank={self.rank}, eps={self.eps}{init}"


def _mask_as_channel(mask: Tensor, features: Tensor) -> Tensor:
    """Mask (B, *S) or (B, 1, *S) -> float (B, 1, *S) in the features' dtype."""
    spatial = features.shape[2:]
    batch = features.shape[0]
    if mask.shape == (batch, *spatial):
        mask = mask.unsqueeze(1)
    if mask.shape != (batch, 1, *spatial):
        raise ValueError(
            f"mask must have shape (B, 1, *S) or (B, *S) = {(batch, 1, *spatial)}; got {tuple(mask.shape)}"
        )
    return mask.to(dtype=features.dtype, device=features.device)

"""The Probabilistic U-Net (Kohl et al., NeurIPS 2018), behind the same interface, for comparison.

A global latent z (``latent_dim``, 6 in the paper) explains the spread of the annotations:

- the prior net p(z | x) and the posterior net q(z | x, y) are convolutional encoders ending in
  a global average and a 1x1 convolution to the mean and log standard deviation of an
  axis-aligned Gaussian;
- z is broadcast over the image, joined to the backbone's last features and mapped to logits by
  three 1x1 convolutions (the paper's "fcomb");
- training minimises  CE(y | x, z ~ q) + beta * KL(q(z | x, y) || p(z | x))  per image (the
  cross-entropy summed over pixels, as the other methods' losses are), averaged over the batch;
- samples take z from the prior, one network pass per image and a cheap fcomb per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal, kl_divergence

from ..errors import ConfigError
from ..losses import per_image_cross_entropy, prepare_target
from ..networks.layers import conv_layer, max_pool_layer
from ..networks.unet import _ConvBlock
from ..randomness import Generators, standard_normal
from .base import SegmentationModel, float32

__all__ = ["ProbabilisticUNet", "LatentEncoder"]


class LatentEncoder(nn.Module):
    """A convolutional encoder to an axis-aligned Gaussian over the latent, (B, latent_dim).

    Args:
        in_channels: image channels (+ one-hot classes for the posterior).
        features: channels per level; ``len(features) - 1`` poolings.
    """

    def __init__(self, spatial_dims: int, in_channels: int, latent_dim: int, features: Sequence[int]) -> None:
        super().__init__()
        blocks, channels = [], in_channels
        for level, width in enumerate(features):
            if level > 0:
                blocks.append(max_pool_layer(spatial_dims)(2))
            blocks.append(_ConvBlock(spatial_dims, channels, width, norm=None))
            channels = width
        self.encoder = nn.Sequential(*blocks)
        self.to_gaussian = conv_layer(spatial_dims)(channels, 2 * latent_dim, 1)
        self.latent_dim = latent_dim

    def forward(self, x: Tensor) -> Independent:
        h = self.encoder(x).flatten(2).mean(-1)  # global average, (B, features[-1])
        h = self.to_gaussian(h.view(*h.shape, *([1] * (x.dim() - 2)))).flatten(1)
        mean, log_std = h[:, : self.latent_dim], h[:, self.latent_dim :]
        # unvalidated: a NaN latent gives a NaN loss, which training skips like any non-finite step
        return Independent(Normal(mean, log_std.clamp(-10, 10).exp(), validate_args=False), 1, validate_args=False)


class ProbabilisticUNet(SegmentationModel):
    """Backbone features joined with a global latent drawn from a learned prior.

    Args:
        backbone, feature_channels, num_classes, spatial_dims: as for the other methods.
        in_channels: the image channels, which the prior and posterior nets read too.
        latent_dim: the dimension of z (the paper's 6).
        beta: the weight of the KL term (the paper's 1).
        encoder_features: channels per level of the prior and posterior encoders.
    """

    method = "prob-unet"
    settings = ("latent_dim", "beta", "encoder_features")

    def __init__(
        self,
        backbone: nn.Module,
        feature_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        in_channels: int = 1,
        latent_dim: int = 6,
        beta: float = 1.0,
        encoder_features: Sequence[int] = (32, 64, 128, 256),
    ) -> None:
        super().__init__(backbone, num_classes, spatial_dims)
        if latent_dim < 1:
            raise ConfigError(f"latent_dim must be at least 1; got {latent_dim}")
        if beta < 0:
            raise ConfigError(f"beta must be >= 0; got {beta}")
        self.latent_dim, self.beta = latent_dim, beta
        self.prior = LatentEncoder(spatial_dims, in_channels, latent_dim, encoder_features)
        self.posterior = LatentEncoder(spatial_dims, in_channels + num_classes, latent_dim, encoder_features)
        conv = conv_layer(spatial_dims)
        self.combine = nn.Sequential(  # "fcomb": three 1x1 convolutions on [features, z]
            conv(feature_channels + latent_dim, feature_channels, 1),
            nn.ReLU(inplace=True),
            conv(feature_channels, feature_channels, 1),
            nn.ReLU(inplace=True),
            conv(feature_channels, num_classes, 1),
        )

    def logits(self, features: Tensor, z: Tensor) -> Tensor:
        """Features (B, F, *S) and latents (B, latent_dim) -> logits (B, C, *S)."""
        z = z.view(*z.shape, *([1] * (features.dim() - 2))).expand(-1, -1, *features.shape[2:])
        return self.combine(torch.cat([features, z], dim=1))

    def forward(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits (B, C, *S) at the prior's mean latent."""
        images = self.checked_images(images)
        return self.logits(self.features(images), self.prior(images).mean)

    def loss(self, images: Tensor, target: Tensor, mask: Tensor | None = None, generator: Generators = None) -> Tensor:
        """CE(y | x, z ~ q(z | x, y)) summed over pixels + beta KL(q || p), averaged over the batch."""
        images = self.checked_images(images)
        features = self.features(images)
        with float32(features):  # the latent nets, the KL and the cross-entropy in float32
            return self._loss(images.float(), features.float(), target, mask, generator)

    def _loss(
        self, images: Tensor, features: Tensor, target: Tensor, mask: Tensor | None, generator: Generators
    ) -> Tensor:
        target, _ = prepare_target(target, (images.shape[0], *images.shape[2:]), self.num_classes, None, mask)
        one_hot = F.one_hot(target, self.num_classes).movedim(-1, 1).to(images.dtype)
        posterior = self.posterior(torch.cat([images, one_hot], dim=1))
        prior = self.prior(images)
        q = posterior.base_dist
        z = q.loc + q.scale * standard_normal(q.loc.shape, generator, 0, q.loc.dtype, q.loc.device)  # reparameterised
        cross_entropy = per_image_cross_entropy(self.logits(features, z), target, self.num_classes, mask)
        return (cross_entropy + self.beta * kl_divergence(posterior, prior)).mean()

    def _prior_pass(self, images: Tensor) -> tuple[Tensor, Tensor, Normal]:
        """The part of sampling that does not depend on the latent, computed once per image:
        (the features' share of fcomb's first layer (B, F', *S), its latent weight (F', latent_dim),
        the prior N(mu_z, sigma_z) (B, latent_dim)).

        The first 1x1 convolution of [features, z] splits as W_f features + W_z z: the
        features' part is computed once, and each latent only adds a per-channel offset."""
        images = self.checked_images(images)
        features = self.features(images)
        prior = self.prior(images).base_dist
        first = self.combine[0]
        assert isinstance(first, nn.modules.conv._ConvNd)  # the first of fcomb's 1x1 convolutions
        channels = features.shape[1]
        conv = getattr(F, f"conv{features.dim() - 2}d")
        projected = conv(features, first.weight[:, :channels], first.bias)  # (B, F', *S)
        return projected, first.weight[:, channels:].flatten(1), prior

    def _latent_logits(
        self,
        prior_pass: tuple[Tensor, Tensor, Normal],
        num_samples: int,
        generator: Generators,
        chunk_size: int = 16,
        temperature: float | None = None,
    ):
        """Yield logits (n, B, C, *S) for ``num_samples`` latents z = mu_z + t sigma_z eps from the
        prior of :meth:`_prior_pass` (t: ``temperature``, the model's by default), ``chunk_size``
        at a time."""
        projected, latent_weight, prior = prior_pass
        t = self.temperature if temperature is None else temperature
        expand = (1,) * (projected.dim() - 2)
        for start in range(0, num_samples, chunk_size):
            count = min(chunk_size, num_samples - start)
            noise = standard_normal((count, *prior.loc.shape), generator, 1, prior.loc.dtype, prior.loc.device)
            z = prior.loc + t * prior.scale * noise  # (n, B, latent_dim)
            hidden = (projected + (z @ latent_weight.T).view(count, *projected.shape[:2], *expand)).relu()
            logits = self.combine[2:](hidden.flatten(0, 1))
            yield logits.view(count, *projected.shape[:1], *logits.shape[1:])

    @torch.no_grad()
    def sample_labels(
        self, images: Tensor, num_samples: int, mask: Tensor | None = None, generator: Generators = None
    ) -> Tensor:
        """(N, B, *S) uint8: the argmax of the logits for N latents drawn from the prior."""
        return _labels(self._latent_logits(self._prior_pass(images), num_samples, generator))

    @torch.no_grad()
    def sample_labels_at(
        self,
        images: Tensor,
        temperatures: Sequence[float],
        num_samples: int,
        mask: Tensor | None = None,
        generators: Callable[[], Generators] = lambda: None,
    ) -> list[Tensor]:
        """:meth:`sample_labels` at each temperature from one pass of the backbone and the prior
        net (see the base class); only fcomb runs per latent."""
        prior_pass = self._prior_pass(images)
        return [
            _labels(self._latent_logits(prior_pass, num_samples, generators(), temperature=t)) for t in temperatures
        ]

    @torch.no_grad()
    def mean_probabilities(
        self, images: Tensor, mask: Tensor | None = None, num_samples: int = 100, generator: Generators = None
    ) -> Tensor:
        """E[softmax(logits)] over the prior, (B, C, *S), from ``num_samples`` latents."""
        total = sum(
            logits.softmax(2).sum(0) for logits in self._latent_logits(self._prior_pass(images), num_samples, generator)
        )
        return total / num_samples

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, latent_dim={self.latent_dim}, beta={self.beta}"


def _labels(logits: Iterable[Tensor]) -> Tensor:
    """(N, B, *S) uint8: the argmax over classes of chunks of logits (n, B, C, *S), concatenated."""
    labels = []
    for chunk in logits:
        if chunk.shape[2] == 2:  # two classes: the sign of the log-odds, cheaper than an argmax
            labels.append((chunk[:, :, 1] > chunk[:, :, 0]).to(torch.uint8))
        else:
            labels.append(chunk.argmax(2).to(torch.uint8))
    return torch.cat(labels)

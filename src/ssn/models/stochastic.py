"""The Stochastic Segmentation Network: a backbone, an SSN head and the Monte Carlo loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..distributions import LowRankLogitDistribution
from ..errors import ConfigError
from ..losses import per_image_cross_entropy, ssn_loss
from ..networks.heads import SSNHead
from ..randomness import Generators
from .base import SegmentationModel, float32

__all__ = ["StochasticSegmentationNetwork"]


class StochasticSegmentationNetwork(SegmentationModel):
    """Any backbone followed by an :class:`~ssn.networks.SSNHead` (Monteiro et al. 2020).

    ``model(images, mask=None)`` and ``model.distribution(images, mask=None)`` return the
    :class:`~ssn.LowRankLogitDistribution` of the logit map.

    Args:
        backbone: an ``nn.Module`` mapping images (B, in_channels, *S) to features
            (B, feature_channels, *S) of the same spatial size.
        feature_channels: channels of the backbone's output.
        num_classes: C.
        rank: R of the covariance factor (0: the paper's diagonal model).
        spatial_dims: 1, 2 or 3.
        eps: floor of the diagonal variance (the paper's 1e-5).
        mc_samples: M, the Monte Carlo samples of :meth:`loss` (the paper's 20).
        antithetic: draw the loss's samples in antithetic pairs (mu + e, mu - e).
        variance_init: the head's initial variance (see :class:`~ssn.networks.SSNHead`);
            ``None`` is PyTorch's default initialisation, as in the paper.
        mean_weight: lambda, the weight of the cross-entropy of the mean logits added to the
            paper's loss throughout training (0, the paper: none; see :meth:`loss`).
        marginal_weight: lambda', the weight of the pixels' marginal negative log-likelihood
            added to the paper's loss (0, the paper: none; see :func:`~ssn.ssn_loss`).
    """

    method = "ssn"
    settings = ("rank", "eps", "mc_samples", "antithetic", "variance_init", "mean_weight", "marginal_weight")
    has_logit_distribution = True
    has_warm_up = True
    takes_all_annotators = True

    def __init__(
        self,
        backbone: nn.Module,
        feature_channels: int,
        num_classes: int,
        rank: int = 10,
        spatial_dims: int = 2,
        eps: float = 1e-5,
        mc_samples: int = 20,
        antithetic: bool = True,
        variance_init: float | None = None,
        mean_weight: float = 0.0,
        marginal_weight: float = 0.0,
    ) -> None:
        super().__init__(backbone, num_classes, spatial_dims)
        if mc_samples < 1 or (antithetic and mc_samples % 2):
            raise ConfigError(f"mc_samples must be positive, and even with antithetic sampling; got {mc_samples}")
        if not mean_weight >= 0:
            raise ConfigError(f"mean_weight must be 0 or more (0: the paper's loss alone); got {mean_weight}")
        self.mean_weight = float(mean_weight)
        if not marginal_weight >= 0:
            raise ConfigError(f"marginal_weight must be 0 or more (0: the paper's loss alone); got {marginal_weight}")
        self.marginal_weight = float(marginal_weight)
        self.head = SSNHead(feature_channels, num_classes, rank, spatial_dims, eps, variance_init)
        self.mc_samples = mc_samples
        self.antithetic = antithetic

    @property
    def rank(self) -> int:
        return self.head.rank

    def forward(self, images: Tensor, mask: Tensor | None = None) -> LowRankLogitDistribution:
        """Images (B, in_channels, *S) -> distribution over logit maps (B, C, *S)."""
        features = self.features(images)
        with float32(features):
            return self.head(features.float(), mask)

    def distribution(self, images: Tensor, mask: Tensor | None = None) -> LowRankLogitDistribution:
        """The same as calling the model: the distribution over logit maps."""
        return self(images, mask)

    def loss(
        self, images: Tensor, target: Tensor, mask: Tensor | None = None, generator=None, all_annotators: bool = False
    ) -> Tensor:
        """The paper's L = -(1/B) sum_b [logsumexp_m sum_i log softmax(eta_b^m)_{i,y_i} - log M],
        plus ``mean_weight`` x the cross-entropy of the mean logits mu (summed over pixels,
        averaged over the batch, as :meth:`mean_loss`) where ``mean_weight`` > 0, and
        ``marginal_weight`` x the pixels' marginal negative log-likelihood from the same samples
        where ``marginal_weight`` > 0 (:func:`~ssn.ssn_loss`).

        The Monte Carlo likelihood of the whole map charges a model little for a mode of empty
        samples on an image that every reader marked: half its samples empty costs log 2 nats
        of the image's likelihood. The cross-entropy of mu charges each pixel, and keeps the
        mean where the readers' pixels are. With ``all_annotators``, ``target`` is (B, A, *S)
        and each image's terms are the means over its A annotators, scored with one set of samples."""
        distribution = self(images, mask)
        with float32(images):
            loss = ssn_loss(
                distribution,
                target,
                num_samples=self.mc_samples,
                antithetic=self.antithetic,
                mask=mask,
                generator=generator,
                all_annotators=all_annotators,
                marginal_weight=self.marginal_weight,
            )
            if self.mean_weight:
                mean_term = per_image_cross_entropy(
                    distribution.loc, target, self.num_classes, mask, all_annotators
                ).mean()
                loss = loss + self.mean_weight * mean_term
            return loss

    def warm_up_loss(
        self, images: Tensor, target: Tensor, mask: Tensor | None = None, all_annotators: bool = False
    ) -> Tensor:
        """:meth:`mean_loss`: the mean logits trained alone first."""
        return self.mean_loss(images, target, mask, all_annotators)

    def spread_parameters(self) -> list[nn.Parameter]:
        """The covariance head: the diagonal's and the factor's convolutions."""
        return [p for name, p in self.head.named_parameters() if name.startswith(("factor", "log_diag"))]

    def mean_loss(
        self, images: Tensor, target: Tensor, mask: Tensor | None = None, all_annotators: bool = False
    ) -> Tensor:
        """The cross-entropy of the mean logits mu, summed over pixels and averaged over the batch:
        the paper's loss in the limit of zero covariance, which trains the mean alone (the
        covariance head gets no gradient). Training uses it for the first ``mean_warmup`` of its budget."""
        features = self.features(images)
        with float32(features):
            loc = self.head.mean(features.float())
            return per_image_cross_entropy(loc, target, self.num_classes, mask, all_annotators).mean()

    @torch.no_grad()
    def sample_labels(
        self, images: Tensor, num_samples: int, mask: Tensor | None = None, generator: Generators = None
    ) -> Tensor:
        """(N, B, *S) uint8: the argmax of N logit maps drawn from one network pass, at ``temperature``."""
        return self(images, mask).scaled(self.temperature).sample_labels(num_samples, generator=generator)

    @torch.no_grad()
    def sample_labels_at(
        self,
        images: Tensor,
        temperatures: Sequence[float],
        num_samples: int,
        mask: Tensor | None = None,
        generators: Callable[[], Generators] = lambda: None,
    ) -> list[Tensor]:
        """:meth:`sample_labels` at each temperature from one network pass: the distribution
        N(mu, t^2 (P P^T + D)) is the pass's, scaled (see the base class)."""
        distribution = self(images, mask)
        return [distribution.scaled(t).sample_labels(num_samples, generator=generators()) for t in temperatures]

    @torch.no_grad()
    def mean_probabilities(
        self,
        images: Tensor,
        mask: Tensor | None = None,
        num_samples: int = 100,
        generator: Generators = None,
        chunk_size: int = 16,
    ) -> Tensor:
        """E[softmax(eta)], (B, C, *S), estimated from ``num_samples`` logit draws (in chunks), at ``temperature``."""
        dist = self(images, mask).scaled(self.temperature)
        total = torch.zeros_like(dist.loc)
        for start in range(0, num_samples, chunk_size):
            count = min(chunk_size, num_samples - start)
            total += dist.rsample((count,), generator=generator).softmax(dim=2).sum(0)
        return total / num_samples

    def extra_repr(self) -> str:
        weight = f", mean_weight={self.mean_weight:g}" if self.mean_weight else ""
        if self.marginal_weight:
            weight += f", marginal_weight={self.marginal_weight:g}"
        return (
            f"{super().extra_repr()}, rank={self.rank}, mc_samples={self.mc_samples}, antithetic={self.antithetic}"
            + weight
        )

"""The baseline: the same backbone, one 1x1 convolution, a plain softmax."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..losses import per_image_cross_entropy
from ..networks.layers import conv_layer
from ..randomness import Generators
from .base import SegmentationModel, float32

__all__ = ["DeterministicSegmentationNetwork"]


class DeterministicSegmentationNetwork(SegmentationModel):
    """A backbone and a 1x1 convolution to logits; ``model(images)`` returns logits (B, C, *S).

    Its loss is the cross-entropy summed over pixels and averaged over the batch, the scale of
    the SSN loss, so the two train alike with one learning rate. Its "samples" are the argmax
    repeated: it has no spread to offer, which is what the SSN is compared against.
    """

    method = "deterministic"
    settings = ()
    has_spread = False
    takes_all_annotators = True

    def __init__(self, backbone: nn.Module, feature_channels: int, num_classes: int, spatial_dims: int = 2) -> None:
        super().__init__(backbone, num_classes, spatial_dims)
        self.head = conv_layer(spatial_dims)(feature_channels, num_classes, 1)

    def forward(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """Images (B, in_channels, *S) -> logits (B, C, *S). ``mask`` is accepted and unused."""
        features = self.features(images)
        with float32(features):
            return self.head(features.float())

    def loss(
        self, images: Tensor, target: Tensor, mask: Tensor | None = None, generator=None, all_annotators: bool = False
    ) -> Tensor:
        logits = self(images)
        with float32(logits):
            return per_image_cross_entropy(logits, target, self.num_classes, mask, all_annotators).mean()

    @torch.no_grad()
    def sample_labels(
        self, images: Tensor, num_samples: int, mask: Tensor | None = None, generator: Generators = None
    ) -> Tensor:
        """(N, B, *S) uint8: the argmax, N times."""
        labels = self(images).argmax(1).to(torch.uint8)
        return labels.unsqueeze(0).expand(num_samples, *labels.shape).contiguous()

    @torch.no_grad()
    def mean_probabilities(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        return self(images).softmax(dim=1)

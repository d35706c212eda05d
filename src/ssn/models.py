"""Models: a backbone joined to an SSN head (or to a plain softmax head), and a registry.

Example:
    >>> import torch, ssn
    >>> model = ssn.models.create("unet", spatial_dims=2, in_channels=1, num_classes=2, rank=10,
    ...                           features=(8, 16))
    >>> dist = model(torch.randn(2, 1, 30, 30))   # any size: padded and cropped inside
    >>> dist.sample_labels(4).shape
    torch.Size([4, 2, 30, 30])
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from .backbones import UNet, conv_layer
from .distributions import LowRankLogitDistribution
from .heads import SSNHead

__all__ = [
    "StochasticSegmentationNetwork",
    "DeterministicSegmentationNetwork",
    "register_backbone",
    "available_backbones",
    "create",
]


class StochasticSegmentationNetwork(nn.Module):
    """Any backbone followed by an :class:`~ssn.heads.SSNHead`.

    Args:
        backbone: an ``nn.Module`` mapping images (B, in_channels, *S) to features
            (B, feature_channels, *S) of the same spatial size.
        feature_channels: channels of the backbone's output.
        num_classes: C.
        rank: R of the covariance factor (0: diagonal model).
        spatial_dims: 1, 2 or 3.
        eps: floor of the diagonal variance.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_channels: int,
        num_classes: int,
        rank: int = 10,
        spatial_dims: int = 2,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = SSNHead(feature_channels, num_classes, rank, spatial_dims, eps)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def rank(self) -> int:
        return self.head.rank

    def forward(self, image: Tensor, mask: Tensor | None = None) -> LowRankLogitDistribution:
        """Images (B, in_channels, *S) -> distribution over logit maps (B, C, *S)."""
        features = self.backbone(image)
        _check_same_size(image, features)
        return self.head(features, mask)


class DeterministicSegmentationNetwork(nn.Module):
    """The baseline: the same backbone, one 1x1 convolution, a plain softmax.

    ``forward`` returns logits (B, C, *S); train it with cross-entropy.
    """

    def __init__(self, backbone: nn.Module, feature_channels: int, num_classes: int, spatial_dims: int = 2):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.head = conv_layer(spatial_dims)(feature_channels, num_classes, 1)

    def forward(self, image: Tensor) -> Tensor:
        """Images (B, in_channels, *S) -> logits (B, C, *S)."""
        features = self.backbone(image)
        _check_same_size(image, features)
        return self.head(features)


def _check_same_size(image: Tensor, features: Tensor) -> None:
    if features.shape[2:] != image.shape[2:]:
        raise ValueError(
            f"the backbone must return features of the image's spatial size {tuple(image.shape[2:])}; "
            f"it returned {tuple(features.shape[2:])}. Pad and crop inside the backbone."
        )


# ---------------------------------------------------------------------------------- registry
BackboneFactory = Callable[..., nn.Module]
_BACKBONES: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register ``factory(spatial_dims=..., in_channels=..., **kwargs) -> nn.Module`` under ``name``.

    The module it returns must have an ``out_channels`` attribute (its feature channels).
    """

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _BACKBONES:
            raise ValueError(f"a backbone named {name!r} is already registered")
        _BACKBONES[name] = factory
        return factory

    return decorator


def available_backbones() -> list[str]:
    """Names accepted by :func:`create`."""
    return sorted(_BACKBONES)


register_backbone("unet")(UNet)


def create(
    name: str = "unet",
    *,
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    rank: int = 10,
    deterministic: bool = False,
    eps: float = 1e-5,
    **backbone_kwargs,
) -> nn.Module:
    """Build a model by backbone name.

    Args:
        name: a registered backbone (see :func:`available_backbones`), e.g. ``"unet"``.
        deterministic: build the plain-softmax baseline on the same backbone instead.
        **backbone_kwargs: passed to the backbone, e.g. ``features=(32, 64, 128, 256)``.

    Returns:
        :class:`StochasticSegmentationNetwork` or :class:`DeterministicSegmentationNetwork`.
    """
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(available_backbones())}")
    backbone = _BACKBONES[name](spatial_dims=spatial_dims, in_channels=in_channels, **backbone_kwargs)
    channels = getattr(backbone, "out_channels", None)
    if not isinstance(channels, int):
        raise TypeError(f"backbone {name!r} must expose its feature channels as an int `out_channels`")
    if deterministic:
        return DeterministicSegmentationNetwork(backbone, channels, num_classes, spatial_dims)
    return StochasticSegmentationNetwork(backbone, channels, num_classes, rank, spatial_dims, eps)

"""Models: the method interface, the SSN, the deterministic baseline, the Probabilistic U-Net, and their registries.

Example:
    >>> import torch, ssn
    >>> model = ssn.models.create("unet", spatial_dims=2, in_channels=1, num_classes=2, rank=10,
    ...                           features=(8, 16))
    >>> dist = model(torch.randn(2, 1, 30, 30))   # any size: padded and cropped inside
    >>> dist.sample_labels(4).shape
    torch.Size([4, 2, 30, 30])
"""

from ..networks.backbones import available_backbones, register_backbone, unregister_backbone
from .base import SegmentationModel
from .deterministic import DeterministicSegmentationNetwork
from .prob_unet import ProbabilisticUNet
from .registry import ModelSpec, available_methods, build, create, method_class, register_method, unregister_method
from .stochastic import StochasticSegmentationNetwork

__all__ = [
    "SegmentationModel",
    "StochasticSegmentationNetwork",
    "DeterministicSegmentationNetwork",
    "ProbabilisticUNet",
    "ModelSpec",
    "create",
    "build",
    "register_method",
    "unregister_method",
    "available_methods",
    "method_class",
    "register_backbone",
    "unregister_backbone",
    "available_backbones",
]

"""Networks: layers for 1-3 spatial dims, the U-Net, the SSN head and the backbone registry."""

from .backbones import available_backbones, build_backbone, feature_channels, register_backbone, unregister_backbone
from .heads import SSNHead
from .unet import UNet

__all__ = [
    "SSNHead",
    "UNet",
    "available_backbones",
    "build_backbone",
    "feature_channels",
    "register_backbone",
    "unregister_backbone",
]

"""MONAI networks as SSN backbones: ``monai:BasicUNet``, ``monai:UNet``, ``monai:SegResNet``,
``monai:DynUNet``, or any class of ``monai.networks.nets`` whose output keeps the input's
spatial size.

The network's own output (``out_channels`` channels, 32 unless given) is taken as the feature
map. Its last layer is linear (a 1x1 convolution in these four), and the SSN head that follows
is a set of 1x1 convolutions, so nothing is lost by treating logits as features.

Each network needs its input size to be a multiple of its total down-sampling; the wrapper pads
the input to a multiple of ``pad_to`` and crops the output back, so any image size works. The
default ``pad_to`` and the arguments MONAI requires without a default are filled in below and
can all be overridden in the model arguments (``model_kwargs`` in the YAML config).
"""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from ..errors import ConfigError
from .arguments import check_keywords
from .layers import crop_to, pad_to_multiple

__all__ = ["PaddedBackbone", "build", "available", "DEFAULTS", "SEGMENTATION_NETWORKS"]

DEFAULT_FEATURES = 32

# Arguments MONAI requires without a default, chosen to train on a CPU.
DEFAULTS: dict[str, dict] = {
    "UNet": {"channels": (16, 32, 64, 128), "strides": (2, 2, 2)},
    "DynUNet": {"kernel_size": (3, 3, 3, 3), "strides": (1, 2, 2, 2), "upsample_kernel_size": (2, 2, 2)},
}


class PaddedBackbone(nn.Module):
    """Pads (B, C, *S) up to a multiple of ``divisor``, runs ``network`` and crops back to S."""

    def __init__(self, network: nn.Module, divisor: int, out_channels: int) -> None:
        super().__init__()
        self.network = network
        self.divisor = divisor
        self.out_channels = out_channels

    def forward(self, image: Tensor) -> Tensor:
        """(B, in_channels, *S) -> (B, out_channels, *S)."""
        out = self.network(pad_to_multiple(image, self.divisor))
        if not isinstance(out, Tensor) or out.dim() != image.dim():
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(
                f"{type(self.network).__name__} returns {shape}, not a feature map (B, F, *S) of the image; a "
                "backbone must be a segmentation network (`ssn info` lists those that work)"
            )
        return crop_to(out, tuple(image.shape[2:]))

    def extra_repr(self) -> str:
        return f"divisor={self.divisor}, out_channels={self.out_channels}"


def _import_nets():
    try:
        from monai.networks import nets
    except ImportError:
        raise ConfigError("MONAI backbones need MONAI: pip install 'ssn[monai]' (or pip install monai)") from None
    return nets


#: MONAI's segmentation networks that serve as backbones: each gives a feature map of the
#: image's size. Measured with MONAI 1.6.1 (2D and 3D, 32-pixel sides): the first eight with
#: their defaults; AttentionUnet (``channels``, ``strides``) and UNETR (``img_size``) need their
#: arguments, SwinUNETR needs ``einops`` too. Classification, generative and registration
#: networks (DenseNet121, PatchDiscriminator, VQVAE, LocalNet, ...) are not backbones.
SEGMENTATION_NETWORKS = (
    "BasicUNet",
    "UNet",
    "DynUNet",
    "SegResNet",
    "SegResNetDS",
    "VNet",
    "HighResNet",
    "MedNeXt",
    "AttentionUnet",
    "UNETR",
    "SwinUNETR",
)


def available() -> list[str]:
    """``monai:NAME`` for the segmentation networks of :data:`SEGMENTATION_NETWORKS` that the
    installed MONAI has (empty without MONAI). Other MONAI networks can still be named; one
    that does not give a feature map of the image's size is refused when first run."""
    try:
        nets = _import_nets()
    except ConfigError:
        return []
    names = []
    for name in SEGMENTATION_NETWORKS:
        obj = getattr(nets, name, None)
        if inspect.isclass(obj) and issubclass(obj, nn.Module):
            names.append(f"monai:{name}")
    return names


def _divisor(name: str, kwargs: dict) -> int:
    """The total down-sampling of the four common networks (1 for others: give ``pad_to``)."""
    if name == "BasicUNet":
        return 16
    if name == "SegResNet":
        return 2 ** (len(kwargs.get("blocks_down", (1, 2, 2, 4))) - 1)
    if name in ("UNet", "DynUNet"):
        total = 1
        for stride in kwargs["strides"]:
            total *= max(stride) if isinstance(stride, (list, tuple)) else stride
        return total
    return 1


def build(name: str, spatial_dims: int, in_channels: int, **kwargs) -> PaddedBackbone:
    """``monai.networks.nets.NAME`` as a backbone; ``out_channels`` and ``pad_to`` are optional."""

    nets = _import_nets()
    network_class = getattr(nets, name, None)
    if not (inspect.isclass(network_class) and issubclass(network_class, nn.Module)):
        raise ConfigError(
            f"monai.networks.nets has no network {name!r}; try monai:BasicUNet, monai:UNet, "
            "monai:SegResNet or monai:DynUNet (`ssn info` lists them all)"
        )
    kwargs = {**DEFAULTS.get(name, {}), **kwargs}
    out_channels = kwargs.pop("out_channels", DEFAULT_FEATURES)
    pad_to = kwargs.pop("pad_to", None)
    check_keywords(f"backbone 'monai:{name}'", network_class, kwargs, reserved=("spatial_dims", "in_channels"))
    parameters = inspect.signature(network_class).parameters
    missing = [
        n
        for n, p in parameters.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in kwargs
        and n not in ("spatial_dims", "in_channels", "out_channels")
    ]
    if missing:
        raise ConfigError(f"monai:{name} needs the model arguments {', '.join(missing)} (model_kwargs in the config)")
    if "spatial_dims" not in parameters:
        raise ConfigError(f"monai:{name} takes no spatial_dims, so it cannot serve as an ssn backbone")
    if pad_to is not None and (not isinstance(pad_to, int) or isinstance(pad_to, bool) or pad_to < 1):
        raise ConfigError(f"pad_to must be a positive integer; got {pad_to!r}")
    divisor = pad_to or _divisor(name, kwargs)
    try:
        network = network_class(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
    except (ValueError, TypeError, AssertionError) as error:
        # MONAI checks its arguments as it builds; a refusal there is a bad model argument.
        raise ConfigError(f"monai:{name} refused its arguments {kwargs}: {error}") from error
    return PaddedBackbone(network, divisor, out_channels)

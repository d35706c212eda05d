"""The backbone registry: a name and its own keyword arguments -> a feature network.

A backbone maps images (B, in_channels, *S) to features (B, F, *S) of the same spatial size.
Registered here:

- ``"unet"``: :class:`ssn.networks.unet.UNet` (``features``, ``norm``, ``dropout``, ``convs_per_level``);
- ``"phiseg-unet"``: the paper's 7-level LIDC U-Net (:func:`ssn.networks.unet.phiseg_unet`);
- ``"deepmedic"``: the paper's BraTS backbone, two pathways (:class:`ssn.networks.deepmedic.DeepMedic`);
- ``"monai:NAME"``: any network of ``monai.networks.nets`` whose output keeps the input's
  spatial size (``BasicUNet``, ``UNet``, ``SegResNet``, ``DynUNet``, ...), through
  :mod:`ssn.networks.monai_nets` (needs ``pip install 'ssn[monai]'``);
- anything you add with :func:`register_backbone`.

Each factory is called as ``factory(spatial_dims=..., in_channels=..., **its_own_kwargs)``; the
keyword arguments are checked against its signature first, so a misspelt one is reported with
the list of those it takes. The feature channels F are the module's ``out_channels`` attribute
when it has one, otherwise they are found by one dry run (:func:`feature_channels`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from .arguments import check_keywords
from .deepmedic import DeepMedic
from .unet import UNet, phiseg_unet

__all__ = [
    "register_backbone",
    "unregister_backbone",
    "available_backbones",
    "build_backbone",
    "feature_channels",
    "backbone_defaults",
    "MONAI_PREFIX",
]

BackboneFactory = Callable[..., nn.Module]
_BACKBONES: dict[str, BackboneFactory] = {}
MONAI_PREFIX = "monai:"


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register ``factory(spatial_dims=..., in_channels=..., **kwargs) -> nn.Module`` under ``name``.

    Use as a decorator on a class or a function. The module should expose its feature channels
    as ``out_channels``; without it they are found by a dry run.
    """
    if name.startswith(MONAI_PREFIX):
        raise ConfigError(f"names starting with {MONAI_PREFIX!r} are reserved for MONAI networks")

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _BACKBONES:
            raise ConfigError(f"a backbone named {name!r} is already registered")
        _BACKBONES[name] = factory
        return factory

    return decorator


def unregister_backbone(name: str) -> None:
    """Remove ``name`` from the registry (tests and notebooks that re-register use this)."""
    if name not in _BACKBONES:
        raise ConfigError(f"no backbone named {name!r} is registered")
    del _BACKBONES[name]


def available_backbones() -> list[str]:
    """Registered names; MONAI networks are ``monai:NAME`` (see :func:`ssn.networks.monai_nets.available`)."""
    return sorted(_BACKBONES)


register_backbone("unet")(UNet)
register_backbone("phiseg-unet")(phiseg_unet)
register_backbone("deepmedic")(DeepMedic)


def build_backbone(name: str, spatial_dims: int, in_channels: int, **kwargs) -> nn.Module:
    """The backbone ``name`` built with its own keyword arguments.

    Raises:
        ConfigError: an unknown name, or a keyword argument the backbone does not take.
    """
    if name.startswith(MONAI_PREFIX):
        from . import monai_nets

        return monai_nets.build(name[len(MONAI_PREFIX) :], spatial_dims, in_channels, **kwargs)
    if name not in _BACKBONES:
        raise ConfigError(
            f"unknown backbone {name!r}; available: {', '.join(available_backbones())}, "
            f"or {MONAI_PREFIX}NAME for a MONAI network"
        )
    factory = _BACKBONES[name]
    check_keywords(f"backbone {name!r}", factory, kwargs, reserved=("spatial_dims", "in_channels"))
    return factory(spatial_dims=spatial_dims, in_channels=in_channels, **kwargs)


@torch.no_grad()
def feature_channels(backbone: nn.Module, spatial_dims: int, in_channels: int, size: int = 32) -> int:
    """F, the backbone's feature channels: its ``out_channels`` attribute, else one dry run.

    The dry run passes zeros of shape (1, in_channels, size, ...) in eval mode (so batch
    statistics are not touched) and restores the module's mode.
    """
    channels = getattr(backbone, "out_channels", None)
    if isinstance(channels, int) and not isinstance(channels, bool):
        return channels
    was_training = backbone.training
    parameter = next(backbone.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    try:
        backbone.eval()
        output = backbone(torch.zeros(1, in_channels, *([size] * spatial_dims), device=device))
    finally:
        backbone.train(was_training)
    if not isinstance(output, torch.Tensor) or output.dim() != spatial_dims + 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(
            f"{type(backbone).__name__} must return one feature map (B, F, *S) with {spatial_dims} spatial "
            f"dims; it returned {shape}"
        )
    return int(output.shape[1])


def backbone_defaults(name: str) -> dict:
    """The default arguments of a registered backbone, where JSON can carry them. MONAI's are
    left to MONAI: they hold objects that JSON cannot carry."""
    if name not in _BACKBONES:
        return {}
    parameters = inspect.signature(_BACKBONES[name]).parameters
    return {
        n: p.default
        for n, p in parameters.items()
        if n not in ("spatial_dims", "in_channels")
        and p.default is not inspect.Parameter.empty
        and _is_plain(p.default)
    }


def _is_plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))

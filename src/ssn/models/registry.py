"""Building a model by name: a method (``ssn``, ``deterministic``) on a backbone (``unet``, ``monai:...``).

A :class:`ModelSpec` names everything a model is built from. :func:`create` makes one from
keyword arguments and builds it; a run directory stores ``model.spec`` in its ``config.json``
and :func:`build` rebuilds exactly that model from it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..networks.backbones import backbone_defaults, build_backbone, feature_channels
from .base import SegmentationModel
from .deterministic import DeterministicSegmentationNetwork
from .prob_unet import ProbabilisticUNet
from .stochastic import StochasticSegmentationNetwork

__all__ = ["ModelSpec", "register_method", "available_methods", "method_class", "create", "build"]

_METHODS: dict[str, type[SegmentationModel]] = {}


def register_method(cls: type[SegmentationModel]) -> type[SegmentationModel]:
    """Register a :class:`SegmentationModel` subclass under its ``method`` name (a decorator).

    Its constructor must take ``(backbone, feature_channels, num_classes, spatial_dims=...,
    **settings)``, with its own arguments named in its ``settings``, and ``in_channels=...``
    if it reads the images itself (as the Probabilistic U-Net's prior net does).
    """
    name = getattr(cls, "method", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{cls.__name__} needs a class attribute `method`, the name to register it under")
    if name in _METHODS:
        raise ConfigError(f"a method named {name!r} is already registered")
    _METHODS[name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a method from the registry."""
    if name not in _METHODS:
        raise ConfigError(f"no method named {name!r} is registered")
    del _METHODS[name]


def available_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[SegmentationModel]:
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return _METHODS[name]


register_method(StochasticSegmentationNetwork)
register_method(DeterministicSegmentationNetwork)
register_method(ProbabilisticUNet)


@dataclass(frozen=True)
class ModelSpec:
    """Everything a model is built from; JSON-serialisable with :meth:`as_dict`.

    ``feature_channels`` is filled in when the model is built (``out_channels`` of the
    backbone, or a dry run), so a loaded run never repeats the dry run.
    """

    method: str = "ssn"
    backbone: str = "unet"
    spatial_dims: int = 2
    in_channels: int = 1
    num_classes: int = 2
    method_kwargs: dict = field(default_factory=dict)
    backbone_kwargs: dict = field(default_factory=dict)
    feature_channels: int | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown model description keys {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**values)


def build(spec: ModelSpec) -> SegmentationModel:
    """The (untrained) model ``spec`` describes; ``model.spec`` is ``spec`` with ``feature_channels`` set."""
    cls = method_class(spec.method)
    unknown = sorted(set(spec.method_kwargs) - set(cls.settings))
    if unknown:
        raise ConfigError(
            f"method {spec.method!r} takes no setting {', '.join(map(repr, unknown))}; "
            f"its settings: {', '.join(cls.settings) or 'none'}"
        )
    backbone = build_backbone(spec.backbone, spec.spatial_dims, spec.in_channels, **spec.backbone_kwargs)
    channels = spec.feature_channels or feature_channels(backbone, spec.spatial_dims, spec.in_channels)
    sizes = {"spatial_dims": spec.spatial_dims}
    if "in_channels" in inspect.signature(cls).parameters:
        sizes["in_channels"] = spec.in_channels
    model = cls(backbone, channels, spec.num_classes, **sizes, **spec.method_kwargs)
    # Record every argument, defaults included, so that a saved run names its whole model.
    method_kwargs = {**_defaults(cls, cls.settings), **_plain(spec.method_kwargs)}
    backbone_kwargs = _plain({**backbone_defaults(spec.backbone), **spec.backbone_kwargs})
    model.spec = dataclasses.replace(
        spec, method_kwargs=method_kwargs, backbone_kwargs=backbone_kwargs, feature_channels=channels
    )
    return model


def _defaults(factory: Callable, names) -> dict:
    parameters = inspect.signature(factory).parameters
    return {n: _plain(parameters[n].default) for n in names if parameters[n].default is not inspect.Parameter.empty}


def _plain(value):
    """Tuples as lists, recursively, as JSON gives them back (so a spec equals its reloaded copy)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def create(
    name: str = "unet",
    *,
    method: str = "ssn",
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    **kwargs,
) -> SegmentationModel:
    """Build a model by backbone and method name.

    Keyword arguments that are settings of the method (for ``"ssn"``: ``rank``, ``eps``,
    ``mc_samples``, ``antithetic``) go to the method; all others go to the backbone (for
    ``"unet"``: ``features``, ``norm``, ``dropout``; for ``"monai:NAME"``: that network's own
    arguments plus ``out_channels`` and ``pad_to``).

    Example:
        >>> import torch, ssn
        >>> model = ssn.models.create("unet", num_classes=2, rank=10, features=(8, 16))
        >>> model.sample_labels(torch.randn(2, 1, 30, 30), num_samples=4).shape
        torch.Size([4, 2, 30, 30])
        >>> baseline = ssn.models.create("unet", method="deterministic", features=(8, 16))
    """
    cls = method_class(method)
    method_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.settings}
    others = {s for c in _METHODS.values() for s in c.settings} - set(cls.settings)
    misplaced = sorted(set(kwargs) & others)
    if misplaced:
        raise ConfigError(f"{', '.join(map(repr, misplaced))}: not a setting of method {method!r}")
    spec = ModelSpec(method, name, spatial_dims, in_channels, num_classes, method_kwargs, kwargs)
    return build(spec)

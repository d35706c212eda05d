"""The interface every segmentation method implements.

Training, validation, evaluation, sampling, the demo and the benchmarks call only these
methods, so a new method (a Probabilistic U-Net, say) plugs in by subclassing
:class:`SegmentationModel` and registering itself (:func:`ssn.models.register_method`).

Shapes: images (B, in_channels, *S); targets (B, *S) integer labels in [0, C); masks (B, *S)
or (B, 1, *S), bool or {0, 1}, a region of interest (optional).
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..randomness import Generators

if TYPE_CHECKING:
    from .registry import ModelSpec

__all__ = ["SegmentationModel"]


def float32(reference: Tensor):
    """A context with autocast off on ``reference``'s device: under mixed precision the backbone
    runs in bf16 or fp16, and the heads, the distribution and the losses in float32 (a sum of
    16k log-probabilities and its log-sum-exp need float32's precision)."""
    return torch.autocast(reference.device.type, enabled=False)


class SegmentationModel(nn.Module, abc.ABC):
    """A backbone and a method-specific head.

    Attributes:
        method: the name it is registered under (``"ssn"``, ``"deterministic"``).
        settings: the names of the constructor arguments specific to this method (recorded in
            a run's configuration and passed back when the run is loaded).
        backbone: the feature network.
        num_classes: C.
        spatial_dims: 1, 2 or 3.
        spec: how :func:`ssn.models.create` built it (``None`` when built by hand); a run
            directory stores it, so that the model can be rebuilt exactly.
        temperature: scales the spread of ``sample_labels`` and ``mean_probabilities`` about
            the model's mean (1: as trained; ``ssn calibrate`` chooses it on validation data).
            Training ignores it. A method without spread (the deterministic one) ignores it too.

    What a method declares for the code around it (so that nothing probes for names):

    - ``has_spread``: its samples differ from one another (``False`` for the deterministic
      baseline: nothing to calibrate);
    - ``has_logit_distribution``: ``distribution(images)`` gives a
      :class:`~ssn.LowRankLogitDistribution` whose draws can be steered (the SSN);
    - ``has_warm_up`` and :meth:`warm_up_loss`: a loss of the mean alone, trained first
      (``mean_warmup``; the SSN's cross-entropy of mu);
    - :meth:`spread_parameters`: the parameters that shape the spread (``factor_weight_decay``);
    - ``takes_all_annotators``: :meth:`loss` (and :meth:`warm_up_loss`) take the keyword
      ``all_annotators=True`` with targets (B, A, *S), every annotator's map, and average over
      them (the setting ``annotators: all``).
    """

    method: ClassVar[str]
    settings: ClassVar[tuple[str, ...]] = ()
    has_spread: ClassVar[bool] = True
    has_logit_distribution: ClassVar[bool] = False
    has_warm_up: ClassVar[bool] = False
    takes_all_annotators: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, num_classes: int, spatial_dims: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.spec: ModelSpec | None = None
        self.temperature = 1.0
        self._warned_range = False

    def checked_images(self, images: Tensor) -> Tensor:
        """Images (B, in_channels, *S) as the network takes them: checked, uint8 scaled to [0, 1].

        uint8 images are divided by 255, as the command line reads 8-bit files; floats are taken
        as they are. In eval mode, float images that look like 0-255 values (a forgotten / 255)
        get a warning, once.

        Raises:
            ConfigError: not a tensor, the wrong number of dimensions or of channels, or an
                integer type other than uint8.
        """
        if not isinstance(images, Tensor):
            raise ConfigError(f"images must be a torch.Tensor (B, channels, *S); got {type(images).__name__}")
        if images.dim() != self.spatial_dims + 2:
            raise ConfigError(
                f"images must be (B, channels, {', '.join('HWD'[: self.spatial_dims])}) for this "
                f"{self.spatial_dims}D model; got shape {tuple(images.shape)} (add a batch axis with images[None])"
            )
        expected = self.spec.in_channels if self.spec is not None else None
        if expected is not None and images.shape[1] != expected:
            raise ConfigError(
                f"the model takes {expected} channel(s) but the images have {images.shape[1]} "
                f"(shape {tuple(images.shape)}); give (B, {expected}, *S)"
            )
        if images.dtype == torch.uint8:
            return images.float() / 255
        if not images.is_floating_point():
            raise ConfigError(f"images must be float (or uint8, scaled by 1/255); got {images.dtype}")
        if not self.training and not self._warned_range and images.numel():
            values = images.detach()
            largest = float(values.amax())
            if 2 < largest <= 255 and float(values.amin()) >= 0 and bool((values == values.round()).all()):
                self._warned_range = True
                warnings.warn(
                    f"the images hold whole numbers up to {largest:g}: 0-255 values? The model takes "
                    "uint8 images, or floats in its training scale (8-bit images divided by 255)",
                    stacklevel=3,
                )
        return images

    def features(self, images: Tensor) -> Tensor:
        """Backbone features (B, F, *S) of :meth:`checked_images`, checked to keep the image's spatial size."""
        images = self.checked_images(images)
        features = self.backbone(images)
        if features.shape[2:] != images.shape[2:]:
            raise ConfigError(
                f"the backbone must return features of the image's spatial size {tuple(images.shape[2:])}; "
                f"it returned {tuple(features.shape[2:])}. Pad and crop inside the backbone."
            )
        return features

    @abc.abstractmethod
    def loss(self, images: Tensor, target: Tensor, mask: Tensor | None = None, generator=None) -> Tensor:
        """The training objective, a scalar: the batch mean of each image's negative
        log-likelihood of its label map (summed over the pixels inside ``mask``). ``generator``
        gives the noise of a stochastic objective: one, or one per image (:mod:`ssn.randomness`)."""

    @abc.abstractmethod
    def sample_labels(
        self, images: Tensor, num_samples: int, mask: Tensor | None = None, generator: Generators = None
    ) -> Tensor:
        """``num_samples`` label maps per image, (N, B, *S) uint8, without gradients."""

    @torch.no_grad()
    def sample_labels_at(
        self,
        images: Tensor,
        temperatures: Sequence[float],
        num_samples: int,
        mask: Tensor | None = None,
        generators: Callable[[], Generators] = lambda: None,
    ) -> list[Tensor]:
        """:meth:`sample_labels` at each of ``temperatures`` in turn: a list of (N, B, *S) uint8.

        ``generators()`` is called once per temperature and gives that temperature's draws: fresh
        generators seeded alike give every temperature the same noise, so that a curve over
        temperatures (``ssn calibrate``) compares temperatures, not draws. Each map equals what
        :meth:`sample_labels` gives with ``temperature`` set to that value and those generators.
        This default runs the network once per temperature; a method whose temperature only
        scales a spread drawn after one pass (the SSN, the Prob. U-Net) runs it once.
        ``temperature`` is left as it was."""
        saved = self.temperature
        try:
            labels = []
            for t in temperatures:
                self.temperature = t
                labels.append(self.sample_labels(images, num_samples, mask, generators()))
            return labels
        finally:
            self.temperature = saved

    @abc.abstractmethod
    def mean_probabilities(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """The predictive class probabilities (B, C, *S), without gradients."""

    def warm_up_loss(self, images: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """A loss that trains the mean alone, for the first ``mean_warmup`` of the budget, where
        ``has_warm_up`` says the method has one (training skips the warm-up otherwise)."""
        raise NotImplementedError(f"the {self.method!r} method has no warm-up loss (has_warm_up is False)")

    def spread_parameters(self) -> list[nn.Parameter]:
        """The parameters that shape the spread of the samples, which ``factor_weight_decay``
        regularises (the SSN's covariance head); none by default."""
        return []

    def extra_repr(self) -> str:
        return f"method={self.method!r}, num_classes={self.num_classes}, spatial_dims={self.spatial_dims}"

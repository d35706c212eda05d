"""ssn: Stochastic Segmentation Networks (Monteiro et al., NeurIPS 2020) for PyTorch.

The pieces a researcher imports into their own code:

- :class:`LowRankLogitDistribution`: a Gaussian over whole logit maps, covariance P P^T + D;
- :func:`ssn_loss` / :class:`SSNLoss`: the Monte Carlo log-likelihood of the label map;
- :mod:`ssn.metrics`: GED^2, sample diversity, Hungarian-matched IoU, Dice, calibration;
- :class:`SSNHead` and :mod:`ssn.networks`: the head, the U-Net and the backbone registry;
- :mod:`ssn.models`: the method interface (:class:`SegmentationModel`), the SSN, the
  deterministic baseline, the Probabilistic U-Net and ``ssn.models.create``;
- :mod:`ssn.steering`: latent traversals, interpolation and samples that agree with marks, on
  the draws a distribution keeps (:meth:`LowRankLogitDistribution.draw_noise`);
- :func:`pretrained`: the trained models shipped with the package (``"lidc-2d"``).

The layers, each importing only from those above it in this list:
``distributions``, ``steering``, ``losses``, ``metrics``, ``errors`` (the maths) -> ``networks`` -> ``models``
-> ``data``, ``inference`` -> ``engine`` (configuration, training loop, run directories) ->
``apps`` (command line, evaluation, sampling, demo, plotting).
"""

from . import metrics, models, steering
from ._version import __version__
from .distributions import LogitNoise, LowRankLogitDistribution, labels_from_logits
from .errors import ConfigError, DataError, RunError, UserError
from .losses import SSNLoss, monte_carlo_log_likelihood, ssn_loss
from .models import DeterministicSegmentationNetwork, SegmentationModel, StochasticSegmentationNetwork
from .networks import SSNHead


def pretrained(name: str = "lidc-2d", device: str = "cpu", temperature: float | None = None) -> SegmentationModel:
    """A trained model shipped with the package, loaded offline, in eval mode on ``device``.

    ``"lidc-2d"``: the low-rank SSN trained on LIDC-IDRI 128x128 CT crops of lung nodules
    (images uint8 / 255, one channel; classes background and nodule); its model card is
    ``ssn/weights/lidc-2d/MODEL_CARD.md``. Samples are drawn at its calibrated temperature
    unless ``temperature`` is given.

    Example:
        >>> import torch, ssn
        >>> model = ssn.pretrained("lidc-2d")
        >>> model.sample_labels(torch.rand(1, 1, 128, 128), num_samples=16).shape
        torch.Size([16, 1, 128, 128])
    """
    from .engine.checkpoints import load_run
    from .engine.pretrained import PREFIX

    model, _ = load_run(PREFIX + name, temperature=temperature)
    return model.to(device)


__all__ = [
    "LowRankLogitDistribution",
    "LogitNoise",
    "labels_from_logits",
    "steering",
    "SSNHead",
    "SegmentationModel",
    "StochasticSegmentationNetwork",
    "DeterministicSegmentationNetwork",
    "ssn_loss",
    "SSNLoss",
    "monte_carlo_log_likelihood",
    "metrics",
    "models",
    "UserError",
    "DataError",
    "ConfigError",
    "RunError",
    "pretrained",
    "__version__",
]

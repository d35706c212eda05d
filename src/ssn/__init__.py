"""ssn: Stochastic Segmentation Networks (Monteiro et al., NeurIPS 2020) for PyTorch.

The pieces a researcher imports into their own code:

- :class:`LowRankLogitDistribution`: a Gaussian over whole logit maps, covariance P P^T + D;
- :func:`ssn_loss` / :class:`SSNLoss`: the Monte Carlo log-likelihood of the label map;
- :mod:`ssn.metrics`: GED^2, sample diversity, Hungarian-matched IoU, Dice, calibration;
- :class:`SSNHead` and :mod:`ssn.networks`: the head, the U-Net and the backbone registry;
- :mod:`ssn.models`: the method interface (:class:`SegmentationModel`), the SSN, the
  deterministic baseline and ``ssn.models.create``.

The layers, each importing only from those above it in this list:
``distributions``, ``losses``, ``metrics``, ``errors`` (the maths) -> ``networks`` -> ``models``
-> ``data``, ``inference`` -> ``engine`` (configuration, training loop, run directories) ->
``apps`` (command line, evaluation, sampling, demo, plotting).
"""

from . import metrics, models
from .distributions import LowRankLogitDistribution
from .errors import ConfigError, DataError, RunError, UserError
from .losses import SSNLoss, monte_carlo_log_likelihood, ssn_loss
from .models import DeterministicSegmentationNetwork, SegmentationModel, StochasticSegmentationNetwork
from .networks import SSNHead

__version__ = "0.2.0"

__all__ = [
    "LowRankLogitDistribution",
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
    "__version__",
]

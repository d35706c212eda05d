"""ssn: Stochastic Segmentation Networks (Monteiro et al., NeurIPS 2020) for PyTorch.

The pieces a researcher imports into their own code:

- :class:`LowRankLogitDistribution`: a Gaussian over whole logit maps, covariance P P^T + D;
- :class:`SSNHead`, :class:`StochasticSegmentationNetwork`, :mod:`ssn.models` (a registry);
- :func:`ssn_loss` / :class:`SSNLoss`: the Monte Carlo log-likelihood of the label map;
- :mod:`ssn.metrics`: GED^2, sample diversity, Hungarian-matched IoU, Dice, calibration.
"""

from . import metrics, models
from .distributions import LowRankLogitDistribution
from .heads import SSNHead
from .losses import SSNLoss, monte_carlo_log_likelihood, ssn_loss
from .models import DeterministicSegmentationNetwork, StochasticSegmentationNetwork

__version__ = "0.1.0"

__all__ = [
    "LowRankLogitDistribution",
    "SSNHead",
    "StochasticSegmentationNetwork",
    "DeterministicSegmentationNetwork",
    "ssn_loss",
    "SSNLoss",
    "monte_carlo_log_likelihood",
    "metrics",
    "models",
    "__version__",
]

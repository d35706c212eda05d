"""The engine: the training configuration, the training loop and run directories."""

from .checkpoints import load_run, read_config
from .config import TrainConfig
from .trainer import train

__all__ = ["TrainConfig", "train", "load_run", "read_config"]

"""The training configuration: one dataclass, the single home of every setting.

Each field holds its default, its help text and its valid range. The command line builds its
flags from these fields and a YAML file uses the same names, so a setting is declared once.
Values are checked when a :class:`TrainConfig` is built, whatever they came from; a wrong one
raises :class:`~ssn.errors.ConfigError` naming the setting and what it accepts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.nifti import INTENSITIES
from ..distributed import check_device
from ..errors import ConfigError
from ..models import ModelSpec, available_methods, method_class

__all__ = ["TrainConfig", "read_yaml", "model_spec", "setting_types"]


def setting(
    default: Any = None,
    help: str = "",
    *,
    low: float | None = None,
    above: float | None = None,
    choices: tuple | None = None,
    flag: bool = True,
    factory=None,
):
    """A dataclass field with its help text and range: ``low`` <= value, ``above`` < value."""
    metadata = {"help": help, "low": low, "above": above, "choices": choices, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a training run depends on. Model sizes left unset are read from the data."""

    data: str = setting(
        help="dataset .npz (images, masks[, patient]) or a volume list .json (NIfTI cases, see ssn convert brats)"
    )
    out: str = setting(help="run directory to write (config, weights, logs)")
    split_file: str | None = setting(
        help='JSON {"splits": {"train": [...], "val": [...]}}; default: hold out 10%% of the patients'
    )
    train_split: str = setting("train", "split name to train on")
    val_split: str = setting("val", "split name to validate on")
    method: str = setting(
        "ssn", "the method: ssn, deterministic (the plain-softmax baseline) or prob-unet (Kohl et al. 2018)"
    )
    model: str = setting("unet", "backbone: unet, monai:NAME (e.g. monai:BasicUNet) or a registered name")
    features: list[int] | None = setting(
        help="U-Net (or phiseg-unet) channels per level, e.g. 32 64 128 256 (a shorthand for model_kwargs features)"
    )
    model_kwargs: dict = setting(help="the backbone's own arguments, as YAML/JSON, e.g. '{norm: batch}'", factory=dict)
    rank: int = setting(10, "ssn: covariance rank; 0 = the diagonal model", low=0)
    mc_samples: int = setting(20, "ssn: Monte Carlo samples in the loss (even: antithetic pairs)", low=2)
    mean_warmup: float = setting(
        0.25,
        "ssn: the share of the budget spent training the mean alone (cross-entropy of mu) before the paper's loss",
        low=0,
    )
    mean_weight: float = setting(
        0.0,
        "ssn: weight of the mean logits' cross-entropy added to the paper's loss for the whole run (0: the paper's "
        "loss alone); it keeps the mean on pixels every reader marks",
        low=0,
    )
    marginal_weight: float = setting(
        0.0,
        "ssn: weight of the pixels' marginal negative log-likelihood (from the loss's samples) added to the paper's "
        "loss (0: the paper's loss alone); it makes the share of samples that show a structure follow the share of "
        "readers who drew it, image by image",
        low=0,
    )
    annotators: str = setting(
        "one",
        "labels per training image and step: one annotator drawn at random (the paper's) or all of them, the loss "
        "averaged over annotators with one network pass (and, for the ssn, one set of samples) per image; the same "
        "objective in expectation, with less noise (deterministic and ssn only)",
        choices=("one", "all"),
    )
    variance_init: float = setting(
        0.01,
        "ssn: start near zero logit variance, at this value; 0: PyTorch's default initialisation, as in the paper",
        low=0,
    )
    latent_dim: int = setting(6, "prob-unet: dimension of the global latent", low=1)
    beta: float = setting(1.0, "prob-unet: weight of the KL term", low=0)
    encoder_features: list[int] = setting(
        help="prob-unet: channels per level of the prior and posterior nets", factory=lambda: [32, 64, 128, 256]
    )
    epochs: int | None = setting(help="number of epochs (default 20 unless --max-minutes or --max-steps)", low=1)
    max_minutes: float | None = setting(help="stop training after this many minutes", above=0)
    max_steps: int | None = setting(help="stop training after this many optimiser steps", low=1)
    batch_size: int = setting(16, "images per step", low=1)
    lr: float = setting(1e-3, "Adam learning rate", above=0)
    weight_decay: float = setting(0.0, "Adam weight decay", low=0)
    factor_weight_decay: float = setting(
        0.0, "ssn: extra weight decay on the covariance head (factor and diagonal)", low=0
    )
    lr_schedule: str = setting(
        "constant",
        "learning-rate decay over the budget: constant, cosine or linear (to final_lr x lr)",
        choices=("constant", "cosine", "linear"),
    )
    warmup_steps: int = setting(0, "linear learning-rate warm-up over this many steps", low=0)
    final_lr: float = setting(0.01, "the decayed learning rate at the end of the budget, as a fraction of lr", above=0)
    ema_decay: float = setting(
        0.0,
        "exponential moving average of the weights, used for validation and checkpoints (e.g. 0.999; 0: off)",
        low=0,
    )
    grad_clip: float = setting(10.0, "clip the gradient norm to this", above=0)
    max_bad_steps: int = setting(
        20, "stop after this many steps in a row with a non-finite loss or gradients (each is skipped)", low=1
    )
    augment: bool = setting(True, "flips and small rotations")
    patch_size: list[int] | None = setting(
        help="train on patches of this size: volumes, e.g. 64 64 64 (also the sliding window of inference); images, e.g. 96 96 (crops; inference sees whole images)"
    )
    foreground_share: float = setting(
        0.5, "with patch_size: the share of patches holding a foreground voxel (the paper: 0.5)", low=0
    )
    whole_after: float | None = setting(
        help="images, with patch_size: train on crops until this share of the budget (in steps or epochs), then on "
        "whole images, e.g. 0.5 (default: crops throughout)",
        low=0,
    )
    patches_per_volume: int = setting(32, "volumes: patches drawn from each training volume per epoch", low=1)
    intensity: str = setting(
        "zscore",
        "volumes: the input each case gives, zscore (each channel z-scored inside its mask) or stored (the files' "
        "values as they are, e.g. the grey level / 255 of ssn convert lidc-3d, as a 2D model trained on the .npz saw "
        "them); recorded in the run, and evaluate, calibrate and sample follow it",
        choices=INTENSITIES,
    )
    crop_scale: float = setting(
        1.0, "augmentation: random crops of this fraction of the side or more, rescaled to full size (1: off)", above=0
    )
    val_images: int = setting(128, "fixed validation subset size", low=1)
    val_every: int | None = setting(
        help="validate and save every this many steps (default: at the end of each epoch)", low=1
    )
    val_samples: int = setting(16, "samples per validation image", low=1)
    val_volumes: str = setting(
        "whole",
        "volumes: validate on whole validation volumes through sliding windows of patch_size, as ssn evaluate "
        "does (whole), or on fixed patches of them (patches: faster, blind to errors outside the patches)",
        choices=("whole", "patches"),
    )
    seed: int = setting(0, "random seed (data order, augmentation, initialisation, validation draws)", low=0)
    init_from: str | None = setting(
        help="start from the best weights of this run (a run directory or pretrained:NAME) instead of random ones; "
        "a 2D run's weights start a 3D U-Net built with pool [2, 2, 1] as the 2D network applied slice by slice"
    )
    device: str = setting(
        "cpu", "cpu, cuda or cuda:N (under torchrun, cuda means each process's own GPU, cuda:LOCAL_RANK)"
    )
    workers: int | None = setting(
        help="DataLoader worker processes that read and augment batches (default: from the CPU count, 0 on 2 cores or fewer)",
        low=0,
    )
    precision: str = setting(
        "fp32",
        "the backbone's arithmetic: fp32, bf16 or fp16 (with a gradient scaler); the head and the loss stay in float32",
        choices=("fp32", "bf16", "fp16"),
    )
    compile: bool = setting(False, "compile the training step with torch.compile (slow to start, faster on GPUs)")
    resume: bool = setting(False, "continue the run in --out from its last state")
    overwrite: bool = setting(False, "start over in an --out that already holds a run, replacing its files")
    stop_after_minutes: float | None = setting(
        help="end this invocation after this many minutes of training, its state saved, to train for hours in parts: the budget and its schedule are unchanged; continue with --resume",
        above=0,
    )
    checkpoint_minutes: float = setting(
        5.0, "save the whole training state (state.pt) at least this often, besides each validation", above=0
    )
    num_classes: int | None = setting(help="number of classes (default: the largest label + 1)", low=2)
    in_channels: int | None = setting(help="read from the data", low=1, flag=False)
    spatial_dims: int | None = setting(help="read from the data", choices=(1, 2, 3), flag=False)

    def __post_init__(self) -> None:
        for name in ("data", "out"):
            if not getattr(self, name):
                raise ConfigError(f"the setting {name} is required (--{name} on the command line)")
        types_ = setting_types()
        for f in dataclasses.fields(self):
            value = _coerce(f.name, getattr(self, f.name), *types_[f.name])
            _check_range(f.name, value, f.metadata)
            setattr(self, f.name, value)
        if self.method not in available_methods():
            raise ConfigError(f"method must be one of {', '.join(available_methods())}; got {self.method!r}")
        if self.mean_warmup >= 1:
            raise ConfigError(
                f"mean_warmup is a share of the training budget, below 1 (e.g. 0.25; 0: off); got {self.mean_warmup}"
            )
        if self.crop_scale > 1:
            raise ConfigError(f"crop_scale must be in (0, 1]; got {self.crop_scale}")
        if self.annotators == "all" and not method_class(self.method).takes_all_annotators:
            raise ConfigError(
                f"annotators all is not available for the {self.method} method: its loss takes one annotator's map "
                "(the Prob. U-Net's posterior net sees it); use --annotators one"
            )
        if not self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be below 1 (e.g. 0.999), or 0 to switch it off; got {self.ema_decay}")
        if self.foreground_share > 1:
            raise ConfigError(f"foreground_share is a share, in [0, 1]; got {self.foreground_share}")
        if self.patch_size is not None and (len(self.patch_size) not in (1, 2, 3) or min(self.patch_size) < 4):
            raise ConfigError(
                f"patch_size needs one size of at least 4 per spatial axis, e.g. 64 64 64 for volumes "
                f"or 96 96 for images; got {self.patch_size}"
            )
        if self.final_lr > 1:
            raise ConfigError(f"final_lr is a fraction of lr, at most 1; got {self.final_lr}")
        if self.method == "ssn" and self.mc_samples % 2:
            raise ConfigError(f"mc_samples must be even (antithetic pairs); got {self.mc_samples}")
        if self.features is not None:
            if self.model not in ("unet", "phiseg-unet"):
                raise ConfigError(f"features is the U-Nets' shorthand; give {self.model}'s arguments as model_kwargs")
            if "features" in self.model_kwargs and list(self.model_kwargs["features"]) != self.features:
                raise ConfigError("features is given twice (features and model_kwargs.features) with different values")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite contradict each other: continue the run, or start it over")
        check_device(self.device)
        if self.epochs is None and self.max_minutes is None and self.max_steps is None:
            self.epochs = 20
        if self.whole_after is not None:
            if self.patch_size is None:
                raise ConfigError("whole_after switches from crops to whole images: give patch_size too, e.g. 64 64")
            if not self.whole_after < 1:
                raise ConfigError(
                    f"whole_after is a share of the training budget, below 1 (e.g. 0.5); got {self.whole_after}"
                )
            if self.max_steps is None and self.epochs is None and self.max_minutes is not None:
                raise ConfigError(
                    "whole_after needs a budget in steps or epochs (max_steps or epochs), so that the switch falls "
                    "on a fixed step; with max_minutes alone it would move with the machine's speed"
                )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def flag_fields(cls) -> list[dataclasses.Field]:
        """The settings the command line offers as ``--flags``."""
        return [f for f in dataclasses.fields(cls) if f.metadata["flag"]]


@functools.cache
def setting_types() -> dict[str, tuple[Any, bool]]:
    """For each setting of :class:`TrainConfig`: (its type without ``None``, whether ``None`` is allowed)."""
    out = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        optional = isinstance(hint, types.UnionType)  # X | None
        if optional:
            (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        out[name] = (hint, optional)
    return out


def model_spec(config: TrainConfig) -> ModelSpec:
    """The model a (completed) configuration describes: its method, backbone and sizes."""
    if config.spatial_dims is None or config.in_channels is None or config.num_classes is None:
        raise ValueError("model_spec needs a completed configuration: sizes are read from the data first")
    cls = method_class(config.method)
    backbone_kwargs = dict(config.model_kwargs)
    if config.features is not None:
        backbone_kwargs["features"] = list(config.features)
    return ModelSpec(
        method=config.method,
        backbone=config.model,
        spatial_dims=config.spatial_dims,
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        method_kwargs={name: getattr(config, name) for name in cls.settings if hasattr(config, name)},
        backbone_kwargs=backbone_kwargs,
    )


def read_yaml(path: str | Path) -> dict:
    """The settings of a YAML file (names as in :class:`TrainConfig`, ``-`` or ``_``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such config file: {path}")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path} must be a YAML mapping of settings, e.g. `rank: 10`")
    settings = {str(k).replace("-", "_"): v for k, v in content.items()}
    if "deterministic" in settings:  # the old switch, kept as an alias of method
        alias = settings.pop("deterministic")
        if not isinstance(alias, bool):
            raise ConfigError(
                f"{path}: deterministic must be true or false; got {alias!r} (or write method: deterministic)"
            )
        if alias:
            settings.setdefault("method", "deterministic")
    allowed = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["flag"]}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown settings {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    return settings


# ------------------------------------------------------------------------- value checks
def _describe(hint) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}
    if typing.get_origin(hint) is list:
        return "a list of integers"
    return names.get(hint, str(hint))


def _coerce(name: str, value: Any, hint, optional: bool) -> Any:
    """``value`` as the type ``hint`` names, or :class:`ConfigError`.

    Strings that spell a number are accepted for numbers: PyYAML reads ``1e-3`` as a string.
    Nothing else is converted: ``'false'`` is not a boolean, 2.5 is not an integer.
    """
    if optional and value is None:
        return None
    wrong = ConfigError(f"{name} must be {_describe(hint)}; got {value!r} ({type(value).__name__})")
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if hint is int:
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise wrong from None
        if not isinstance(value, int):
            raise wrong
        return value
    if hint is float:
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise wrong from None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise wrong
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise wrong
        return value
    if hint is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise wrong
        return value
    if typing.get_origin(hint) is list:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise wrong
        return list(value)
    raise TypeError(f"no check for the type {hint} of setting {name}")  # a bug: a new field type


def _check_range(name: str, value: Any, metadata) -> None:
    if value is None:
        return
    low, above, choices = metadata["low"], metadata["above"], metadata["choices"]
    if low is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}; got {value}")
    if above is not None and not value > above:
        raise ConfigError(f"{name} must be > {above}; got {value}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value}")

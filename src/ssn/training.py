"""Training: one readable loop from a dataset file to a run directory.

The configuration is a plain dataclass (from CLI flags or a YAML file), printed at the start and
saved as ``config.json`` beside the weights. Each step draws one annotator per image (as the
paper did), augments with flips and small rotations, and takes one optimiser step on the SSN
loss (or on cross-entropy for the deterministic baseline, with the same scale: summed over
pixels, averaged over the batch). After each epoch the GED^2 on a fixed validation subset is
logged and the last and best weights are saved atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import metrics
from .augment import augment
from .checkpoints import build_model, load_weights, save_weights, write_json
from .data.arrays import SegmentationArrays, load_arrays
from .data.splits import holdout_split, select_split
from .files import write_atomically
from .losses import ssn_loss

__all__ = ["TrainConfig", "train", "image_tensor", "predict_labels"]


@dataclass
class TrainConfig:
    """Everything a training run depends on. Unset model sizes are read from the data."""

    data: str
    out: str
    split_file: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    model: str = "unet"
    features: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    rank: int = 10
    mc_samples: int = 20
    deterministic: bool = False
    epochs: int | None = None
    max_minutes: float | None = None
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    augment: bool = True
    val_images: int = 128
    val_samples: int = 16
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    # Read from the data when None.
    num_classes: int | None = None
    in_channels: int | None = None
    spatial_dims: int | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def image_tensor(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Images (B, channels, *S) as float32: uint8 scaled to [0, 1], floats as they are."""
    x = torch.from_numpy(np.array(images))  # a copy: memory-mapped data is read-only
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.to(device)


@torch.no_grad()
def predict_labels(model, images: torch.Tensor, num_samples: int, deterministic: bool) -> torch.Tensor:
    """(B, N, *S) uint8 label maps: SSN samples, or the argmax repeated for the baseline."""
    if deterministic:
        labels = model(images).argmax(1).to(torch.uint8)
        return labels.unsqueeze(1).expand(-1, num_samples, *labels.shape[1:])
    return model(images).sample_labels(num_samples).movedim(0, 1)


def _split(data: SegmentationArrays, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    if config.split_file:
        return select_split(data, config.train_split, config.split_file), select_split(
            data, config.val_split, config.split_file
        )
    return holdout_split(data, 0.1, config.seed)


def _complete(config: TrainConfig, data: SegmentationArrays) -> None:
    """Fill the model sizes from the data, and check labels against num_classes."""
    found = data.num_classes()
    if config.num_classes is None:
        config.num_classes = found
    elif found > config.num_classes:
        raise ValueError(f"the masks hold labels up to {found - 1} but num_classes is {config.num_classes}")
    config.in_channels = data.in_channels
    config.spatial_dims = len(data.spatial_shape)
    if config.epochs is None and config.max_minutes is None:
        config.epochs = 20
    if not config.deterministic and config.mc_samples % 2:
        raise ValueError(f"--mc-samples must be even (antithetic pairs); got {config.mc_samples}")


def train(config: TrainConfig, log=print) -> dict:
    """Train as configured; return a summary (epochs, steps, best validation GED^2, paths)."""
    out = Path(config.out)
    data = load_arrays(config.data)
    _complete(config, data)
    train_idx, val_idx = _split(data, config)
    rng = np.random.default_rng(config.seed)
    val_subset = np.sort(rng.choice(val_idx, size=min(config.val_images, val_idx.size), replace=False))
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = build_model(config.as_dict()).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    progress = {"epoch": 0, "step": 0, "seconds": 0.0, "best_ged": math.inf}
    out.mkdir(parents=True, exist_ok=True)
    if config.resume:
        state_path = out / "state.pt"
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: {state_path} does not exist; train without --resume first")
        load_weights(model, out / "last.safetensors")
        state = torch.load(state_path, weights_only=True)
        optimiser.load_state_dict(state["optimiser"])
        progress = state["progress"]
        rng = np.random.default_rng([config.seed, progress["epoch"]])
    write_json(config.as_dict(), out / "config.json")
    log("configuration:\n" + json.dumps(config.as_dict(), indent=2))
    log(f"{train_idx.size} training images, {val_idx.size} validation images ({val_subset.size} used per epoch)")

    from torch.utils.tensorboard import SummaryWriter  # imported here: slow, and only training needs it

    writer = SummaryWriter(str(out / "tensorboard"))
    generator = torch.Generator().manual_seed(config.seed + progress["step"])
    start = time.perf_counter() - progress["seconds"]
    deadline = math.inf if config.max_minutes is None else start + 60 * config.max_minutes
    last_epoch = math.inf if config.epochs is None else config.epochs
    stop = False
    while progress["epoch"] < last_epoch and not stop:
        model.train()
        order = rng.permutation(train_idx)
        batches = [np.sort(order[i : i + config.batch_size]) for i in range(0, order.size, config.batch_size)]
        bar = tqdm(batches, desc=f"epoch {progress['epoch'] + 1}", file=sys.stderr, leave=False, disable=None)
        losses = []
        epoch_start = last_report = time.perf_counter()
        for indices in bar:
            images = image_tensor(data.images[indices])
            masks = torch.from_numpy(np.ascontiguousarray(data.masks[indices])).long()
            if config.augment:
                images, masks = augment(images, masks, generator=generator)
            pick = torch.randint(0, masks.shape[1], (masks.shape[0],), generator=generator)
            target = masks[torch.arange(masks.shape[0]), pick].to(device)
            images = images.to(device)
            if config.deterministic:
                loss = F.cross_entropy(model(images), target, reduction="sum") / images.shape[0]
            else:
                loss = ssn_loss(model(images), target, num_samples=config.mc_samples)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimiser.step()
            progress["step"] += 1
            losses.append(loss.item())
            speed = len(losses) * config.batch_size / (time.perf_counter() - epoch_start)
            bar.set_postfix(loss=f"{losses[-1]:.1f}", img_s=f"{speed:.1f}")
            if bar.disable and time.perf_counter() - last_report > 60:  # no terminal: a line a minute
                last_report = time.perf_counter()
                log(f"  step {progress['step']}: loss {np.mean(losses[-50:]):.1f}, {speed:.1f} images/s")
            writer.add_scalar("train/loss", losses[-1], progress["step"])
            if time.perf_counter() > deadline:
                stop = True
                break
        progress["epoch"] += 1
        val = _validate(model, data, val_subset, config, device)
        progress["seconds"] = time.perf_counter() - start
        record = {
            "epoch": progress["epoch"], "step": progress["step"], "minutes": progress["seconds"] / 60,
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "val_ged": val["ged"], "val_diversity": val["diversity"], "val_samples": config.val_samples,
        }
        for key in ("train_loss", "val_ged", "val_diversity"):
            writer.add_scalar(key.replace("_", "/", 1), record[key], progress["epoch"])
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        save_weights(model, out / "last.safetensors")
        if val["ged"] < progress["best_ged"]:
            progress["best_ged"] = val["ged"]
            save_weights(model, out / "best.safetensors")
        state = {"optimiser": optimiser.state_dict(), "progress": progress}
        write_atomically(out / "state.pt", lambda p: torch.save(state, p))
        log(
            f"epoch {record['epoch']}: loss {record['train_loss']:.2f}, val GED^2({config.val_samples}) "
            f"{val['ged']:.4f}, diversity {val['diversity']:.3f}, {record['minutes']:.1f} min"
        )
    writer.close()
    return {
        "epochs": progress["epoch"], "steps": progress["step"], "minutes": progress["seconds"] / 60,
        "best_val_ged": progress["best_ged"], "run_dir": str(out),
    }


@torch.no_grad()
def _validate(model, data: SegmentationArrays, indices: np.ndarray, config: TrainConfig, device) -> dict:
    model.eval()
    ged, diversity = metrics.GeneralizedEnergyDistance(config.num_classes), metrics.SampleDiversity(config.num_classes)
    for i in range(0, indices.size, config.batch_size):
        chunk = indices[i : i + config.batch_size]
        labels = predict_labels(model, image_tensor(data.images[chunk], device), config.val_samples, config.deterministic)
        annotations = torch.from_numpy(np.ascontiguousarray(data.masks[chunk]))
        ged.update(labels.cpu(), annotations)
        diversity.update(labels.cpu())
    return {"ged": ged.compute().mean, "diversity": diversity.compute().mean}

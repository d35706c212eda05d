"""Training: one readable loop from a dataset file to a run directory.

The configuration (:class:`~ssn.engine.config.TrainConfig`) is printed at the start and saved as
``config.json`` beside the weights, with the model's full description. Each step draws one
annotator per image (as the paper did), augments with flips and small rotations, and takes one
optimiser step on the method's own loss (``model.loss``: the SSN's Monte Carlo log-likelihood,
or the baseline's cross-entropy on the same scale). After each epoch the GED^2 on a fixed
validation subset, drawn with a fixed seed, is logged, and the last and best weights are saved
atomically.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import __version__, metrics
from ..data.arrays import SegmentationArrays, load_arrays
from ..data.augment import augment
from ..data.splits import holdout_split, select_split
from ..errors import DataError, RunError
from ..inference import image_tensor, predict_batches
from ..models import build
from .checkpoints import load_weights, save_weights, write_json
from .config import TrainConfig, model_spec
from ..files import write_atomically

__all__ = ["train"]


def train(config: TrainConfig, log=print) -> dict:
    """Train as configured; return a summary (epochs, steps, best validation GED^2, paths)."""
    # ---------------------------------------------------------------- data
    data = load_arrays(config.data)
    _complete(config, data)
    train_idx, val_idx = _split(data, config)
    rng = np.random.default_rng(config.seed)
    val_subset = np.sort(rng.choice(val_idx, size=min(config.val_images, val_idx.size), replace=False))

    # ---------------------------------------------------------------- model and optimiser
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = build(model_spec(config)).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    progress = {"epoch": 0, "step": 0, "seconds": 0.0, "best_ged": math.inf}

    # ---------------------------------------------------------------- run directory
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.resume:
        state_path = out / "state.pt"
        if not state_path.is_file():
            raise RunError(f"--resume: {state_path} does not exist; train without --resume first")
        load_weights(model, out / "last.safetensors")
        state = torch.load(state_path, weights_only=True)
        optimiser.load_state_dict(state["optimiser"])
        progress = state["progress"]
        rng = np.random.default_rng([config.seed, progress["epoch"]])
    record = {**config.as_dict(), "architecture": model.spec.as_dict(), "ssn_version": __version__}
    write_json(record, out / "config.json")
    log("configuration:\n" + json.dumps(record, indent=2))
    log(f"{train_idx.size} training images, {val_idx.size} validation images ({val_subset.size} used per epoch)")

    from torch.utils.tensorboard import SummaryWriter  # imported here: slow, and only training needs it

    writer = SummaryWriter(str(out / "tensorboard"))
    generator = torch.Generator().manual_seed(config.seed + progress["step"])  # augmentation, reader choice
    start = time.perf_counter() - progress["seconds"]
    deadline = math.inf if config.max_minutes is None else start + 60 * config.max_minutes
    last_epoch = math.inf if config.epochs is None else config.epochs
    last_step = math.inf if config.max_steps is None else config.max_steps
    stop = False
    while progress["epoch"] < last_epoch and progress["step"] < last_step and not stop:
        # ------------------------------------------------------------ one epoch of steps
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
            reader = torch.randint(0, masks.shape[1], (masks.shape[0],), generator=generator)
            target = masks[torch.arange(masks.shape[0]), reader]  # one annotator per image
            loss = model.loss(images.to(device), target.to(device))
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
            if time.perf_counter() > deadline or progress["step"] >= last_step:
                stop = True
                break
        progress["epoch"] += 1

        # ------------------------------------------------------------ validation and logs
        val = _validate(model, data, val_subset, config, device)
        progress["seconds"] = time.perf_counter() - start
        entry = {
            "epoch": progress["epoch"], "step": progress["step"], "minutes": progress["seconds"] / 60,
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "val_ged": val["ged"], "val_diversity": val["diversity"], "val_samples": config.val_samples,
        }
        for key in ("train_loss", "val_ged", "val_diversity"):
            writer.add_scalar(key.replace("_", "/", 1), entry[key], progress["epoch"])
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

        # ------------------------------------------------------------ checkpoints
        save_weights(model, out / "last.safetensors")
        if val["ged"] < progress["best_ged"]:
            progress["best_ged"] = val["ged"]
            save_weights(model, out / "best.safetensors")
        state = {"optimiser": optimiser.state_dict(), "progress": progress}
        write_atomically(out / "state.pt", lambda p: torch.save(state, p))
        log(
            f"epoch {entry['epoch']}: loss {entry['train_loss']:.2f}, val GED^2({config.val_samples}) "
            f"{val['ged']:.4f}, diversity {val['diversity']:.3f}, {entry['minutes']:.1f} min"
        )
    writer.close()
    return {
        "epochs": progress["epoch"], "steps": progress["step"], "minutes": progress["seconds"] / 60,
        "best_val_ged": progress["best_ged"], "run_dir": str(out),
    }


def _complete(config: TrainConfig, data: SegmentationArrays) -> None:
    """Fill the model sizes from the data, and check its labels against num_classes."""
    found = data.num_classes()
    if config.num_classes is None:
        config.num_classes = found
    elif found > config.num_classes:
        raise DataError(f"the masks hold labels up to {found - 1} but num_classes is {config.num_classes}")
    config.in_channels = data.in_channels
    config.spatial_dims = len(data.spatial_shape)


def _split(data: SegmentationArrays, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    if config.split_file:
        train = select_split(data, config.train_split, config.split_file)
        return train, select_split(data, config.val_split, config.split_file)
    return holdout_split(data, 0.1, config.seed)


@torch.no_grad()
def _validate(model, data: SegmentationArrays, indices: np.ndarray, config: TrainConfig, device) -> dict:
    """GED^2 and diversity on the fixed subset, drawn from the same seed every time, so that
    the choice of the best checkpoint compares models, not random draws."""
    generator = torch.Generator(device).manual_seed(config.seed)
    ged = metrics.GeneralizedEnergyDistance(config.num_classes)
    diversity = metrics.SampleDiversity(config.num_classes)
    for chunk, labels in predict_batches(
        model, data.images, indices, config.val_samples, config.batch_size, device, generator
    ):
        annotations = torch.from_numpy(np.ascontiguousarray(data.masks[chunk]))
        ged.update(labels, annotations)
        diversity.update(labels)
    return {"ged": ged.compute().mean, "diversity": diversity.compute().mean}

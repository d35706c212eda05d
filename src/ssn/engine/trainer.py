"""Training: one readable loop from a dataset file to a run directory.

The configuration (:class:`~ssn.engine.config.TrainConfig`) is printed at the start and saved as
``config.json`` beside the weights, with the model's full description. Each step draws one
annotator per image (as the paper did), augments with flips, small rotations and optionally
crops rescaled to full size, and takes one optimiser step on the method's own loss
(``model.loss``: the SSN's Monte Carlo log-likelihood, or the baseline's cross-entropy on the
same scale) at the learning rate of the schedule. After each epoch (or every ``val_every``
steps) the GED^2 on a fixed validation subset, drawn with a fixed seed, is logged, and the last
and best weights are saved atomically: the moving average of the weights when ``ema_decay`` is
set, the trained weights otherwise.
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
from ..data.augment import augment
from ..distributions import NonFiniteError
from ..errors import DataError, RunError
from ..inference import predict_batches
from ..models import build
from .checkpoints import load_weights, save_weights, write_json
from .config import TrainConfig, model_spec
from .optim import WeightAverage, learning_rate_factor
from .sources import ValidationSet, open_source
from ..files import check_writable, write_atomically

__all__ = ["train"]


def train(config: TrainConfig, log=print) -> dict:
    """Train as configured; return a summary (epochs, steps, best validation GED^2, paths)."""
    # ---------------------------------------------------------------- data
    source = open_source(config)  # images of an .npz, or patches of volumes
    _complete(config, source)
    rng = np.random.default_rng(config.seed)
    val_set = source.validation(config.val_images, rng)

    # ---------------------------------------------------------------- model and optimiser
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = build(model_spec(config)).to(device)
    optimiser = torch.optim.Adam(_parameter_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    average = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
    evaluated = average.module if average is not None else model  # validated and saved
    progress = {"epoch": 0, "step": 0, "seconds": 0.0, "best_ged": math.inf}

    # ---------------------------------------------------------------- run directory
    out = Path(config.out)
    _prepare_run_dir(out, config)
    state: dict = {}
    if config.resume:
        state_path = out / "state.pt"
        if not state_path.is_file():
            raise RunError(f"--resume: {state_path} does not exist; train without --resume first")
        state = torch.load(state_path, weights_only=True)
        if "model" in state:
            model.load_state_dict(state["model"])
        else:  # written by ssn 0.2, where last.safetensors held the trained weights
            load_weights(model, out / "last.safetensors")
        if average is not None:
            load_weights(average.module, out / "last.safetensors")
        try:
            optimiser.load_state_dict(state["optimiser"])
        except ValueError as error:
            raise RunError(f"--resume: the saved optimiser state does not fit these settings ({error}); "
                           "resume with the settings the run was started with") from None
        progress = state["progress"]
        if "numpy_rng" in state:  # ssn >= 0.4: every random state and the place in the epoch
            rng.bit_generator.state = json.loads(state["numpy_rng"])
            torch.set_rng_state(state["torch_rng"])
            if average is not None and "average" in state:
                average.module.load_state_dict(state["average"])
        else:  # older runs: re-seeded by epoch, so not the run they replace
            rng = np.random.default_rng([config.seed, progress["epoch"]])
        _truncate_metrics(out / "metrics.jsonl", progress["step"])
    record = {**config.as_dict(), "architecture": model.spec.as_dict(), "ssn_version": __version__}
    if getattr(source, "label_map", None):  # volumes: how classes map back to the files' label values
        record["label_map"] = {str(k): v for k, v in source.label_map.items()}
    if getattr(source, "sequences", None):
        record["sequences"] = source.sequences
    write_json(record, out / "config.json")
    log("configuration:\n" + json.dumps(record, indent=2))
    every = f"every {config.val_every} steps" if config.val_every else "per epoch"
    log(f"{source.describe()} ({len(val_set)} validation items used {every})")

    from torch.utils.tensorboard import SummaryWriter  # imported here: slow, and only training needs it

    writer = SummaryWriter(str(out / "tensorboard"))
    generator = torch.Generator().manual_seed(config.seed + progress["step"])  # augmentation, reader choice
    if config.resume and "generator" in state:
        generator.set_state(state["generator"])
    start = time.perf_counter() - progress["seconds"]
    steps_per_epoch = math.ceil(len(source.train_items) / config.batch_size)

    def budget_spent() -> float:
        """The share of the training budget used so far: the largest of steps, minutes and epochs."""
        shares = [0.0]
        if config.max_steps is not None:
            shares.append(progress["step"] / config.max_steps)
        if config.max_minutes is not None:
            shares.append((time.perf_counter() - start) / (60 * config.max_minutes))
        if config.epochs is not None:
            shares.append(progress["step"] / (config.epochs * steps_per_epoch))
        return min(1.0, max(shares))

    losses: list[float] = list(state.get("losses", [])) if config.resume else []
    bad_in_a_row = int(state.get("bad_in_a_row", 0)) if config.resume else 0
    epoch_order = state.get("order") if config.resume else None  # the interrupted epoch's order
    last_checkpoint = time.perf_counter()

    def save_state(order: np.ndarray | None, position: int) -> None:
        """Everything a resumed run needs to continue as if never stopped, atomically in state.pt:
        weights (trained and averaged), optimiser, every random state, the epoch's order and the
        batches of it done, the losses not yet logged."""
        nonlocal last_checkpoint
        progress["seconds"] = time.perf_counter() - start
        progress["position"] = position
        state = {
            "model": model.state_dict(), "optimiser": optimiser.state_dict(), "progress": dict(progress),
            "numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
            "generator": generator.get_state(), "losses": list(losses), "bad_in_a_row": bad_in_a_row,
        }
        if order is not None:
            state["order"] = torch.from_numpy(np.asarray(order))
        if average is not None:
            state["average"] = average.module.state_dict()
        write_atomically(out / "state.pt", lambda p: torch.save(state, p))
        last_checkpoint = time.perf_counter()

    def validate_and_save(order: np.ndarray | None, position: int) -> None:
        """Validation GED^2 of the evaluated weights on the fixed subset; last and best weights saved."""
        try:
            val = _validate(evaluated, val_set, config, device)
        except NonFiniteError as error:  # a model whose outputs overflow is never the best one
            log(f"step {progress['step']}: validation impossible, the model's outputs are not finite ({error})")
            val = {"ged": math.nan, "diversity": math.nan}
        progress["seconds"] = time.perf_counter() - start
        entry = {
            "epoch": progress["epoch"], "step": progress["step"], "minutes": progress["seconds"] / 60,
            "train_loss": float(np.mean(losses)) if losses else math.nan, "lr": optimiser.param_groups[0]["lr"],
            "val_ged": val["ged"], "val_diversity": val["diversity"], "val_samples": config.val_samples,
            "bad_steps": progress.get("bad_steps", 0),
        }
        losses.clear()
        for key in ("train_loss", "val_ged", "val_diversity"):
            writer.add_scalar(key.replace("_", "/", 1), entry[key], progress["step"])
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        save_weights(evaluated, out / "last.safetensors")
        if val["ged"] < progress["best_ged"]:
            progress["best_ged"] = val["ged"]
            save_weights(evaluated, out / "best.safetensors")
        save_state(order, position)
        log(
            f"step {entry['step']} (epoch {entry['epoch']}): loss {entry['train_loss']:.2f}, "
            f"val GED^2({config.val_samples}) {val['ged']:.4f}, diversity {val['diversity']:.3f}, {entry['minutes']:.1f} min"
        )

    last_epoch = math.inf if config.epochs is None else config.epochs
    last_step = math.inf if config.max_steps is None else config.max_steps
    stop = False
    while progress["epoch"] < last_epoch and progress["step"] < last_step and not stop:
        # ------------------------------------------------------------ one epoch of steps
        model.train()
        if epoch_order is not None:  # resuming inside an epoch: its order, and the batches not yet done
            order, done = epoch_order.numpy(), int(progress.get("position", 0))
            epoch_order = None
        else:
            order, done = rng.permutation(source.train_items), 0
        batches = [np.sort(order[i : i + config.batch_size]) for i in range(0, order.size, config.batch_size)]
        bar = tqdm(batches[done:], desc=f"epoch {progress['epoch'] + 1}", file=sys.stderr, leave=False, disable=None)
        epoch_start = last_report = time.perf_counter()
        for count, indices in enumerate(bar, done + 1):
            images, masks, roi = source.batch(indices, rng)  # roi: the region of interest of volumes, or None
            if config.augment:
                if roi is not None:  # transformed alike, as one more label channel
                    masks = torch.cat([masks, roi.unsqueeze(1).long()], 1)
                images, masks = augment(images, masks, min_crop=config.crop_scale, generator=generator)
                if roi is not None:
                    masks, roi = masks[:, :-1], masks[:, -1].bool()
            reader = torch.randint(0, masks.shape[1], (masks.shape[0],), generator=generator)
            target = masks[torch.arange(masks.shape[0]), reader]  # one annotator per image
            roi = roi.to(device) if roi is not None else None
            spent = budget_spent()
            factor = learning_rate_factor(progress["step"], spent, config.lr_schedule, config.warmup_steps, config.final_lr)
            for group in optimiser.param_groups:
                group["lr"] = config.lr * factor
            optimiser.zero_grad(set_to_none=True)
            try:
                if hasattr(model, "mean_loss") and spent < config.mean_warmup:
                    loss = model.mean_loss(images.to(device), target.to(device), roi)  # the SSN's mean alone, first
                else:
                    loss = model.loss(images.to(device), target.to(device), roi)
                finite = bool(torch.isfinite(loss))
                if finite:
                    loss.backward()
                    finite = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)))
            except NonFiniteError:  # the distribution's parameters overflowed for this batch
                finite = False
            progress["step"] += 1
            if finite:
                bad_in_a_row = 0
                optimiser.step()
                if average is not None:
                    average.update(model, progress["step"])
                losses.append(loss.item())
                speed = count * config.batch_size / (time.perf_counter() - epoch_start)
                bar.set_postfix(loss=f"{losses[-1]:.1f}", img_s=f"{speed:.1f}")
                if bar.disable and time.perf_counter() - last_report > 60:  # no terminal: a line a minute
                    last_report = time.perf_counter()
                    log(f"  step {progress['step']}: loss {np.mean(losses[-50:]):.1f}, {speed:.1f} images/s")
                writer.add_scalar("train/loss", losses[-1], progress["step"])
            else:  # never into the weights: skip the step, say so, stop if it keeps happening
                optimiser.zero_grad(set_to_none=True)
                progress["bad_steps"] = progress.get("bad_steps", 0) + 1
                bad_in_a_row += 1
                log(f"step {progress['step']}: non-finite loss or gradients, step skipped "
                    f"({bad_in_a_row} in a row, {progress['bad_steps']} in all)")
                if bad_in_a_row >= config.max_bad_steps:
                    raise RunError(
                        f"training stopped at step {progress['step']}: {bad_in_a_row} steps in a row had a non-finite "
                        f"loss or gradients (the weights saved so far are finite). Lower --lr (now {config.lr:g}) "
                        "or --grad-clip, check the images for extreme values, and resume with --resume"
                    )
            stop = time.perf_counter() - start > 60 * (config.max_minutes or math.inf) or progress["step"] >= last_step
            if config.val_every and (progress["step"] % config.val_every == 0 or stop):
                validate_and_save(order, count)
                model.train()
            elif time.perf_counter() - last_checkpoint > 60 * config.checkpoint_minutes:
                save_state(order, count)
            if stop:
                break
        progress["epoch"] += 1
        if not config.val_every or (progress["epoch"] >= last_epoch and losses):
            validate_and_save(None, 0)
        elif not stop:
            save_state(None, 0)  # an epoch's end: the next one draws its own order
    writer.close()
    return {
        "epochs": progress["epoch"], "steps": progress["step"], "minutes": progress["seconds"] / 60,
        "best_val_ged": progress["best_ged"], "run_dir": str(out), "bad_steps": progress.get("bad_steps", 0),
    }


# What a run writes; --overwrite removes these before starting over.
_RUN_FILES = ("config.json", "metrics.jsonl", "state.pt", "last.safetensors", "best.safetensors", "calibration.json")


def _prepare_run_dir(out: Path, config: TrainConfig) -> None:
    """Create ``out``; refuse one that holds a run unless resuming it or starting it over."""
    held = [name for name in _RUN_FILES if (out / name).exists()]
    if held and not (config.resume or config.overwrite):
        raise RunError(f"{out} already holds a run ({', '.join(held)}): continue it with --resume, start it over "
                       "with --overwrite, or choose another --out")
    if config.overwrite:
        import shutil

        for name in held:
            (out / name).unlink()
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    check_writable(out / "config.json")


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the lines of ``metrics.jsonl`` up to ``step`` (those of the resumed state), whole lines only."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            continue
        if entry.get("step", 0) <= step:
            kept.append(line)
    write_atomically(path, lambda p: p.write_text("".join(f"{line}\n" for line in kept)))


def _parameter_groups(model, config: TrainConfig) -> list[dict]:
    """All parameters, with ``factor_weight_decay`` added on the SSN's covariance head."""
    head = getattr(model, "head", None)
    covariance = [] if config.factor_weight_decay == 0 or head is None else [
        p for name, p in head.named_parameters() if name.startswith(("factor", "log_diag"))
    ]
    chosen = {id(p) for p in covariance}
    groups = [{"params": [p for p in model.parameters() if id(p) not in chosen]}]
    if covariance:
        groups.append({"params": covariance, "weight_decay": config.weight_decay + config.factor_weight_decay})
    return groups


def _complete(config: TrainConfig, source) -> None:
    """Fill the model sizes from the data, and check its labels against num_classes."""
    found = source.num_classes()
    if config.num_classes is None:
        config.num_classes = found
    elif found > config.num_classes:
        raise DataError(f"the masks hold labels up to {found - 1} but num_classes is {config.num_classes}")
    config.in_channels = source.in_channels
    config.spatial_dims = source.spatial_dims


@torch.no_grad()
def _validate(model, val_set: ValidationSet, config: TrainConfig, device) -> dict:
    """GED^2 and diversity on the fixed validation set, drawn from the same seed every time, so
    that the choice of the best checkpoint compares models, not random draws."""
    generator = torch.Generator(device).manual_seed(config.seed)
    ged = metrics.GeneralizedEnergyDistance(config.num_classes)
    diversity = metrics.SampleDiversity(config.num_classes)
    for chunk, labels in predict_batches(
        model, val_set.images, np.arange(len(val_set)), config.val_samples, config.batch_size, device, generator,
        roi=val_set.roi,
    ):
        annotations = torch.from_numpy(np.ascontiguousarray(val_set.masks[chunk]))
        ged.update(labels, annotations)
        diversity.update(labels)
    return {"ged": ged.compute().mean, "diversity": diversity.compute().mean}

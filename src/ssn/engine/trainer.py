"""Training: one readable loop from a dataset file to a run directory.

The configuration (:class:`~ssn.engine.config.TrainConfig`) is printed at the start and saved as
``config.json`` beside the weights, with the model's full description. Each step takes a batch
from a DataLoader (:mod:`ssn.engine.loading`: one annotator per image, as the paper did, flips,
small rotations and optionally crops rescaled to full size, every draw keyed on the example's
place in the epoch) and takes one optimiser step on the method's own loss (``model.loss``: the
SSN's Monte Carlo log-likelihood, or the baseline's cross-entropy on the same scale) at the
learning rate of the schedule. Under ``torchrun`` each process takes its share of every batch
and DistributedDataParallel averages the gradients; only the first process writes. After each epoch (or every ``val_every``
steps) the GED^2 on a fixed validation subset, drawn with a fixed seed, is logged, and the last
and best weights are saved atomically: the moving average of the weights when ``ema_decay`` is
set, the trained weights otherwise.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from .. import metrics
from .._version import __version__
from ..distributed import World, join, leave
from ..distributions import NonFiniteError
from ..errors import ConfigError, DataError, RunError
from ..inference import predict_batches
from ..models import build
from ..randomness import derive_seed
from .checkpoints import load_weights, save_weights
from .config import TrainConfig, model_spec
from .loading import EpochBatches, TrainingExamples, default_workers, epoch_order, training_loader
from .optim import WeightAverage, learning_rate_factor
from .rundir import RunDir
from .sources import ValidationSet, open_source

__all__ = ["train"]


def train(config: TrainConfig, log=print) -> dict:
    """Train as configured; return a summary (epochs, steps, best validation GED^2, paths).

    Under ``torchrun`` each process trains its share of every batch (DistributedDataParallel);
    only the first process writes and logs. See :mod:`ssn.distributed`. With ``config.resume``
    the settings must be the run's own, but for those a resume may change (the budget, the
    cadence of validation and checkpoints, the device: :data:`ssn.engine.rundir.RESUME_MAY_CHANGE`);
    ``RunDir(out).resumed_settings({...})`` builds them from the run's ``config.json``.
    """
    import torch.distributed as dist

    if config.resume:
        RunDir(config.out).check_resumable(config.as_dict())

    joined = not (dist.is_available() and dist.is_initialized())
    world, device = join(config.device)
    try:
        with _CtrlC() as interrupted:  # Ctrl-C: the step in progress ends and its state is saved first
            return _train(config, world, device, log if world.main else (lambda *_: None), interrupted)
    finally:
        if world.distributed:
            import gc

            # the run's DistributedDataParallel sits in reference cycles; its reducer must be gone
            # before the process group is destroyed (by us or by the caller), or the process aborts at exit
            gc.collect()
        if joined and world.distributed:
            leave()


def _train(config: TrainConfig, world: World, device_name: str, log, interrupted: _CtrlC) -> dict:
    # ---------------------------------------------------------------- data
    source = open_source(config)  # images of an .npz, or patches of volumes
    _complete(config, source)
    val_set = source.validation(config.val_images, np.random.default_rng(config.seed))
    examples = TrainingExamples(source, config)
    workers = default_workers(world) if config.workers is None else config.workers

    # ---------------------------------------------------------------- model and optimiser
    torch.manual_seed(config.seed)
    device = torch.device(device_name)
    model = build(model_spec(config)).to(device)
    optimiser = torch.optim.Adam(_parameter_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    average = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
    evaluated = average.module if average is not None else model  # validated and saved
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    progress = {
        "epoch": 0,
        "step": 0,
        "seconds": 0.0,
        "cpu_seconds": 0.0,
        "best_ged": math.inf,
        "position": 0,
        "bad_steps": 0,
    }

    # ---------------------------------------------------------------- run directory
    run = RunDir(config.out)
    out = run.path
    _agree(world, lambda: run.prepare(config.resume, config.overwrite) if world.main else None)
    state: dict = {}
    if config.resume:
        state = _agree(world, run.read_state)
        if "model" in state:
            try:
                model.load_state_dict(state["model"])
            except RuntimeError:
                raise RunError(
                    f"--resume: the saved weights do not fit the model built for {config.data} "
                    f"({config.in_channels} channel(s), {config.num_classes} classes): resume on the "
                    "data the run was trained on"
                ) from None
        else:  # written by ssn 0.2, where last.safetensors held the trained weights
            load_weights(model, run.weights("last"))
        if average is not None:
            if "average" in state:
                average.module.load_state_dict(state["average"])
            else:
                load_weights(average.module, run.weights("last"))
        try:
            optimiser.load_state_dict(state["optimiser"])
        except ValueError as error:
            raise RunError(
                f"--resume: the saved optimiser state does not fit these settings ({error}); "
                "resume with the settings the run was started with"
            ) from None
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        progress.update(state["progress"])
        if world.main:
            run.truncate_metrics(progress["step"])
    record = {
        **config.as_dict(),
        "architecture": model.spec.as_dict(),
        "ssn_version": __version__,
        "world_size": world.size,
        "workers": workers,
    }
    if getattr(source, "label_map", None):  # volumes: how classes map back to the files' label values
        record["label_map"] = {str(k): v for k, v in source.label_map.items()}
    if getattr(source, "sequences", None):
        record["sequences"] = source.sequences
    writer = None
    if world.main:
        run.write_config(record)
        from torch.utils.tensorboard import SummaryWriter  # imported here: slow, and only training needs it

        writer = SummaryWriter(str(run.tensorboard_dir))
    log("configuration:\n" + json.dumps(record, indent=2))
    every = f"every {config.val_every} steps" if config.val_every else "per epoch"
    processes = f", {world.size} processes" if world.distributed else ""
    log(f"{source.describe()} ({len(val_set)} validation items used {every}; {workers} data workers{processes})")

    # ---------------------------------------------------------------- the step, as one module
    objective: torch.nn.Module = _Objective(model)
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":  # batch norm over the global batch (SyncBatchNorm runs on GPUs only)
            objective = torch.nn.SyncBatchNorm.convert_sync_batchnorm(objective)

        warm_up = hasattr(model, "mean_loss") and config.mean_warmup > 0  # the covariance head idles meanwhile
        objective = DistributedDataParallel(objective, find_unused_parameters=warm_up)
    if config.compile:
        import logging

        # the label and finite-value checks end a graph (they read one value): expected, not worth a page of warnings
        logging.getLogger("torch._dynamo.variables.tensor").setLevel(logging.ERROR)
        objective = torch.compile(objective)
    autocast = torch.autocast(device.type, dtype=_PRECISIONS[config.precision], enabled=config.precision != "fp32")

    def epoch_batches(epoch: int, start: int) -> EpochBatches:
        return EpochBatches(epoch_order(config.seed, epoch, source.train_items), epoch, config.batch_size, start, world)

    steps_per_epoch = len(epoch_batches(0, 0))
    seconds = progress["seconds"]  # the main process's training time, agreed on by all at each step
    clock = time.perf_counter() - seconds
    part_start = seconds  # this invocation's first second (stop_after_minutes counts from here)
    cpu_clock = time.process_time() - progress.get("cpu_seconds", 0.0)  # this process's CPU time, all its threads

    def cpu_seconds() -> float:
        return time.process_time() - cpu_clock

    def budget_spent() -> float:
        """The share of the training budget used so far: the largest of steps, minutes and epochs."""
        shares = [0.0]
        if config.max_steps is not None:
            shares.append(progress["step"] / config.max_steps)
        if config.max_minutes is not None:
            shares.append(seconds / (60 * config.max_minutes))
        if config.epochs is not None:
            shares.append(progress["step"] / (config.epochs * steps_per_epoch))
        return min(1.0, max(shares))

    losses: list[float] = list(state.get("losses", []))
    bad_in_a_row = int(state.get("bad_in_a_row", 0))
    last_checkpoint = time.perf_counter()

    def save_state(position: int) -> None:
        """Everything a resumed run needs to continue as if never stopped, atomically in state.pt:
        weights (trained and averaged), optimiser, gradient scaler, the step and the batches of
        the epoch done, the losses not yet logged. Random draws are keyed on (seed, epoch,
        position) and the step (see ssn.engine.loading), so no random state needs keeping."""
        nonlocal last_checkpoint
        last_checkpoint = time.perf_counter()
        if not world.main:
            return
        progress["seconds"], progress["position"], progress["cpu_seconds"] = seconds, position, cpu_seconds()
        state = {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "progress": dict(progress),
            "losses": list(losses),
            "bad_in_a_row": bad_in_a_row,
            "scaler": scaler.state_dict(),
        }
        if average is not None:
            state["average"] = average.module.state_dict()
        run.write_state(state)

    def validate_and_save(position: int) -> None:
        """Validation GED^2 of the evaluated weights on the fixed subset (shared among the
        processes); last and best weights saved."""
        try:
            val = _validate(evaluated, val_set, config, device, world)
        except NonFiniteError as error:  # a model whose outputs overflow is never the best one
            log(f"step {progress['step']}: validation impossible, the model's outputs are not finite ({error})")
            val = {"ged": math.nan, "diversity": math.nan}
        entry = {
            "epoch": progress["epoch"],
            "step": progress["step"],
            "minutes": seconds / 60,
            "cpu_minutes": cpu_seconds() / 60,
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "lr": optimiser.param_groups[0]["lr"],
            "val_ged": val["ged"],
            "val_diversity": val["diversity"],
            "val_samples": config.val_samples,
            "bad_steps": progress["bad_steps"],
        }
        losses.clear()
        if val["ged"] < progress["best_ged"]:
            progress["best_ged"] = val["ged"]
            if world.main:
                save_weights(evaluated, run.weights("best"))
        if world.main:
            for key in ("train_loss", "val_ged", "val_diversity"):
                writer.add_scalar(key.replace("_", "/", 1), entry[key], progress["step"])
            run.append_metrics(entry)
            save_weights(evaluated, run.weights("last"))
        save_state(position)
        log(
            f"step {entry['step']} (epoch {entry['epoch']}): loss {entry['train_loss']:.2f}, "
            f"val GED^2({config.val_samples}) {val['ged']:.4f}, diversity {val['diversity']:.3f}, {entry['minutes']:.1f} min"
        )

    last_epoch = math.inf if config.epochs is None else config.epochs
    last_step = math.inf if config.max_steps is None else config.max_steps
    stop = part_over = False
    while progress["epoch"] < last_epoch and progress["step"] < last_step and not stop:
        # ------------------------------------------------------------ one epoch of steps
        model.train()
        done = int(progress.get("position", 0))  # resuming inside an epoch: the batches not yet done
        batches = epoch_batches(progress["epoch"], done)
        global_sizes = [len(b) for b in batches.global_batches()][done:]
        loader = training_loader(examples, batches, workers, pin_memory=device.type == "cuda")
        bar = tqdm(
            loader,
            desc=f"epoch {progress['epoch'] + 1}",
            file=sys.stderr,
            leave=False,
            disable=None if world.main else True,
        )
        epoch_start, last_report, seen, count = time.perf_counter(), -math.inf, 0, done
        for count, (images, target, roi, noise_seeds) in enumerate(bar, done + 1):
            spent = budget_spent()
            share = images.shape[0] / global_sizes[count - done - 1]  # this process's part of the global batch
            images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
            roi = roi.to(device, non_blocking=True) if roi is not None else None
            noise = [torch.Generator(device).manual_seed(s) for s in noise_seeds]  # the loss's noise, per example
            torch.manual_seed(derive_seed(config.seed, progress["step"], world.rank, 2))  # dropout and the like
            optimiser.zero_grad(set_to_none=True)
            try:
                with autocast:
                    loss = objective(
                        images, target, roi, noise, bool(hasattr(model, "mean_loss") and spent < config.mean_warmup)
                    )
                finite = bool(torch.isfinite(loss))
            except NonFiniteError:  # the distribution's parameters overflowed for this batch
                loss, finite = torch.zeros((), device=device), False
            # One small reduction a step: the batch's loss, whether every process's is finite, and
            # the main process's clock and checkpoint timer, so all processes take the same decisions.
            due = world.main and time.perf_counter() - last_checkpoint > 60 * config.checkpoint_minutes
            agreed = world.sum(
                torch.tensor(
                    [
                        loss.item() * share if finite else 0.0,
                        float(not finite),
                        (time.perf_counter() - clock) if world.main else 0.0,
                        float(due),
                        float(interrupted.asked),
                    ],
                    dtype=torch.float64,
                )
            )
            finite, seconds, due, stopping = bool(agreed[1] == 0), float(agreed[2]), bool(agreed[3]), bool(agreed[4])
            if finite:
                scaler.scale(loss * (share * world.size)).backward()  # DDP averages: the global batch's mean
                scaler.unscale_(optimiser)
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                finite = bool(torch.isfinite(norm)) or scaler.is_enabled()  # fp16: the scaler skips overflows itself
            progress["step"] += 1
            if finite:
                bad_in_a_row = 0
                factor = learning_rate_factor(
                    progress["step"] - 1, spent, config.lr_schedule, config.warmup_steps, config.final_lr
                )
                for group in optimiser.param_groups:
                    group["lr"] = config.lr * factor
                scaler.step(optimiser)
                scaler.update()
                if average is not None:
                    average.update(model, progress["step"])
                losses.append(float(agreed[0]))
                seen += images.shape[0] * world.size
                speed = seen / (time.perf_counter() - epoch_start)
                bar.set_postfix(loss=f"{losses[-1]:.1f}", img_s=f"{speed:.1f}")
                if (
                    bar.disable and world.main and time.perf_counter() - last_report > 30
                ):  # no terminal: a line each 30 s
                    last_report = time.perf_counter()
                    log(
                        f"  step {progress['step']} (epoch {progress['epoch'] + 1}, {100 * budget_spent():.0f}% of the "
                        f"budget): loss {np.mean(losses[-50:]):.1f}, {speed:.1f} images/s, {seconds / 60:.1f} min"
                    )
                if writer is not None:
                    writer.add_scalar("train/loss", losses[-1], progress["step"])
            else:  # never into the weights: skip the step, say so, stop if it keeps happening
                optimiser.zero_grad(set_to_none=True)
                progress["bad_steps"] += 1
                bad_in_a_row += 1
                log(
                    f"step {progress['step']}: non-finite loss or gradients, step skipped "
                    f"({bad_in_a_row} in a row, {progress['bad_steps']} in all)"
                )
                if bad_in_a_row >= config.max_bad_steps:
                    raise RunError(
                        f"training stopped at step {progress['step']}: {bad_in_a_row} steps in a row had a non-finite "
                        f"loss or gradients (the weights saved so far are finite). Lower --lr (now {config.lr:g}) "
                        "or --grad-clip, check the images for extreme values, and resume with --resume"
                    )
            stop = seconds > 60 * (config.max_minutes or math.inf) or progress["step"] >= last_step
            part_over = not stop and seconds - part_start > 60 * (config.stop_after_minutes or math.inf)
            if config.val_every and (progress["step"] % config.val_every == 0 or stop):
                validate_and_save(count)
                model.train()
            elif due or stopping or part_over:
                save_state(count)
            if stopping and not stop:
                raise KeyboardInterrupt  # after the step and its state: --resume continues from here
            if part_over:
                log(
                    f"step {progress['step']}: this part's {config.stop_after_minutes:g} minutes are over and its "
                    f"state is saved ({100 * budget_spent():.0f}% of the budget); continue with: "
                    f"ssn train --resume --out {out}"
                )
                break
            if stop:
                break
        if part_over:
            break
        if stop and count < steps_per_epoch:  # inside the epoch: state.pt keeps the position
            if not config.val_every:
                validate_and_save(count)
            break
        progress["epoch"] += 1
        progress["position"] = 0
        if not config.val_every or (progress["epoch"] >= last_epoch and losses):
            validate_and_save(0)
        elif not stop:
            save_state(0)  # an epoch's end: the next one starts at its first batch
    if writer is not None:
        writer.close()
    world.barrier()
    return {
        "epochs": progress["epoch"],
        "steps": progress["step"],
        "minutes": seconds / 60,
        "cpu_minutes": cpu_seconds() / 60,
        "finished": not part_over,
        "best_val_ged": progress["best_ged"],
        "run_dir": str(out),
        "bad_steps": progress["bad_steps"],
        "world_size": world.size,
    }


_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class _CtrlC:
    """While training: the first Ctrl-C (SIGINT) only asks the run to stop after the step in
    progress (whose state is then saved, so nothing is lost and ``--resume`` continues exactly);
    a second one interrupts at once. Outside the main thread, Ctrl-C keeps its usual effect."""

    def __init__(self) -> None:
        import signal
        import threading

        self.asked, self._previous, self._pid = False, None, os.getpid()
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._ask)

    def _ask(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker (forked with this handler): the training process decides
            return
        self.restore()  # a second Ctrl-C raises KeyboardInterrupt at once
        self.asked = True
        print("\nssn: stopping after this step and saving its state (Ctrl-C again to stop at once)", file=sys.stderr)

    def restore(self) -> None:
        if self._previous is not None:
            import signal

            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def __enter__(self) -> _CtrlC:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


class _Objective(torch.nn.Module):
    """The training loss as a module's forward, so that DistributedDataParallel and
    torch.compile see the whole step: the method's loss, or the SSN's mean alone (warm-up)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, target, roi, generators, mean_only: bool):
        if mean_only:
            return self.model.mean_loss(images, target, roi)
        return self.model.loss(images, target, roi, generator=generators)


def _agree(world: World, work):
    """Run ``work`` (on the processes it concerns) and raise its error on every process, so
    that none waits for the others in a collective step when one has failed."""
    result, error = None, None
    try:
        result = work()
    except (RunError, DataError, ConfigError, OSError) as caught:
        error = caught
    errors = [e for e in world.gather(None if error is None else f"{type(error).__name__}: {error}") if e]
    if error is not None:
        raise error
    if errors:
        raise RunError(f"another process failed: {errors[0]}")
    return result


def _parameter_groups(model, config: TrainConfig) -> list[dict]:
    """All parameters, with ``factor_weight_decay`` added on the SSN's covariance head."""
    head = getattr(model, "head", None)
    covariance = (
        []
        if config.factor_weight_decay == 0 or head is None
        else [p for name, p in head.named_parameters() if name.startswith(("factor", "log_diag"))]
    )
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
def _validate(model, val_set: ValidationSet, config: TrainConfig, device, world: World = World()) -> dict:
    """GED^2 and diversity on the fixed validation set, drawn from the same seeds every time, so
    that the choice of the best checkpoint compares models, not random draws. Under torchrun each
    process takes its share of the images and the metrics are summed over the processes."""
    ged = metrics.GeneralizedEnergyDistance(config.num_classes)
    diversity = metrics.SampleDiversity(config.num_classes)
    overflow = None
    try:
        for chunk, labels in predict_batches(
            model,
            val_set.images,
            world.shard(np.arange(len(val_set))),
            config.val_samples,
            config.batch_size,
            device,
            roi=val_set.roi,
            seed=config.seed,
        ):
            annotations = torch.from_numpy(np.ascontiguousarray(val_set.masks[chunk]))
            ged.update(labels, annotations)
            diversity.update(labels)
    except NonFiniteError as error:  # on this process's share: every process must hear of it
        overflow = error
    if not world.all_agree(overflow is None):
        raise overflow or NonFiniteError("another process's validation images overflowed the model")
    return {"ged": ged.compute().mean, "diversity": diversity.compute().mean}

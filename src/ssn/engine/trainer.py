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

import functools
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from tqdm import tqdm

from .. import metrics
from .._version import __version__
from ..data.volume_list import is_volume_list
from ..distributed import World, join, leave
from ..distributions import NonFiniteError
from ..errors import ConfigError, DataError, RunError
from ..files import write_json
from ..inference import predict_batches
from ..inference.sliding import labelled_draws
from ..models import SegmentationModel, build
from ..randomness import derive_seed
from .checkpoints import initialise_from, load_weights, save_weights
from .config import TrainConfig, model_spec
from .loading import EpochBatches, TrainingExamples, default_workers, epoch_order, training_loader
from .optim import learning_rate_factor, weight_average
from .rundir import RunDir
from .sources import ValidationSet, VolumeValidationSet, open_source

__all__ = ["train", "TrainState"]


@functools.cache
def processor() -> str:
    """The processor's name, as ``/proc/cpuinfo`` gives it (``platform.processor()`` elsewhere;
    ``"unknown"`` without either): logged with each validation, since the CPU time of a run in
    parts may come from different machines, and a CPU-hour of one is not a CPU-hour of another."""
    try:
        with open("/proc/cpuinfo") as lines:
            for line in lines:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
            quiet = log if world.main else (lambda *_: None)
            return _Trainer(config, world, device, quiet, interrupted).run()
    finally:
        if world.distributed:
            import gc

            # the run's DistributedDataParallel sits in reference cycles; its reducer must be gone
            # before the process group is destroyed (by us or by the caller), or the process aborts at exit
            gc.collect()
        if joined and world.distributed:
            leave()


@dataclass
class TrainState:
    """A run's progress, beside its weights and optimiser: everything ``--resume`` needs to go
    on as if never stopped. Random draws are keyed on (seed, epoch, position) and the step (see
    :mod:`ssn.engine.loading`), so no random state is kept."""

    epoch: int = 0
    step: int = 0
    position: int = 0  # the batches of the epoch done
    seconds: float = 0.0  # the main process's training time, agreed on by all processes at each step
    cpu_seconds: float = 0.0  # the main process's CPU time, all its threads, over all parts
    best_ged: float = math.inf
    best_step: int = 0  # the step of best_ged (0: none yet, or a run saved before ssn 0.7)
    bad_steps: int = 0
    bad_in_a_row: int = 0
    losses: list[float] = field(default_factory=list)  # since the last validation

    _PROGRESS = ("epoch", "step", "seconds", "cpu_seconds", "best_ged", "best_step", "position", "bad_steps")

    def state_dict(self) -> dict:
        """The state.pt entries ``progress``, ``losses`` and ``bad_in_a_row``."""
        return {
            "progress": {name: getattr(self, name) for name in self._PROGRESS},
            "losses": list(self.losses),
            "bad_in_a_row": self.bad_in_a_row,
        }

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.get("progress", {}).items():
            if name in self._PROGRESS:
                setattr(self, name, value)
        self.losses = list(state.get("losses", []))
        self.bad_in_a_row = int(state.get("bad_in_a_row", 0))


@dataclass
class _StepAgreement:
    """What every process agrees on after a step (one float64 all-reduce): the global batch's
    loss, whether any process's was not finite, the main process's clock, whether a checkpoint is
    due by its timer, and whether Ctrl-C (or SIGTERM) asked it to stop there."""

    loss: float
    finite: bool
    seconds: float
    checkpoint_due: bool
    stopping: bool

    @classmethod
    def reduce(cls, world: World, loss: float, finite: bool, seconds: float, due: bool, asked: bool):
        values = torch.tensor([loss, float(not finite), seconds, float(due), float(asked)], dtype=torch.float64)
        total, bad, clock, checkpoint, stop = world.sum(values).tolist()
        return cls(total, bad == 0, clock, bool(checkpoint), bool(stop))


class _Trainer:
    """One run: set up by the constructor, trained by :meth:`run`, one :meth:`train_step` at a
    time, with :meth:`validate` and :meth:`save` at their cadence."""

    def __init__(self, config: TrainConfig, world: World, device_name: str, log, interrupted: _CtrlC) -> None:
        self.config, self.world, self.log, self.interrupted = config, world, log, interrupted
        # data
        self.source = open_source(config)  # images of an .npz, or patches of volumes
        _complete(config, self.source)
        self.val_set = self.source.validation(config.val_images, np.random.default_rng(config.seed))
        self.examples = TrainingExamples(self.source, config)
        self.workers = default_workers(world) if config.workers is None else config.workers
        # model and optimiser
        torch.manual_seed(config.seed)
        self.device = torch.device(device_name)
        self.model = build(model_spec(config))
        if config.init_from and not config.resume:
            fresh, unused = initialise_from(self.model, config.init_from)
            if world.main:
                log(
                    f"started from the weights of {config.init_from}"
                    + (f"; initialised afresh: {', '.join(fresh)}" if fresh else "")
                    + (f"; not used: {', '.join(unused)}" if unused else "")
                )
        self.model = self.model.to(self.device)
        self.optimiser = torch.optim.Adam(
            _parameter_groups(self.model, config), lr=config.lr, weight_decay=config.weight_decay
        )
        self.average = weight_average(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.evaluated = self.average.module if self.average is not None else self.model  # validated and saved
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.state = TrainState()
        # run directory
        self.run_dir = RunDir(config.out)
        _agree(world, lambda: self.run_dir.prepare(config.resume, config.overwrite) if world.main else None)
        if config.resume:
            self._resume(_agree(world, self.run_dir.read_state))
        self.writer = self._write_config()
        self.autocast = torch.autocast(
            self.device.type, dtype=_PRECISIONS[config.precision], enabled=config.precision != "fp32"
        )
        self.steps_per_epoch = len(self._epoch_batches(0, 0))
        if config.whole_after is not None:
            budgets = [config.max_steps] if config.max_steps is not None else []
            budgets += [config.epochs * self.steps_per_epoch] if config.epochs is not None else []
            self.examples.whole_images_from(
                math.ceil(config.whole_after * min(budgets)), self.steps_per_epoch, config.batch_size
            )
        # the step, as one module (after the sizes: whether the warm-up is on depends on the budget spent)
        self.objective = self._objective(find_unused=self._in_warm_up())
        self.clock = time.perf_counter() - self.state.seconds
        self.part_start = self.state.seconds  # this invocation's first second (stop_after_minutes counts from here)
        self.cpu_clock = time.process_time() - self.state.cpu_seconds
        self.last_checkpoint = time.perf_counter()

    # ------------------------------------------------------------------ set-up
    def _resume(self, saved: dict) -> None:
        config = self.config
        if "model" in saved:
            try:
                self.model.load_state_dict(saved["model"])
            except RuntimeError:
                raise RunError(
                    f"--resume: the saved weights do not fit the model built for {config.data} "
                    f"({config.in_channels} channel(s), {config.num_classes} classes): resume on the "
                    "data the run was trained on"
                ) from None
        else:  # written by ssn 0.2, where last.safetensors held the trained weights
            load_weights(self.model, self.run_dir.weights("last"))
        if self.average is not None:
            if "average" in saved:
                self.average.module.load_state_dict(saved["average"])
            else:
                load_weights(self.average.module, self.run_dir.weights("last"))
        try:
            self.optimiser.load_state_dict(saved["optimiser"])
        except ValueError as error:
            raise RunError(
                f"--resume: the saved optimiser state does not fit these settings ({error}); "
                "resume with the settings the run was started with"
            ) from None
        if "scaler" in saved and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved["scaler"])
        self.state.load_state_dict(saved)
        if self.world.main:
            self.run_dir.truncate_metrics(self.state.step)

    def _write_config(self):
        """config.json (the settings and the model's description); the TensorBoard writer."""
        config, world, source = self.config, self.world, self.source
        record = {
            **config.as_dict(),
            "architecture": self.model.spec.as_dict(),
            "ssn_version": __version__,
            "world_size": world.size,
            "workers": self.workers,
        }
        if source.label_map:  # volumes: how classes map back to the files' label values
            record["label_map"] = {str(k): v for k, v in source.label_map.items()}
        if source.sequences:
            record["sequences"] = source.sequences
        if source.input_shape:
            record["input_shape"] = source.input_shape
        writer = None
        if world.main:
            self.run_dir.write_config(record)
            if source.held_out is not None:  # evaluate and calibrate find the held-out images by it
                write_json(source.held_out, self.run_dir.split_path)
            from torch.utils.tensorboard import SummaryWriter  # imported here: slow, and only training needs it

            writer = SummaryWriter(str(self.run_dir.tensorboard_dir))
        self.log("configuration:\n" + json.dumps(record, indent=2))
        every = f"every {config.val_every} steps" if config.val_every else "per epoch"
        processes = f", {world.size} processes" if world.distributed else ""
        self.log(
            f"{source.describe()} ({len(self.val_set)} validation items used {every}; "
            f"{self.workers} data workers{processes})"
        )
        return writer

    def _objective(self, find_unused: bool) -> torch.nn.Module:
        """The loss as a module, wrapped for several processes (``find_unused``: parameters may
        get no gradient, as the covariance head during the mean's warm-up) and compiled."""
        objective: torch.nn.Module = _Objective(self.model, self.config.annotators == "all")
        self.finding_unused = find_unused and self.world.distributed
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            if self.device.type == "cuda":  # batch norm over the global batch (SyncBatchNorm runs on GPUs only)
                objective = torch.nn.SyncBatchNorm.convert_sync_batchnorm(objective)
            objective = DistributedDataParallel(objective, find_unused_parameters=find_unused)
        if self.config.compile:
            import logging

            # the label and finite-value checks end a graph (they read one value): expected, not worth a page of warnings
            logging.getLogger("torch._dynamo.variables.tensor").setLevel(logging.ERROR)
            objective = cast(torch.nn.Module, torch.compile(objective))
        return objective

    def _in_warm_up(self) -> bool:
        return bool(self._has_warm_up() and self.budget_spent() < self.config.mean_warmup)

    def _has_warm_up(self) -> bool:
        return self.model.has_warm_up and self.config.mean_warmup > 0  # the SSN's covariance head idles meanwhile

    def _epoch_batches(self, epoch: int, start: int) -> EpochBatches:
        order = epoch_order(self.config.seed, epoch, self.source.train_items)
        return EpochBatches(order, epoch, self.config.batch_size, start, self.world)

    # ------------------------------------------------------------------ clocks and budget
    def cpu_seconds(self) -> float:
        return time.process_time() - self.cpu_clock

    def budget_spent(self) -> float:
        """The share of the training budget used so far: the largest of steps, minutes and epochs."""
        config, state = self.config, self.state
        shares = [0.0]
        if config.max_steps is not None:
            shares.append(state.step / config.max_steps)
        if config.max_minutes is not None:
            shares.append(state.seconds / (60 * config.max_minutes))
        if config.epochs is not None:
            shares.append(state.step / (config.epochs * self.steps_per_epoch))
        return min(1.0, max(shares))

    # ------------------------------------------------------------------ one step
    def train_step(self, images, target, roi, noise_seeds, share: float) -> _StepAgreement:
        """Forward, the method's loss (the mean alone during the warm-up), one reduction among the
        processes, backward and the optimiser step, unless any process's loss or gradients are
        not finite (then the step is skipped on all). ``share``: this process's part of the batch."""
        config, state, world, device = self.config, self.state, self.world, self.device
        spent = self.budget_spent()
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        roi = roi.to(device, non_blocking=True) if roi is not None else None
        noise = [torch.Generator(device).manual_seed(s) for s in noise_seeds]  # the loss's noise, per example
        torch.manual_seed(derive_seed(config.seed, state.step, world.rank, 2))  # dropout and the like
        self.optimiser.zero_grad(set_to_none=True)
        try:
            with self.autocast:
                mean_only = bool(self._has_warm_up() and spent < config.mean_warmup)
                if self.finding_unused and not mean_only:  # the warm-up is over: every parameter has a gradient now
                    self.objective = self._objective(find_unused=False)
                loss = self.objective(images, target, roi, noise, mean_only)
            finite = bool(torch.isfinite(loss))
        except NonFiniteError:  # the distribution's parameters overflowed for this batch
            loss, finite = torch.zeros((), device=device), False
        due = world.main and time.perf_counter() - self.last_checkpoint > 60 * config.checkpoint_minutes
        agreed = _StepAgreement.reduce(
            world,
            loss.item() * share if finite else 0.0,
            finite,
            (time.perf_counter() - self.clock) if world.main else 0.0,
            due,
            self.interrupted.asked,
        )
        state.seconds = agreed.seconds
        finite = agreed.finite
        if finite:
            self.scaler.scale(loss * (share * world.size)).backward()  # DDP averages: the global batch's mean
            self.scaler.unscale_(self.optimiser)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            finite = bool(torch.isfinite(norm)) or self.scaler.is_enabled()  # fp16: the scaler skips overflows
        state.step += 1
        if finite:
            state.bad_in_a_row = 0
            factor = learning_rate_factor(
                state.step - 1, spent, config.lr_schedule, config.warmup_steps, config.final_lr
            )
            for group in self.optimiser.param_groups:
                group["lr"] = config.lr * factor
            self.scaler.step(self.optimiser)
            self.scaler.update()
            if self.average is not None:
                self.average.n_averaged.fill_(state.step)  # the ramp follows the optimiser step, resumed too
                self.average.update_parameters(self.model)
            state.losses.append(agreed.loss)
            if self.writer is not None:
                self.writer.add_scalar("train/loss", agreed.loss, state.step)
        else:  # never into the weights: skip the step, say so, stop if it keeps happening
            self.optimiser.zero_grad(set_to_none=True)
            state.bad_steps += 1
            state.bad_in_a_row += 1
            self.log(
                f"step {state.step}: non-finite loss or gradients, step skipped "
                f"({state.bad_in_a_row} in a row, {state.bad_steps} in all)"
            )
            if state.bad_in_a_row >= config.max_bad_steps:
                raise RunError(
                    f"training stopped at step {state.step}: {state.bad_in_a_row} steps in a row had a non-finite "
                    f"loss or gradients (the weights saved so far are finite). Lower --lr (now {config.lr:g}) "
                    "or --grad-clip, check the images for extreme values, and resume with --resume"
                )
        agreed.finite = finite
        return agreed

    # ------------------------------------------------------------------ validation and checkpoints
    def save(self, position: int) -> None:
        """Everything a resumed run needs to continue as if never stopped, atomically in state.pt:
        weights (trained and averaged), optimiser, gradient scaler and the :class:`TrainState`."""
        self.last_checkpoint = time.perf_counter()
        if not self.world.main:
            return
        self.state.position, self.state.cpu_seconds = position, self.cpu_seconds()
        saved = {
            "model": self.model.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            **self.state.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        if self.average is not None:
            saved["average"] = self.average.module.state_dict()
        self.run_dir.write_state(saved)

    def validate(self, position: int) -> None:
        """Validation GED^2 of the evaluated weights on the fixed subset (shared among the
        processes), logged; the last and best weights and the state saved."""
        config, state, world = self.config, self.state, self.world
        try:
            val = _validate(self.evaluated, self.val_set, config, self.device, world)
        except NonFiniteError as error:  # a model whose outputs overflow is never the best one
            self.log(f"step {state.step}: validation impossible, the model's outputs are not finite ({error})")
            val = {"ged": math.nan, "diversity": math.nan}
        entry = {
            "epoch": state.epoch + (1 if position else 0),  # the epoch (from 1) this step is in, as the progress says
            "step": state.step,
            "minutes": state.seconds / 60,
            "cpu_minutes": self.cpu_seconds() / 60,
            "train_loss": float(np.mean(state.losses)) if state.losses else math.nan,
            "lr": self.optimiser.param_groups[0]["lr"],
            "val_ged": val["ged"],
            "val_diversity": val["diversity"],
            "val_samples": config.val_samples,
            "bad_steps": state.bad_steps,
            "processor": processor(),  # whose CPU time "cpu_minutes" counts
        }
        state.losses.clear()
        if val["ged"] < state.best_ged:
            state.best_ged, state.best_step = val["ged"], state.step
            if world.main:
                save_weights(self.evaluated, self.run_dir.weights("best"))
        if self.writer is not None:
            for key in ("train_loss", "val_ged", "val_diversity"):
                self.writer.add_scalar(key.replace("_", "/", 1), entry[key], state.step)
        if world.main:
            self.run_dir.append_metrics(entry)
            save_weights(self.evaluated, self.run_dir.weights("last"))
        self.save(position)
        self.log(
            f"step {entry['step']} (epoch {entry['epoch']}): loss {entry['train_loss']:.2f}, "
            f"val GED^2({config.val_samples}) {val['ged']:.4f}, diversity {val['diversity']:.3f}, {entry['minutes']:.1f} min"
        )
        self.model.train()

    def _closing_summary(self) -> str:
        """What a finished run reached, where its weights are, and the commands that come next."""
        config, state, run = self.config, self.state, self.run_dir.path
        best = (
            f"best validation GED^2({config.val_samples}) {state.best_ged:.4f} at step {state.best_step}"
            if math.isfinite(state.best_ged)
            else "no finite validation GED^2"
        )
        if config.split_file:
            choose, test = (
                f"--split-file {config.split_file} --split {config.val_split}",
                f"--split-file {config.split_file} --split test",
            )
        elif is_volume_list(config.data):
            choose, test = f"--split {config.val_split}", "--split test"
        else:  # its own hold-out, recorded in split.json; test images come from elsewhere
            choose, test = "--split val", ""
        calibrate = (
            f"  ssn calibrate --run {run} --data {config.data} {choose}\n"
            if self.model.has_spread and not is_volume_list(config.data)
            else ""
        )
        return (
            f"done: {state.step} steps ({state.epoch} epochs) in {state.seconds / 60:.1f} min "
            f"({self.cpu_seconds() / 60:.1f} CPU-min); {best}\n"
            f"  weights: {self.run_dir.weights('best')} (the best validation), {self.run_dir.weights('last')}\n"
            f"next:\n{calibrate}"
            f"  ssn evaluate --run {run} --data {config.data if test else 'TEST_DATA'} {test}".rstrip()
            + "\n"
            f"  ssn sample --run {run} --input IMAGE_OR_LIST"
        )

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        """Train epoch after epoch until the budget is spent, this part's minutes are over or
        Ctrl-C; return the summary."""
        config, state = self.config, self.state
        last_epoch = math.inf if config.epochs is None else config.epochs
        last_step = math.inf if config.max_steps is None else config.max_steps
        part_over = False
        stop = state.step > 0 and self.budget_spent() >= 1
        if stop:
            self.log(
                f"nothing to train: the run in {self.run_dir.path} has spent its budget ({state.step} steps, "
                f"{state.epoch} epochs, {state.seconds / 60:.1f} min); to train on, resume with a larger "
                "--max-steps, --epochs or --max-minutes"
            )
        while state.epoch < last_epoch and state.step < last_step and not stop:
            self.model.train()
            done = int(state.position)  # resuming inside an epoch: the batches not yet done
            batches = self._epoch_batches(state.epoch, done)
            global_sizes = [len(b) for b in batches.global_batches()][done:]
            loader = training_loader(self.examples, batches, self.workers, pin_memory=self.device.type == "cuda")
            bar = tqdm(loader, desc=f"epoch {state.epoch + 1}", file=sys.stderr, leave=False,
                       disable=None if self.world.main else True)  # fmt: skip
            speed, count = _Speed(self.world.size), done
            for count, (images, target, roi, noise_seeds) in enumerate(bar, done + 1):
                share = images.shape[0] / global_sizes[count - done - 1]  # this process's part of the global batch
                agreed = self.train_step(images, target, roi, noise_seeds, share)
                if agreed.finite:
                    speed.add(images.shape[0])
                    bar.set_postfix(loss=f"{agreed.loss:.1f}", img_s=f"{speed.rate():.1f}")
                    if bar.disable and self.world.main and speed.report_due():  # no terminal: a line each 30 s
                        self.log(
                            f"  step {state.step} (epoch {state.epoch + 1}, {100 * self.budget_spent():.0f}% of the "
                            f"budget): loss {np.mean(state.losses[-50:]):.1f}, {speed.rate():.1f} images/s, "
                            f"{state.seconds / 60:.1f} min"
                        )
                stop = state.seconds > 60 * (config.max_minutes or math.inf) or state.step >= last_step
                part_over = not stop and state.seconds - self.part_start > 60 * (config.stop_after_minutes or math.inf)
                if config.val_every and (state.step % config.val_every == 0 or stop):
                    self.validate(count)
                elif agreed.checkpoint_due or agreed.stopping or part_over:
                    self.save(count)
                if agreed.stopping and not stop:
                    raise KeyboardInterrupt  # after the step and its state: --resume continues from here
                if part_over:
                    self.log(
                        f"step {state.step}: this part's {config.stop_after_minutes:g} minutes are over and its "
                        f"state is saved ({100 * self.budget_spent():.0f}% of the budget); continue with: "
                        f"ssn train --resume --out {self.run_dir.path}"
                    )
                if stop or part_over:
                    break
            if part_over:
                break
            if stop and count < self.steps_per_epoch:  # inside the epoch: state.pt keeps the position
                if not config.val_every:
                    self.validate(count)
                break
            state.epoch += 1
            state.position = 0
            if not config.val_every or (state.epoch >= last_epoch and state.losses):
                self.validate(0)
            elif not stop:
                self.save(0)  # an epoch's end: the next one starts at its first batch
        if self.writer is not None:
            self.writer.close()
        if not (stop or part_over) or self.budget_spent() >= 1:
            self.log(self._closing_summary())
        self.world.barrier()
        return {
            "epochs": state.epoch,
            "steps": state.step,
            "minutes": state.seconds / 60,
            "cpu_minutes": self.cpu_seconds() / 60,
            "finished": not part_over,
            "best_val_ged": state.best_ged,
            "run_dir": str(self.run_dir.path),
            "bad_steps": state.bad_steps,
            "world_size": self.world.size,
        }


class _Speed:
    """Images per second over an epoch (all processes), and a report every 30 s without a terminal."""

    def __init__(self, processes: int) -> None:
        self.processes, self.start, self.seen, self.last_report = processes, time.perf_counter(), 0, -math.inf

    def add(self, images: int) -> None:
        self.seen += images * self.processes

    def rate(self) -> float:
        return self.seen / (time.perf_counter() - self.start)

    def report_due(self) -> bool:
        if time.perf_counter() - self.last_report > 30:
            self.last_report = time.perf_counter()
            return True
        return False


_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class _CtrlC:
    """While training: the first Ctrl-C (SIGINT) or SIGTERM (``kill``, a batch scheduler's
    notice before it kills a job) only asks the run to stop after the step in progress, whose
    state is then saved, so nothing is lost and ``--resume`` continues exactly. A second one has
    its usual effect at once (SIGINT: KeyboardInterrupt; SIGTERM: the process ends). Outside the
    main thread the signals keep their usual effect."""

    def __init__(self) -> None:
        import signal
        import threading

        self.asked, self._pid = False, os.getpid()
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._ask)

    def _ask(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker (forked with this handler): the training process decides
            return
        self.restore()  # a second signal has its usual effect at once
        self.asked = True
        import signal

        again = "Ctrl-C again" if signum == signal.SIGINT else "a second SIGTERM"
        print(f"\nssn: stopping after this step and saving its state ({again} to stop at once)", file=sys.stderr)

    def restore(self) -> None:
        import signal

        for number, previous in self._previous.items():  # None: a handler not set from Python
            signal.signal(number, signal.SIG_DFL if previous is None else previous)  # type: ignore[arg-type]
        self._previous = {}

    def __enter__(self) -> _CtrlC:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


class _Objective(torch.nn.Module):
    """The training loss as a module's forward, so that DistributedDataParallel and
    torch.compile see the whole step: the method's loss, or the SSN's mean alone (warm-up)."""

    def __init__(self, model: SegmentationModel, all_annotators: bool = False) -> None:
        super().__init__()
        self.model = model
        self.all_annotators = all_annotators  # targets (B, A, *S): every annotator's map

    def forward(self, images, target, roi, generators, mean_only: bool):
        extra = {"all_annotators": True} if self.all_annotators else {}
        if mean_only:
            return self.model.warm_up_loss(images, target, roi, **extra)
        return self.model.loss(images, target, roi, generator=generators, **extra)


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


def _parameter_groups(model: SegmentationModel, config: TrainConfig) -> list[dict]:
    """All parameters, with ``factor_weight_decay`` added on those that shape the spread."""
    spread = model.spread_parameters() if config.factor_weight_decay else []
    chosen = {id(p) for p in spread}
    groups: list[dict] = [{"params": [p for p in model.parameters() if id(p) not in chosen]}]
    if spread:
        groups.append({"params": spread, "weight_decay": config.weight_decay + config.factor_weight_decay})
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


def _volume_draws(model, val_set: VolumeValidationSet, config: TrainConfig, device, world: World):
    """(samples (1, N, *box) uint8, annotations (1, A, *box)) of each of this process's validation
    volumes, drawn as ``ssn evaluate`` draws them (:func:`~ssn.inference.sliding.labelled_draws`),
    so the two agree on the same weights."""
    for k in world.shard(np.arange(len(val_set))):
        volume = val_set.volumes[k]
        samples, annotations = labelled_draws(
            model, volume.image, volume.mask, volume.labels, config.val_samples, val_set.window, 0.5, config.seed,
            device, case_id=volume.id,
        )  # fmt: skip
        yield samples.unsqueeze(0), annotations.unsqueeze(0)


def _image_draws(model, val_set: ValidationSet, config: TrainConfig, device, world: World):
    """(samples (B, N, *S) uint8, annotations (B, A, *S)) of this process's validation images, a batch at a time."""
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
        yield labels, torch.from_numpy(np.ascontiguousarray(val_set.masks[chunk]))


@torch.no_grad()
def _validate(
    model, val_set: ValidationSet | VolumeValidationSet, config: TrainConfig, device, world: World = World()
) -> dict:
    """GED^2 and diversity on the fixed validation set, drawn from the same seeds every time, so
    that the choice of the best checkpoint compares models, not random draws. Under torchrun each
    process takes its share of the images and the metrics are summed over the processes."""
    ged = metrics.GeneralizedEnergyDistance(model.num_classes)
    diversity = metrics.SampleDiversity(model.num_classes)
    overflow = None
    try:
        draws = (
            _volume_draws(model, val_set, config, device, world)
            if isinstance(val_set, VolumeValidationSet)
            else _image_draws(model, val_set, config, device, world)
        )
        for labels, annotations in draws:
            ged.update(labels, annotations)
            diversity.update(labels)
    except NonFiniteError as error:  # on this process's share: every process must hear of it
        overflow = error
    if not world.all_agree(overflow is None):
        raise overflow or NonFiniteError("another process's validation images overflowed the model")
    return {"ged": ged.compute().mean, "diversity": diversity.compute().mean}

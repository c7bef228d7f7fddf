"""The training engine: one loop for every method, on accelerate.

Why not `transformers.Trainer`: a Learner run switches the set of trainable
parameters mid-run (priming -> learners) and rebuilds the optimizer there while
the learning-rate schedule carries on; Trainer builds its optimizer once. The
loop stays short and accelerate still provides devices, mixed precision and
distributed launch.

Data-parallel (torchrun; see docs/cli.md#data-parallel-runs): the train loader is sharded per rank, so the global batch is
world_size x batch_size; every rank trains the same model (DDP all-reduces the gradients, and the
learner selection is broadcast from rank 0 and checked); rank 0 alone evaluates, logs, shows progress
and writes checkpoints.

Timing: `seconds` in the history is wall-clock training time only (forward,
backward, optimizer, and the priming -> learner reconfiguration), never
evaluation.
"""

import math
import resource
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, InitProcessGroupKwargs, set_seed
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint, distributed, early_stopping
from .run_log import RunLog, summary as log_summary
from .precision import cast_frozen_linears, frozen_dtype, training_attention
from ..errors import TrainingDiverged, TrainingInterrupted, UsageError


@dataclass
class TrainConfig:
    learning_rate: float
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    lr_scheduler: str = "linear"  # or "constant" (after warmup)
    max_grad_norm: float = 1.0
    eval_steps: int | None = None  # None: four evaluations an epoch
    seed: int = 0
    mixed_precision: str = "no"  # "no", "fp16", "bf16"
    gradient_checkpointing: bool = False  # recompute activations in backward (transformers' non-reentrant checkpointing)
    compile: bool = False  # torch.compile the model for the training steps (evaluation runs it uncompiled)
    priming_learning_rate: float | None = None
    learner_warmup_steps: int = 0  # after priming: ramp the learner optimizer's rate up over this many steps
    progress: bool = True
    logging_steps: int = 10  # read the steps' losses on the host (training log, divergence check) this often
    log_dir: str | None = None  # the run folder: history.jsonl and the --report-to files go there (run_log.py)
    report_to: tuple[str, ...] = ()  # "tensorboard", "wandb" (run_log.parse_report_to)
    checkpoint_dir: str | None = None  # None: no checkpoints (and Ctrl-C stops at once)
    checkpoint_steps: int | None = None  # None: at every evaluation; always after priming's reconfiguration and at the end
    resume: bool = False  # continue from the checkpoint in checkpoint_dir
    run_args: dict | None = None  # the run's options, saved with each checkpoint
    early_stopping_patience: int | None = None  # stop after this many evaluations without improvement (early_stopping.py)
    early_stopping_threshold: float = 0.0  # an improvement must exceed this to reset the patience
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step (a step is an optimizer step)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    log_history: list[dict] = field(default_factory=list)  # the training log (run_log.py)
    steps: int = 0
    train_seconds: float = 0.0
    step_seconds: list[tuple[str, float]] = field(default_factory=list)  # (phase, seconds) per step
    peak_memory_mb: float = 0.0
    priming_steps: int = 0
    best: dict | None = None
    frozen_dtype: torch.dtype | None = None  # the dtype the frozen linear weights were kept in (precision.py)
    early_stopping_step: int | None = None  # the step at which early stopping ended the run (None: it ran to the end)


def lr_multiplier(step: int, total: int, warmup: int, kind: str) -> float:
    """Linear warmup to 1, then linear decay to 0 at `total` (or stay at 1 for "constant")."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


def make_optimizer(model: nn.Module, cfg: TrainConfig, learning_rate: float, start_step: int, total: int, warmup: int,
                   rewarm: int = 0):
    """AdamW over the trainable parameters only (no state for frozen ones); no decay on biases and norms.

    `rewarm` > 0 ramps this optimizer's rate up linearly over its first `rewarm` steps (on top of the
    run's schedule): a fresh AdamW's first updates move every weight by about the full rate, which right
    after priming is 10x priming's rate."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates every tensor in one call, on the CPU as on CUDA: small models are launch-bound on a
    # GPU, and on the CPU it took a quarter of the for-loop's time for a small model's 40 tensors. It also skips a
    # step's update on the device when the loss is not finite (skip_update_unless_finite), with no synchronisation.
    groups = [g for g in groups if g["params"]]
    try:
        optimizer = torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    except RuntimeError:  # a device without the fused kernel
        optimizer = torch.optim.AdamW(groups, lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s + start_step, total, warmup, cfg.lr_scheduler) * min(1.0, (s + 1) / (rewarm + 1)))
    return optimizer, scheduler


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """--gradient-checkpointing: transformers' activation checkpointing, non-reentrant (no input needs to require
    grad, so a learner model still runs nothing backward below its lowest learner block)."""
    names = [("activation_checkpointing_enable", "activation_checkpointing_kwargs"),  # transformers 5.x
             ("gradient_checkpointing_enable", "gradient_checkpointing_kwargs")]  # its older name
    enable, kwargs = next(((getattr(model, name), kw) for name, kw in names if hasattr(model, name)), (None, None))
    if enable is None:
        raise UsageError(f"--gradient-checkpointing: this method's model ({type(model).__name__}) cannot checkpoint its "
                         "activations; run without it")
    try:
        enable(**{kwargs: {"use_reentrant": False}})
    except ValueError as e:  # transformers: "... does not support gradient checkpointing."
        raise UsageError(f"--gradient-checkpointing: {e}; run without it") from None


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated memory on CUDA; peak resident set size of this process on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trainable_parameters(optimizer) -> list[torch.Tensor]:
    """What `optimizer` updates (the trainable parameters): read from its groups, not from a walk of the model."""
    return [p for group in getattr(optimizer, "optimizer", optimizer).param_groups for p in group["params"]]


def training_step(model, batch, optimizer, scheduler, accelerator: Accelerator, max_grad_norm: float,
                  params: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step: forward, backward, clip, update. Returns the loss and the gradient norm, on the device.

    Nothing here waits for the device (no `.item()`, no synchronisation): a step whose loss or gradient norm is
    NaN or infinite leaves the weights as they were, because the fused optimizer skips its update on the device
    (`skip_update_unless_finite`), and `StepLog.check` raises TrainingDiverged at the next logging point. With
    fp16 the loss scaler skips such steps and adjusts its scale. `params`: the trainable parameters (default:
    the optimizer's)."""
    plain = plain_autograd(accelerator)  # then torch directly: accelerate's calls each search for a package
    loss = forward_backward(model, batch, accelerator, plain)
    params = trainable_parameters(optimizer) if params is None else params
    if not max_grad_norm:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    elif plain:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
    else:
        norm = accelerator.clip_grad_norm_(params, max_grad_norm)
    loss = loss.detach()
    if accelerator.scaler is None:
        skip_update_unless_finite(optimizer, loss, norm)
    if plain:  # accelerate's optimizer wrapper adds only that package search here
        optimizer = getattr(optimizer, "optimizer", optimizer)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, norm


def forward_backward(model, batch, accelerator: Accelerator, plain: bool) -> torch.Tensor:
    """The step's forward and backward passes. `batch`: one batch, or a list of micro-batches (gradient
    accumulation): each one's mean loss is weighted by its share of the step's examples, so the summed gradients
    are those of the one big batch; data-parallel ranks all-reduce only in the last backward. Returns the loss."""
    if not isinstance(batch, list):
        with training_attention(accelerator):  # backward too: activation checkpointing runs the forward again there
            loss = model(**batch).loss
            loss.backward() if plain else accelerator.backward(loss)
        return loss
    sizes = [len(micro["labels"]) for micro in batch]  # shapes: known on the host, no synchronisation
    examples, total = sum(sizes), None
    for i, (micro, size) in enumerate(zip(batch, sizes)):
        last = i == len(batch) - 1
        with (nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()), training_attention(accelerator):
            loss = model(**micro).loss * (size / examples)
            loss.backward() if plain else accelerator.backward(loss)
        total = loss.detach() if total is None else total + loss.detach()
    return total


def micro_batch_groups(batches, size: int):
    """The epoch's batches, one per optimizer step; with gradient accumulation (`size` > 1) lists of `size`
    micro-batches (the epoch's last list may be shorter)."""
    if size == 1:
        yield from batches
        return
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def plain_autograd(accelerator: Accelerator) -> bool:
    """Whether accelerate's backward, clipping and optimizer wrapper are plain torch here: no loss scaler, no gradient
    accumulation, one process or DDP (which all-reduces in backward). Then the step calls torch directly: accelerate's
    versions look for an optional package on every call (`is_lomo_available`, a file-system search), a tenth of a
    millisecond or more per step on the CPU."""
    return (accelerator.scaler is None and accelerator.gradient_accumulation_steps == 1
            and accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU))


def skip_update_unless_finite(optimizer, loss: torch.Tensor, norm: torch.Tensor) -> None:
    """Make the coming optimizer step a no-op if the loss or the gradient norm is not finite, without reading
    them on the host: a fused torch optimizer takes `found_inf` (as from a loss scaler) and skips the update,
    step count included, on the device. An optimizer that cannot checks on the host and raises at once."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if inner.defaults.get("fused"):
        inner.found_inf = torch.isfinite(loss + norm).logical_not().float()
    elif not bool(torch.isfinite(loss + norm)):
        raise TrainingDiverged(f"the loss is {loss.item()}" if not torch.isfinite(loss) else
                               f"the gradient norm is {norm.item()}")


@dataclass
class StepLog:
    """The losses and gradient norms of the steps since the last check, kept on the device: `check` reads them
    all at once, one host synchronisation per logging interval instead of one per step."""

    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def add(self, step: int, loss: torch.Tensor, norm: torch.Tensor) -> None:
        self.pending.append((step, loss, norm))

    def check(self, loss_only: bool = False) -> list[tuple[int, float, float]]:
        """The pending steps as (step, loss, gradient norm); TrainingDiverged at the first whose loss (or, unless
        `loss_only`, as with fp16's loss scaler, gradient norm) is not finite, on any data-parallel rank."""
        if not self.pending:
            rows = []
        else:
            values = torch.stack([torch.stack([loss.float(), norm.float()]) for _, loss, norm in self.pending]).tolist()
            rows = [(step, loss, norm) for (step, _, _), (loss, norm) in zip(self.pending, values)]
        self.pending = []
        bad = next(((step, loss, norm) for step, loss, norm in rows
                    if not math.isfinite(loss) or (not loss_only and not math.isfinite(norm))), None)
        if not distributed.all_true(bad is None):  # every rank stops together
            if bad is None:
                raise TrainingDiverged("the loss is not finite on another data-parallel rank")
            step, loss, norm = bad
            raise TrainingDiverged(f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm}",
                                   step)
        return rows


def priming_budget(wanted: int, total: int) -> int:
    """Priming steps in a run of `total` steps: as many as wanted, leaving at least one learner step.

    A one-step run primes for its one step, then selects and reconfigures with no learner-only
    step (the result is base model + primed learners + head); a warning says so."""
    budget = min(wanted, max(1, total - 1))
    if wanted and (budget < wanted or budget == total):
        rest = "no learner-only steps" if budget == total else f"{total - budget} learner step(s)"
        distributed.log(f"warning: the run has {total} step(s), too few for {wanted} priming step(s) and learner training: "
                   f"priming takes {budget}, then selection, then {rest}")
    return budget


def diverged(error: TrainingDiverged, step: int, phase: str, learning_rate: float, cfg: TrainConfig) -> TrainingDiverged:
    """The one-line message for a run that diverged: where (the error's own step if it has one), at which rate,
    and what to change."""
    step = error.step or step
    flag = "--priming-learning-rate" if phase == "priming" else "--learning-rate"
    hint = " or --mixed-precision no" if cfg.mixed_precision != "no" else ""
    return TrainingDiverged(f"training diverged at step {step} ({phase} phase): {error}; lower {flag} "
                            f"(now {learning_rate:g}){hint} and run again. Nothing was saved")


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """accelerate's Accelerator; under torchrun it joins the process group (gloo on the CPU, NCCL on GPUs)."""
    cpu = not torch.cuda.is_available()
    # Learner layers keep each FFN's full weight as a frozen buffer, rewritten in place from the learner
    # slices. DDP would broadcast every buffer from rank 0 before each forward: megabytes per step for
    # nothing, since the slices are parameters DDP keeps equal, so each rank's buffers stay equal too.
    # Every trainable parameter gets a gradient each step in every method, so no unused-parameter search.
    handlers = [DistributedDataParallelKwargs(broadcast_buffers=False, find_unused_parameters=False)]
    if cpu and distributed.world_size() > 1:  # gloo, not MPI even where torch was built with it
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    # torch >= 2.12 names it forward_sync_buffers, which accelerate's DDP kwargs do not pass on yet; the old
    # name still works (and unlike forward_sync_buffers=False also skips the buffer broadcast at wrapping).
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
    # accelerate keeps one mixed-precision setting per process and refuses another one; runs in one process (bench,
    # tests, a notebook) may differ in it, so each starts from a fresh setting (the process group stays).
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu, kwargs_handlers=handlers)


def compiled(model: nn.Module) -> nn.Module:
    """torch.compile(model) for the training steps (it compiles at the first step, and once more for each new
    input shape: --pad-to-multiple-of keeps those few)."""
    try:
        return torch.compile(model)
    except Exception as e:  # noqa: BLE001 - any backend's failure to set up: one line, and the way out
        raise UsageError(f"--compile: torch.compile cannot compile this model ({type(e).__name__}: {e}); run "
                         "without --compile") from None


def check_same_selection(method, model: nn.Module) -> None:
    """Every data-parallel rank must train the same neurons: compare the method's selection with rank 0's."""
    facts, tensors = method.checkpoint_state(model)
    distributed.check_same("the selected neurons", facts, tensors)


def train(model: nn.Module, method, train_loader, evaluate: Callable[[nn.Module], dict], metric_name: str,
          cfg: TrainConfig) -> TrainResult:
    """Train `model` with `method` (see learners.methods) and evaluate as configured.

    `evaluate(model)` returns a dict of dev metrics containing `metric_name` (higher is better).
    The best evaluation of the learner phase (or of the whole run without priming) is restored into
    the returned model; the evaluations of the primed and the just reconfigured model are reported only.
    With `cfg.checkpoint_dir` a checkpoint is written as configured and on Ctrl-C (see learners.checkpoint);
    with `cfg.resume` the run continues from it.
    """
    set_seed(cfg.seed)
    if len(train_loader) == 0:
        raise UsageError("no training batches: the training set is empty; add examples")
    run = _Run(model, method, train_loader, evaluate, metric_name, cfg)
    run.start()
    try:
        run.loop()
        return run.finish()
    finally:
        run.run_log.close()


class _Run:
    """One call of `train`: the loop's state (model, optimizer, phase, step, ...) and its parts.

    The order of the work (and so of every random draw) is that of one straight function: __init__, start,
    loop (a training step, then priming's reconfiguration or an evaluation, then a checkpoint), finish."""

    def __init__(self, model: nn.Module, method, train_loader, evaluate, metric_name: str, cfg: TrainConfig):
        self.model, self.method, self.train_loader, self.cfg = model, method, train_loader, cfg
        self.evaluate, self.metric_name = evaluate, metric_name
        self.accelerator = make_accelerator(cfg)
        self.device = self.accelerator.device
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.loader = self.accelerator.prepare(train_loader)  # sharded per rank: each rank gets every world_size-th batch
        self.steps_per_epoch = math.ceil(len(self.loader) / cfg.gradient_accumulation_steps)  # optimizer steps
        self.total = cfg.max_steps if cfg.max_steps else math.ceil(cfg.epochs * self.steps_per_epoch)
        self.warmup = math.floor(cfg.warmup_ratio * self.total)
        self.eval_steps = cfg.eval_steps or max(1, math.ceil(self.steps_per_epoch / 4))
        self.priming_steps = priming_budget(method.priming_steps(self.steps_per_epoch), self.total)
        self.rewarm = cfg.learner_warmup_steps if self.priming_steps else 0
        self.result = TrainResult(model=model, priming_steps=self.priming_steps)
        self.saved = checkpoint.load(cfg.checkpoint_dir) if cfg.resume else None

    def keep_frozen_weights_low(self) -> None:
        """In bf16, the frozen linear weights are stored in bf16 from here on (precision.cast_frozen_linears)."""
        dtype = frozen_dtype(self.cfg.mixed_precision)
        if dtype is not None and cast_frozen_linears(self.model, dtype):
            self.result.frozen_dtype = dtype

    def batches(self):
        """The training batches on the device, unsharded (what selection and priming's probes read)."""
        for batch in self.train_loader:
            yield {k: v.to(self.device) for k, v in batch.items()}

    def start(self) -> None:
        """The method prepares the model (or the checkpoint restores it), then the optimizer for the phase."""
        saved, cfg = self.saved, self.cfg
        self.model.to(self.device)
        started = time.perf_counter()
        if saved:
            self.model = checkpoint.restore_model(saved, self.model, self.method, self.batches()).to(self.device)
        else:
            self.model = self.method.prepare(self.model, self.batches())
        check_same_selection(self.method, self.model)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.keep_frozen_weights_low()
        self.result.train_seconds += time.perf_counter() - started
        self.phase = saved.phase if saved else ("priming" if self.priming_steps else "train")
        priming = self.phase == "priming"
        self.learning_rate = (cfg.priming_learning_rate or cfg.learning_rate) if priming else cfg.learning_rate
        self.optimizer, self.scheduler = make_optimizer(
            self.model, cfg, self.learning_rate, self.priming_steps if self.phase == "train" else 0, self.total,
            self.warmup, self.rewarm if self.phase == "train" else 0)
        if saved:
            checkpoint.restore_training(saved, self.optimizer, self.scheduler, self.accelerator.scaler, self.result)
            distributed.log(f"resuming from {saved.directory} at step {saved.step}/{self.total} ({self.phase})")
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.params = trainable_parameters(self.optimizer)  # for clipping, without walking the model every step
        self.step_model = compiled(self.model) if cfg.compile else self.model
        self.steps = StepLog()
        self.generator = getattr(getattr(self.train_loader, "sampler", None), "generator", None)  # the loader's shuffling
        self.step, self.position = (saved.step, saved.position) if saved else (0, checkpoint.EpochPosition())
        self.evaluated_step = self.step if saved and self.result.history else None  # a resumed run checks its history
        self.run_log = RunLog(self.result.log_history, cfg.log_dir, cfg.report_to, start_step=self.step, total=self.total,
                              main=self.accelerator.is_main_process, echo=not cfg.progress,
                              world_size=self.accelerator.num_processes, config=cfg.run_args)

    def loop(self) -> None:
        cfg = self.cfg
        self.bar = tqdm(total=self.total, initial=self.step, disable=not (cfg.progress and self.accelerator.is_main_process),
                        desc="training", dynamic_ncols=True)
        self.model.train()
        with checkpoint.StopRequest() if cfg.checkpoint_dir else nullcontext() as stop:
            while self.step < self.total and not self.stopped_early():
                epoch = checkpoint.epoch_batches(self.loader, self.generator, self.position, self.saved)
                self.saved = None  # its random states are restored once, in the resumed epoch
                for batch in micro_batch_groups(epoch, cfg.gradient_accumulation_steps):
                    self.train_step(batch)
                    if self.step == self.priming_steps:
                        self.end_priming()
                    elif self.step == self.total or self.step % self.eval_steps == 0:
                        self.run_eval()
                    if cfg.checkpoint_dir:
                        self.checkpoint_or_stop(stop)
                    if self.step >= self.total or self.stopped_early():
                        break
                else:
                    self.position.next_epoch()
        self.bar.close()

    def stopped_early(self) -> bool:
        """Whether early stopping ends the run here: decided from the history (so a resumed run stops where an
        uninterrupted one does) by rank 0, which alone evaluates, and told to every rank."""
        if self.cfg.early_stopping_patience is None or self.result.early_stopping_step is not None:
            return self.result.early_stopping_step is not None
        if self.step != self.evaluated_step or self.step >= self.total:
            return False  # only an evaluation changes the answer (no collective between them); the last ends the run
        exhausted = early_stopping.patience_exhausted(self.result.history, self.cfg.early_stopping_patience,
                                                      self.cfg.early_stopping_threshold)
        if not distributed.all_true(not exhausted):
            self.result.early_stopping_step = self.step
            distributed.log(f"early stopping at step {self.step}/{self.total}: {self.cfg.early_stopping_patience} "
                            f"evaluation(s) without improvement of {self.metric_name}")
        return self.result.early_stopping_step is not None

    def train_step(self, batch) -> None:
        t0 = time.perf_counter()
        try:
            loss, norm = training_step(self.step_model, batch, self.optimizer, self.scheduler, self.accelerator,
                                       self.cfg.max_grad_norm, self.params)
        except TrainingDiverged as e:
            raise diverged(e, self.step + 1, self.phase, self.learning_rate, self.cfg) from None
        elapsed = time.perf_counter() - t0
        self.result.step_seconds.append((self.phase, elapsed))
        self.result.train_seconds += elapsed
        self.step += 1
        micro_batches = batch if isinstance(batch, list) else [batch]  # a list with gradient accumulation
        self.position.batch += len(micro_batches)
        self.steps.add(self.step, loss, norm)
        for micro_batch in micro_batches:
            self.run_log.count(micro_batch)
        self.bar.update(1)
        if self.step % self.cfg.logging_steps == 0:
            self.check_steps()

    def check_steps(self) -> None:
        """Read the pending steps' losses on the host (the one synchronisation with the device between logging
        points; its wait for queued work counts as training time): a diverged run stops here, at the step where
        it happened; else they go into the training log (run_log.py)."""
        t0 = time.perf_counter()
        try:
            rows = self.steps.check(loss_only=self.accelerator.scaler is not None)
        except TrainingDiverged as e:
            raise diverged(e, self.step, self.phase, self.learning_rate, self.cfg) from None
        waited = time.perf_counter() - t0
        self.result.train_seconds += waited
        if rows:
            self.log_steps(rows, waited)

    def log_steps(self, rows: list[tuple[int, float, float]], waited: float) -> None:
        """The training log's entry for the steps just read, timed by their steps and the wait to read them; the
        progress bar shows it."""
        seconds = sum(s for _, s in self.result.step_seconds[rows[0][0] - 1:rows[-1][0]]) + waited
        entry = self.run_log.training(rows, seconds, step=self.step, epoch=self.step / self.steps_per_epoch,
                                      phase=self.phase, learning_rate=self.scheduler.get_last_lr()[0],
                                      train_seconds=self.result.train_seconds)
        if entry is not None:
            self.bar.set_postfix(log_summary(entry), refresh=False)

    def end_priming(self) -> None:
        """Evaluate the primed model, let the method select and reconfigure (timed as training), evaluate again,
        and go on with a new optimizer over the learner parameters while the schedule carries on."""
        self.run_eval()
        t0 = time.perf_counter()
        self.model = self.method.after_priming(self.accelerator.unwrap_model(self.model), self.batches()).to(self.device)
        check_same_selection(self.method, self.model)
        if self.cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.keep_frozen_weights_low()
        self.learning_rate = self.cfg.learning_rate
        self.optimizer, self.scheduler = make_optimizer(self.model, self.cfg, self.learning_rate, self.step, self.total,
                                                        self.warmup, self.rewarm)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.params = trainable_parameters(self.optimizer)
        self.step_model = compiled(self.model) if self.cfg.compile else self.model
        self.model.train()
        self.result.train_seconds += time.perf_counter() - t0
        self.phase = "reconfigured"  # base model + primed learners + head, before any learner step
        self.run_eval()
        self.phase = "train"

    def run_eval(self) -> None:
        """Rank 0 evaluates (the others go on to the next step); the learner phase's best weights are kept."""
        self.check_steps()
        self.evaluated_step = self.step  # every rank: early stopping's decision is taken together after it
        if not self.accelerator.is_main_process:
            return
        result, model = self.result, self.model
        model.eval()
        metrics = self.evaluate(self.accelerator.unwrap_model(model))
        model.train()
        entry = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                 "seconds": round(result.train_seconds, 3), "metric": metrics[self.metric_name], "phase": self.phase,
                 "metrics": metrics}
        result.history.append(entry)
        self.run_log.evaluation(entry)
        if self.phase == "train" and (result.best is None or entry["metric"] > result.best["metric"]):
            state = {n: p.detach().clone() for n, p in self.accelerator.unwrap_model(model).named_parameters()
                     if p.requires_grad}
            result.best = {**entry, "state": state}
        tqdm.write(f"step {self.step}/{self.total} ({self.phase}) {self.metric_name} {entry['metric']:.4f}, "
                   f"{entry['seconds']:.1f}s training", file=sys.stderr)

    def save_checkpoint(self) -> None:
        self.check_steps()  # a checkpoint never holds the steps of a diverged run
        if not self.accelerator.is_main_process:
            return
        checkpoint.save(Path(self.cfg.checkpoint_dir), run_args=self.cfg.run_args, step=self.step, phase=self.phase,
                        position=self.position, model=self.accelerator.unwrap_model(self.model), method=self.method,
                        optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.accelerator.scaler,
                        result=self.result)

    def checkpoint_or_stop(self, stop: checkpoint.StopRequest) -> None:
        """Write a checkpoint every `checkpoint_steps` (default: at each evaluation), right after priming's
        reconfiguration and at the end; after Ctrl-C write one (if none was due) and stop."""
        step = self.step
        due = step % (self.cfg.checkpoint_steps or self.eval_steps) == 0 or step in (self.priming_steps, self.total)
        if due:
            self.save_checkpoint()
        if not distributed.all_true(not stop.requested):  # Ctrl-C on any rank stops every rank at this step
            stop.requested = True
        if stop.requested:
            if not due:
                self.save_checkpoint()
            raise TrainingInterrupted(f"interrupted at step {step}/{self.total}; the checkpoint is in "
                                      f"{self.cfg.checkpoint_dir}: run the same command with --resume to continue")

    def finish(self) -> TrainResult:
        """The result, with the best evaluation's weights (if any) restored into the unwrapped model."""
        self.check_steps()
        result = self.result
        result.steps = self.step
        result.peak_memory_mb = peak_memory_mb(self.device)
        model = self.accelerator.unwrap_model(self.model)
        if result.best is not None:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in result.best["state"].items():
                    params[name].copy_(value)
        result.model = model
        return result

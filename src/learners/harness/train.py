"""The training engine: one loop for every method, on accelerate.

Why not `transformers.Trainer`: a Learner run switches the set of trainable
parameters mid-run (priming -> learners) and rebuilds the optimizer there while
the learning-rate schedule carries on; Trainer builds its optimizer once. The
loop stays short and accelerate still provides devices, mixed precision and
distributed launch.

Data-parallel (torchrun; see README): the train loader is sharded per rank, so the global batch is
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
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, set_seed
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint, distributed
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
    priming_learning_rate: float | None = None
    learner_warmup_steps: int = 0  # after priming: ramp the learner optimizer's rate up over this many steps
    progress: bool = True
    checkpoint_dir: str | None = None  # None: no checkpoints (and Ctrl-C stops at once)
    checkpoint_steps: int | None = None  # None: at every evaluation; always after priming's reconfiguration and at the end
    resume: bool = False  # continue from the checkpoint in checkpoint_dir
    run_args: dict | None = None  # the run's options, saved with each checkpoint


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0
    step_seconds: list[tuple[str, float]] = field(default_factory=list)  # (phase, seconds) per step
    peak_memory_mb: float = 0.0
    priming_steps: int = 0
    best: dict | None = None


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
    # On CUDA the fused kernel updates every tensor in a few launches: small models are launch-bound there.
    fused = all(p.device.type == "cuda" for p in decay + no_decay) or None
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s + start_step, total, warmup, cfg.lr_scheduler) * min(1.0, (s + 1) / (rewarm + 1)))
    return optimizer, scheduler


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated memory on CUDA; peak resident set size of this process on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_step(model, batch, optimizer, scheduler, accelerator: Accelerator, max_grad_norm: float) -> torch.Tensor:
    """One optimizer step: forward, backward, clip, update. Returns the loss (synchronised on CUDA).

    A NaN or infinite loss or gradient norm raises TrainingDiverged before the weights change
    (with fp16 an infinite gradient norm is the loss scaler's business: it skips that step)."""
    loss = model(**batch).loss
    if not distributed.all_true(bool(torch.isfinite(loss.detach()))):  # every rank stops together
        raise TrainingDiverged(f"the loss is {loss.item()}" if not torch.isfinite(loss.detach())
                               else "the loss is not finite on another data-parallel rank")
    accelerator.backward(loss)
    if max_grad_norm:
        norm = accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
        if accelerator.scaler is None and not torch.isfinite(norm):
            raise TrainingDiverged(f"the gradient norm is {norm.item()}")
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize(accelerator.device)
    return loss.detach()


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
    """The one-line message for a run that diverged: where, at which rate, and what to change."""
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
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu, kwargs_handlers=handlers)


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
    accelerator = make_accelerator(cfg)
    device = accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loader = accelerator.prepare(train_loader)  # sharded per rank: each rank gets every world_size-th batch
    steps_per_epoch = len(loader)
    total = cfg.max_steps if cfg.max_steps else math.ceil(cfg.epochs * steps_per_epoch)
    warmup = math.floor(cfg.warmup_ratio * total)
    eval_steps = cfg.eval_steps or max(1, math.ceil(steps_per_epoch / 4))
    priming_steps = priming_budget(method.priming_steps(steps_per_epoch), total)
    result = TrainResult(model=model, priming_steps=priming_steps)
    saved = checkpoint.load(cfg.checkpoint_dir) if cfg.resume else None

    def batches():
        for batch in train_loader:
            yield {k: v.to(device) for k, v in batch.items()}

    model.to(device)
    started = time.perf_counter()
    if saved:
        model = checkpoint.restore_model(saved, model, method, batches()).to(device)
    else:
        model = method.prepare(model, batches())
    check_same_selection(method, model)
    result.train_seconds += time.perf_counter() - started
    phase = saved.phase if saved else ("priming" if priming_steps else "train")
    learning_rate = (cfg.priming_learning_rate or cfg.learning_rate) if phase == "priming" else cfg.learning_rate
    rewarm = cfg.learner_warmup_steps if priming_steps else 0
    optimizer, scheduler = make_optimizer(model, cfg, learning_rate, priming_steps if phase == "train" else 0, total, warmup,
                                          rewarm if phase == "train" else 0)
    if saved:
        checkpoint.restore_training(saved, optimizer, scheduler, accelerator.scaler, result)
        distributed.log(f"resuming from {saved.directory} at step {saved.step}/{total} ({phase})")
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = getattr(getattr(train_loader, "sampler", None), "generator", None)  # the loader's shuffling
    step, position = (saved.step, saved.position) if saved else (0, checkpoint.EpochPosition())

    def run_eval(step: int):
        if not accelerator.is_main_process:  # rank 0 evaluates; the others go on to the next step
            return
        model.eval()
        metrics = evaluate(accelerator.unwrap_model(model))
        model.train()
        entry = {"step": step, "epoch": round(step / steps_per_epoch, 4), "seconds": round(result.train_seconds, 3),
                 "metric": metrics[metric_name], "phase": phase, "metrics": metrics}
        result.history.append(entry)
        if phase == "train" and (result.best is None or entry["metric"] > result.best["metric"]):
            state = {n: p.detach().clone() for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
            result.best = {**entry, "state": state}
        tqdm.write(f"step {step}/{total} ({phase}) {metric_name} {entry['metric']:.4f}, "
                   f"{entry['seconds']:.1f}s training", file=sys.stderr)

    def save_checkpoint(step: int):
        if not accelerator.is_main_process:
            return
        checkpoint.save(Path(cfg.checkpoint_dir), run_args=cfg.run_args, step=step, phase=phase, position=position,
                        model=accelerator.unwrap_model(model), method=method, optimizer=optimizer, scheduler=scheduler,
                        scaler=accelerator.scaler, result=result)

    def checkpoint_or_stop(step: int, stop: checkpoint.StopRequest):
        """Write a checkpoint every `checkpoint_steps` (default: at each evaluation), right after priming's
        reconfiguration and at the end; after Ctrl-C write one (if none was due) and stop."""
        due = step % (cfg.checkpoint_steps or eval_steps) == 0 or step in (priming_steps, total)
        if due:
            save_checkpoint(step)
        checkpoint.test_hook(step)
        if not distributed.all_true(not stop.requested):  # Ctrl-C on any rank stops every rank at this step
            stop.requested = True
        if stop.requested:
            if not due:
                save_checkpoint(step)
            raise TrainingInterrupted(f"interrupted at step {step}/{total}; the checkpoint is in {cfg.checkpoint_dir}: "
                                      "run the same command with --resume to continue")

    bar = tqdm(total=total, initial=step, disable=not (cfg.progress and accelerator.is_main_process), desc="training", dynamic_ncols=True)
    model.train()
    with checkpoint.StopRequest() if cfg.checkpoint_dir else nullcontext() as stop:
        while step < total:
            epoch = checkpoint.epoch_batches(loader, generator, position, saved)
            saved = None  # its random states are restored once, in the resumed epoch
            for batch in epoch:
                t0 = time.perf_counter()
                try:
                    loss = training_step(model, batch, optimizer, scheduler, accelerator, cfg.max_grad_norm)
                except TrainingDiverged as e:
                    raise diverged(e, step + 1, phase, learning_rate, cfg) from None
                elapsed = time.perf_counter() - t0
                result.step_seconds.append((phase, elapsed))
                result.train_seconds += elapsed
                step += 1
                position.batch += 1
                bar.update(1)
                bar.set_description(f"training (loss {loss.item():.4f})")
                if step == priming_steps:
                    run_eval(step)
                    t0 = time.perf_counter()
                    model = method.after_priming(accelerator.unwrap_model(model), batches()).to(device)
                    check_same_selection(method, model)
                    learning_rate = cfg.learning_rate
                    optimizer, scheduler = make_optimizer(model, cfg, learning_rate, step, total, warmup, rewarm)
                    model, optimizer = accelerator.prepare(model, optimizer)
                    model.train()
                    result.train_seconds += time.perf_counter() - t0
                    phase = "reconfigured"  # base model + primed learners + head, before any learner step
                    run_eval(step)
                    phase = "train"
                elif step == total or step % eval_steps == 0:
                    run_eval(step)
                if cfg.checkpoint_dir:
                    checkpoint_or_stop(step, stop)
                if step >= total:
                    break
            else:
                position.next_epoch()
    bar.close()
    result.steps = step
    result.peak_memory_mb = peak_memory_mb(device)
    model = accelerator.unwrap_model(model)
    if result.best is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in result.best["state"].items():
                params[name].copy_(value)
    result.model = model
    return result

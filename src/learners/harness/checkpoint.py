"""Checkpoints of a training run in OUT/checkpoint, and resuming from them.

A checkpoint is two files, safetensors + JSON (never a pickle):

* `checkpoint.safetensors`: the model's trainable tensors (`model.*`: during priming every weight
  priming trains; after selection the learner slices / FAR rows and the head), the method's
  selection (`method.*`: learner neuron indices, FAR units), the AdamW state (`optimizer.*`), the
  best evaluation's trainable tensors (`best.*`), the random generators (`rng.*`: torch's CPU and
  CUDA generators, the training loader's shuffling generator at the start of the current epoch).
* `checkpoint.json`: the run's options (to refuse resuming a different run), the step, the phase,
  the position in the epoch, the history and the training log, the best evaluation, the training seconds, the
  optimizer's hyperparameters, the scheduler's and loss scaler's state, the method's facts
  (learners: whether selection happened and the LearnerConfig; FAR: whether units were selected)
  and Python's and NumPy's random states.

Written atomically: into `checkpoint.tmp`, then renamed over `checkpoint` (the previous one is
kept as `checkpoint.old` for the moment between the two renames; `load` falls back to it). A full
disk removes `checkpoint.tmp` and stops the run with DiskFull; the previous checkpoint stays.

Resuming mid-epoch: the loader's generator is put back to its state at the epoch's start, the
epoch's batches already trained on are drawn again and skipped, and then the other random
generators are restored, so the rest of the run draws the same batches and dropout masks as an
uninterrupted run: on the CPU the results are bit-identical.
"""

import json
import os
import random
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import (TrainingInterrupted, UsageError, first_line, give_user_permissions, raise_if_disk_full,
                      read_json_file, read_safetensors)

DIRECTORY = "checkpoint"
TENSORS = "checkpoint.safetensors"
FACTS = "checkpoint.json"
FORMAT = 1


@dataclass
class EpochPosition:
    """Where the run is in the data: the epoch, how many of its batches trained, and the loader's
    shuffling generator at the epoch's start (None until the epoch starts)."""
    epoch: int = 0
    batch: int = 0
    generator_state: torch.Tensor | None = None

    def next_epoch(self) -> None:
        self.epoch, self.batch, self.generator_state = self.epoch + 1, 0, None


@dataclass
class Saved:
    """A loaded checkpoint: its JSON facts and its tensors."""
    directory: Path
    facts: dict
    tensors: dict

    def prefixed(self, prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def step(self) -> int:
        return self.facts["step"]

    @property
    def phase(self) -> str:
        return self.facts["phase"]

    @property
    def position(self) -> EpochPosition:
        p = self.facts["position"]
        return EpochPosition(p["epoch"], p["batch"], self.tensors.get("rng.loader_epoch_start"))


# ---- saving ---------------------------------------------------------------------------------

def save(directory: Path, *, run_args: dict | None, step: int, phase: str, position: EpochPosition, model, method,
         optimizer, scheduler, scaler, result) -> None:
    """Write the whole training state into `directory` atomically."""
    method_facts, method_tensors = method.checkpoint_state(model)
    optimizer_facts, optimizer_tensors = _optimizer_state(optimizer)
    tensors = {f"model.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    tensors.update({f"method.{k}": v for k, v in method_tensors.items()})
    tensors.update(optimizer_tensors)
    tensors.update(_rng_tensors())
    if position.generator_state is not None:
        tensors["rng.loader_epoch_start"] = position.generator_state
    best = None
    if result.best is not None:
        best = {k: v for k, v in result.best.items() if k != "state"}
        tensors.update({f"best.{n}": v for n, v in result.best["state"].items()})
    facts = {
        "format": FORMAT, "run_args": run_args, "step": step, "phase": phase,
        "position": {"epoch": position.epoch, "batch": position.batch},
        "history": result.history, "log_history": result.log_history, "best": best, "train_seconds": result.train_seconds,
        "step_seconds": result.step_seconds, "method": method_facts, "optimizer": optimizer_facts,
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        "scaler": scaler.state_dict() if scaler is not None else None,
        "python_random": _python_random_state(), "numpy_random": _numpy_random_state(),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _write_atomically(Path(directory), tensors, facts)


def _write_atomically(directory: Path, tensors: dict, facts: dict) -> None:
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / TENSORS), metadata={"format": "pt"})
        give_user_permissions(tmp / TENSORS)
        (tmp / FACTS).write_text(json.dumps(facts))
        for path in (tmp / TENSORS, tmp / FACTS):
            _fsync(path)
    except Exception as e:  # a full disk: no half-written checkpoint.tmp stays, the previous checkpoint does
        shutil.rmtree(tmp, ignore_errors=True)
        resumes = "it resumes from the last checkpoint" if exists(directory) else "it starts afresh (no checkpoint yet)"
        raise_if_disk_full(e, directory.parent, "a checkpoint", sum(t.nbytes for t in tensors.values()),
                           f"free some space and run the same command again: {resumes}")
        raise
    if directory.exists():  # else a kill between the renames left the previous one as `old`: keep it until now
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _optimizer_state(optimizer) -> tuple[dict, dict]:
    """AdamW's per-parameter tensors (`optimizer.<param>.<name>`) and its hyperparameters (JSON)."""
    state = optimizer.state_dict()
    tensors, other = {}, {}
    for pid, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{name}"] = value
            else:
                other[f"{pid}.{name}"] = value
    return {"param_groups": state["param_groups"], "other": other}, tensors


def _rng_tensors() -> dict:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def _python_random_state() -> list:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


def _numpy_random_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


# ---- loading --------------------------------------------------------------------------------

def exists(directory: Path) -> bool:
    directory = Path(directory)
    return (directory / FACTS).is_file() or (directory.with_name(directory.name + ".old") / FACTS).is_file()


def saved_run_args(directory: Path) -> dict | None:
    """The options of the run that wrote the checkpoint in `directory` (None: no checkpoint there)."""
    if not exists(directory):
        return None
    facts = load_facts(directory)
    _check_tensors(_current(directory) / TENSORS)
    return facts.get("run_args")


def _check_tensors(path: Path) -> None:
    """Fail now, not after loading the data and the model, if the tensor file is missing or truncated."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        raise UsageError(f"checkpoint tensors {path} cannot be read ({first_line(e)}); it is damaged: "
                         "start afresh with --overwrite") from e


def load_facts(directory: Path) -> dict:
    try:
        facts = read_json_file(_current(directory) / FACTS, "checkpoint")
    except UsageError as e:
        raise UsageError(f"{e}; start afresh with --overwrite") from e
    if facts.get("format") != FORMAT:
        raise UsageError(f"checkpoint {directory} has format {facts.get('format')}, this version reads {FORMAT}; "
                         "start afresh with --overwrite")
    return facts


def load(directory: Path) -> Saved:
    directory = _current(directory)
    facts = load_facts(directory)
    try:
        tensors = read_safetensors(directory / TENSORS, "checkpoint tensors")
    except UsageError as e:
        raise UsageError(f"{e}; or start afresh with --overwrite") from e
    return Saved(directory, facts, tensors)


def _current(directory: Path) -> Path:
    """The checkpoint directory; if a kill came between the two renames of a save, the previous one."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not (directory / FACTS).is_file() and (old / FACTS).is_file():
        return old
    return directory


def restore_model(saved: Saved, model, method, batches):
    """The method's model rebuilt as it was when the checkpoint was written, its trainable tensors loaded."""
    model = method.restore(model, batches, saved.facts["method"], saved.prefixed("method."))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    tensors = saved.prefixed("model.")
    if set(params) != set(tensors):
        different = sorted(set(params) ^ set(tensors))
        raise UsageError(f"checkpoint {saved.directory} does not fit this model and method (e.g. {different[0]}); "
                         "start afresh with --overwrite")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])
    return model


def restore_training(saved: Saved, optimizer, scheduler, scaler, result) -> None:
    """Optimizer, scheduler, loss scaler and the run's record (history, best, seconds) as saved."""
    facts = saved.facts
    state = {}
    for key, value in saved.prefixed("optimizer.").items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for key, value in facts["optimizer"]["other"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in facts["optimizer"]["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict({**facts["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    if scaler is not None and facts["scaler"]:
        scaler.load_state_dict(facts["scaler"])
    result.history = facts["history"]
    result.log_history[:] = facts.get("log_history", [])  # the training log (run_log.py); none in older checkpoints
    result.train_seconds = facts["train_seconds"]
    result.step_seconds = [tuple(s) for s in facts["step_seconds"]]
    if facts["best"] is not None:
        result.best = {**facts["best"], "state": saved.prefixed("best.")}


def restore_rng(saved: Saved) -> None:
    """torch's, CUDA's, Python's and NumPy's random generators as they were at the checkpoint."""
    torch.set_rng_state(saved.tensors["rng.torch"])
    cuda = saved.prefixed("rng.cuda.")
    cuda = [cuda[str(i)] for i in range(len(cuda))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, state, gauss = saved.facts["python_random"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = saved.facts["numpy_random"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def epoch_batches(loader, generator, position: EpochPosition, saved: Saved | None = None):
    """An iterator over the batches of the current epoch that have not trained yet.

    At an epoch's start the loader's shuffling generator state is recorded in `position`; when
    resuming mid-epoch it is put back, the epoch's first `position.batch` batches are drawn again
    and dropped, and then (`saved`) the random generators are restored as they were at the
    checkpoint, after the loader drew what it draws when an epoch starts."""
    if generator is not None:
        if position.generator_state is None:
            position.generator_state = generator.get_state()
        else:
            generator.set_state(position.generator_state)
    batches = iter(loader)
    for _ in range(position.batch):
        next(batches)
    if saved is not None:
        restore_rng(saved)
    return batches


# ---- Ctrl-C ------------------------------------------------------------------------------------

class StopRequest:
    """Ctrl-C (SIGINT) during training: the first one asks the loop to stop after the current step
    (it then writes a checkpoint and exits); a second one interrupts at once. Only in the main thread."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise TrainingInterrupted("stopped at once by a second Ctrl-C, without a checkpoint of this step; run the "
                                      "same command again to resume from the last checkpoint, if any")
        self.requested = True
        tqdm.write("interrupted: stopping after this step to write a checkpoint (Ctrl-C again to stop at once)",
                   file=sys.stderr)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


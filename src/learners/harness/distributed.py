"""Data-parallel runs (torchrun, accelerate launch): which process this is, and the few collectives the
engine needs besides DDP's gradient all-reduce. In a one-process run every helper is a no-op.

Rank 0 is the main process: it alone evaluates, logs, shows progress and writes files. The other
ranks train in step with it; they must take every collective rank 0 takes, or they hang.
"""

import contextlib
import os
import sys

import torch
import torch.distributed as dist
from tqdm.auto import tqdm


def world_size() -> int:
    """The number of processes, from the launcher's environment: known before the process group exists."""
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """Rank 0 (or a one-process run)."""
    return int(os.environ.get("RANK", 0)) == 0


_quiet = [False]


def log(message: str) -> None:
    """A line on stderr, from rank 0 only (and not inside `quiet()`)."""
    if is_main() and not _quiet[0]:
        tqdm.write(message, file=sys.stderr)


@contextlib.contextmanager
def quiet():
    """No `log` lines while inside: work that repeats what a run already said (rebuilding its model to save it)."""
    before, _quiet[0] = _quiet[0], True
    try:
        yield
    finally:
        _quiet[0] = before


def quiet_other_ranks() -> None:
    """On ranks other than 0: no progress bars (datasets' map, transformers' saving) and no library warnings."""
    if is_main():
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def active() -> bool:
    """Whether a process group of more than one process is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast(obj):
    """Rank 0's `obj` (anything picklable; tensors go to the CPU) on every rank."""
    if not active():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, device=_device())
    return box[0]


def all_true(flag: bool) -> bool:
    """Whether `flag` holds on every rank; every rank gets the same answer, so all can act on it together."""
    if not active():
        return flag
    failed = torch.tensor([0 if flag else 1], device=_device())
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    return failed.item() == 0


def mean(values: list[float]) -> list[float]:
    """Each of `values` averaged over the ranks (every rank calls it, with as many values)."""
    if not active() or not values:
        return values
    summed = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(summed)
    return (summed / dist.get_world_size()).tolist()


def barrier() -> None:
    if active():
        dist.barrier()


def check_same(what: str, facts, tensors: dict) -> None:
    """Raise on every rank if `facts` (JSON-like) or `tensors` differ from rank 0's."""
    if not active():
        return
    mine = {k: v.detach().cpu() for k, v in tensors.items()}
    theirs_facts, theirs = broadcast((facts, mine))
    same = theirs_facts == facts and theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in mine)
    if not all_true(same):
        raise RuntimeError(f"data-parallel ranks disagree on {what}; rank {dist.get_rank()} "
                           f"{'agrees' if same else 'differs'} from rank 0")

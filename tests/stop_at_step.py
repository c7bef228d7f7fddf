"""Stopping a training run at a given step, from the test side: the training loop has no hook for tests.

`kill_at(setattr, N)`: the process kills itself with SIGKILL right after step N, its checkpoint (if one is due
there) written, as a crash or `kill -9` would. `interrupt_at(setattr, N)`: it sends itself SIGINT at the end of
step N, as Ctrl-C would: the run writes a checkpoint of step N and exits 130. `each_step(setattr, before, after)`
calls functions of the step around the loop's end of a step. All of them wrap the training loop's
`_Run.checkpoint_or_stop` (the step's checkpoint, if one is due, then a stop if Ctrl-C asked for one).

In a test's process pass `monkeypatch.setattr`, so that the test's end (or monkeypatch.undo()) takes the wrapper
away. In a child process: `[sys.executable, SCRIPT, "kill" | "interrupt", N, *ARGS]` runs `learners ARGS`
(learners.harness.cli.main) stopped at step N; the child needs learners importable (PYTHONPATH).
"""

import os
import signal
import sys
from pathlib import Path
from typing import Callable

SCRIPT = str(Path(__file__).resolve())


def each_step(setattr: Callable, before: Callable[[int], None] | None = None,
              after: Callable[[int], None] | None = None) -> None:
    """Call before(step) as a step ends (before its checkpoint) and after(step) once the step's checkpoint is
    written, if one was due, and the run goes on; `setattr` replaces the method (monkeypatch.setattr or setattr)."""
    from learners.harness import train

    end_of_step = train._Run.checkpoint_or_stop

    def checkpoint_or_stop(run, stop):
        if before:
            before(run.step)
        end_of_step(run, stop)
        if after:
            after(run.step)

    setattr(train._Run, "checkpoint_or_stop", checkpoint_or_stop)


def kill_at(setattr: Callable, step: int) -> None:
    """SIGKILL right after `step` and its checkpoint, if one is due there."""
    each_step(setattr, after=lambda now: now == step and os.kill(os.getpid(), signal.SIGKILL))


def interrupt_at(setattr: Callable, step: int) -> None:
    """SIGINT (Ctrl-C) at the end of `step`: the run stops there with a checkpoint of it."""
    each_step(setattr, before=lambda now: now == step and signal.raise_signal(signal.SIGINT))


if __name__ == "__main__":
    how, at, *args = sys.argv[1:]
    {"kill": kill_at, "interrupt": interrupt_at}[how](setattr, int(at))
    from learners.harness.cli import main
    sys.exit(main(args))

"""Files that several processes share: no reader sees one half-written, no two runs write one output dir, no
command writes over its own input.

Several `learners bench` processes may share one output directory (two queues of runs on one machine): one
rewrites bench.json, bench.csv or a plot while another reads it. Each file is written to a temporary name of
its own (the process id in it) in the same directory and then renamed over the target, which is atomic.
A fine-tuning holds its output directory for as long as it runs (`exclusive_output_dir`)."""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

from ..errors import UsageError

# What `replaced_atomically` leaves when a kill comes before its rename: `.NAME.PID.tmp.SUFFIX`, ours to ignore
ATOMIC_TEMPORARY = re.compile(r"\..+\.\d+\.tmp(\.[^.]+)?")


@contextmanager
def replaced_atomically(path: Path):
    """Yield a temporary path to write; on success rename it over `path` (on failure remove it).

    The temporary name keeps the suffix, so writers that go by it (matplotlib's savefig) still do."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    with replaced_atomically(path) as tmp:
        tmp.write_text(text)


LOCK_NAME = ".learners.lock"


class OutputDirInUse(Exception):
    """Another live process holds the output directory (see `exclusive_output_dir`)."""


@contextmanager
def exclusive_output_dir(out: Path):
    """Hold OUT for this process while it trains and writes there.

    Two fine-tunings writing one output directory (two benches whose grids overlap, a command run twice)
    would resume the same checkpoint and overwrite each other's files. An advisory lock (flock) on
    OUT/.learners.lock is released by the kernel when the process ends however it ends, so a killed run
    never leaves a stale lock. The lock file goes when the run does, and OUT too if the run created it and
    left it empty. Where flock does not exist (Windows) or the filesystem refuses it, runs are not guarded."""
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    handle = None
    try:  # the lock file may fail to be written (a full disk): OUT goes again if this created it
        handle = _lock(path)
        yield
    finally:
        if handle is not None:
            path.unlink(missing_ok=True)
            handle.close()
        if created and not any(out.iterdir()):
            out.rmdir()


def _lock(path: Path):
    """The lock file at `path`, open and flock-ed, this process's id in it; None where locks do not exist.
    Raises OutputDirInUse (with the holder's line) if a live process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise OutputDirInUse(holder) from None
        except OSError:  # a filesystem without locks (some network mounts: ENOLCK)
            handle.close()
            path.unlink(missing_ok=True)
            return None
        try:  # the holder before us may have removed the file between our open and our lock: lock the file now there
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"process {os.getpid()}\n")
                handle.flush()
            except OSError:  # no space for the line (a full disk): no run goes on without it
                try:
                    handle.close()  # (flushes again, and may fail again; the file is closed all the same)
                except OSError:
                    pass
                path.unlink(missing_ok=True)
                raise
            return handle
        handle.close()


def output_dir_in_use(out: Path) -> str | None:
    """Who holds OUT ('process N') if a live process does, else None (a look: takes nothing)."""
    if not (Path(out) / LOCK_NAME).exists():
        return None
    try:
        with exclusive_output_dir(out):
            return None
    except OutputDirInUse as e:
        return str(e) or "another process"


def listing(names: list[str], shown: int = 4) -> str:
    """`a, b/, c, d, ...`: the first few of `names`, for a message."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def entry_names(folder: Path) -> list[str]:
    """The names in `folder`, sorted, a directory's with a slash (`model/`); none if it is not a directory."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())


def check_not_input(out: Path, flag: str, inputs: dict[str, str | None]) -> None:
    """No command writes over its own input: refuse an output path that is one of the command's inputs
    ({flag: path}; paths that do not exist here, hub names, are skipped) or a directory that holds one."""
    target = Path(os.path.realpath(Path(out).expanduser()))
    for input_flag, value in inputs.items():
        if value is None or not Path(value).expanduser().exists():
            continue
        source = Path(os.path.realpath(Path(value).expanduser()))
        same = source == target or (target.exists() and os.path.samefile(source, target))
        if same or target in source.parents:
            raise UsageError(f"{flag} {out} {'is' if same else 'holds'} this command's input {input_flag} {value}: a "
                             f"command never writes over its input; choose another {flag}")

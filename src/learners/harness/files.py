"""Writing a file so that no reader ever sees it half-written.

Several `learners bench` processes may share one output directory (two queues of runs on one machine): one
rewrites bench.json, bench.csv or a plot while another reads it. Each file is written to a temporary name of
its own (the process id in it) in the same directory and then renamed over the target, which is atomic."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


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

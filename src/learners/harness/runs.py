"""A finetune run's output directory OUT: what a run takes for its own, how `--overwrite` replaces a run all at
once, and how a rerun finishes what a kill left half done.

What a run writes into OUT, and nothing else:

    results.json                   the finished run, written last (OUT without it holds no finished run)
    model/, learners/, lora/       the finished run's model and the method's own files
    test_predictions.csv           finetune --test-file: the finished model's predictions of the test data
                                   (.conll or .jsonl for token classification, as the test file)
    checkpoint/ (.tmp, .old)       the training state while the run is unfinished (checkpoint.py)
    .learners.lock                 held while the run runs (files.exclusive_output_dir)
    log.txt                        `learners bench`'s log of the run
    history.jsonl, tensorboard/, wandb/   the training log, written as the run goes (run_log.py)
    curves.png                     the finished run's dev metric and training loss (report.plot_run)
    .final/                        the finished run's files while they are written; moved into OUT once whole
    .replacement/                  with --overwrite over anything OUT holds: the new run, trained and written
                                   here (a run folder of its own) and moved into OUT once finished
    .final.moving/, .replacement.moving/   a move under way (`swap_in`)

OUT is a run's when every name in it is one of these, and model/, learners/ or lora/ come with a learners
results.json or a checkpoint (a run writes them only then). Anything else is someone else's: a run refuses it
unless --overwrite, which builds the run in .replacement and, once it is finished, puts its files in place of
those of the same names, leaving the others alone.

`swap_in` moves a finished run (results.json in its staging folder) into OUT in steps that can each be done
again: remove OUT's results.json (from then on a rerun sees the new run as OUT's), then OUT's other run files
and its checkpoint; rename the staging folder to *.moving; move its files in, results.json last; remove it.
A kill at any moment leaves the old run whole in OUT, or the new one whole in its staging folder, which
`settle` (at the start of every run in OUT) moves in.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import checkpoint
from ..errors import UsageError
from .files import ATOMIC_TEMPORARY, LOCK_NAME, check_not_input, entry_names, listing

RESULTS = "results.json"
OUTPUTS = ("model", "learners", "lora")
TEST_PREDICTIONS = "test_predictions.csv"
TOKEN_TEST_PREDICTIONS = ("test_predictions.conll", "test_predictions.jsonl")  # a token run's, as its test file
CURVES = "curves.png"  # report.plot_run
OUTPUT_FILES = (TEST_PREDICTIONS, *TOKEN_TEST_PREDICTIONS, CURVES)  # written with the finished run, like OUTPUTS
LOGS = ("history.jsonl", "tensorboard", "wandb")  # run_log.py: written in the run folder while it trains
CHECKPOINTS = (checkpoint.DIRECTORY, f"{checkpoint.DIRECTORY}.tmp", f"{checkpoint.DIRECTORY}.old")
FINAL, REPLACEMENT, MOVING = ".final", ".replacement", ".moving"
BESIDE = (LOCK_NAME, "log.txt")  # a run's own files that are not part of the run
RUN_NAMES = {RESULTS, *OUTPUTS, *LOGS, *CHECKPOINTS, *BESIDE, FINAL, REPLACEMENT, FINAL + MOVING,
             REPLACEMENT + MOVING}


def foreign_entries(out: Path) -> list[str]:
    """The entries of OUT that no learners run wrote (see the module's docstring), as files.entry_names shows them."""
    out = Path(out)
    names = entry_names(out)
    bare = {name.rstrip("/") for name in names}
    results = RESULTS in bare and _is_learners_results(out / RESULTS)
    evidence = results or checkpoint.exists(out / checkpoint.DIRECTORY) or bool({FINAL + MOVING, REPLACEMENT + MOVING} & bare)

    def ours(name: str) -> bool:
        name = name.rstrip("/")
        if name == RESULTS:
            return results
        if name in OUTPUTS or name in OUTPUT_FILES:
            return evidence
        if name in CHECKPOINTS:  # a folder of that name holds checkpoint files or nothing
            path = out / name
            return path.is_dir() and {p.name for p in path.iterdir()} <= {checkpoint.TENSORS, checkpoint.FACTS}
        return name in RUN_NAMES or ATOMIC_TEMPORARY.fullmatch(name) is not None

    return [name for name in names if not ours(name)]


def _is_learners_results(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"task", "method", "metric_name", "history"} <= data.keys()


def check_ours(out: Path, overwrite: bool, inputs: dict[str, str | None]) -> None:
    """Refuse an OUT that is or holds one of the run's `inputs` ({flag: path}), or that holds anything no learners run
    wrote unless --overwrite (nothing is written here)."""
    check_not_input(out, "--output-dir", inputs)
    foreign = foreign_entries(out)
    if foreign and not overwrite:
        raise UsageError(f"--output-dir {out} holds {listing(foreign)}, which no learners run wrote (it is not a run's "
                         "output directory); choose a new or empty --output-dir, or pass --overwrite to put the run "
                         f"there (once finished it replaces only what has its names: {RESULTS}, {'/, '.join(OUTPUTS)}/, "
                         f"{checkpoint.DIRECTORY}/, {', '.join(OUTPUT_FILES)}, {LOGS[0]}, {'/, '.join(LOGS[1:])}/)")


def run_folder(out: Path, overwrite: bool) -> Path:
    """Where a run trains and writes: OUT, or with --overwrite over anything OUT holds, OUT/.replacement."""
    if overwrite and any(name.rstrip("/") not in BESIDE for name in entry_names(out)):
        return Path(out) / REPLACEMENT
    return Path(out)


def pending_replacement(out: Path) -> bool:
    """Whether OUT holds an --overwrite run that has not finished (and so has not replaced OUT's run)."""
    return (Path(out) / REPLACEMENT).is_dir()


def final_stage(run_dir: Path) -> Path:
    """A new, empty run_dir/.final for the finished run's files."""
    stage = Path(run_dir) / FINAL
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def relocated(facts: dict, stage: Path) -> dict:
    """`facts` (results.json entries) with paths under a staging folder (run_dir/.final, OUT/.replacement/.final)
    named as they will be once moved into OUT; other facts as they are."""
    home = stage.parent if stage.name == FINAL else stage
    home = home.parent if home.name == REPLACEMENT else home

    def moved(value):
        if isinstance(value, str) and Path(value).is_relative_to(stage):
            return str(Path(home) / Path(value).relative_to(stage))
        return value
    return {key: moved(value) for key, value in facts.items()}


def swap_in(stage: Path, home: Path) -> None:
    """Move the finished run in `stage` into `home`, in place of the run there (see the module's docstring).
    A move a kill left half done is finished by calling this again (as `settle` does)."""
    moving = stage.with_name(stage.name + MOVING)
    if stage.is_dir():
        # results.json first: home then holds no finished run but this; a run's logs are in its run folder (not .final)
        logs = LOGS if stage.name == REPLACEMENT else ()
        for name in (RESULTS, *OUTPUTS, *OUTPUT_FILES, *logs, *CHECKPOINTS):
            _remove(home / name)
        os.replace(stage, moving)
    for name in (*OUTPUTS, *OUTPUT_FILES, *LOGS, RESULTS):
        if (moving / name).exists():
            os.replace(moving / name, home / name)
    shutil.rmtree(moving)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def settle(out: Path) -> bool:
    """Finish what a kill (or a failure) left half done in OUT: a staging folder whose run is finished (its
    results.json written) or being moved is moved in; an unfinished final save is dropped (the checkpoint still
    holds the run), and so is a replacement that has no checkpoint yet. True if a finished run was moved in."""
    out, moved = Path(out), False
    for name in (FINAL, REPLACEMENT):
        stage = out / name
        if (out / (name + MOVING)).is_dir():
            swap_in(stage, out)
            moved = True
        elif stage.is_dir():
            if name == REPLACEMENT:
                settle(stage)
            if (stage / RESULTS).is_file():
                swap_in(stage, out)
                moved = True
            elif name == FINAL or not checkpoint.exists(stage / checkpoint.DIRECTORY):
                shutil.rmtree(stage)
    return moved

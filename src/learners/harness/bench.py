"""`learners bench`: run the grid seed x task x method, each run `learners finetune` in its own process.

A run lives in OUT/runs/{task}/{method}/seed{seed} with its results.json and log.txt (stdout and
stderr). A run whose results.json exists is skipped, so a killed bench picks up where it stopped; a run
dir without one (killed or failed) is run again, from its checkpoint if it has one and the training
options are those the bench was started with (else afresh, --overwrite). A failed run is reported with its log and the bench
goes on; the exit status is 1 if any run failed. The report (report.py) is built from whatever finished.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UsageError, check_output_path
from .arguments import flag_argv, given_training_flags, method_options, priming_flags_given
from .bench_data import USER_TASK, data_flags
from .data_arguments import AFTER_TRAINING_FLAGS
from .files import ATOMIC_TEMPORARY, check_not_input, entry_names, listing, output_dir_in_use, write_text_atomically
from .report import build_report, run_dir

# What a bench writes into its OUT (with report.py's plots, curve_TASK.png): a directory holding anything else is
# someone else's and refused. Logs (*.log) may sit beside (benchmarks/gpu_grid.sh appends its queue's there).
BENCH_FILES = ("bench.json", "bench.csv", "bench.md", "step_time.png", "peak_memory.png")


def _list(text: str | None) -> list[str]:
    """Comma-separated names, each once, in order ("cola,mrpc,cola" plans cola once)."""
    return list(dict.fromkeys(x.strip() for x in (text or "").split(",") if x.strip()))


def parse_seeds(text: str) -> list[int]:
    try:
        return list(dict.fromkeys(int(x) for x in _list(text)))  # "0,00" is seed 0 once
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {text!r}") from None


def parse_target(text: str | None) -> float | dict[str, float] | None:
    """`0.5` (every task) or `cola=0.25,mrpc=0.85` (tasks not named get the default target)."""
    if not text:
        return None
    from .glue import get_task
    try:
        if "=" not in text:
            return float(text)
        return {get_task(k).name: float(v) for k, v in (part.split("=", 1) for part in _list(text))}
    except ValueError as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"--target takes a number (0.5) or task=number pairs (cola=0.25,mrpc=0.85); got {text!r}") from None


def training_flags(args: argparse.Namespace, method: str | None = None) -> list[str]:
    """The finetune flags for every training option (add_training_arguments) set away from its default;
    with `method`, only those that mean something to it (a LoRA run gets no --ratio).

    Generic over the parser, so options added to add_training_arguments later pass through too."""
    flags = []
    for flag, value, action, methods in given_training_flags(args):
        if method is None or methods is None or method in methods:
            flags += flag_argv(flag, value, action)
    return flags


def check_method_options(name: str, args: argparse.Namespace) -> None:
    """Fail before any run if the options do not make a valid `name` run (as `finetune` would, once per run)."""
    from .methods import build_method
    passed = training_flags(args, name)  # a full run gets no priming flag; a learners run does, and must prime
    build_method(name, method_options(args)).check_priming_flags([f for f in priming_flags_given(args) if f in passed])


def launch(command: list[str], log_path: Path) -> int:
    """Run one finetune process, its stdout and stderr to log_path; return its exit status."""
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n\n")
        log.flush()
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def check_bench_dir(out: Path, args: argparse.Namespace) -> None:
    """Refuse an OUT that holds what no bench wrote, or the bench's inputs (nothing is written here)."""
    check_not_input(out, "--output-dir", {"--model": args.model, "--data-dir": args.data_dir})
    foreign = [name for name in entry_names(out) if not _bench_name(name)]
    if foreign:
        raise UsageError(f"--output-dir {out} holds {listing(foreign)}, which learners bench did not write; choose a "
                         "new or empty --output-dir (a bench's holds only bench.json, bench.csv, bench.md, plots, "
                         "runs/ and logs)")


def _bench_name(name: str) -> bool:
    if name.endswith("/"):
        return name == "runs/"
    return (name in BENCH_FILES or name.endswith(".log") or re.fullmatch(r"curve_.+\.png", name) is not None
            or ATOMIC_TEMPORARY.fullmatch(name) is not None)


def run_bench(args: argparse.Namespace) -> int:
    out = check_output_path(args.output_dir, "--output-dir")
    check_bench_dir(out, args)
    seeds = parse_seeds(args.seeds) if args.seeds else None
    target = parse_target(args.target)
    tasks, methods = _list(args.tasks), _list(args.methods)
    if args.report_only:
        return report_only(out, target, tasks, methods, seeds)

    seeds = seeds if seeds is not None else [0, 1, 2]
    methods = methods or ["full", "learners"]
    own_data = data_flags(args)
    if own_data:
        tasks = [USER_TASK]
    if not tasks or not methods or not seeds:
        raise UsageError("learners bench needs --tasks (e.g. cola,mrpc), --methods (e.g. full,learners) and --seeds (e.g. 0,1,2)")
    from .glue import get_task
    from .methods import METHODS
    tasks = tasks if own_data else [get_task(t).name for t in tasks]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(METHODS)}")

    from .finetune import finetune_args
    for method in methods:  # a bad option fails here, not once per run
        one_run = argparse.Namespace(**{**vars(args), "method": method, "seed": seeds[0],
                                        "task": None if own_data else tasks[0]})
        finetune_args(one_run).validate()
        check_method_options(method, one_run)
    flags = training_flags(args)
    before = record_settings(out, tasks, methods, seeds, flags, data_flags(args, AFTER_TRAINING_FLAGS))
    # seed outermost: a bench stopped early still has every task x method at the first seeds
    grid = [(t, m, s) for s in seeds for t in tasks for m in methods]
    failed = []
    for i, (task, method, seed) in enumerate(grid, 1):
        directory = run_dir(out, task, method, seed)
        task_flags = own_data or ["--task", task]
        if not run_one(directory, f"[{i}/{len(grid)}] {task} {method} seed{seed}:", task_flags, method, seed,
                       training_flags(args, method), same_options=before == flags):
            failed.append(directory)

    written = build_report(out, target, tasks, methods, seeds)
    if written:
        print(f"wrote {', '.join(str(p) for p in written)}")
    if failed:
        print(f"{len(failed)} of {len(grid)} runs failed; their logs:\n" + "\n".join(f"  {d / 'log.txt'}" for d in failed),
              file=sys.stderr)
        return 1
    return 0


def report_only(out: Path, target, tasks: list[str], methods: list[str], seeds: list[int] | None) -> int:
    """`--report-only`: rebuild the report from the finished runs under OUT/runs, train nothing."""
    from .glue import get_task
    tasks = [t if t == USER_TASK else get_task(t).name for t in tasks]
    written = build_report(out, target, tasks, methods, seeds)
    if not written:
        raise UsageError(f"no finished runs under {out / 'runs'} to report on; run `learners bench` without --report-only first")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def record_settings(out: Path, tasks: list[str], methods: list[str], seeds: list[int], flags: list[str],
                    data: list[str]) -> list[str] | None:
    """Write OUT/bench.json; return the training flags the bench was first started with (warned about if they differ).

    Runs on other data (`data`: the bench's own-data flags but --test-file) would be reported as the same task:
    refused."""
    out.mkdir(parents=True, exist_ok=True)
    settings = out / "bench.json"
    recorded = json.loads(settings.read_text()) if settings.exists() else {}
    if recorded.get("data_flags", data) != data:
        raise UsageError(f"--output-dir {out} holds runs on other data ({' '.join(recorded['data_flags']) or 'GLUE'}); "
                         "its report would mix them with these: choose a new --output-dir")
    before = recorded.get("training_flags", flags)
    if before != flags:
        print(f"warning: {out} was started with other training options ({' '.join(before or [])}); finished runs keep "
              "their results, new runs use the options given now", file=sys.stderr)
    write_text_atomically(settings, json.dumps({"tasks": tasks, "methods": methods, "seeds": seeds, "training_flags": flags,
                                                "data_flags": data}, indent=2))
    return before


def run_one(directory: Path, prefix: str, task_flags: list[str], method: str, seed: int, flags: list[str],
            same_options: bool) -> bool:
    """One run of the grid: skip it if done, else run (or resume) its finetune (`task_flags`: --task NAME, or the
    bench's data flags, bench_data.py). False: it failed."""
    from . import checkpoint, runs  # torch, only when runs are launched

    if (directory / "results.json").exists():
        print(f"{prefix} skip (done)", flush=True)
        return True
    holder = output_dir_in_use(directory)
    if holder:  # another bench (or finetune) is running it now: its results.json will be there for the report
        print(f"{prefix} skip (running in {holder})", flush=True)
        return True
    redo = directory.exists()
    # A killed run resumes from its checkpoint; under other training options it starts afresh. A killed --overwrite of
    # it (runs.py) goes on with --overwrite: continued under the same options, started afresh under others. A run dir
    # without either is redone with --overwrite too: it is the bench's, whatever a run left there (or a user kept).
    resume = checkpoint.exists(directory / checkpoint.DIRECTORY)
    replacing = runs.pending_replacement(directory)
    directory.mkdir(parents=True, exist_ok=True)
    label = "resume (replacement)" if replacing else \
        ("resume (checkpoint)" if same_options else "redo (other options)") if resume else \
        "redo (no results.json)" if redo else "run"
    print(f"{prefix} {label} ...", flush=True)
    command = [sys.executable, "-m", "learners.cli", "finetune", *task_flags, "--method", method,
               "--seed", str(seed), "--output-dir", str(directory), *flags, "--no-progress"]
    if replacing or (resume and not same_options) or (redo and not resume):
        command.append("--overwrite")
    started = time.perf_counter()
    status = launch(command, directory / "log.txt")
    elapsed = time.perf_counter() - started
    if status == 0 and (directory / "results.json").exists():
        r = json.loads((directory / "results.json").read_text())
        print(f"{prefix} done in {elapsed:.0f}s: best {r['metric_name']} {r['best_metric']:.4f}, "
              f"{r['train_seconds']:.1f}s training, peak {r['peak_memory_mb']:.0f} MB", flush=True)
        return True
    print(f"{prefix} FAILED (exit {status}): {_last_line(directory / 'log.txt')}\n"
          f"    log: {directory / 'log.txt'}", flush=True)
    return False

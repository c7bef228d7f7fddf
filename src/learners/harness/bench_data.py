"""`learners bench` on your own data (--train-file and the flags that say how to read it, e.g. --task-type
token-classification or multi-label) instead of GLUE tasks: every data flag finetune has (data_arguments.py) is the
bench's too and reaches each run unchanged; the one task the bench then runs is named "custom", as finetune names a
user's task."""

import argparse
from pathlib import Path

from ..errors import UsageError
from .arguments import flag_argv, given_flags
from .data_arguments import PATH_FLAGS, add_user_data_arguments

USER_TASK = "custom"


def add_bench_data_arguments(bn: argparse.ArgumentParser) -> None:
    group = bn.add_argument_group("your own data instead of --tasks (as finetune's; each run gets them)")
    add_user_data_arguments(group)


def data_flags(args: argparse.Namespace, leave_out: tuple[str, ...] = ()) -> list[str]:
    """The finetune flags of the bench's own data (none for GLUE tasks), files as absolute paths; without the flags
    in `leave_out` (AFTER_TRAINING_FLAGS: what says which data the runs train and evaluate on)."""
    given = [(flag, value, action) for flag, value, action, _ in given_flags(args, add_user_data_arguments)]
    own_data = [flag for flag, _, _ in given if flag in ("--train-file", "--dataset")]
    if not own_data:
        if given:
            names = [flag for flag, _, _ in given]
            raise UsageError(f"{', '.join(names)} go{'es' if len(names) == 1 else ''} with --train-file (or "
                             "--dataset); add it, or drop them")
        return []
    if args.tasks:
        raise UsageError(f"--tasks names GLUE tasks and {own_data[0]} your own data; pass one of them")
    flags = []
    for flag, value, action in given:
        if flag in PATH_FLAGS and (flag != "--dataset" or Path(value).expanduser().exists()):
            value = Path(value).expanduser().resolve()
        if flag not in leave_out:
            flags += flag_argv(flag, value, action)
    return flags


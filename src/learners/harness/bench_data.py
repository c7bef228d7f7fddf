"""`learners bench` on your own data (--train-file and --validation-file, e.g. a token classification set with
--task-type token-classification) instead of GLUE tasks: the data flags each run's finetune gets, and the one
task the bench then runs, named "custom" as finetune names a user's task."""

import argparse
from pathlib import Path

from ..errors import UsageError

USER_TASK = "custom"


def add_bench_data_arguments(bn: argparse.ArgumentParser) -> None:
    bn.add_argument("--train-file", help="your training data instead of --tasks (every run trains on it, as task custom)")
    bn.add_argument("--validation-file", help="with --train-file: your dev data")
    bn.add_argument("--task-type", choices=["classification", "regression", "token-classification"],
                    help="with --train-file: as finetune's --task-type")
    bn.add_argument("--tag-column", help="with --task-type token-classification: as finetune's")
    bn.add_argument("--label-all-subtokens", action="store_true", help="with --task-type token-classification: as finetune's")


def data_flags(args: argparse.Namespace) -> list[str]:
    """The finetune flags of the bench's own data (none for GLUE tasks), files as absolute paths."""
    if not getattr(args, "train_file", None):
        given = [f for f, v in (("--validation-file", args.validation_file), ("--task-type", args.task_type),
                                ("--tag-column", args.tag_column), ("--label-all-subtokens", args.label_all_subtokens)) if v]
        if given:
            raise UsageError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --train-file; add it, or drop them")
        return []
    if args.tasks:
        raise UsageError("--tasks names GLUE tasks and --train-file your own data; pass one of them")
    flags = ["--train-file", str(Path(args.train_file).expanduser().resolve())]
    if args.validation_file:
        flags += ["--validation-file", str(Path(args.validation_file).expanduser().resolve())]
    for flag, value in (("--task-type", args.task_type), ("--tag-column", args.tag_column)):
        if value:
            flags += [flag, str(value)]
    return flags + (["--label-all-subtokens"] if args.label_all_subtokens else [])

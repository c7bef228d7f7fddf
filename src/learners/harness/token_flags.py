"""The finetune flags of token classification (--task-type token-classification, --tag-column,
--label-all-subtokens), checked against the others before any work: each one means something here."""

from ..errors import UsageError
from .token_data import TASK_TYPE

# Flags of sentence-level data that token classification does not read: (FinetuneArgs field, flag, its default)
SENTENCE_FLAGS = (("dataset", "--dataset", None), ("text_columns", "--text-columns", None),
                  ("label_column", "--label-column", "label"), ("columns", "--columns", None),
                  ("test_split", "--test-split", None))


def check_token_flags(args) -> None:
    """`args` (a FinetuneArgs): token classification reads --train-file and --validation-file of tagged sentences;
    --tag-column and --label-all-subtokens mean something only there."""
    if args.task_type != TASK_TYPE:
        given = [flag for flag, value in (("--tag-column", args.tag_column),
                                          ("--label-all-subtokens", args.label_all_subtokens)) if value]
        if given:
            raise UsageError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for --task-type {TASK_TYPE}; "
                             "add it, or drop them")
        return
    if args.task is not None:
        raise UsageError(f"--task {args.task} is a GLUE sentence task; --task-type {TASK_TYPE} trains on your tagged "
                         "sentences: pass --train-file and --validation-file instead")
    for name, flag, default in SENTENCE_FLAGS:
        if getattr(args, name) != default:
            raise UsageError(f"{flag} is for sentence-level data; --task-type {TASK_TYPE} reads tagged sentences from "
                             "--train-file, --validation-file and --test-file (CoNLL or JSON lines): drop it")
    if args.train_file is None:
        raise UsageError(f"--task-type {TASK_TYPE} needs --train-file and --validation-file (tagged sentences, CoNLL "
                         "or JSON lines)")

"""The flags that name a user's data and how to read it: finetune's, and `learners bench`'s to pass on to each run
(bench_data.py), defined once here so a data flag added to finetune reaches the bench too."""

import argparse

TASK_TYPES = ("classification", "regression", "multi-label", "token-classification")

# The flags whose values are paths: the bench passes them on absolute (so one bench folder names one data set
# wherever it is run from); --dataset too where it names a local path rather than a hub set.
PATH_FLAGS = ("--train-file", "--validation-file", "--test-file", "--dataset")
# The flags that do not change what a run trains and evaluates on (what it predicts afterwards).
AFTER_TRAINING_FLAGS = ("--test-file", "--test-split")


def add_user_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--train-file and everything that says how to read it (columns, task type, labels, tags, splits)."""
    parser.add_argument("--train-file", help="your training data: CSV, TSV, JSONL, JSON, Parquet, CoNLL, or a folder "
                                             "written by datasets' save_to_disk (a DatasetDict folder gives the "
                                             "validation split too)")
    parser.add_argument("--validation-file", help="your dev data, same columns")
    parser.add_argument("--text-columns", help="one text column or a pair, e.g. sentence1,sentence2")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--task-type", choices=TASK_TYPES,
                        help="default: inferred from the labels (JSON lists of labels, or --label-delimiter: "
                             "multi-label); token-classification: tag each word (named-entity recognition) from CoNLL "
                             "or JSON-lines files of tagged sentences (docs/cli.md#token-classification)")
    parser.add_argument("--label-delimiter", help="multi-label data in a CSV/TSV: the character between the labels of "
                                                  "a cell, e.g. '|' for sports|politics (an empty cell: no label)")
    parser.add_argument("--threshold", type=float, help="multi-label: a label is predicted where its sigmoid score "
                                                        "exceeds this (default 0.5); saved with the run for predict")
    parser.add_argument("--tag-column", help="token classification: the tags' column in a CoNLL file, a number from 1 "
                                             "(the token is 1; default: the last), or their key in JSON lines "
                                             "(default tags)")
    parser.add_argument("--label-all-subtokens", action="store_true",
                        help="token classification: train every sub-token of a word on its tag (a B- tag's later "
                             "sub-tokens on the I- tag), not only the first")
    parser.add_argument("--dataset", help="a datasets set by name (the Hugging Face hub) or local path, read with "
                                          "datasets.load_dataset: its train and validation splits, instead of "
                                          "--train-file")
    parser.add_argument("--dataset-config",
                        help="the configuration of --dataset, e.g. --dataset nyu-mll/glue --dataset-config sst2")
    parser.add_argument("--train-split", help="the training split of --dataset or a save_to_disk folder (default train)")
    parser.add_argument("--validation-split",
                        help="its validation split (default: the first of validation, dev, valid, val, test there is)")
    parser.add_argument("--test-file", help="data to predict with the finished model, into OUT/test_predictions.csv "
                                            "(any --train-file format; it needs the text columns; token "
                                            "classification: CoNLL or JSON lines, into test_predictions.conll or "
                                            ".jsonl)")
    parser.add_argument("--test-split", help="the split of a --test-file folder written by save_to_disk (default test)")
    parser.add_argument("--columns", help="the CSV/TSV files have no header row (e.g. SentEval's label<TAB>text): a "
                                          "name for each column, in order, e.g. --columns label,text")
    parser.add_argument("--no-header", action="store_true", help="says the same as --columns, which it needs")

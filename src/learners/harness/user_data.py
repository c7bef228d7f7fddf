"""User data (files of any supported format, a save_to_disk folder, or a dataset by name) -> TaskData.

The data is read as Tables of string cells (tables.py, data_sources.py); here the text and label columns are
picked and checked, and the labels parsed: classification or regression, with errors that name the file, the
row and the value.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import datasets

from ..errors import UsageError
from .data_sources import load_named_dataset, read_table, read_train_and_validation
from .distributed import log
from .multi_label import is_multi_label, multi_label_task
from .task_data import TaskData
from .tables import Table, headerless_columns, listed, loose_name

__all__ = ["Table", "load_user_data", "pick_text_columns", "read_table"]

TASK_TYPES = ("classification", "regression", "multi-label")
MAX_INFERRED_CLASSES = 20  # integer labels with more distinct values than this are taken as regression
MISSING_LABELS = ("", "nan", "null")  # what an exported missing value reads as (JSON NaN/null, pandas NaN)
# A float32 squared error overflows to inf past about 1.8e19: a regression label this large cannot train.
MAX_REGRESSION_LABEL = 1e18


def pick_text_columns(text_columns: str | None, columns: list[str], file: str, hint: str = "") -> tuple[str, ...]:
    """Parse --text-columns ("a" or "a,b"), or pick the default text column(s) among `columns`. `hint`: what to
    suggest instead of --text-columns (Table.headerless_hint)."""
    found = listed(columns)
    if text_columns is None:
        present = {loose_name(c) for c in columns}  # Text or SENTENCE count too (Table.adopt_names renames them)
        if "text" in present:
            return ("text",)
        if "sentence" in present:
            return ("sentence",)
        if "sentence1" in present and "sentence2" in present:
            return ("sentence1", "sentence2")
        raise UsageError(
            f"no text column in {file} (looked for text, sentence, or sentence1+sentence2); columns found: {found}. "
            + (f"{hint}." if hint else "Pass --text-columns with one or two names from that list, e.g. --text-columns question,passage.")
        )
    names = tuple(c.strip() for c in text_columns.split(",") if c.strip())
    if not 1 <= len(names) <= 2:
        raise UsageError(
            f"--text-columns {text_columns!r} names {len(names)} columns; give one or two comma-separated names "
            "(a single text, or a pair such as sentence1,sentence2)."
        )
    return names


def _check_columns(table: Table, text_columns: tuple[str, ...], label_column: str, plain_label: bool = True) -> None:
    found, hint = table.found(), table.headerless_hint()
    if label_column in text_columns:
        raise UsageError(
            f"column {label_column!r} is both a text column and the label column; the model would read the answer. "
            "Pass --text-columns and --label-column with different names."
        )
    if len(set(text_columns)) != len(text_columns):
        raise UsageError(f"--text-columns names {text_columns[0]!r} twice; give one column, or two different ones.")
    for name in text_columns:
        if name not in table.columns:
            raise UsageError(
                f"text column {name!r} not found in {table.name}; columns found: {found}. "
                + (f"{hint}." if hint else "Pass --text-columns with names from that list.")
            )
    if label_column not in table.columns:
        raise UsageError(
            f"label column {label_column!r} not found in {table.name}; columns found: {found}. "
            + (f"{hint}." if hint else "Pass --label-column with a name from that list.")
        )
    for name in text_columns:
        table.check_plain(name, "text")
    if plain_label or table.nested.get(label_column, (0, ""))[1] == "object":  # (JSON lists: multi_label.py reads them)
        table.check_plain(label_column, "label")


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _class_name(value: str) -> str:
    """"1", "1.0" and " 1" are the same class "1"."""
    x = _number(value)
    return str(int(x)) if x is not None and x.is_integer() else value


def _infer_task_type(labels: list[str], table: Table) -> str:
    numbers = [_number(v) for v in labels]
    if all(x is not None for x in numbers):
        few = len(set(numbers)) <= MAX_INFERRED_CLASSES
        return "classification" if few and all(x.is_integer() for x in numbers) else "regression"
    fractional = next((v for v, x in zip(labels, numbers) if x is not None and not x.is_integer()), None)
    if fractional is not None:  # scores like 3.8 next to a word: almost surely a broken regression file
        bad = next(i for i, x in enumerate(numbers) if x is None)
        raise UsageError(
            f"labels mix numbers (e.g. {fractional}) and text (e.g. {labels[bad]!r} at {table.where(bad)}); "
            "fix the non-numeric labels, or pass --task-type classification or --task-type regression."
        )
    return "classification"


def _labels(table: Table, label_column: str) -> list[str]:
    labels = []
    for i, row in enumerate(table.rows):
        value = row.get(label_column, "").strip()
        if value.lower() in MISSING_LABELS:
            raise UsageError(
                f"{'missing label ' + repr(value) if value else 'empty label'} at {table.where(i)} (column {label_column!r}); "
                "fill it in or delete that row."
            )
        labels.append(value)
    return labels


def _check_one_kind(classes: list[str], table: Table) -> None:
    """Class labels are all numbers or all text: 0/1 next to neg/pos would make four classes of two."""
    numeric = [_number(c) is not None for c in classes]
    if any(numeric) and not all(numeric):
        i, j = numeric.index(True), numeric.index(False)
        raise UsageError(
            f"labels in {table.name} mix numbers and text: {classes[i]!r} at {table.where(i)} and "
            f"{classes[j]!r} at {table.where(j)}; use one kind of label for every row (e.g. all 0/1 or all neg/pos)."
        )


def _regression_labels(labels: list[str], table: Table) -> list[float]:
    values = []
    for i, value in enumerate(labels):
        x = _number(value)
        if x is None:
            raise UsageError(
                f"regression label {value!r} at {table.where(i)} is not a number; fix that row, "
                "or pass --task-type classification if the labels are classes."
            )
        if abs(x) >= MAX_REGRESSION_LABEL:
            raise UsageError(
                f"regression label {value} at {table.where(i)} is too large to train on: the squared error of a float32 "
                f"model overflows past about 1e19; rescale the labels (e.g. standardize them, or divide by a constant)."
            )
        values.append(x)
    return values


def _dataset(table: Table, text_columns: tuple[str, ...], labels: list, label_type: str) -> datasets.Dataset:
    data = {c: [row.get(c, "") for row in table.rows] for c in text_columns}
    data["label"] = labels
    features = datasets.Features({**{c: datasets.Value("string") for c in text_columns}, "label": datasets.Value(label_type)})
    return datasets.Dataset.from_dict(data, features=features)


def load_user_data(
    train_file: str | os.PathLike | None,
    validation_file: str | os.PathLike | None,
    text_columns: str | None = None,
    label_column: str = "label",
    task_type: str | None = None,
    *,
    no_header: bool = False,
    columns: str | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    train_split: str | None = None,
    validation_split: str | None = None,
    label_delimiter: str | None = None,
) -> TaskData:
    """Load train and validation data as a classification or regression task: files (.csv, .tsv, .jsonl, .json,
    .parquet, or a save_to_disk folder, whose DatasetDict gives both splits), or `dataset`, a name or local path
    for datasets.load_dataset (`dataset_config`: its configuration). `train_split` and `validation_split` pick
    splits by name where the data has several.

    `text_columns` is "col" or "col1,col2"; None picks text, sentence, or sentence1+sentence2. `columns`
    ("label,text"): CSV and TSV files without a header row, and the names of their columns in order (`no_header`
    says the same, and needs `columns`).
    `task_type` None infers it: labels that are JSON lists (or a `label_delimiter`, which splits each label cell)
    mean multi-label; integer labels with at most 20 distinct values, or any non-numeric label, classification;
    otherwise regression.
    """
    if task_type is not None and task_type not in TASK_TYPES:
        raise UsageError(f"--task-type {task_type!r} is not supported; use classification, regression or multi-label, or leave it out to infer it.")
    names = headerless_columns(no_header, columns)
    if dataset is not None:
        if train_file is not None or validation_file is not None or names is not None:
            raise UsageError("--dataset gives the train and validation data; drop --train-file, --validation-file and "
                             "--columns, or drop --dataset")
        train, validation = load_named_dataset(dataset, dataset_config, train_split, validation_split)
    elif train_file is None:
        raise UsageError("no training data given; pass --train-file (with --validation-file) or --dataset NAME")
    else:
        train, validation = read_train_and_validation(train_file, validation_file, names, train_split, validation_split)
    return task_from_tables(train, validation, text_columns, label_column, task_type, label_delimiter)


def check_data_flags(args) -> None:
    """The data flags of a finetune (FinetuneArgs), checked before any work: each one means something here."""
    if args.task is not None and (args.train_file is not None or args.dataset is not None):
        raise UsageError(f"--task {args.task} names a GLUE task, and --{'dataset' if args.dataset else 'train-file'} "
                         "gives other data to train on; pass one of them (your own data trains as task 'custom')")
    headerless_columns(args.no_header, args.columns)
    if args.dataset_config is not None and args.dataset is None:
        raise UsageError("--dataset-config names a configuration of a --dataset; add --dataset NAME, or drop it")
    folders = args.dataset is not None or any(
        f is not None and Path(f).expanduser().is_dir() for f in (args.train_file, args.validation_file))
    if (args.train_split or args.validation_split) and not folders:
        raise UsageError("--train-split and --validation-split pick the splits of a --dataset or of a folder written by "
                         "save_to_disk; your --train-file and --validation-file are files: drop them")
    if args.test_split and not (args.test_file and Path(args.test_file).expanduser().is_dir()):
        raise UsageError("--test-split picks a split of a --test-file folder written by save_to_disk; drop it")


def task_from_tables(train: Table, validation: Table, text_columns: str | None, label_column: str,
                     task_type: str | None, label_delimiter: str | None = None) -> TaskData:
    """The task of a train and a validation Table (see load_user_data)."""
    columns = pick_text_columns(text_columns, train.columns, train.name, train.headerless_hint())
    label_column = label_column.strip()
    for table in (train, validation):
        table.adopt_names((*columns, label_column))
    multi = is_multi_label(train, validation, label_column, task_type, label_delimiter)
    _check_columns(train, columns, label_column, not multi)
    _check_columns(validation, columns, label_column, not multi)
    if multi:
        return multi_label_task(train, validation, columns, label_column, label_delimiter)

    train_labels = _labels(train, label_column)
    validation_labels = _labels(validation, label_column)
    task_type = task_type or _infer_task_type(train_labels, train)
    if task_type == "regression":
        return _regression_task(train, validation, columns, train_labels, validation_labels)
    return _classification_task(train, validation, columns, train_labels, validation_labels)


def check_test_file(test_file, task: TaskData, text_columns: str | None, no_header: bool = False,
                    columns: str | None = None, split: str | None = None) -> Table:
    """--test-file, read before training so that a bad one stops the run before it starts: it must hold the
    task's text columns (any label column in it is kept in the predictions, not used)."""
    table = read_table(test_file, "--test-file", headerless_columns(no_header, columns), "test", split, "--test-split")
    wanted = tuple(c.strip() for c in text_columns.split(",")) if text_columns else task.text_columns
    missing = [c for c in wanted if table.header_for(c) not in table.columns]
    if missing:
        hint = table.headerless_hint()
        raise UsageError(f"--test-file {table.name} lacks the text column(s) {', '.join(missing)}; columns found: "
                         f"{table.found()}. " + (f"{hint}." if hint else "Give it the training data's text columns."))
    return table


def _regression_task(train: Table, validation: Table, columns: tuple[str, ...], train_labels: list[str],
                     validation_labels: list[str]) -> TaskData:
    train_targets = _regression_labels(train_labels, train)
    targets = _regression_labels(validation_labels, validation)
    if len(set(targets)) < 2:
        # Pearson and Spearman correlations with a constant are undefined: every evaluation would read 0, and
        # the "best" model kept would be the first evaluated one.
        raise UsageError(f"every validation target in {validation.name} is {targets[0]:g}; the regression metric "
                         "(Pearson correlation) needs varied targets to score or pick a model. Use validation "
                         "examples with different targets.")
    return TaskData(
        name="custom",
        text_columns=columns,
        label_names=None,
        metric_kind="pearson_spearman",
        train=_dataset(train, columns, train_targets, "float32"),
        validation=_dataset(validation, columns, targets, "float32"),
        extra_validation={},
    )


def _note_case_twins(label_names: list[str], table: Table) -> None:
    """Say so when classes differ only in case ('Pos' and 'pos'): most often one class written two ways. They stay
    two classes (labels are the user's), but the run says it before it trains."""
    by_folded: dict[str, list[str]] = {}
    for name in label_names:
        by_folded.setdefault(name.casefold(), []).append(name)
    twins = [names for names in by_folded.values() if len(names) > 1]
    if twins:
        listed = "; ".join(" and ".join(repr(n) for n in names) for names in twins)
        log(f"note: the training labels of {table.name} include classes that differ only in case ({listed}); "
            "they train as different classes. If each is one class, write it one way in the file.")


def _classification_task(train: Table, validation: Table, columns: tuple[str, ...], train_labels: list[str],
                         validation_labels: list[str]) -> TaskData:
    """Classes are the distinct training labels (numbers in numeric order, else sorted); every validation label
    must be one of them."""
    train_classes = [_class_name(v) for v in train_labels]
    _check_one_kind(train_classes, train)
    distinct = set(train_classes)
    numeric = all(_number(c) is not None for c in distinct)
    label_names = sorted(distinct, key=float) if numeric else sorted(distinct)
    if len(label_names) < 2:
        raise UsageError(
            f"every training label in {train.name} is {label_names[0]!r}; a classifier needs at least two classes. "
            "Check --label-column, or pass --task-type regression for numeric targets."
        )
    _note_case_twins(label_names, train)
    ids = {name: i for i, name in enumerate(label_names)}
    validation_ids = []
    for i, value in enumerate(validation_labels):
        name = _class_name(value)
        if name not in ids:
            raise UsageError(
                f"validation label {value!r} at {validation.where(i)} never occurs in the training labels "
                f"({', '.join(label_names)}); fix or drop those validation rows, or add training examples of that class."
            )
        validation_ids.append(ids[name])
    return TaskData(
        name="custom",
        text_columns=columns,
        label_names=label_names,
        metric_kind="accuracy_macro_f1",
        train=_dataset(train, columns, [ids[c] for c in train_classes], "int64"),
        validation=_dataset(validation, columns, validation_ids, "int64"),
        extra_validation={},
    )

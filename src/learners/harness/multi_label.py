"""Multi-label data: each example has a set of labels (none, one or several), read from a label column that holds
JSON lists (`{"text": "...", "label": ["sports", "politics"]}`) or, with --label-delimiter, delimiter-separated
cells (`sports|politics` in a CSV/TSV). The task's labels become float multi-hot vectors, one slot per class, for
a sigmoid head with binary cross-entropy (transformers' problem_type "multi_label_classification").

The threshold on the sigmoid, the metrics and the predicted label sets: multi_label_outputs.py.
"""

from __future__ import annotations

import json

import datasets

from ..errors import UsageError
from .tables import Table
from .task_data import TaskData

TASK_TYPE = "multi-label"  # --task-type
METRIC_KIND = "multi_label"  # metrics.METRICS
PROBLEM_TYPE = "multi_label_classification"  # transformers' config.problem_type: BCEWithLogitsLoss


def _json_lists(table: Table, column: str) -> bool:
    return table.nested.get(column, (0, ""))[1] == "list"


def is_multi_label(train: Table, validation: Table, label_column: str, task_type: str | None,
                   delimiter: str | None) -> bool:
    """Whether the data trains as multi-label: --task-type multi-label, --label-delimiter, or (not told) labels that
    are JSON lists. Refuses the flags that contradict each other or the data."""
    lists = next((t for t in (train, validation) if _json_lists(t, label_column)), None)
    if delimiter is not None:
        if not delimiter:
            raise UsageError("--label-delimiter is empty; give the character that separates the labels in a cell, "
                             "e.g. --label-delimiter '|'")
        if task_type not in (None, TASK_TYPE):
            raise UsageError(f"--label-delimiter splits each label cell into several labels (multi-label), but "
                             f"--task-type is {task_type}; drop one of them")
        if lists is not None:
            i = lists.nested[label_column][0]
            raise UsageError(f"--label-delimiter {delimiter!r} splits text cells, but the labels in {lists.name} are JSON "
                             f"lists already (e.g. at {lists.where(i)}); drop --label-delimiter")
    if lists is not None and task_type not in (None, TASK_TYPE):
        i = lists.nested[label_column][0]
        raise UsageError(f"the label at {lists.where(i)} is a JSON list (multi-label data), but --task-type is "
                         f"{task_type}, one label per example; pass --task-type {TASK_TYPE}, or drop --task-type")
    return task_type == TASK_TYPE or delimiter is not None or lists is not None


def _parsed_list(text: str, table: Table, i: int, label_column: str, lists_in: Table) -> list:
    """A JSON-list cell's labels: strings, each once, in order."""
    if not text.strip():
        raise UsageError(f"missing label at {table.where(i)} (column {label_column!r}); write [] for an example "
                         "with no labels, or delete that row")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list):
        j = lists_in.nested[label_column][0]
        kind = "a JSON object" if isinstance(value, dict) else "a plain label"
        raise UsageError(f"the label at {table.where(i)} is {kind}, {text[:40]!r}, but the one at {lists_in.where(j)} "
                         f"is a JSON list; write every label as a list (e.g. [{json.dumps(text[:20])}]), or none")
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise UsageError(f"the label list at {table.where(i)} holds {json.dumps(item)}, "
                             f"{'an empty string' if isinstance(item, str) else 'not a string'}; write each label as "
                             f"a non-empty string, e.g. [\"sports\"]")
    return list(dict.fromkeys(item.strip() for item in value))


def label_sets(table: Table, label_column: str, delimiter: str | None, lists_in: Table | None) -> list[list[str]]:
    """Each row's labels. `lists_in`: the table whose labels are JSON lists (then every cell must be one), or None
    (cells are split at `delimiter`; without one a cell is one label; an empty cell is no label)."""
    sets = []
    for i, row in enumerate(table.rows):
        text = row.get(label_column, "")
        if lists_in is not None:
            sets.append(_parsed_list(text, table, i, label_column, lists_in))
        else:
            parts = text.split(delimiter) if delimiter else [text]
            sets.append(list(dict.fromkeys(p.strip() for p in parts if p.strip())))
    return sets


def _multi_hot(sets: list[list[str]], ids: dict[str, int]) -> list[list[float]]:
    rows = []
    for labels in sets:
        row = [0.0] * len(ids)
        for name in labels:
            row[ids[name]] = 1.0
        rows.append(row)
    return rows


def _dataset(table: Table, columns: tuple[str, ...], vectors: list[list[float]]) -> datasets.Dataset:
    data = {c: [row.get(c, "") for row in table.rows] for c in columns}
    data["label"] = vectors
    features = datasets.Features({**{c: datasets.Value("string") for c in columns},
                                  "label": datasets.Sequence(datasets.Value("float32"))})
    return datasets.Dataset.from_dict(data, features=features)


def multi_label_task(train: Table, validation: Table, columns: tuple[str, ...], label_column: str,
                     delimiter: str | None) -> TaskData:
    """The multi-label task: the classes are the distinct training labels, sorted; every validation label must be
    one of them."""
    lists_in = next((t for t in (train, validation) if _json_lists(t, label_column)), None)
    train_sets = label_sets(train, label_column, delimiter, lists_in)
    validation_sets = label_sets(validation, label_column, delimiter, lists_in)
    label_names = sorted({name for labels in train_sets for name in labels})
    if len(label_names) < 2:
        found = f"only the label {label_names[0]!r}" if label_names else "no labels at all"
        raise UsageError(f"the training labels in {train.name} (column {label_column!r}) hold {found}; multi-label "
                         "classification needs two or more labels. Check --label-column and --label-delimiter.")
    ids = {name: i for i, name in enumerate(label_names)}
    for i, labels in enumerate(validation_sets):
        unseen = next((name for name in labels if name not in ids), None)
        if unseen is not None:
            shown = ", ".join(label_names[:10]) + (", ..." if len(label_names) > 10 else "")
            raise UsageError(f"validation label {unseen!r} at {validation.where(i)} never occurs in the training labels "
                             f"({shown}); fix or drop it, or add training examples with that label.")
    return TaskData(name="custom", text_columns=columns, label_names=label_names, metric_kind=METRIC_KIND,
                    train=_dataset(train, columns, _multi_hot(train_sets, ids)),
                    validation=_dataset(validation, columns, _multi_hot(validation_sets, ids)))

"""User data files (CSV, TSV, JSON lines) -> TaskData.

Every cell is read as a string (numbers are parsed here, so errors can name the
file, line and value). Each row's position is kept as the file's line number,
which is what an editor shows the user.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import datasets

from ..errors import UsageError
from .distributed import log
from .task_data import TaskData

TASK_TYPES = ("classification", "regression")
MAX_INFERRED_CLASSES = 20  # integer labels with more distinct values than this are taken as regression
SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
MISSING_LABELS = ("", "nan", "null")  # what an exported missing value reads as (JSON NaN/null, pandas NaN)
# A float32 squared error overflows to inf past about 1.8e19: a regression label this large cannot train.
MAX_REGRESSION_LABEL = 1e18


class Table:
    """Columns of string cells from one file, with the file line number of each row."""

    def __init__(self, path: Path, columns: list[str], rows: list[dict[str, str]], lines: list[int],
                 nested: dict[str, tuple[int, str]] | None = None):
        self.path, self.columns, self.rows, self.lines = path, columns, rows, lines
        # JSON lines: per column, the first row whose value is a list or an object, and which ("list", "object")
        self.nested = nested or {}

    def check_plain(self, column: str, what: str) -> None:
        """Refuse a column whose cells are JSON lists or objects: read as text they would train silently wrong."""
        if column not in self.nested:
            return
        i, kind = self.nested[column]
        if what == "label":
            raise UsageError(f"the label at {self.where(i)} is a JSON {kind}, {self.rows[i][column][:60]}; learners trains "
                             "one label per example (classification or regression), so multi-label data is not supported. "
                             "Give each row a single label.")
        raise UsageError(f"text column {column!r} at {self.where(i)} is a JSON {kind}, not a string; write the text as one string.")

    def where(self, i: int) -> str:
        return f"{self.path.name} line {self.lines[i]}"

    def header_for(self, name: str) -> str:
        """The column header that `name` means: itself if present, else the one header that differs from it only
        in case or surrounding spaces ('Text', ' label ', as spreadsheets and Kaggle files write them); a name that
        no header or two headers match loosely is returned as is, for the column check to report."""
        if name in self.columns:
            return name
        twins = [c for c in self.columns if loose_name(c) == loose_name(name)]
        return twins[0] if len(twins) == 1 else name

    def adopt_names(self, names: tuple[str, ...]) -> None:
        """Rename the headers that mean `names` (see header_for) to them, so that train and dev files agree."""
        for name in names:
            old = self.header_for(name)
            if old == name:
                continue
            self.columns = [name if c == old else c for c in self.columns]
            for row in self.rows:
                if old in row:
                    row[name] = row.pop(old)
            if old in self.nested:
                self.nested[name] = self.nested.pop(old)
            log(f"note: {self.path.name}'s column {old!r} is read as {name!r}")


def loose_name(column: str) -> str:
    """A column name compared without case or surrounding spaces."""
    return column.strip().casefold()


SEPARATOR_NAMES = {",": "commas", "\t": "tabs", ";": "semicolons", "|": "pipes"}


def _check_separator(path: Path, columns: list[str], delimiter: str) -> None:
    """A data file needs a text and a label column, so a one-column header that holds another separator
    (a semicolon CSV from a spreadsheet, a TSV named .csv) means the file is split with the wrong character."""
    if len(columns) != 1:
        return
    other = next((sep for sep in SEPARATOR_NAMES if sep != delimiter and sep in columns[0]), None)
    if other is not None:
        expected = "a .tsv file is read as tab-separated" if delimiter == "\t" else "a .csv file is read as comma-separated"
        raise UsageError(
            f"{path.name}'s header {columns[0]!r} is one column split by {SEPARATOR_NAMES[other]}, but {expected}; "
            "save it with commas as .csv, or with tabs as .tsv."
        )


def _read_delimited(path: Path, delimiter: str) -> Table:
    """A CSV is read with CSV quoting. A TSV comes in two kinds: written by pandas, Excel or the csv module,
    a cell that holds a quote, tab or line break is quoted ("..." with "" inside), as in a CSV; written by
    joining cells with tabs (as GLUE's files are), quotes are plain text. Read the first way, a plain-text
    quote at the start of a cell (`"Hi," she said.`) would drop its quotes or swallow the rows up to the next
    quote into one cell. So a TSV that quoting cannot read, or whose quoted cells then hold a tab, is read
    with quotes as text when every row then has the header's fields."""
    if delimiter != "\t":
        return _parse_delimited(path, delimiter, quotes_are_text=False)
    quoted, quoted_error, tab_row = None, None, None
    try:
        quoted = _parse_delimited(path, delimiter, quotes_are_text=False)
    except UsageError as e:
        quoted_error = e
    if quoted is not None:
        tab_row = next((i for i, row in enumerate(quoted.rows) if any("\t" in cell for cell in row.values())), None)
        if tab_row is None:
            return quoted
    try:
        plain = _parse_delimited(path, delimiter, quotes_are_text=True)
    except UsageError:
        if quoted is not None:  # quoted cells that hold tabs, and the file is quoted throughout: keep them
            return quoted
        raise quoted_error from None
    if quoted is None:
        reason = "it does not parse as quoted cells"
    else:
        reason = f"read as quoted cells, a cell ending on line {quoted.lines[tab_row]} would hold a tab"
    log(f"{path.name}: double quotes read as part of the text (cells joined by tabs, as in GLUE's files): {reason}")
    return plain


def _parse_delimited(path: Path, delimiter: str, quotes_are_text: bool) -> Table:
    with open(path, encoding="utf-8-sig", newline="") as f:
        quoting = {"quoting": csv.QUOTE_NONE} if quotes_are_text else {"strict": True}
        reader = csv.reader(f, delimiter=delimiter, **quoting)
        sep = "tab" if delimiter == "\t" else "comma"
        try:
            columns = [c.strip() for c in next(reader, [])]
            _check_separator(path, columns, delimiter)
            rows, lines = [], []
            for row in reader:
                if not any(cell.strip() for cell in row):  # blank line
                    continue
                if len(row) != len(columns):
                    raise UsageError(
                        f"{path.name} line {reader.line_num} has {len(row)} fields but the header has {len(columns)}; "
                        f"put double quotes around text that contains a {sep} or a line break."
                    )
                rows.append(dict(zip(columns, row)))
                lines.append(reader.line_num)
        except csv.Error as e:
            raise UsageError(
                f"{path.name} line {reader.line_num} cannot be parsed ({e}): a double quote at the start of a cell "
                f"opens a quoted cell, which must close with a double quote right before the {sep} or the line's "
                'end; inside a quoted cell write a double quote as two ("").'
            ) from e
    return Table(path, columns, rows, lines)


def _cell(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _read_json_lines(path: Path) -> Table:
    """One JSON object per line; a .json file holding one array of objects works too."""
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            items = [(i + 1, obj) for i, obj in enumerate(json.loads(text))]
        except json.JSONDecodeError as e:
            raise UsageError(f"{path.name} is not valid JSON ({e}); write one JSON object per line.") from e
    else:
        items = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise UsageError(f"{path.name} line {n} is not valid JSON ({e.msg}); write one JSON object per line.") from e
    columns: list[str] = []
    rows, lines, nested = [], [], {}
    for n, obj in items:
        if not isinstance(obj, dict):
            raise UsageError(
                f"{path.name} line {n} is not a JSON object; "
                'write one object per line, like {"text": "...", "label": "..."}.'
            )
        columns += [k for k in obj if k not in columns]
        for k, v in obj.items():
            if isinstance(v, (list, dict)) and k not in nested:
                nested[k] = (len(rows), "list" if isinstance(v, list) else "object")
        rows.append({k: _cell(v) for k, v in obj.items()})
        lines.append(n)
    rows = [{c: row.get(c, "") for c in columns} for row in rows]  # a key missing from a line reads as ""
    return Table(path, columns, rows, lines, nested)


def read_table(file, flag: str) -> Table:
    """Read a .csv/.tsv/.jsonl/.json file as string cells; `flag` (e.g. "--train-file") names it in errors."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise UsageError(f"{flag} {path} does not exist; check the path.")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageError(f"{flag} {path.name}: unsupported file type {suffix or '(none)'!r}; use a .csv, .tsv or .jsonl file.")
    try:
        if suffix in (".jsonl", ".json"):
            table = _read_json_lines(path)
        else:
            table = _read_delimited(path, "\t" if suffix == ".tsv" else ",")
    except UnicodeDecodeError as e:
        raise UsageError(f"{flag} {path.name} is not UTF-8 text ({e.reason}); save it with UTF-8 encoding.") from e
    if not table.rows:
        raise UsageError(f"{flag} {path.name} has no examples (empty file or header only); add at least one row.")
    return table


def pick_text_columns(text_columns: str | None, columns: list[str], file: str) -> tuple[str, ...]:
    """Parse --text-columns ("a" or "a,b"), or pick the default text column(s) among `columns`."""
    found = ", ".join(columns)
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
            "Pass --text-columns with one or two names from that list, e.g. --text-columns question,passage."
        )
    names = tuple(c.strip() for c in text_columns.split(",") if c.strip())
    if not 1 <= len(names) <= 2:
        raise UsageError(
            f"--text-columns {text_columns!r} names {len(names)} columns; give one or two comma-separated names "
            "(a single text, or a pair such as sentence1,sentence2)."
        )
    return names


def _check_columns(table: Table, text_columns: tuple[str, ...], label_column: str) -> None:
    found = ", ".join(table.columns)
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
                f"text column {name!r} not found in {table.path.name}; columns found: {found}. "
                "Pass --text-columns with names from that list."
            )
    if label_column not in table.columns:
        raise UsageError(
            f"label column {label_column!r} not found in {table.path.name}; columns found: {found}. "
            "Pass --label-column with a name from that list."
        )
    for name in text_columns:
        table.check_plain(name, "text")
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
            f"labels in {table.path.name} mix numbers and text: {classes[i]!r} at {table.where(i)} and "
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
    train_file: str | os.PathLike,
    validation_file: str | os.PathLike,
    text_columns: str | None = None,
    label_column: str = "label",
    task_type: str | None = None,
) -> TaskData:
    """Load a train and a validation file (.csv, .tsv, .jsonl/.json) as a classification or regression task.

    `text_columns` is "col" or "col1,col2"; None picks text, sentence, or sentence1+sentence2.
    `task_type` None infers it: integer labels with at most 20 distinct values, or any
    non-numeric label, mean classification; otherwise regression.
    """
    if task_type is not None and task_type not in TASK_TYPES:
        raise UsageError(f"--task-type {task_type!r} is not supported; use classification or regression, or leave it out to infer it.")
    if validation_file is None:
        raise UsageError("no validation file given; pass --validation-file with held-out examples in the same format as --train-file.")
    train = read_table(train_file, "--train-file")
    validation = read_table(validation_file, "--validation-file")
    columns = pick_text_columns(text_columns, train.columns, train.path.name)
    label_column = label_column.strip()
    for table in (train, validation):
        table.adopt_names((*columns, label_column))
    _check_columns(train, columns, label_column)
    _check_columns(validation, columns, label_column)

    train_labels = _labels(train, label_column)
    validation_labels = _labels(validation, label_column)
    task_type = task_type or _infer_task_type(train_labels, train)
    if task_type == "regression":
        return _regression_task(train, validation, columns, train_labels, validation_labels)
    return _classification_task(train, validation, columns, train_labels, validation_labels)


def _regression_task(train: Table, validation: Table, columns: tuple[str, ...], train_labels: list[str],
                     validation_labels: list[str]) -> TaskData:
    train_targets = _regression_labels(train_labels, train)
    targets = _regression_labels(validation_labels, validation)
    if len(set(targets)) < 2:
        # Pearson and Spearman correlations with a constant are undefined: every evaluation would read 0, and
        # the "best" model kept would be the first evaluated one.
        raise UsageError(f"every validation target in {validation.path.name} is {targets[0]:g}; the regression metric "
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
        log(f"note: the training labels of {table.path.name} include classes that differ only in case ({listed}); "
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
            f"every training label in {train.path.name} is {label_names[0]!r}; a classifier needs at least two classes. "
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

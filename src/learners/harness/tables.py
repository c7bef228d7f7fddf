"""A user's data file -> a Table of string cells.

CSV, TSV (with a header row, or without one: `--columns label,text`), JSON lines and JSON are read
here; Parquet files and `datasets` folders (save_to_disk) in dataset_tables.py. Every cell is a string (numbers
are parsed later, so errors can name the file, the row and the value). A text file's rows keep their line
numbers, which is what an editor shows the user; other formats number their rows from 1.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ..errors import UsageError
from .distributed import log

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
# csv's default field limit (128 KB) refuses a long document with a misleading "field larger than field limit";
# 2**31 - 1 is the largest limit every platform's C long takes.
csv.field_size_limit(2**31 - 1)


class Table:
    """Columns of string cells from one file (or one split of a dataset), with each row's position: its line in
    a text file (`unit` "line"), else its number from 1 (`unit` "row")."""

    def __init__(self, path: Path, columns: list[str], rows: list[dict[str, str]], lines: list[int],
                 nested: dict[str, tuple[int, str]] | None = None, name: str | None = None, unit: str = "line",
                 header_row: bool = False):
        self.path, self.columns, self.rows, self.lines = path, columns, rows, lines
        self.name = name or path.name  # how messages name it: the file's name, or e.g. "data[train]" for a split
        self.unit = unit
        self.header_row = header_row  # the column names were the file's first row (CSV, TSV)
        # JSON lines: per column, the first row whose value is a list or an object, and which ("list", "object")
        self.nested = nested or {}

    def check_plain(self, column: str, what: str) -> None:
        """Refuse a column whose cells are JSON lists or objects: read as text they would train silently wrong."""
        if column not in self.nested:
            return
        i, kind = self.nested[column]
        if what == "label":
            raise UsageError(f"the label at {self.where(i)} is a JSON {kind}, {self.rows[i][column][:60]}; give each row "
                             "one label (a string or a number), or a list of strings for multi-label data.")
        raise UsageError(f"text column {column!r} at {self.where(i)} is a JSON {kind}, not a string; write the text as one string.")

    def where(self, i: int) -> str:
        return f"{self.name} {self.unit} {self.lines[i]}"

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
            log(f"note: {self.name}'s column {old!r} is read as {name!r}")

    def found(self) -> str:
        return listed(self.columns)

    def headerless_hint(self) -> str:
        """Where the header row looks like data (a number, or a sentence), the way to read the file without one."""
        if not self.header_row or not any(_looks_like_data(c) for c in self.columns):
            return ""
        return (f"{self.name}'s first row looks like data, not column names: if the file has no header row, pass "
                f"--columns {','.join(suggested_columns(self.columns))} (a name for each column, in order)")


def listed(columns: list[str]) -> str:
    """Column names listed for a message (a long one, a sentence read as a header, cut short)."""
    return ", ".join(c if len(c) <= 40 else c[:37] + "..." for c in columns)


def loose_name(column: str) -> str:
    """A column name compared without case or surrounding spaces."""
    return column.strip().casefold()


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _looks_like_data(cell: str) -> bool:
    """A header cell that is a number (a label such as 0 or 4.5) or a sentence is a row of data."""
    return _is_number(cell) or len(cell) > 30 or len(cell.split()) >= 4


def suggested_columns(cells: list[str]) -> list[str]:
    """Names for a headerless file's columns, guessed from its first row: the first number (else the shortest
    cell) is the label, the longest cell (the two longest, if both are sentences) the text, the rest columnN."""
    if len(cells) == 1:
        return ["text"]
    numbers = [i for i, c in enumerate(cells) if _is_number(c)]
    label = numbers[0] if numbers else min(range(len(cells)), key=lambda i: len(cells[i]))
    longest = sorted((i for i in range(len(cells)) if i != label), key=lambda i: -len(cells[i]))
    texts = longest[:2] if len(longest) > 1 and _looks_like_data(cells[longest[1]]) else longest[:1]
    names = {label: "label"}
    if len(texts) == 2:
        names.update(zip(sorted(texts), ("sentence1", "sentence2")))
    else:
        names[texts[0]] = "text"
    return [names.get(i, f"column{i + 1}") for i in range(len(cells))]


def headerless_columns(no_header: bool, columns: str | None) -> tuple[str, ...] | None:
    """--columns (with or without --no-header, which says the same): the column names of a file without a header
    row, or None. --no-header alone cannot name the columns."""
    if columns is None:
        if no_header:
            raise UsageError("--no-header needs --columns, a name for each column of the file in order, "
                             "e.g. --columns label,text")
        return None
    names = tuple(c.strip() for c in columns.split(","))
    if not all(names):
        raise UsageError(f"--columns {columns!r} has an empty name; give a name for each column, e.g. --columns label,text")
    twice = next((c for c in names if names.count(c) > 1), None)
    if twice is not None:
        raise UsageError(f"--columns names {twice!r} twice; give each column its own name")
    return names


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


def _check_unique(path: Path, columns: list[str]) -> None:
    """Two columns of one name: a row read by name would keep the last one's cell and drop the other's."""
    twice = next((c for c in columns if columns.count(c) > 1), None)
    if twice is not None:
        places = [str(i + 1) for i, c in enumerate(columns) if c == twice]
        raise UsageError(f"{path.name}'s header names the column {twice!r} twice (columns {' and '.join(places)}); "
                         "rename one of them so that each column has its own name.")


def read_delimited(path: Path, delimiter: str, names: tuple[str, ...] | None = None) -> Table:
    """A CSV is read with CSV quoting. A TSV comes in two kinds: written by pandas, Excel or the csv module,
    a cell that holds a quote, tab or line break is quoted ("..." with "" inside), as in a CSV; written by
    joining cells with tabs (as GLUE's files are), quotes are plain text. Read the first way, a plain-text
    quote at the start of a cell (`"Hi," she said.`) would drop its quotes or swallow the rows up to the next
    quote into one cell. So a TSV that quoting cannot read, or whose quoted cells then hold a tab, is read
    with quotes as text when every row then has the header's fields. `names`: the columns of a file without
    a header row (--columns)."""
    if delimiter != "\t":
        return _parse_delimited(path, delimiter, False, names)
    quoted, quoted_error, tab_row = None, None, None
    try:
        quoted = _parse_delimited(path, delimiter, False, names)
    except UsageError as e:
        quoted_error = e
    if quoted is not None:
        tab_row = next((i for i, row in enumerate(quoted.rows) if any("\t" in cell for cell in row.values())), None)
        if tab_row is None:
            return quoted
    try:
        plain = _parse_delimited(path, delimiter, True, names)
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


def _parse_delimited(path: Path, delimiter: str, quotes_are_text: bool, names: tuple[str, ...] | None) -> Table:
    with open(path, encoding="utf-8-sig", newline="") as f:
        quoting = {"quoting": csv.QUOTE_NONE} if quotes_are_text else {"strict": True}
        reader = csv.reader(f, delimiter=delimiter, **quoting)
        sep = "tab" if delimiter == "\t" else "comma"
        try:
            if names is None:
                columns = [c.strip() for c in next(reader, [])]
                _check_separator(path, columns, delimiter)
                _check_unique(path, columns)
                expected = f"the header has {len(columns)}"
            else:
                columns = list(names)
                expected = f"--columns names {len(columns)} ({','.join(columns)})"
            rows, lines = [], []
            for row in reader:
                if not any(cell.strip() for cell in row):  # blank line
                    continue
                if names is not None and not rows and sorted(map(loose_name, row)) == sorted(map(loose_name, names)):
                    raise UsageError(f"{path.name} line {reader.line_num} is a header row ({delimiter.join(row)}), but "
                                     "--columns says the file has none; drop --columns (and --no-header) to read it "
                                     "by its header")
                if len(row) != len(columns):
                    raise UsageError(
                        f"{path.name} line {reader.line_num} has {len(row)} fields but {expected}; "
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
    return Table(path, columns, rows, lines, header_row=names is None)


def cell(value) -> str:
    """A JSON or Arrow value as a string cell: text as it is, None as "", anything else as JSON writes it."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _json_layout(data, path: Path) -> list:
    """The records of a whole-file JSON value: a list of objects; an object whose `data` (or one other key) holds
    that list; pandas' orient="split" ({"columns": [...], "data": [[...]]}); columns as lists of equal length
    ({"text": [...], "label": [...]}); or a single object, one record."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise UsageError(f"{path.name} holds a JSON {type(data).__name__}, not records; write a list of objects, "
                         'like [{"text": "...", "label": "..."}], or one object per line.')
    if isinstance(data.get("columns"), list) and isinstance(data.get("data"), list) and \
            all(isinstance(row, list) for row in data["data"]):
        return [dict(zip(data["columns"], row)) for row in data["data"]]
    lists = {k: v for k, v in data.items() if isinstance(v, list)}
    records = [k for k, v in lists.items() if v and all(isinstance(item, dict) for item in v)]
    if "data" in records or len(records) == 1:
        return data["data" if "data" in records else records[0]]
    if records:
        raise UsageError(f"{path.name} holds several lists of records ({', '.join(records)}); put each in a file of its "
                         "own (e.g. train.json, dev.json), or name the one to read \"data\"")
    if lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
        return [dict(zip(lists, values)) for values in zip(*lists.values())]
    return [data]


def _json_items(path: Path, text: str) -> tuple[list[tuple[int, object]], str]:
    """(position, record) pairs and the position's unit: a whole-file JSON value's records are rows 1, 2, ...;
    JSON lines keep their line numbers."""
    stripped = text.lstrip()
    if stripped and (path.suffix.lower() == ".json" or stripped.startswith("[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if not stripped.startswith("{"):  # not JSON lines either
                raise UsageError(f"{path.name} is not valid JSON ({e}); write one JSON object per line.") from e
        else:
            return [(i + 1, obj) for i, obj in enumerate(_json_layout(data, path))], "row"
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise UsageError(f"{path.name} line {n} is not valid JSON ({e.msg}); write one JSON object per line.") from e
    return items, "line"


def read_json(path: Path) -> Table:
    """One JSON object per line, or a .json file holding its records (see _json_layout)."""
    with open(path, encoding="utf-8-sig") as f:
        items, unit = _json_items(path, f.read())
    columns: list[str] = []
    rows, lines, nested = [], [], {}
    for n, obj in items:
        if not isinstance(obj, dict):
            raise UsageError(
                f"{path.name} {unit} {n} is not a JSON object; "
                'write one object per line, like {"text": "...", "label": "..."}.'
            )
        columns += [k for k in obj if k not in columns]
        for k, v in obj.items():
            if isinstance(v, (list, dict)) and k not in nested:
                nested[k] = (len(rows), "list" if isinstance(v, list) else "object")
        rows.append({k: cell(v) for k, v in obj.items()})
        lines.append(n)
    rows = [{c: row.get(c, "") for c in columns} for row in rows]  # a key missing from a line reads as ""
    return Table(path, columns, rows, lines, nested, unit=unit)

"""Where a user's data comes from -> Tables of string cells: a file (CSV, TSV, JSON lines, JSON, Parquet), a folder
written by `datasets`' save_to_disk (a Dataset, or a DatasetDict whose splits are picked by name), or a dataset
by name or local path through `datasets.load_dataset` (--dataset).

Arrow data (Parquet, datasets) is turned into the same string cells as a CSV, so that label inference and every
message work alike; a ClassLabel column reads as its class names. Its rows are numbered from 1 ("row N").
"""

from __future__ import annotations

from pathlib import Path

import datasets

from ..errors import UsageError, first_line
from .distributed import log
from .tables import SUFFIXES, Table, cell, read_delimited, read_json

# Split names taken as validation data when none is named, in this order (a set with only train and test, as many
# hub sets are, is validated on its test split).
VALIDATION_SPLITS = ("validation", "dev", "valid", "val", "test")


def table_from_dataset(dataset: datasets.Dataset, path: Path, name: str) -> Table:
    """A datasets.Dataset as string cells; ClassLabel ids as their names (-1, no label, as an empty cell)."""
    classes = {c: f.names for c, f in dataset.features.items() if isinstance(f, datasets.ClassLabel)}
    rows, nested = [], {}
    for i, record in enumerate(dataset.to_list()):
        row = {}
        for column, value in record.items():
            if column in classes and isinstance(value, int):
                row[column] = classes[column][value] if 0 <= value < len(classes[column]) else ""
                continue
            if isinstance(value, (list, dict)) and column not in nested:
                nested[column] = (i, "list" if isinstance(value, list) else "object")
            row[column] = cell(value)
        rows.append(row)
    return Table(path, list(dataset.column_names), rows, list(range(1, len(rows) + 1)), nested, name=name, unit="row")


def is_saved_dataset(path: Path) -> bool:
    """A folder written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def pick_split(splits: list[str], wanted: str | None, role: str, source: str, flag: str) -> str:
    """The split of `source` to use as `role` data (train, validation, test): `wanted`, else the role's usual
    names; a missing one is an error listing the splits there are and the flag that picks one."""
    usual = {"train": ("train",), "validation": VALIDATION_SPLITS, "test": ("test",)}[role]
    if wanted is not None:
        if wanted not in splits:
            raise UsageError(f"{source} has no split {wanted!r} (its splits: {', '.join(splits)}); pass {flag} "
                             "with one of them")
        return wanted
    split = next((s for s in usual if s in splits), None)
    if split is None:
        raise UsageError(f"{source} has no {role} split (its splits: {', '.join(splits)}; looked for "
                         f"{', '.join(usual)}); pass {flag} with the one to use as {role} data")
    if split != role:
        log(f"note: {source}: split {split!r} is the {role} data ({flag} picks another)")
    return split


def _split_table(loaded, path: Path, source: str, role: str, wanted: str | None, flag: str) -> Table:
    """One split of a loaded Dataset or DatasetDict as a Table (a Dataset is its own single split)."""
    if isinstance(loaded, datasets.Dataset):
        return table_from_dataset(loaded, path, source)
    split = pick_split(list(loaded), wanted, role, source, flag)
    return table_from_dataset(loaded[split], path, f"{source}[{split}]")


def read_saved_dataset(path: Path, flag: str, role: str, split: str | None, split_flag: str) -> Table:
    """A save_to_disk folder's Dataset, or the `role` split of its DatasetDict (`split` names another)."""
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # a damaged or partial folder: datasets reports it in many ways
        raise UsageError(f"{flag} {path} cannot be read as a datasets folder ({first_line(e)}); write it again "
                         "with save_to_disk") from e
    return _split_table(loaded, path, path.name, role, split, split_flag)


def read_parquet(path: Path) -> Table:
    """A Parquet file; the features `datasets` wrote into it (ClassLabel names) are kept."""
    import pyarrow.parquet as pq  # pyarrow comes with datasets, which is Arrow throughout

    try:
        arrow = pq.read_table(path)
    except Exception as e:  # pyarrow's ArrowInvalid, OSError, ...: a damaged or foreign file
        raise UsageError(f"{path.name} cannot be read as Parquet ({first_line(e)}); write it again, e.g. with "
                         "pandas' to_parquet or datasets' to_parquet") from e
    return table_from_dataset(datasets.Dataset(arrow), path, path.name)


def read_table(file, flag: str, columns: tuple[str, ...] | None = None, role: str = "test",
               split: str | None = None, split_flag: str = "--split") -> Table:
    """Read a user's data as string cells; `flag` (e.g. "--train-file") names it in errors. `columns`: the column
    names of a CSV or TSV without a header row. A save_to_disk folder holding several splits gives the `role`
    one (train, validation or test), or `split`, which `split_flag` names."""
    path = Path(file).expanduser()
    if path.is_dir():
        if not is_saved_dataset(path):
            raise UsageError(f"{flag} {path} is a folder, but not one written by datasets' save_to_disk (no "
                             "dataset_dict.json or state.json in it); pass a data file, or the folder as --dataset")
        _no_header_row(columns, flag, path)
        return read_saved_dataset(path, flag, role, split, split_flag)
    if not path.is_file():
        raise UsageError(f"{flag} {path} does not exist; check the path.")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageError(f"{flag} {path.name}: unsupported file type {suffix or '(none)'!r}; use a .csv, .tsv, .jsonl, "
                         ".json or .parquet file, or a folder written by datasets' save_to_disk.")
    if suffix not in (".csv", ".tsv"):
        _no_header_row(columns, flag, path)
    try:
        if suffix == ".parquet":
            table = read_parquet(path)
        elif suffix in (".jsonl", ".json"):
            table = read_json(path)
        else:
            table = read_delimited(path, "\t" if suffix == ".tsv" else ",", columns)
    except UnicodeDecodeError as e:
        raise UsageError(f"{flag} {path.name} is not UTF-8 text ({e.reason}); save it with UTF-8 encoding.") from e
    if not table.rows:
        hint = table.headerless_hint()  # a one-line headerless file reads as a header alone
        raise UsageError(f"{flag} {table.name} has no examples (empty file or header only); "
                         + (f"{hint}." if hint else "add at least one row."))
    return table


def _no_header_row(columns, flag: str, path: Path) -> None:
    if columns is not None:
        raise UsageError(f"--columns (and --no-header) are for CSV and TSV files without a header row; {flag} "
                         f"{path.name} names its columns itself (pick them with --text-columns and --label-column)")


def load_named_dataset(name: str, config: str | None, train_split: str | None,
                       validation_split: str | None) -> tuple[Table, Table]:
    """--dataset NAME [--dataset-config C]: its train and validation splits through datasets.load_dataset (a hub
    set, or a local folder of data files or a save_to_disk folder)."""
    source = name if config is None else f"{name}/{config}"
    path = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not path.exists():  # a path, not a hub name
        raise UsageError(f"--dataset {name} does not exist; check the path (a folder of data files, or one written "
                         "by save_to_disk), or give a hub name such as stanfordnlp/imdb")
    try:
        loaded = datasets.load_from_disk(str(path)) if is_saved_dataset(path) else datasets.load_dataset(name, config)
    except Exception as e:  # offline, unknown name or config, no access, files it cannot read: one line for all
        offline = " (offline: HF_HUB_OFFLINE is set)" if datasets.config.HF_HUB_OFFLINE else ""
        raise UsageError(f"--dataset {source} cannot be loaded{offline}: {first_line(e)[:300]}; check the name "
                         "(and --dataset-config), and that the Hugging Face hub is reachable, or pass the data as "
                         "--train-file/--validation-file (files, or a folder saved with save_to_disk)") from e
    if isinstance(loaded, datasets.Dataset):
        raise UsageError(f"--dataset {source} is one split; pass it as --train-file with a --validation-file")
    train = _split_table(loaded, path, source, "train", train_split, "--train-split")
    validation = _split_table(loaded, path, source, "validation", validation_split, "--validation-split")
    for table in (train, validation):
        if not table.rows:
            raise UsageError(f"--dataset {table.name} has no examples; pick another split with --train-split or "
                             "--validation-split")
    return train, validation


def read_train_and_validation(train_file, validation_file, columns: tuple[str, ...] | None = None,
                              train_split: str | None = None, validation_split: str | None = None) -> tuple[Table, Table]:
    """--train-file and --validation-file; a save_to_disk DatasetDict as --train-file gives both (its train and
    validation splits) when no --validation-file is given."""
    train = read_table(train_file, "--train-file", columns, "train", train_split, "--train-split")
    if validation_file is None:
        path = Path(train_file).expanduser()
        if path.is_dir() and (path / "dataset_dict.json").is_file():
            validation_file = path
        else:
            raise UsageError("no validation file given; pass --validation-file with held-out examples in the same "
                             "format as --train-file.")
    validation = read_table(validation_file, "--validation-file", columns, "validation", validation_split,
                            "--validation-split")
    return train, validation


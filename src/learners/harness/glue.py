"""GLUE tasks: the task table and `load_glue`.

Sources, in order: an explicit data directory, $GLUE_DIR, the Hugging Face hub
(`nyu-mll/glue`). Local directories use the official GLUE download layout
(`CoLA/train.tsv`, `MNLI/dev_matched.tsv`, ...) or a local copy of the hub
dataset's parquet files (`cola/train-00000-of-00001.parquet`, as
`huggingface-cli download nyu-mll/glue --repo-type dataset` writes them). The TSV
files must be read with quoting disabled: their text contains unbalanced double
quotes.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..errors import UsageError
from .task_data import TaskData

logger = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    name: str
    folder: str  # folder name in the official GLUE layout
    text_columns: tuple[str, ...]  # column names in our datasets (the same as on the hub)
    file_text_columns: tuple[str, ...]  # the same texts' column names in the TSV files
    file_label_column: str
    label_names: tuple[str, ...] | None  # None: regression
    metric_kind: str
    # (split key, TSV file, hub split); the first is the primary validation set, the rest go to extra_validation
    dev_splits: tuple[tuple[str, str, str], ...] = (("validation", "dev.tsv", "validation"),)
    no_header_columns: tuple[str, ...] | None = None  # column names for header-less files (CoLA)


_NLI2 = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("cola", "CoLA", ("sentence",), ("sentence",), "label", ("unacceptable", "acceptable"), "matthews",
                 no_header_columns=("source", "label", "original-label", "sentence")),
        GlueTask("sst2", "SST-2", ("sentence",), ("sentence",), "label", ("negative", "positive"), "accuracy"),
        GlueTask("mrpc", "MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality",
                 ("not_equivalent", "equivalent"), "f1_accuracy"),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", None,
                 "pearson_spearman"),
        GlueTask("qqp", "QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate",
                 ("not_duplicate", "duplicate"), "f1_accuracy"),
        GlueTask("mnli", "MNLI", ("premise", "hypothesis"), ("sentence1", "sentence2"), "gold_label",
                 ("entailment", "neutral", "contradiction"), "accuracy",
                 dev_splits=(("validation", "dev_matched.tsv", "validation_matched"),
                             ("mismatched", "dev_mismatched.tsv", "validation_mismatched"))),
        GlueTask("qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label", _NLI2, "accuracy"),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", _NLI2, "accuracy"),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
                 ("not_entailment", "entailment"), "accuracy"),
    ]
}


def get_task(task: str) -> GlueTask:
    """The table entry for `task`; accepts "SST-2"-style spellings too."""
    key = task.strip().lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise UsageError(
            f"unknown GLUE task {task!r}; known tasks: {', '.join(GLUE_TASKS)}. "
            "For your own data pass --train-file (and --validation-file) instead of a task name."
        )
    return GLUE_TASKS[key]


def _features(task: GlueTask) -> datasets.Features:
    label = datasets.Value("float32" if task.label_names is None else "int64")
    return datasets.Features({**{c: datasets.Value("string") for c in task.text_columns}, "label": label})


def _parse_label(value: str, task: GlueTask) -> int | float | None:
    """Label id (or float score for STS-B); None when the cell is empty or unparseable."""
    value = value.strip()
    if task.label_names is None:
        try:
            score = float(value)
        except ValueError:
            return None
        return score if score == score else None  # drop nan
    if value in task.label_names:  # RTE/QNLI/MNLI write words
        return task.label_names.index(value)
    try:
        label_id = int(value)
    except ValueError:
        return None
    return label_id if 0 <= label_id < len(task.label_names) else None


def read_glue_tsv(path: Path, task: GlueTask) -> datasets.Dataset:
    """Read one official GLUE train/dev TSV into a Dataset with the standard columns.

    Rows with the wrong number of fields or an empty/unparseable label (seen in
    some users' QQP/MNLI copies) are skipped and counted in a warning.
    """
    wanted = (*task.file_text_columns, task.file_label_column)
    try:
        # utf-8-sig drops MRPC's byte-order mark (otherwise the first header is "\ufeffQuality").
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = list(task.no_header_columns) if task.no_header_columns else next(reader, [])
            missing = [c for c in wanted if c not in header]
            if missing:
                raise UsageError(
                    f"{path} has no column(s) {', '.join(missing)} (header: {', '.join(header) or 'empty file'}); "
                    f"replace it with the official GLUE {task.folder} file."
                )
            idx = [header.index(c) for c in wanted]
            columns: list[list[str]] = [[] for _ in task.file_text_columns]
            labels: list[int | float] = []
            skipped = 0
            for row in reader:
                if not row:  # blank line
                    continue
                label = _parse_label(row[idx[-1]], task) if len(row) == len(header) else None
                if label is None:
                    skipped += 1
                    continue
                for column, i in zip(columns, idx):
                    column.append(row[i])
                labels.append(label)
    except (csv.Error, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}; replace it with the official GLUE {task.folder} file.") from e
    if skipped:
        logger.warning("%s: skipped %d malformed row(s) (wrong field count or empty/unknown label)", path, skipped)
    if not labels:
        raise UsageError(f"{path} has no usable rows; replace it with the official GLUE {task.folder} file.")
    data = {name: column for name, column in zip(task.text_columns, columns)}
    data["label"] = labels
    return datasets.Dataset.from_dict(data, features=_features(task))


def _task_folder(root: Path, task: GlueTask) -> Path | None:
    """`root/CoLA`, or `root` itself when it is the task folder."""
    for folder in (root / task.folder, root):
        if folder.name == task.folder and (folder / "train.tsv").is_file():
            return folder
    return None


def _load_folder(folder: Path, task: GlueTask) -> TaskData:
    files = [("train", "train.tsv")] + [(key, name) for key, name, _ in task.dev_splits]
    missing = [name for _, name in files if not (folder / name).is_file()]
    if missing:
        raise UsageError(
            f"GLUE folder {folder} lacks {', '.join(missing)}; "
            f"it needs {', '.join(name for _, name in files)} as in the official GLUE download."
        )
    splits = {key: read_glue_tsv(folder / name, task) for key, name in files}
    logger.info("loaded GLUE %s from %s", task.name, folder)
    return _task_data(task, splits)


def _parquet_folder(root: Path, task: GlueTask) -> Path | None:
    """`root/cola` (or `root` itself when it is that folder) holding the hub's parquet files for `task`."""
    for folder in (root / task.name, root):
        if folder.name.lower() == task.name and any(folder.glob("train-*.parquet")):
            return folder
    return None


def _load_parquet_folder(folder: Path, task: GlueTask) -> TaskData:
    """A local copy of the hub dataset's files for one task: `<split>-00000-of-00001.parquet` per split."""
    hub_splits = ["train"] + [hub_split for _, _, hub_split in task.dev_splits]
    files = {split: sorted(str(f) for f in folder.glob(f"{split}-*.parquet")) for split in hub_splits}
    missing = [split for split in hub_splits if not files[split]]
    if missing:
        raise UsageError(
            f"GLUE folder {folder} lacks {', '.join(f'{split}-*.parquet' for split in missing)}; it needs "
            f"{', '.join(f'{split}-*.parquet' for split in hub_splits)} as in the hub dataset {HUB_DATASET}."
        )
    try:
        loaded = datasets.load_dataset("parquet", data_files=files)
    except Exception as e:  # a damaged or foreign parquet file
        raise UsageError(f"cannot read the parquet files in {folder} ({_short(e)}); "
                         f"replace them with the hub dataset {HUB_DATASET}'s {task.name} files.") from e
    logger.info("loaded GLUE %s from %s (the hub's parquet layout)", task.name, folder)
    return _from_hub_splits(task, loaded, str(folder))


def _load_local(root: Path, task: GlueTask) -> TaskData | None:
    """The task from `root` in the official layout or the hub's parquet layout; None if it has neither."""
    folder = _task_folder(root, task)
    if folder is not None:
        return _load_folder(folder, task)
    folder = _parquet_folder(root, task)
    if folder is not None:
        return _load_parquet_folder(folder, task)
    return None


def _load_hub(task: GlueTask) -> TaskData:
    hub = datasets.load_dataset(HUB_DATASET, task.name)
    logger.info("loaded GLUE %s from the hub (%s)", task.name, HUB_DATASET)
    return _from_hub_splits(task, hub, f"hub {HUB_DATASET}/{task.name}")


def _from_hub_splits(task: GlueTask, hub: datasets.DatasetDict, source: str) -> TaskData:
    """The hub's splits and columns (the same in its parquet files) mapped to ours."""
    wanted = [("train", "train")] + [(key, hub_split) for key, _, hub_split in task.dev_splits]
    splits = {}
    for key, hub_split in wanted:
        split = hub[hub_split]
        missing = [c for c in (*task.text_columns, "label") if c not in split.column_names]
        if missing:
            raise UsageError(f"{source} split {hub_split} has no column(s) {', '.join(missing)} "
                             f"(columns: {', '.join(split.column_names)}); GLUE {task.name} needs "
                             f"{', '.join((*task.text_columns, 'label'))}.")
        hub_label = split.features["label"]
        if task.label_names is not None and list(getattr(hub_label, "names", task.label_names)) != list(task.label_names):
            raise UsageError(f"{source} label names {hub_label.names} differ from GLUE {task.name}'s "
                             f"{list(task.label_names)}")
        splits[key] = split.select_columns([*task.text_columns, "label"]).cast(_features(task))
    return _task_data(task, splits)


def _task_data(task: GlueTask, splits: dict[str, datasets.Dataset]) -> TaskData:
    extra_keys = [key for key, _, _ in task.dev_splits[1:]]
    return TaskData(
        name=task.name,
        text_columns=task.text_columns,
        label_names=None if task.label_names is None else list(task.label_names),
        metric_kind=task.metric_kind,
        train=splits["train"],
        validation=splits["validation"],
        extra_validation={key: splits[key] for key in extra_keys},
    )


def _short(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text[:200]}"


def load_glue(task: str, data_dir: str | os.PathLike | None = None) -> TaskData:
    """Load a GLUE task from `data_dir`, else $GLUE_DIR, else the hub."""
    spec = get_task(task)
    tried = []
    lacking = []  # local sources the user named that lack the task

    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            problem = "is a file, not a directory" if root.exists() else "does not exist"
            raise UsageError(
                f"--data-dir {root} {problem}; "
                f"pass the folder that contains {spec.folder}/train.tsv."
            )
        data = _load_local(root, spec)
        if data is not None:
            return data
        lacking.append(f"--data-dir {root} has no {spec.folder}/train.tsv (nor {spec.name}/train-*.parquet)")
        tried.append(lacking[-1])
    else:
        tried.append("no --data-dir given")

    glue_dir = os.environ.get("GLUE_DIR")
    if glue_dir:
        data = _load_local(Path(glue_dir).expanduser(), spec)
        if data is not None:
            return data
        lacking.append(f"GLUE_DIR={glue_dir} has no {spec.folder}/train.tsv (nor {spec.name}/train-*.parquet)")
        tried.append(lacking[-1])
    else:
        tried.append("GLUE_DIR is not set")

    try:
        data = _load_hub(spec)
    except Exception as e:  # offline, hub down, auth, ...: all reported together below
        tried.append(f"hub {HUB_DATASET} failed ({_short(e)})")
    else:
        if lacking:
            logger.warning("%s; loaded GLUE %s from the hub (%s) instead", "; ".join(lacking), spec.name, HUB_DATASET)
        return data

    raise UsageError(
        f"cannot load GLUE task {spec.name!r}: {'; '.join(tried)}. "
        f"Fix: pass --data-dir DIR (or set GLUE_DIR=DIR) where DIR/{spec.folder}/train.tsv is the official "
        f"GLUE download (or DIR/{spec.name}/ holds the hub dataset's parquet files), or run with network access to the "
        "Hugging Face hub."
    )

"""`learners predict`: a fine-tuned model directory + a data file -> one prediction per row.

With `--learners cola=DIR,sst2=DIR` several tasks are served from one loaded base model: each task's
learner set (its slices and head, what `learners finetune` writes at OUT/learners) is loaded onto the
one backbone and switched in per task (`LearnerModel.set_learners`, O(k) per FFN block). The output is
one file with the input rows and a column `prediction_NAME` per task, so every row's answers sit
side by side; each task reads its own text columns (saved with its learners, or --text-columns).
"""

import csv
import json
import re
from pathlib import Path

import torch

from ..errors import UsageError, check_output_path, first_line, read_json_file
from ..learner import LearnerModel
from .files import check_not_input, replaced_atomically
from .finetune import TASK_FILE
from .merge import head_labels, learners_directory, recorded_base
from .models import check_max_length, load_model_and_tokenizer, quiet_transformers
from .multi_label import PROBLEM_TYPE
from .multi_label_outputs import multi_label_columns, refuse_threshold
from .token_data import is_token_task_file
from .token_files import CONLL_SUFFIXES
from .token_predict import is_token_model, run_token_predict, run_token_predict_sets, token_model_class
from .user_data import pick_text_columns, read_table

SENTENCE_SUFFIXES = (".csv", ".tsv", ".jsonl")
OUTPUT_SUFFIXES = (*SENTENCE_SUFFIXES, *CONLL_SUFFIXES)  # CoNLL: token classification (token_predict.py)
TASK_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def model_directory(model_dir: str) -> Path:
    """`model_dir` itself, or its `model/` where it is a finetune run's OUT (which holds the model there)."""
    path = Path(model_dir)
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    return path


def load_finetuned(model_dir: str):
    """The model and tokenizer in `model_dir`; bottleneck adapters saved beside the weights
    (method `adapter`: adapters_config.json + adapters.safetensors) are put back in."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .methods.adapter import has_adapters, load_adapters

    path = model_directory(model_dir)
    if not (path / "config.json").is_file():
        raise UsageError(f"--model {model_dir} is not a model directory (no config.json); pass a finetune run's OUT "
                         "or OUT/model, or a merge's output")
    with quiet_transformers():
        try:  # safetensors weights only: a model directory's pickle files are never loaded
            auto = token_model_class(path) or AutoModelForSequenceClassification
            model = auto.from_pretrained(path, use_safetensors=True)
        except (OSError, ValueError, SafetensorError) as e:
            raise UsageError(f"cannot load the model in {model_dir}: {first_line(e)}; pass OUT/model of a finetune run") from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # the tokenizers library reports a damaged tokenizer.json as a bare Exception
            raise UsageError(f"cannot load the tokenizer in {model_dir}: {first_line(e)}; "
                             "pass OUT/model of a finetune run") from e
    if has_adapters(path):
        load_adapters(model, path)
    return model, tokenizer


def check_prediction_options(output_file: str, batch_size: int, input_file: str, overwrite: bool = False) -> Path:
    """The --output path, checked before any work: a new file of a type predict writes (an existing one only with
    --overwrite), never the --input."""
    out = check_output_path(output_file, "--output", directory=False)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--output {out.name}: unsupported file type; use .csv, .tsv or .jsonl (.conll: token "
                         "classification)")
    check_not_input(out, "--output", {"--input": input_file})
    if out.exists() and not overwrite:
        raise UsageError(f"--output {out} exists; choose another file, or pass --overwrite to replace it")
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    return out


def predict_columns(model, tokenizer, table, input_name: str, text_columns: str | None, saved: dict,
                    batch_size: int, max_length: int, scores: bool = False, threshold: float | None = None,
                    as_lists: bool = False) -> dict[str, list]:
    """`prediction`: one per row of `table`, a label name, or a number for regression. With `scores` also the class
    probabilities (softmax of the logits), a `score_LABEL` column per class, or `score` (the value) for regression.
    A multi-label model's label sets and sigmoid scores: multi_label_outputs.py (`threshold`, `as_lists`)."""
    if text_columns is None and saved.get("text_columns"):
        text_columns = ",".join(saved["text_columns"])
    columns = pick_text_columns(text_columns, table.columns, input_name)
    columns = tuple(table.header_for(c) for c in columns)  # 'Text' for a model trained on 'text'; rows keep their headers
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UsageError(f"--input {input_name} lacks the model's text column(s) {', '.join(missing)}; "
                         f"columns found: {table.found()}. "
                         f"{table.headerless_hint() or 'Pass --text-columns with names from that list'}")
    for column in columns:
        table.check_plain(column, "text")
    multi_label = model.config.problem_type == PROBLEM_TYPE
    regression = not multi_label and (model.config.problem_type == "regression" or model.config.num_labels == 1)
    if not multi_label:
        refuse_threshold(threshold, "this model")
    model.eval()
    encodings = [tokenizer(*[[row[c] for row in table.rows[i:i + batch_size]] for c in columns], truncation=True,
                           max_length=max_length, padding=True, return_tensors="pt")
                 for i in range(0, len(table.rows), batch_size)]
    logits = all_logits(model, [dict(e) for e in encodings])
    if multi_label:
        return multi_label_columns(logits, model.config.id2label, saved, threshold, scores, as_lists)
    if regression:
        values = [float(v) for v in logits[:, 0]]
        return {"prediction": values, **({"score": values} if scores else {})}
    columns = {"prediction": [model.config.id2label[int(p)] for p in logits.argmax(-1)]}
    if scores:
        probabilities = torch.softmax(logits.double(), dim=-1)
        for i in range(probabilities.shape[1]):
            columns[f"score_{model.config.id2label[i]}"] = [float(p) for p in probabilities[:, i]]
    return columns


@torch.no_grad()
def all_logits(model, batches: list[dict]) -> torch.Tensor:
    """The model's logits for every batch, on the CPU in fp32, in order (the model runs where it is)."""
    device = next(model.parameters()).device
    return torch.cat([model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu() for batch in batches])


def resolve_device(device: str | None) -> "torch.device":
    """--device: cuda (the first GPU) where one is there, else the CPU; `cpu`, `cuda` or `cuda:N` as asked."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as e:
        raise UsageError(f"--device {device}: not a device; pass cpu, cuda or cuda:N") from e
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if chosen.type == "cuda" and (chosen.index or 0) >= count:
        raise UsageError(f"--device {device}: no such GPU here ({count} found); pass --device cpu or leave it out")
    if chosen.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: predict runs on cpu or cuda")
    return chosen


def write_rows(out: Path, rows: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(out) as partial, open(partial, "w", newline="", encoding="utf-8") as f:  # never half-written
        if out.suffix.lower() == ".jsonl":
            for row in rows:
                f.write(json.dumps(row) + "\n")
        else:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if out.suffix.lower() == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)


def run_predict(model_dir: str, input_file: str, output_file: str, text_columns: str | None = None,
                batch_size: int = 64, max_length: int | None = None, overwrite: bool = False,
                input_columns: tuple[str, ...] | None = None, split: str | None = None, scores: bool = False,
                device: str | None = None, threshold: float | None = None) -> int:
    """Write `output_file` with the input rows and a `prediction` column (and with `scores` the scores); return the
    number of rows. `input_columns`: the column names of a CSV/TSV input without a header row; `split`: the split of
    a save_to_disk folder."""
    out = check_prediction_options(output_file, batch_size, input_file, overwrite)
    where = resolve_device(device)
    model, tokenizer = load_finetuned(model_dir)
    model.to(where)
    max_length = check_max_length(max_length, model.config)
    task_file = model_directory(model_dir) / TASK_FILE
    saved = read_json_file(task_file, "task file") if task_file.is_file() else {}
    if is_token_model(model):
        refuse_threshold(threshold, "a token classification model")
        return run_token_predict(model, tokenizer, input_file, out, batch_size, max_length, scores,
                                 sentence_input_flags(text_columns, input_columns, split))
    check_sentence_output(out)
    table = read_table(input_file, "--input", input_columns, "test", split)
    columns = predict_columns(model, tokenizer, table, Path(input_file).name, text_columns, saved, batch_size, max_length,
                              scores, threshold, out.suffix.lower() == ".jsonl")
    write_rows(out, [{**row, **{c: values[i] for c, values in columns.items()}} for i, row in enumerate(table.rows)])
    return len(table.rows)


def check_sentence_output(out: Path) -> None:
    """A model that predicts a label per row writes CSV, TSV or JSON lines, not CoNLL (a tag per word)."""
    if out.suffix.lower() not in SENTENCE_SUFFIXES:
        raise UsageError(f"--output {out.name}: CoNLL output is for token classification models; this one predicts a "
                         "label per row: use .csv, .tsv or .jsonl")


def sentence_input_flags(text_columns, input_columns, split) -> list[str]:
    """The flags given that read sentence-level inputs, which a token classification model refuses."""
    return [f for f, v in (("--text-columns", text_columns), ("--columns", input_columns), ("--split", split)) if v]


# ---- several tasks on one backbone ----------------------------------------------------------

def parse_learners_spec(spec: str) -> dict[str, Path]:
    """`cola=DIR,sst2=DIR` -> {name: learners directory}; DIR is a finetune OUT or its OUT/learners. A single
    DIR alone (as `merge --learners` takes it) is named after the task its run saved."""
    if "=" not in spec and "," not in spec and Path(spec.strip()).expanduser().is_dir():
        directory = learners_directory(Path(spec.strip()).expanduser())
        task_file = directory / TASK_FILE
        task = read_json_file(task_file, "task file").get("task") if task_file.is_file() else None
        return {task if isinstance(task, str) and TASK_NAME.fullmatch(task) else "learners": directory}
    tasks = {}
    for item in spec.split(","):
        name, sep, directory = (part.strip() for part in item.partition("="))
        if not sep and "," not in spec:
            raise UsageError(f"--learners {spec.strip()!r} is not a directory: pass a learners run's OUT (or OUT/learners), "
                             "or NAME=DIR pairs separated by commas, e.g. cola=runs/cola,sst2=runs/sst2")
        if not sep or not TASK_NAME.fullmatch(name) or not directory:
            raise UsageError(f"--learners takes NAME=DIR pairs separated by commas (NAME of letters, digits, _ . -), "
                             f"e.g. cola=runs/cola,sst2=runs/sst2; got {item.strip()!r}")
        if name in tasks:
            raise UsageError(f"--learners names {name!r} twice; give each task its own name")
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise UsageError(f"--learners {name}={directory} does not exist; pass the OUT (or OUT/learners) "
                             "directory of a `learners finetune --method learners` run")
        tasks[name] = learners_directory(path)
    return tasks


def token_learners(tasks: dict[str, Path]) -> bool:
    """Whether --learners names token classification runs (each one, then) or sentence-level ones (none): one
    backbone reads either words or sentences, not both."""
    token = {name for name, directory in tasks.items() if is_token_task_file(
        read_json_file(directory / TASK_FILE, "task file") if (directory / TASK_FILE).is_file() else None)}
    if token and len(token) < len(tasks):
        sentence = [name for name in tasks if name not in token]
        raise UsageError(f"--learners mixes token classification runs ({', '.join(sorted(token))}) with sentence-level "
                         f"ones ({', '.join(sentence)}); they read different inputs: predict each kind in its own call")
    return bool(token)


def load_learner_sets(tasks: dict[str, Path], base: str | None, token_classification: bool = False):
    """The base model with every task's learners loaded as a set named after the task, and the tokenizer."""
    metas = {}
    for name, directory in tasks.items():
        try:
            metas[name] = LearnerModel.read_metadata(directory)
        except UsageError as e:
            raise UsageError(f"--learners {name}={directory}: {e}") from e
    first = next(iter(tasks))
    num_labels, label_names = head_labels(metas[first], str(tasks[first]))
    base = recorded_base(base, list(metas.values()))
    model, tokenizer = load_model_and_tokenizer(base, num_labels, label_names, "--base", metas[first].get("problem_type"),
                                                token_classification=token_classification)
    learner_model = None
    for name, directory in tasks.items():
        try:
            if learner_model is None:
                learner_model = LearnerModel.from_pretrained(model, directory, name=name)
            else:
                learner_model.load_learners(directory, name)
        except UsageError as e:
            raise UsageError(f"--learners {name}={directory}: {e}; here --base was {base or 'not given: the embedded model'}") from e
    return learner_model, tokenizer


def run_predict_learners(spec: str, base: str | None, input_file: str, output_file: str,
                         text_columns: str | None = None, batch_size: int = 64, max_length: int | None = None,
                         overwrite: bool = False, input_columns: tuple[str, ...] | None = None,
                         split: str | None = None, scores: bool = False, device: str | None = None,
                         threshold: float | None = None) -> int:
    """Write `output_file` with the input rows and a `prediction_NAME` column per task (with `scores`, its
    `score_NAME_LABEL` columns); return the row count."""
    out = check_prediction_options(output_file, batch_size, input_file, overwrite)
    where = resolve_device(device)
    tasks = parse_learners_spec(spec)
    if token_learners(tasks):
        refuse_threshold(threshold, "a token classification run")
        learner_model, tokenizer = load_learner_sets(tasks, base, token_classification=True)
        learner_model.to(where)
        return run_token_predict_sets(learner_model, tokenizer, list(tasks), input_file, out, batch_size,
                                      check_max_length(max_length, learner_model.config), scores,
                                      sentence_input_flags(text_columns, input_columns, split))
    check_sentence_output(out)
    table = read_table(input_file, "--input", input_columns, "test", split)
    learner_model, tokenizer = load_learner_sets(tasks, base)
    learner_model.to(where)
    max_length = check_max_length(max_length, learner_model.config)
    columns = {}
    for name, directory in tasks.items():
        task_file = directory / TASK_FILE
        saved = read_json_file(task_file, "task file") if task_file.is_file() else {}
        learner_model.set_learners(name)
        task_columns = predict_columns(learner_model, tokenizer, table, Path(input_file).name, text_columns, saved,
                                       batch_size, max_length, scores, threshold, out.suffix.lower() == ".jsonl")
        columns.update({task_column(column, name): values for column, values in task_columns.items()})
    rows = [{**row, **{c: values[i] for c, values in columns.items()}} for i, row in enumerate(table.rows)]
    write_rows(out, rows)
    return len(rows)


def task_column(column: str, task: str) -> str:
    """A column of one task's predictions, named for its task: prediction_TASK, score_TASK, score_TASK_LABEL."""
    kind, _, label = column.partition("_")
    return f"{kind}_{task}_{label}" if label else f"{kind}_{task}"

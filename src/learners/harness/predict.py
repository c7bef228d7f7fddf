"""`learners predict`: a fine-tuned model directory + a data file -> one prediction per row."""

import csv
import json
import os
from pathlib import Path

from ..errors import UsageError, check_output_path, first_line, read_json_file
from .finetune import TASK_FILE, predict_loader
from .models import check_max_length, quiet_transformers
from .user_data import pick_text_columns, read_table

OUTPUT_SUFFIXES = (".csv", ".tsv", ".jsonl")


def load_finetuned(model_dir: str):
    """The model and tokenizer in `model_dir`; bottleneck adapters saved beside the weights
    (method `adapter`: adapters_config.json + adapters.safetensors) are put back in."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .methods.adapter import has_adapters, load_adapters

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise UsageError(f"--model {model_dir} is not a model directory (no config.json); pass OUT/model of a finetune run")
    with quiet_transformers():
        try:  # safetensors weights only: a model directory's pickle files are never loaded
            model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
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


def run_predict(model_dir: str, input_file: str, output_file: str, text_columns: str | None = None,
                batch_size: int = 64, max_length: int | None = None) -> int:
    """Write `output_file` with the input rows and a `prediction` column; return the number of rows."""
    out = check_output_path(output_file, "--output", directory=False)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--output {out.name}: unsupported file type; use .csv, .tsv or .jsonl")
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    model, tokenizer = load_finetuned(model_dir)
    max_length = check_max_length(max_length, model.config)
    task_file = Path(model_dir) / TASK_FILE
    saved = read_json_file(task_file, "task file") if task_file.is_file() else {}
    table = read_table(input_file, "--input")
    if text_columns is None and saved.get("text_columns"):
        text_columns = ",".join(saved["text_columns"])
    columns = pick_text_columns(text_columns, table.columns, Path(input_file).name)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UsageError(f"--input {Path(input_file).name} lacks the model's text column(s) {', '.join(missing)}; "
                         f"columns found: {', '.join(table.columns)}. Pass --text-columns with names from that list")

    regression = model.config.problem_type == "regression" or model.config.num_labels == 1
    model.eval()
    encodings = [tokenizer(*[[row[c] for row in table.rows[i:i + batch_size]] for c in columns], truncation=True,
                           max_length=max_length, padding=True, return_tensors="pt")
                 for i in range(0, len(table.rows), batch_size)]
    predictions, _ = predict_loader(model, [dict(e) for e in encodings], regression)
    if regression:
        values = [float(p) for p in predictions]
    else:
        values = [model.config.id2label[int(p)] for p in predictions]

    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**row, "prediction": value} for row, value in zip(table.rows, values)]
    partial = out.with_name(out.name + ".partial")  # renamed when complete: never a half-written --output
    with open(partial, "w", newline="", encoding="utf-8") as f:
        if out.suffix.lower() == ".jsonl":
            for row in rows:
                f.write(json.dumps(row) + "\n")
        else:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if out.suffix.lower() == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    os.replace(partial, out)
    return len(rows)

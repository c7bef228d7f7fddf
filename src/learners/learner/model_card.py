"""The model card (README.md) that `LearnerModel.save_pretrained` writes beside the learners, in the style of
PEFT's: a YAML header the hub reads (`library_name`, `base_model`, `tags`, `pipeline_tag`), then what the
learners are, their labels, their results where known, their config, and how to load and merge them."""

import json
import re
from pathlib import Path

CARD_NAME = "README.md"
GLUE_TASKS = {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}


def model_card(meta: dict, task: str | None = None, metrics: dict | None = None, base_model: str | None = None,
               repo_id: str | None = None) -> str:
    """The card's text for learners whose saved metadata (learners_config.json) is `meta`. `base_model` overrides the
    recorded base (a local path is worth less to a reader than the hub id it came from); `repo_id` names the
    repository in the loading snippet (default: the folder the card sits in)."""
    base = base_model or meta.get("base_model_name_or_path") or "BASE_MODEL"
    regression = meta.get("problem_type") == "regression" or meta.get("num_labels") == 1
    header = {"library_name": "learners", "base_model": base, "pipeline_tag": "text-classification",
              "tags": ["learners", "text-classification"] + ([task] if task else [])}
    if task in GLUE_TASKS:
        header["datasets"] = ["nyu-mll/glue"]
    lines = ["---"] + [_yaml_line(key, value) for key, value in header.items()] + ["---", ""]
    lines += [f"# Learners for `{base}`" + (f" on {task}" if task else ""), "",
              "Learner modules (the `learners` library): a small slice of the feed-forward "
              "networks of the base model, trained with the task head while everything else stayed frozen. This "
              "folder holds only the slices, their neuron indices, the head and the config (a few MB, not the base "
              "model); merged into the base they give a plain transformers model with no inference overhead.", ""]
    lines += _labels_section(meta, regression) + _metrics_section(metrics)
    lines += ["## Learner config", "", "```json", json.dumps(meta.get("learner_config", {}), indent=2), "```", ""]
    lines += _usage_section(base, repo_id)
    return "\n".join(lines)


def write_model_card(directory: str | Path, task: str | None = None, metrics: dict | None = None,
                     base_model: str | None = None, repo_id: str | None = None) -> Path:
    """(Re)write `directory`/README.md from the learners saved there (their learners_config.json); a README.md
    there that is not a learners card is kept (save_card)."""
    from .config import CONFIG_NAME

    directory = Path(directory)
    meta = json.loads((directory / CONFIG_NAME).read_text())
    save_card(directory, model_card(meta, task, metrics, base_model, repo_id))
    return directory / CARD_NAME


def is_ours(path: Path) -> bool:
    """Whether `path` is absent or a card this module wrote (its YAML header names the library)."""
    if not path.exists():
        return True
    head = path.read_text(encoding="utf-8", errors="replace")[:2000]
    return head.startswith("---") and "\nlibrary_name: learners\n" in head.split("\n---", 1)[0] + "\n"


def save_card(directory: Path, text: str) -> bool:
    """Write the card `text` as `directory`/README.md, unless a README.md there is not a learners card (the user's
    own: kept, with a warning). Returns whether it was written."""
    path = Path(directory) / CARD_NAME
    if not is_ours(path):
        import warnings
        warnings.warn(f"{path} is not a learners model card; it is kept as it is and no card is written there",
                      stacklevel=3)
        return False
    path.write_text(text, encoding="utf-8")
    return True


def _yaml_line(key: str, value) -> str:
    """`key: value`, lists as YAML lists; a string that is not a plain name (a path with spaces, a colon) as a JSON
    string, which is valid YAML."""
    if isinstance(value, list):
        return f"{key}:\n" + "\n".join(f"- {_yaml_value(v)}" for v in value)
    return f"{key}: {_yaml_value(value)}"


def _yaml_value(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z0-9_/][A-Za-z0-9_./-]*", value) else json.dumps(value)


def _labels_section(meta: dict, regression: bool) -> list[str]:
    if regression:
        return ["## Labels", "", "Regression: one output, the predicted value.", ""]
    id2label = meta.get("id2label") or {}
    if not id2label:
        return []
    rows = [f"| {i} | {label} |" for i, label in sorted(id2label.items(), key=lambda kv: int(kv[0]))]
    return ["## Labels", "", "| id | label |", "|---|---|", *rows, ""]


def _metrics_section(metrics: dict | None) -> list[str]:
    if not metrics:
        return []
    rows = [f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |"
            for name, value in metrics.items()]
    return ["## Results", "", "On the task's validation set:", "", "| metric | value |", "|---|---|", *rows, ""]


def _usage_section(base: str, repo_id: str | None) -> list[str]:
    where = f'"{repo_id}"' if repo_id else '"path/to/this/folder"'
    return ["## How to use", "", "```python",
            "from transformers import AutoModelForSequenceClassification",
            "from learners import LearnerModel", "",
            f'base = AutoModelForSequenceClassification.from_pretrained("{base}")',
            f"model = LearnerModel.from_pretrained(base, {where})   # frozen, eval mode; the saved head and labels",
            "merged = model.merge_and_unload()   # or merge: a plain transformers model, same outputs",
            'merged.save_pretrained("merged-model")', "```", "",
            "From the command line: `learners merge --learners DIR --base BASE --output merged-model`, or "
            "`learners predict --learners DIR --base BASE --input data.csv --output predictions.csv`.", ""]

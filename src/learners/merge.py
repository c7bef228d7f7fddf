"""`learners merge`: saved learners + their base model -> one plain transformers model directory."""

from pathlib import Path

from .errors import UsageError, check_output_path
from .learner import LearnerModel
from .finetune import TASK_FILE
from .models import load_model_and_tokenizer


def run_merge(base: str | None, learners_dir: str, output: str) -> Path:
    out = check_output_path(output, "--output")
    if not Path(learners_dir).is_dir():
        raise UsageError(f"--learners {learners_dir} does not exist; pass the learners directory a finetune run wrote (OUT/learners)")
    meta = LearnerModel.read_metadata(learners_dir)
    id2label = meta.get("id2label") or {}
    regression = meta.get("problem_type") == "regression"
    label_names = None if regression else [id2label[str(i)] for i in range(len(id2label))] or None
    num_labels = meta.get("num_labels") or (1 if regression else len(label_names or [0, 1]))
    model, tokenizer = load_model_and_tokenizer(base, num_labels, label_names)
    merged = LearnerModel.from_pretrained(model, learners_dir).merge_and_unload()
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    task_file = Path(learners_dir) / TASK_FILE  # text columns and labels, for `learners predict`
    if task_file.is_file():
        (out / TASK_FILE).write_text(task_file.read_text())
    return out

"""What a multi-label model's outputs mean: a label is predicted where its sigmoid score exceeds the threshold
(--threshold, default 0.5, saved with the run); the metrics (micro F1, the primary one, macro F1, and exact-match
accuracy: the whole label set right); and `learners predict`'s columns, the label set and with --scores each
label's sigmoid score (the scores of a row need not sum to 1).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from ..errors import UsageError

DEFAULT_THRESHOLD = 0.5


def check_threshold(threshold, flag: str = "--threshold") -> float:
    """A threshold in (0, 1); None: the default."""
    if threshold is None:
        return DEFAULT_THRESHOLD
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise UsageError(f"{flag} {threshold} is not a probability strictly between 0 and 1; a label is predicted where "
                         "its sigmoid score exceeds it (default 0.5)")
    return float(threshold)


def refuse_threshold(threshold, what: str) -> None:
    """--threshold given for a model or task that is not multi-label."""
    if threshold is not None:
        raise UsageError(f"--threshold applies to multi-label classification, and {what} is not multi-label; "
                         "drop --threshold")


def multi_label_metrics(predictions, labels) -> dict[str, float]:
    """Micro F1 (primary), macro F1 and exact-match accuracy of multi-hot `predictions` against multi-hot `labels`
    (n examples x k labels). A label that neither the gold sets nor the predictions hold scores F1 0 in the macro
    mean (scikit-learn's zero_division=0, as accuracy_macro_f1 does)."""
    p = np.asarray(predictions).astype(int)
    y = np.asarray(labels).astype(int)
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"predictions and labels must be multi-hot (examples x labels) of one shape, got {p.shape} "
                         f"and {y.shape}")
    if len(p) == 0:
        raise ValueError("cannot compute metrics on zero examples")
    return {"micro_f1": float(f1_score(y, p, average="micro", zero_division=0.0)),
            "macro_f1": float(f1_score(y, p, average="macro", zero_division=0.0)),
            "exact_match": float(accuracy_score(y, p))}


def multi_hot(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """The predicted label sets of a batch's logits as multi-hot rows: sigmoid score > threshold."""
    return (torch.sigmoid(logits) > threshold).int()


def label_set_text(labels: list[str], delimiter: str | None) -> str:
    """A label set as one CSV/TSV cell: joined by the training data's --label-delimiter, else a JSON list."""
    return json.dumps(labels) if delimiter is None else delimiter.join(labels)


def multi_label_columns(logits: torch.Tensor, id2label: dict, saved: dict, threshold: float | None,
                        scores: bool, as_lists: bool) -> dict[str, list]:
    """predict's columns for a multi-label model: `prediction`, the label set of each row (a list where `as_lists`,
    for JSON lines; else one text cell, see label_set_text), and with `scores` a `score_LABEL` column of sigmoid
    scores per label. `threshold` (predict --threshold) overrides the one saved with the run (`saved`, its task
    file)."""
    threshold = check_threshold(threshold if threshold is not None else saved.get("threshold"),
                                "--threshold" if threshold is not None else "the saved threshold")
    probabilities = torch.sigmoid(logits.double())
    names = [id2label[i] for i in range(probabilities.shape[1])]
    sets = [[names[j] for j in torch.nonzero(row > threshold).flatten().tolist()] for row in probabilities]
    delimiter = saved.get("label_delimiter")
    columns = {"prediction": sets if as_lists else [label_set_text(s, delimiter) for s in sets]}
    if scores:
        for j, name in enumerate(names):
            columns[f"score_{name}"] = [float(p) for p in probabilities[:, j]]
    return columns


def evaluation_threshold(task, threshold, delimiter) -> float | None:
    """finetune's threshold for its evaluations: --threshold (or the default) for a multi-label task, None for
    another, which takes neither --threshold nor --label-delimiter."""
    if task.is_multi_label:
        return check_threshold(threshold)
    refuse_threshold(threshold, f"task {task.name}")
    if delimiter is not None:
        raise UsageError(f"--label-delimiter splits the label cells of your own data (--train-file or --dataset) into "
                         f"label sets; task {task.name}'s labels are not split: drop it")
    return None


def saved_facts(threshold: float | None, delimiter: str | None) -> dict:
    """What a multi-label run's task file (learners_task.json) keeps for predict: the threshold and the delimiter
    its label cells were split by (None: JSON lists, or one label per cell). Nothing for another task."""
    return {} if threshold is None else {"threshold": threshold, "label_delimiter": delimiter}

"""The one shape every data source (GLUE files, the hub, user files) is turned into."""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets


@dataclass
class TaskData:
    """A text-classification or regression task, ready to tokenize.

    `train`, `validation` and each `extra_validation` dataset have the text
    columns plus "label": int64 class ids in `label_names` order, float32
    values for regression (`label_names is None`), or for multi-label data
    float32 multi-hot vectors over `label_names` (`is_multi_label`).
    """

    name: str  # GLUE task name ("cola") or "custom"
    text_columns: tuple[str, ...]  # one or two column names present in the datasets
    label_names: list[str] | None  # class names in label-id order; None for regression
    metric_kind: str  # key into metrics.METRICS, e.g. "matthews"
    train: datasets.Dataset
    validation: datasets.Dataset  # primary dev set
    extra_validation: dict[str, datasets.Dataset] = field(default_factory=dict)  # e.g. MNLI "mismatched"

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def is_multi_label(self) -> bool:
        """Label sets (multi_label.py): each "label" a float multi-hot vector over `label_names`."""
        return self.metric_kind == "multi_label"

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

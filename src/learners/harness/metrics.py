"""GLUE metrics, plus accuracy/macro-F1 for user classification data.

Each function takes (predictions, labels) and returns a dict of plain floats
whose FIRST key is the primary metric (the one used for model selection).
Predictions are class ids for classification and floats for regression.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

from ..errors import UsageError
from .multi_label_outputs import multi_label_metrics

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]


def _as_arrays(predictions, labels, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions, dtype=dtype)
    y = np.asarray(labels, dtype=dtype)
    if dtype is float:  # regression heads often give shape (n, 1)
        p, y = p.reshape(-1), y.reshape(-1)
    if p.ndim != 1 or y.ndim != 1:
        raise ValueError(f"predictions and labels must be 1-D (class ids or values), got shapes {p.shape} and {y.shape}")
    if p.shape != y.shape:
        raise ValueError(f"{len(p)} predictions but {len(y)} labels")
    if len(p) == 0:
        raise ValueError("cannot compute metrics on zero examples")
    return p, y


def _finite(x: float) -> float:
    """nan (from degenerate input) becomes 0.0, so model selection never compares with nan."""
    x = float(x)
    return x if np.isfinite(x) else 0.0


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(p == y))


def matthews(predictions, labels) -> dict[str, float]:
    p, y = _as_arrays(predictions, labels)
    return {"matthews_correlation": _finite(matthews_corrcoef(y, p))}


def accuracy(predictions, labels) -> dict[str, float]:
    p, y = _as_arrays(predictions, labels)
    return {"accuracy": _accuracy(p, y)}


def f1_accuracy(predictions, labels) -> dict[str, float]:
    """Binary F1 of class 1 (GLUE MRPC/QQP), then accuracy."""
    p, y = _as_arrays(predictions, labels)
    f1 = f1_score(y, p, pos_label=1, average="binary", zero_division=0.0)
    return {"f1": _finite(f1), "accuracy": _accuracy(p, y)}


def accuracy_macro_f1(predictions, labels) -> dict[str, float]:
    p, y = _as_arrays(predictions, labels)
    f1 = f1_score(y, p, average="macro", zero_division=0.0)
    return {"accuracy": _accuracy(p, y), "macro_f1": _finite(f1)}


def pearson_spearman(predictions, labels) -> dict[str, float]:
    p, y = _as_arrays(predictions, labels, dtype=float)
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(y) == 0:  # correlation undefined
        return {"pearson": 0.0, "spearman": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pearson = stats.pearsonr(p, y)[0]
        spearman = stats.spearmanr(p, y)[0]
    return {"pearson": _finite(pearson), "spearman": _finite(spearman)}


METRICS: dict[str, MetricFn] = {
    "matthews": matthews,
    "accuracy": accuracy,
    "f1_accuracy": f1_accuracy,
    "pearson_spearman": pearson_spearman,
    "accuracy_macro_f1": accuracy_macro_f1,
    "multi_label": multi_label_metrics,  # multi-hot predictions and labels
}

_PRIMARY = {
    "matthews": "matthews_correlation",
    "accuracy": "accuracy",
    "f1_accuracy": "f1",
    "pearson_spearman": "pearson",
    "accuracy_macro_f1": "accuracy",
    "multi_label": "micro_f1",
}


def _check_kind(kind: str) -> None:
    if kind not in METRICS:
        raise UsageError(f"unknown metric kind {kind!r}; use one of: {', '.join(METRICS)}.")


def compute_metrics(kind: str, predictions, labels) -> dict[str, float]:
    """Metrics of `kind` (a key of METRICS); the first key is the primary metric."""
    _check_kind(kind)
    return METRICS[kind](predictions, labels)


def primary_metric_name(kind: str) -> str:
    _check_kind(kind)
    return _PRIMARY[kind]

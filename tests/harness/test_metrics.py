"""Metrics against values computed by hand from their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from learners.errors import UsageError
from learners.harness.metrics import METRICS, compute_metrics, primary_metric_name

# labels and predictions with a known 2x2 confusion: TP=3, TN=2, FP=1, FN=2
LABELS = np.array([1, 1, 1, 1, 1, 0, 0, 0])
PREDS = np.array([1, 1, 1, 0, 0, 0, 0, 1])
TP, TN, FP, FN = 3, 2, 1, 2


def test_confusion_is_what_the_tests_assume():
    assert TP == np.sum((PREDS == 1) & (LABELS == 1)) and TN == np.sum((PREDS == 0) & (LABELS == 0))
    assert FP == np.sum((PREDS == 1) & (LABELS == 0)) and FN == np.sum((PREDS == 0) & (LABELS == 1))


def test_matthews_from_formula():
    expected = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))  # 4 / sqrt(4*5*3*4)
    result = compute_metrics("matthews", PREDS, LABELS)
    assert list(result) == ["matthews_correlation"]
    assert result["matthews_correlation"] == pytest.approx(expected)
    assert result["matthews_correlation"] == pytest.approx(4 / math.sqrt(240))


def test_matthews_constant_predictions_is_zero():
    assert compute_metrics("matthews", np.ones(4, dtype=int), np.array([0, 1, 0, 1])) == {"matthews_correlation": 0.0}


def test_accuracy():
    result = compute_metrics("accuracy", PREDS, LABELS)
    assert result == {"accuracy": pytest.approx((TP + TN) / 8)}
    assert type(result["accuracy"]) is float


def test_f1_accuracy_binary_class_1():
    precision, recall = TP / (TP + FP), TP / (TP + FN)
    result = compute_metrics("f1_accuracy", PREDS, LABELS)
    assert list(result) == ["f1", "accuracy"]
    assert result["f1"] == pytest.approx(2 * precision * recall / (precision + recall))  # = 2TP/(2TP+FP+FN) = 6/9
    assert result["f1"] == pytest.approx(6 / 9)
    assert result["accuracy"] == pytest.approx(5 / 8)


def test_f1_no_positive_predictions_is_zero_not_nan():
    assert compute_metrics("f1_accuracy", np.zeros(3, dtype=int), np.array([0, 1, 0]))["f1"] == 0.0


def test_accuracy_macro_f1_three_classes():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    # class 0: TP1 FP1 FN1 -> 2/4; class 1: TP2 FP1 FN0 -> 4/5; class 2: TP1 FP0 FN1 -> 2/3
    result = compute_metrics("accuracy_macro_f1", preds, labels)
    assert list(result) == ["accuracy", "macro_f1"]
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["macro_f1"] == pytest.approx((2 / 4 + 4 / 5 + 2 / 3) / 3)


def test_pearson_spearman_from_formula():
    preds = np.array([1.0, 2.0, 3.0, 5.0])
    labels = np.array([1.0, 3.0, 2.0, 4.0])
    dp, dl = preds - preds.mean(), labels - labels.mean()
    pearson = (dp * dl).sum() / math.sqrt((dp**2).sum() * (dl**2).sum())
    # ranks: preds 1,2,3,4; labels 1,3,2,4 -> d^2 = 0+1+1+0 = 2; rho = 1 - 6*2/(4*15) = 0.8
    result = compute_metrics("pearson_spearman", preds, labels)
    assert list(result) == ["pearson", "spearman"]
    assert result["pearson"] == pytest.approx(pearson)
    assert result["spearman"] == pytest.approx(0.8)
    assert all(type(v) is float for v in result.values())


def test_pearson_accepts_column_vector_predictions():
    preds = np.array([[0.5], [1.5], [2.0]], dtype=np.float32)
    assert compute_metrics("pearson_spearman", preds, np.array([0.0, 1.0, 3.0]))["spearman"] == pytest.approx(1.0)


def test_pearson_constant_predictions_is_zero_not_nan():
    result = compute_metrics("pearson_spearman", np.full(4, 2.5), np.array([0.0, 1.0, 2.0, 3.0]))
    assert result == {"pearson": 0.0, "spearman": 0.0}


def test_primary_metric_is_first_key_for_every_kind():
    preds, labels = np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])
    for kind in METRICS:  # (multi-label: multi-hot rows)
        p, y = (np.stack([preds, 1 - preds], 1), np.stack([labels, 1 - labels], 1)) if kind == "multi_label" else (preds, labels)
        assert primary_metric_name(kind) == next(iter(compute_metrics(kind, p, y)))
    assert primary_metric_name("matthews") == "matthews_correlation"
    assert primary_metric_name("f1_accuracy") == "f1"


def test_unknown_kind_and_bad_shapes():
    with pytest.raises(UsageError, match="unknown metric kind 'mcc'.*matthews"):
        compute_metrics("mcc", PREDS, LABELS)
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        compute_metrics("accuracy", np.array([0, 1, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="1-D"):
        compute_metrics("accuracy", np.zeros((2, 3)), np.array([0, 1]))

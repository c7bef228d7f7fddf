"""Entity-level scores of predicted tags (seqeval, its default mode, as conlleval scores CoNLL shared tasks): an
entity counts when its span and its type both match exactly. Precision, recall and F1 overall (micro-averaged
over entities) and per entity type, and the share of words tagged right; the primary metric is the overall F1."""

from __future__ import annotations

import warnings

PRIMARY = "entity_f1"


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Scores of `predicted` tag sequences against `gold` (one list of tags per sentence); the first key is the
    primary metric. Per type: f1_TYPE, precision_TYPE, recall_TYPE."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise ValueError("every sentence needs as many predicted tags as gold tags")
    words = sum(len(g) for g in gold)
    right = sum(g == p for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns where a type has no entity predicted (its score is 0)
        metrics = {PRIMARY: f1_score(gold, predicted, zero_division=0),
                   "entity_precision": precision_score(gold, predicted, zero_division=0),
                   "entity_recall": recall_score(gold, predicted, zero_division=0),
                   "token_accuracy": right / words if words else 0.0}
        report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    for kind, scores in sorted(report.items()):
        if kind.endswith(" avg"):
            continue
        for name in ("f1", "precision", "recall"):
            metrics[f"{name}_{kind}"] = scores[f"{name}-score" if name == "f1" else name]
    return {k: float(v) for k, v in metrics.items()}

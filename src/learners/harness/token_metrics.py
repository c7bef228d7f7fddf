"""Scores of predicted tags. IOB2 tags (named entities): entity-level scores (seqeval, its default mode, as
conlleval scores CoNLL shared tasks): an entity counts when its span and its type both match exactly. Precision,
recall and F1 overall (micro-averaged over entities) and per entity type, and the share of words tagged right; the
primary metric is the overall F1. Plain tags (part of speech, token_files.tag_scheme): the share of words tagged
right (primary) and the macro F1 over tags."""

from __future__ import annotations

import warnings

PRIMARY = "entity_f1"
TAG_PRIMARY = "token_accuracy"


def token_metrics(kind: str, gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """The scores of a token task whose metric_kind is `kind` (PRIMARY or TAG_PRIMARY); the first key is primary."""
    return entity_metrics(gold, predicted) if kind == PRIMARY else tag_metrics(gold, predicted)


def tag_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Word accuracy (primary) and the macro F1 over the tags of plain (non-IOB) tag sequences; per tag f1_TAG."""
    from sklearn.metrics import f1_score

    _check_lengths(gold, predicted)
    flat_gold = [t for tags in gold for t in tags]
    flat_predicted = [t for tags in predicted for t in tags]
    names = sorted(set(flat_gold))
    per_tag = f1_score(flat_gold, flat_predicted, labels=names, average=None, zero_division=0)
    metrics = {TAG_PRIMARY: sum(g == p for g, p in zip(flat_gold, flat_predicted)) / len(flat_gold) if flat_gold else 0.0,
               "tag_macro_f1": float(per_tag.mean()) if len(names) else 0.0}
    metrics.update({f"f1_{name}": float(f) for name, f in zip(names, per_tag)})
    return metrics


def _check_lengths(gold, predicted) -> None:
    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise ValueError("every sentence needs as many predicted tags as gold tags")


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Scores of `predicted` tag sequences against `gold` (one list of tags per sentence); the first key is the
    primary metric. Per type: f1_TYPE, precision_TYPE, recall_TYPE."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    _check_lengths(gold, predicted)
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

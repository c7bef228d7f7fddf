"""Early stopping on the dev metric, as transformers' EarlyStoppingCallback means it: the run stops once
`patience` evaluations in a row have not improved the best dev metric by more than `threshold`.

Decided from the run's history alone (not from a counter), so a run resumed from a checkpoint, whose history
is restored, stops at the very step an uninterrupted run does. Only the learner phase's evaluations count
(phase "train"): those of the primed and the just reconfigured model are reported, not kept as best."""


def evaluations_without_improvement(history: list[dict], threshold: float = 0.0) -> int:
    """How many of the last evaluations in `history` have not improved the best metric by more than `threshold`.

    As in transformers, the best metric follows every improvement, however small, while the count goes back to
    0 only when an evaluation beats the best by more than `threshold`."""
    best, count = None, 0
    for entry in history:
        if entry.get("phase", "train") != "train":
            continue
        metric = entry["metric"]
        if best is None or metric > best:
            count = 0 if best is None or metric - best > threshold else count + 1
            best = metric
        else:
            count += 1
    return count


def patience_exhausted(history: list[dict], patience: int, threshold: float = 0.0) -> bool:
    return evaluations_without_improvement(history, threshold) >= patience

"""A token classification model's tag for every word of every sentence: what evaluation scores and `learners
predict` writes. A word's tag is the one predicted at its first sub-token; a sentence longer than --max-length
is read in windows of whole words (token_data.word_windows); a word the tokenizer gives no sub-token (a control
character) is tagged O (outside_id: else the first tag)."""

from __future__ import annotations

import torch

from .token_data import check_fast_tokenizer, word_windows
from .token_metrics import token_metrics


def _pieces(tokenizer, sentences: list[list[str]], max_length: int) -> list[tuple[int, int, int]]:
    """(sentence, first word, end word) of each window to run."""
    return [(i, start, end) for i, tokens in enumerate(sentences)
            for start, end in word_windows(tokenizer, tokens, max_length)]


@torch.no_grad()
def _at_first_subtokens(model, tokenizer, sentences: list[list[str]], max_length: int, batch_size: int, per_position,
                        missing) -> list[list]:
    """`per_position(logits)` (a batch's logits -> a nested list per row and position) at each word's first
    sub-token, `missing` for a word without one."""
    check_fast_tokenizer(tokenizer)
    device = next(model.parameters()).device
    found = [[missing] * len(tokens) for tokens in sentences]
    pieces = sorted(_pieces(tokenizer, sentences, max_length), key=lambda p: p[2] - p[1])  # less padding
    for b in range(0, len(pieces), batch_size):
        batch = pieces[b:b + batch_size]
        encoded = tokenizer([sentences[i][start:end] for i, start, end in batch], is_split_into_words=True,
                            truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        values = per_position(model(**{k: v.to(device) for k, v in encoded.items()}).logits.float().cpu())
        for row, (i, start, _) in enumerate(batch):
            previous = None
            for position, word in enumerate(encoded.word_ids(row)):
                if word is not None and word != previous:
                    found[i][start + word] = values[row][position]
                previous = word
    return found


def outside_id(id2label: dict) -> int:
    """The id of the tag named O (else 0): a word the model cannot see is tagged with it."""
    return {v: int(k) for k, v in id2label.items()}.get("O", 0)


def word_predictions(model, tokenizer, sentences: list[list[str]], max_length: int, batch_size: int = 64,
                     outside: int | None = None) -> list[list[int]]:
    """The predicted label id of each word of each sentence (`outside`, O's id, for a word without a sub-token;
    default: the label named O, else 0)."""
    if outside is None:
        outside = outside_id(model.config.id2label)
    return _at_first_subtokens(model, tokenizer, sentences, max_length, batch_size,
                               lambda logits: logits.argmax(-1).tolist(), outside)


def word_probabilities(model, tokenizer, sentences: list[list[str]], max_length: int,
                       batch_size: int = 64) -> list[list[list[float] | None]]:
    """Each word's tag probabilities (the softmax at its first sub-token, in label id order); None for a word
    without a sub-token (tagged O by word_predictions)."""
    return _at_first_subtokens(model, tokenizer, sentences, max_length, batch_size,
                               lambda logits: logits.double().softmax(-1).tolist(), None)


def token_evaluator(validation, label_names: list[str], tokenizer, max_length: int, batch_size: int,
                    metric_kind: str):
    """evaluate(model) -> the metrics of `metric_kind` (entity or per-word scores, token_metrics.py) on
    `validation` (a TokenTaskData split), for the training loop."""
    columns = validation.to_dict()
    sentences = columns["tokens"]
    gold = [[label_names[i] for i in labels] for labels in columns["label"]]
    outside = outside_id(dict(enumerate(label_names)))

    def evaluate(model) -> dict:
        predicted = word_predictions(model, tokenizer, sentences, max_length, batch_size, outside)
        return token_metrics(metric_kind, gold, [[label_names[i] for i in ids] for ids in predicted])

    return evaluate

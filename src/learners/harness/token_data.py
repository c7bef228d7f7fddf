"""Token classification tasks (`--task-type token-classification`): tagged sentences (token_files.py) -> a task,
and its word tags aligned to the tokenizer's sub-tokens as transformers' token-classification examples
(run_ner.py) align them.

A word's first sub-token carries its tag; the other sub-tokens and the special tokens get -100, which the
loss ignores. With `--label-all-subtokens` every sub-token carries its word's tag, a B- tag's continuation
sub-tokens the I- tag of the same type (run_ner's b_to_i_label). Evaluation and prediction always read a
word's tag from its first sub-token, so that scores are per word and alike under both.

A training sentence longer than --max-length is an error naming it: truncating it would drop the tags of
its last words silently. Evaluation and prediction split a long sentence into windows of whole words
instead, so every word gets a tag.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from ..errors import UsageError
from .distributed import log
from .task_data import TaskData
from .token_files import Sentence, read_sentences, tag_scheme
from .token_metrics import PRIMARY as ENTITY_METRIC, TAG_PRIMARY

TASK_TYPE = "token-classification"
IGNORED = -100  # the label the loss ignores (torch's CrossEntropyLoss ignore_index)


@dataclass
class TokenTaskData(TaskData):
    """A token classification task: `train` and `validation` have "tokens" (the words), "label" (one tag id per
    word, `label_names` order) and "where" (where the sentence is in its file)."""

    label_all_subtokens: bool = False


def is_token_task(task) -> bool:
    return isinstance(task, TokenTaskData)


def task_file_facts(task) -> dict:
    """What the saved task file (learners_task.json) says of the task type, for predict and merge."""
    return {"task_type": TASK_TYPE} if is_token_task(task) else {}


def is_token_task_file(saved: dict | None) -> bool:
    """Whether a saved task file (learners_task.json's content) is a token classification task's."""
    return isinstance(saved, dict) and saved.get("task_type") == TASK_TYPE


def _dataset(sentences: list[Sentence], ids: dict[str, int]) -> datasets.Dataset:
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "label": datasets.Sequence(datasets.Value("int64")), "where": datasets.Value("string")})
    return datasets.Dataset.from_dict({"tokens": [s.tokens for s in sentences],
                                       "label": [[ids[t] for t in s.tags] for s in sentences],
                                       "where": [s.where for s in sentences]}, features=features)


def label_list(train: list[Sentence]) -> list[str]:
    """The training tags, sorted as run_ner sorts them (O after the B- and I- tags)."""
    names = sorted({t for s in train for t in s.tags})
    if len(names) < 2:
        raise UsageError(f"every tag in the training sentences is {names[0]!r}; a tagger needs at least two tags "
                         "(e.g. O and B-PER): check --tag-column")
    return names


def check_known_tags(validation: list[Sentence], ids: dict[str, int]) -> None:
    for s in validation:
        for token, tag in zip(s.tokens, s.tags):
            if tag not in ids:
                raise UsageError(f"tag {tag!r} of token {token!r} in the validation sentence at {s.where} never occurs "
                                 "in the training data; add training sentences with it, or fix that tag")


def load_token_task(train_file, validation_file, tag_column: str | None = None,
                    label_all_subtokens: bool = False) -> TokenTaskData:
    """The task of a training and a validation file of tagged sentences (CoNLL or JSON lines)."""
    if validation_file is None:
        raise UsageError("token classification needs --validation-file too (tagged sentences, like --train-file)")
    train = read_sentences(train_file, "--train-file", tag_column)
    validation = read_sentences(validation_file, "--validation-file", tag_column)
    scheme = tag_scheme(train, validation)
    names = label_list(train)
    if scheme == "tags":
        log(f"learners: the tags have no B-/I- prefixes ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): "
            f"scored per word ({TAG_PRIMARY}, tag_macro_f1), not by entity")
    ids = {name: i for i, name in enumerate(names)}
    check_known_tags(validation, ids)
    return TokenTaskData(name="custom", text_columns=("tokens",), label_names=names, metric_kind=ENTITY_METRIC if scheme == "entities" else TAG_PRIMARY,
                         train=_dataset(train, ids), validation=_dataset(validation, ids), extra_validation={},
                         label_all_subtokens=label_all_subtokens)


def check_fast_tokenizer(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"token classification maps sub-tokens to words with a fast tokenizer; this model's "
                         f"({type(tokenizer).__name__}) is not one: use a model with a tokenizer.json")


def continuation_ids(label_names: list[str]) -> list[int]:
    """Each tag's id on a word's later sub-tokens with --label-all-subtokens: B-X's is I-X's (if a tag)."""
    ids = {name: i for i, name in enumerate(label_names)}
    return [ids.get("I-" + name[2:], i) if name.startswith("B-") else i for i, name in enumerate(label_names)]


def align_labels(word_ids: list[int | None], word_labels: list[int], all_subtokens: bool,
                 continuation: list[int] | None = None) -> list[int]:
    """One label per sub-token: the word's on its first sub-token; on the others -100, or with `all_subtokens`
    the word's continuation label; -100 on special tokens (word id None)."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORED)
        elif word != previous:
            labels.append(word_labels[word])
        else:
            labels.append(continuation[word_labels[word]] if all_subtokens else IGNORED)
        previous = word
    return labels


def too_long(where: str, length: int, max_length: int) -> UsageError:
    return UsageError(f"the training sentence at {where} is {length} tokens long with the special tokens, more "
                      f"than --max-length {max_length}, and its last tags would be lost; raise --max-length (up to "
                      "the model's limit) or split the sentence in the file")


def encode_tokens(dataset: datasets.Dataset, task: TokenTaskData, tokenizer, max_length: int) -> datasets.Dataset:
    """input_ids, attention_mask (token_type_ids) and aligned `labels` of each training sentence."""
    check_fast_tokenizer(tokenizer)
    columns = dataset.to_dict()
    encoded = tokenizer(columns["tokens"], is_split_into_words=True, truncation=False)
    continuation = continuation_ids(task.label_names)
    labels, unseen = [], 0
    for i, (words, where) in enumerate(zip(columns["label"], columns["where"])):
        word_ids = encoded.word_ids(i)
        if len(word_ids) > max_length:
            raise too_long(where, len(word_ids), max_length)
        unseen += len(words) - len({w for w in word_ids if w is not None})
        labels.append(align_labels(word_ids, words, task.label_all_subtokens, continuation))
    if unseen:
        log(f"note: {unseen} training word(s) have no sub-token in this tokenizer (e.g. control characters); their "
            "tags are not trained on")
    return datasets.Dataset.from_dict({**{k: list(v) for k, v in encoded.items()}, "labels": labels})


def word_windows(tokenizer, tokens: list[str], max_length: int) -> list[tuple[int, int]]:
    """(start, end) word ranges that fit `max_length` with the special tokens: the whole sentence where it fits,
    else windows of whole words (a single word longer than that is a window of its own, cut to its first
    sub-tokens, which hold its tag)."""
    budget = max_length - tokenizer.num_special_tokens_to_add()
    pieces = [0] * len(tokens)
    for word in tokenizer(tokens, is_split_into_words=True, add_special_tokens=False).word_ids():
        if word is not None:
            pieces[word] += 1
    if sum(pieces) <= budget:
        return [(0, len(tokens))]
    windows, start, used = [], 0, 0
    for i, count in enumerate(pieces):
        if used + count > budget and i > start:
            windows.append((start, i))
            start, used = i, 0
        used += count
    windows.append((start, len(tokens)))
    return windows

"""`learners predict` with a token classification model: a tag for every word of every input sentence.

The input is read as training data is (token_files.py: CoNLL or JSON lines; its tags, if any, are kept, not
used). The output follows --output's suffix: CoNLL (.conll, .iob, .bio, .txt) writes each input line with the
predicted tag as one more column (so a tagged input gives `token gold predicted`, conlleval's layout), a blank
line between sentences; JSON lines (.jsonl) writes each sentence's record (or its tokens) with a `prediction`
list, one tag per token, as sentence predictions add a `prediction` column.

With `predict --learners` (several token runs' learners on one backbone), a `prediction_TASK` per task (CoNLL: a
column per task, in the order given).

With --scores, each word's tag probabilities (the softmax at its first sub-token): in JSON lines a `scores` list,
per token a {tag: probability} object for every tag; in CoNLL one more column after each tag, the predicted tag's
probability (a column per tag would bury the tags). With --scores or several tasks the predicted tag is no longer
the last CoNLL column, as conlleval reads it. A word without a sub-token (a control character) is tagged O (else
the first tag) with no scores: null, or an empty cell."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from .files import replaced_atomically
from .token_files import CONLL_SUFFIXES, read_sentences
from .token_inference import outside_id, word_predictions, word_probabilities

OUTPUT_SUFFIXES = (*CONLL_SUFFIXES, ".jsonl")


def check_token_output(out: Path, sentence_flags: list[str]) -> None:
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--output {out.name}: a token classification model writes a tag per word, as CoNLL (.conll) "
                         "or JSON lines (.jsonl); choose one of those")
    if sentence_flags:
        raise UsageError(f"{' and '.join(sentence_flags)} {'is' if len(sentence_flags) == 1 else 'are'} for "
                         "sentence-level inputs; a token classification model reads CoNLL or JSON-lines sentences: "
                         "drop it")


def write_predictions(out: Path, sentences, tags: dict[str, list[list[str]]], label_names: dict[str, list[str]],
                      probabilities: dict[str, list[list[list[float] | None]]] | None = None) -> None:
    """Each task's tags per word of each sentence into `out` (CoNLL or JSON lines by its suffix), the task "" as
    `prediction` (one model), another as `prediction_TASK` (predict --learners; CoNLL: a column per task, in
    order); with `probabilities`, the scores too (see the module's docstring)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.suffix.lower() == ".jsonl"
    with replaced_atomically(out) as partial, open(partial, "w", encoding="utf-8", newline="\n") as f:
        for k, sentence in enumerate(sentences):
            if jsonl:
                record = dict(sentence.record if sentence.record is not None else {"tokens": sentence.tokens})
                for task, task_tags in tags.items():
                    record[_key("prediction", task)] = task_tags[k]
                    if probabilities is not None:
                        record[_key("scores", task)] = [None if p is None else dict(zip(label_names[task], p))
                                                        for p in probabilities[task][k]]
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                continue
            lines = sentence.columns or [[token] for token in sentence.tokens]
            for w, cells in enumerate(lines):
                row = list(cells)
                for task, task_tags in tags.items():
                    row.append(task_tags[k][w])
                    if probabilities is not None:
                        p = probabilities[task][k][w]
                        row.append("" if p is None else f"{max(p):.6f}")
                f.write("\t".join(row) + "\n")
            f.write("\n")


def _key(kind: str, task: str) -> str:
    return f"{kind}_{task}" if task else kind


def tag_words(model, tokenizer, sentences, max_length: int, batch_size: int,
              scores: bool) -> tuple[list, list[str], list | None]:
    """The model's tags for each word of `sentences`, its tag names in id order, and with `scores` the words'
    probabilities (else None: a list of every tag's probability per word is kept only when asked for)."""
    model.eval()
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    label_names = [id2label[i] for i in range(len(id2label))]
    words = [s.tokens for s in sentences]
    if not scores:
        ids = word_predictions(model, tokenizer, words, max_length, batch_size)
        return [[label_names[i] for i in sentence] for sentence in ids], label_names, None
    probabilities = word_probabilities(model, tokenizer, words, max_length, batch_size)
    outside = outside_id(id2label)
    tags = [[label_names[outside if p is None else max(range(len(p)), key=p.__getitem__)] for p in sentence]
            for sentence in probabilities]
    return tags, label_names, probabilities


def run_token_predict(model, tokenizer, input_file: str, out: Path, batch_size: int, max_length: int,
                      scores: bool = False, sentence_flags: list[str] | None = None, input_flag: str = "--input") -> int:
    """Write the predicted tags of `input_file`'s sentences (and with `scores` their probabilities) to `out`; return
    the number of sentences."""
    check_token_output(out, sentence_flags or [])
    sentences = read_sentences(input_file, input_flag, tags=False)
    tags, label_names, probabilities = tag_words(model, tokenizer, sentences, max_length, batch_size, scores)
    write_predictions(out, sentences, {"": tags}, {"": label_names}, {"": probabilities} if scores else None)
    return len(sentences)


def run_token_predict_sets(learner_model, tokenizer, names: list[str], input_file: str, out: Path, batch_size: int,
                           max_length: int, scores: bool = False, sentence_flags: list[str] | None = None) -> int:
    """predict --learners with token classification runs: each learner set (`names`) tags every word of
    `input_file`'s sentences on the one loaded backbone; a `prediction_NAME` per task into `out`."""
    check_token_output(out, sentence_flags or [])
    sentences = read_sentences(input_file, "--input", tags=False)
    tags, label_names, probabilities = {}, {}, {}
    for name in names:
        learner_model.set_learners(name)
        tags[name], label_names[name], probabilities[name] = tag_words(learner_model, tokenizer, sentences, max_length,
                                                                       batch_size, scores)
    write_predictions(out, sentences, tags, label_names, probabilities if scores else None)
    return len(sentences)


def is_token_model(model) -> bool:
    return type(model).__name__.endswith("ForTokenClassification")


def token_model_class(path: Path):
    """AutoModelForTokenClassification where `path`'s config.json names a token classification architecture."""
    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return None
    if any(str(a).endswith("ForTokenClassification") for a in architectures):
        from transformers import AutoModelForTokenClassification
        return AutoModelForTokenClassification
    return None

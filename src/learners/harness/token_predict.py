"""`learners predict` with a token classification model: a tag for every word of every input sentence.

The input is read as training data is (token_files.py: CoNLL or JSON lines; its tags, if any, are kept, not
used). The output follows --output's suffix: CoNLL (.conll, .iob, .bio, .txt) writes each input line with the
predicted tag as one more column (so a tagged input gives `token gold predicted`, conlleval's layout), a blank
line between sentences; JSON lines (.jsonl) writes each sentence's record (or its tokens) with a `prediction`
list, one tag per token, as sentence predictions add a `prediction` column."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from .files import replaced_atomically
from .token_files import CONLL_SUFFIXES, read_sentences
from .token_inference import word_predictions

OUTPUT_SUFFIXES = (*CONLL_SUFFIXES, ".jsonl")


def check_token_output(out: Path, scores: bool, sentence_flags: list[str]) -> None:
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--output {out.name}: a token classification model writes a tag per word, as CoNLL (.conll) "
                         "or JSON lines (.jsonl); choose one of those")
    if scores:
        raise UsageError("--scores writes class probabilities of sentence-level models; a token classification "
                         "model's predictions are tags per word: drop --scores")
    if sentence_flags:
        raise UsageError(f"{' and '.join(sentence_flags)} {'is' if len(sentence_flags) == 1 else 'are'} for "
                         "sentence-level inputs; a token classification model reads CoNLL or JSON-lines sentences: "
                         "drop it")


def write_predictions(out: Path, sentences, tags: list[list[str]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(out) as partial, open(partial, "w", encoding="utf-8", newline="\n") as f:
        for sentence, predicted in zip(sentences, tags):
            if out.suffix.lower() == ".jsonl":
                record = sentence.record if sentence.record is not None else {"tokens": sentence.tokens}
                f.write(json.dumps({**record, "prediction": predicted}, ensure_ascii=False) + "\n")
                continue
            lines = sentence.columns or [[token] for token in sentence.tokens]
            f.write("".join("\t".join([*cells, tag]) + "\n" for cells, tag in zip(lines, predicted)) + "\n")


def run_token_predict(model, tokenizer, input_file: str, out: Path, batch_size: int, max_length: int,
                      scores: bool = False, sentence_flags: list[str] | None = None) -> int:
    """Write the predicted tags of `input_file`'s sentences to `out`; return the number of sentences."""
    check_token_output(out, scores, sentence_flags or [])
    sentences = read_sentences(input_file, "--input", tags=False)
    model.eval()
    ids = word_predictions(model, tokenizer, [s.tokens for s in sentences], max_length, batch_size)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    write_predictions(out, sentences, [[id2label[i] for i in row] for row in ids])
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

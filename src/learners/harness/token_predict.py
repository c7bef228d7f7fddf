"""`learners predict` with a token classification model: a tag for every word of every input sentence.

The input is read as training data is (token_files.py: CoNLL or JSON lines; its tags, if any, are kept, not
used). The output follows --output's suffix: CoNLL (.conll, .iob, .bio, .txt) writes each input line with the
predicted tag as one more column (so a tagged input gives `token gold predicted`, conlleval's layout), a blank
line between sentences; JSON lines (.jsonl) writes each sentence's record (or its tokens) with a `prediction`
list, one tag per token, as sentence predictions add a `prediction` column.

With --scores, each word's tag probabilities (the softmax at its first sub-token): in JSON lines a `scores` list,
per token a {tag: probability} object for every tag; in CoNLL one more column, the predicted tag's probability (a
column per tag would bury the tags). A word without a sub-token (a control character) is tagged O with no scores:
null, or an empty cell."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from .files import replaced_atomically
from .token_files import CONLL_SUFFIXES, read_sentences
from .token_inference import outside_id, word_probabilities

OUTPUT_SUFFIXES = (*CONLL_SUFFIXES, ".jsonl")


def check_token_output(out: Path, sentence_flags: list[str]) -> None:
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--output {out.name}: a token classification model writes a tag per word, as CoNLL (.conll) "
                         "or JSON lines (.jsonl); choose one of those")
    if sentence_flags:
        raise UsageError(f"{' and '.join(sentence_flags)} {'is' if len(sentence_flags) == 1 else 'are'} for "
                         "sentence-level inputs; a token classification model reads CoNLL or JSON-lines sentences: "
                         "drop it")


def write_predictions(out: Path, sentences, tags: list[list[str]], label_names: list[str],
                      probabilities: list[list[list[float] | None]] | None = None) -> None:
    """`tags` per word of each sentence into `out` (CoNLL or JSON lines by its suffix); with `probabilities`, the
    scores too (see the module's docstring)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.suffix.lower() == ".jsonl"
    with replaced_atomically(out) as partial, open(partial, "w", encoding="utf-8", newline="\n") as f:
        for k, (sentence, predicted) in enumerate(zip(sentences, tags)):
            scores = probabilities[k] if probabilities is not None else None
            if jsonl:
                record = sentence.record if sentence.record is not None else {"tokens": sentence.tokens}
                record = {**record, "prediction": predicted}
                if scores is not None:
                    record["scores"] = [None if p is None else dict(zip(label_names, p)) for p in scores]
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                continue
            lines = sentence.columns or [[token] for token in sentence.tokens]
            for w, (cells, tag) in enumerate(zip(lines, predicted)):
                extra = [] if scores is None else ["" if scores[w] is None else f"{max(scores[w]):.6f}"]
                f.write("\t".join([*cells, tag, *extra]) + "\n")
            f.write("\n")


def run_token_predict(model, tokenizer, input_file: str, out: Path, batch_size: int, max_length: int,
                      scores: bool = False, sentence_flags: list[str] | None = None, input_flag: str = "--input") -> int:
    """Write the predicted tags of `input_file`'s sentences (and with `scores` their probabilities) to `out`; return
    the number of sentences."""
    check_token_output(out, sentence_flags or [])
    sentences = read_sentences(input_file, input_flag, tags=False)
    model.eval()
    probabilities = word_probabilities(model, tokenizer, [s.tokens for s in sentences], max_length, batch_size)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    label_names = [id2label[i] for i in range(len(id2label))]
    outside = outside_id(id2label)
    tags = [[label_names[outside if p is None else max(range(len(p)), key=p.__getitem__)] for p in sentence]
            for sentence in probabilities]
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

"""Files of tagged sentences (token classification, e.g. named-entity recognition) -> Sentences.

Two layouts:

- CoNLL: one token per line, its columns separated by tabs (or by spaces where a line has no tab), the token
  first and the tag in the column `--tag-column` names (a number from 1; default the last). Sentences are
  separated by an empty line, or a line holding only whitespace (WNUT 2017 separates some by a lone tab);
  CoNLL-2003's `-DOCSTART-` lines are skipped. Files ending in .conll, .iob, .iob2, .bio or .txt.
- JSON lines (.jsonl, or a .json file holding a list of records): `{"tokens": [...], "tags": [...]}`, the tags'
  key named by `--tag-column` (default tags; ner_tags is found too).

Each Sentence keeps where it starts (file and line), so that every error names it, and what it was read from
(its CoNLL lines, its JSON record), so that `learners predict` writes its input back with the predicted tags.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError

CONLL_SUFFIXES = (".conll", ".iob", ".iob2", ".bio", ".txt")
JSON_SUFFIXES = (".jsonl", ".json")
TAG_KEYS = ("tags", "ner_tags")  # the JSON key of the tags where --tag-column names none
# IOB2 (and IOB1, IOE, IOBES, which seqeval's default mode reads too): O, or a prefix and an entity type
TAG = re.compile(r"O|[BIES]-\S.*")
ENTITY_TAG = re.compile(r"[BIES]-\S.*")


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str] | None  # None where the file has no tags (predict's input)
    where: str  # "train.conll line 12": where the sentence starts
    columns: list[list[str]] = field(default_factory=list)  # CoNLL: each token's line, split into its columns
    record: dict | None = None  # JSON lines: the object read


def is_conll(path: Path) -> bool:
    return path.suffix.lower() in CONLL_SUFFIXES


def read_sentences(file, flag: str, tag_column: str | None = None, tags: bool = True) -> list[Sentence]:
    """The sentences of `file` (`flag` names it in errors); with `tags` False the tags may be missing."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise UsageError(f"{flag} {path} does not exist; check the path.")
    suffix = path.suffix.lower()
    if suffix not in CONLL_SUFFIXES + JSON_SUFFIXES:
        raise UsageError(f"{flag} {path.name}: token classification reads CoNLL files (.conll, .iob, .bio, .txt: a "
                         "token and its tag per line) or JSON lines (.jsonl: {\"tokens\": [...], \"tags\": [...]}); "
                         f"got {suffix or '(no suffix)'!r}")
    try:
        sentences = _read_conll(path, tag_column, tags) if is_conll(path) else _read_json(path, tag_column, tags)
    except UnicodeDecodeError as e:
        raise UsageError(f"{flag} {path.name} is not UTF-8 text ({e.reason}); save it with UTF-8 encoding.") from e
    if not sentences:
        raise UsageError(f"{flag} {path.name} holds no sentences; add at least one tagged sentence")
    return sentences


def conll_tag_index(tag_column: str | None, width: int, where: str) -> int:
    """The 0-based column of the tag in a CoNLL line of `width` columns (--tag-column counts from 1)."""
    if tag_column is None:
        if width < 2:
            raise UsageError(f"{where} has {width} column, a token without a tag; write token<TAB>tag (or fix the "
                             "line), or pass --tag-column if the tags are elsewhere")
        return width - 1
    try:
        number = int(tag_column)
    except ValueError:
        raise UsageError(f"--tag-column {tag_column!r}: in a CoNLL file the tag column is a number from 1 (the token "
                         "is column 1), e.g. --tag-column 4 for CoNLL-2003's NER tags") from None
    if number < 2:
        raise UsageError(f"--tag-column {number}: column 1 is the token; the tag column is 2 or more (default: the last)")
    if number > width:
        raise UsageError(f"{where} has {width} column{'s' if width != 1 else ''}, fewer than --tag-column {number} "
                         "needs; fix the line, or pass the --tag-column of the tags")
    return number - 1


def _read_conll(path: Path, tag_column: str | None, tags: bool) -> list[Sentence]:
    sentences, current = [], None
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("-DOCSTART-"):
                current = None
                continue
            cells = line.split("\t") if "\t" in line else line.split()
            if current is None:
                current = Sentence([], [] if tags else None, f"{path.name} line {n}")
                sentences.append(current)
            current.tokens.append(cells[0])
            current.columns.append(cells)
            if tags:
                current.tags.append(cells[conll_tag_index(tag_column, len(cells), f"{path.name} line {n}")].strip())
    return sentences


def _json_tag_key(obj: dict, tag_column: str | None) -> str | None:
    if tag_column is not None:
        return tag_column
    return next((k for k in TAG_KEYS if k in obj), None)


def _read_json(path: Path, tag_column: str | None, tags: bool) -> list[Sentence]:
    from .tables import _json_items

    with open(path, encoding="utf-8-sig") as f:
        items, unit = _json_items(path, f.read())
    sentences = []
    for n, obj in items:
        where = f"{path.name} {unit} {n}"
        if not isinstance(obj, dict) or not isinstance(obj.get("tokens"), list):
            raise UsageError(f"{where} has no \"tokens\" list; write one object per line, like "
                             '{"tokens": ["Paris", "is", "nice"], "tags": ["B-LOC", "O", "O"]}')
        key = _json_tag_key(obj, tag_column)
        if tags and (key is None or not isinstance(obj.get(key), list)):
            raise UsageError(f"{where} has no tag list ({tag_column or ' or '.join(TAG_KEYS)}); give each sentence its "
                             "tags, or pass --tag-column with their key")
        words = [w if isinstance(w, str) else json.dumps(w) for w in obj["tokens"]]
        labels = [t if isinstance(t, str) else json.dumps(t) for t in obj[key]] if tags else None
        if tags and len(labels) != len(words):
            raise UsageError(f"{where} has {len(words)} tokens but {len(labels)} tags; give every token one tag")
        if not words:
            raise UsageError(f"{where} is an empty sentence (no tokens); drop it or give it its tokens")
        sentences.append(Sentence(words, labels, where, record=obj))
    return sentences


def tag_scheme(*splits: list[Sentence]) -> str:
    """"entities" where every tag is O or PREFIX-TYPE (B-, I-, and E-, S-: scored by entity, token_metrics.py);
    "tags" where no tag has such a prefix and none is O (part-of-speech tags and the like: scored per word).
    Errors: a mix (a B-/I- tag beside plain ones is a typo far more often than a scheme), O beside plain tags
    (entities without their B-/I- prefixes: per-word accuracy would hide them behind O), tags that are all numbers
    (a data set's class ids: the names are needed), and an empty tag."""
    tagged = [(s, token, tag) for split in splits for s in split for token, tag in zip(s.tokens, s.tags)]
    for s, token, tag in tagged:
        if not tag.strip():
            raise UsageError(f"token {token!r} in the sentence at {s.where} has an empty tag; give every token its "
                             "tag, or check --tag-column")
    if all(tag.strip().lstrip("-").isdigit() for _, _, tag in tagged):
        raise UsageError(f"the tags are numbers ({', '.join(sorted({t for _, _, t in tagged}, key=int)[:4])}, ...), a "
                         "data set's class ids: write the tag names instead (a Hugging Face set keeps them in its "
                         "ner_tags feature's names), e.g. O, B-PER, I-PER")
    if all(TAG.fullmatch(tag) for _, _, tag in tagged):
        return "entities"
    if not any(ENTITY_TAG.fullmatch(tag) for _, _, tag in tagged):
        s, token, tag = next(x for x in tagged if x[2] != "O") if any(t == "O" for _, _, t in tagged) else (None,) * 3
        if s is None:
            return "tags"
        raise UsageError(f"tag {tag!r} of token {token!r} in the sentence at {s.where} has no B-/I- prefix, beside O "
                         "tags: entity tags without prefixes (the IO scheme) cannot be scored by entity; write them "
                         "in IOB2 (B-TYPE on an entity's first word, I-TYPE on the rest)")
    s, token, tag = next(x for x in tagged if not TAG.fullmatch(x[2]))
    raise UsageError(f"tag {tag!r} of token {token!r} in the sentence at {s.where} is not an IOB2 tag (O, B-TYPE or "
                     "I-TYPE, e.g. B-PER), but other tags are: entity scores need every tag in IOB2; rewrite the tags, "
                     "or check --tag-column (tags without any B-/I- prefix, such as part-of-speech tags, are scored "
                     "per word)")

"""GLUE readers on the real files in ../shared/glue, plus the source fallback logic."""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import numpy as np
import pytest

from learners.harness import glue
from learners.errors import UsageError
from learners.harness.glue import GLUE_TASKS, load_glue

GLUE = Path(__file__).resolve().parents[3] / "shared" / "glue"
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE data not found at {GLUE} (expected ../shared/glue beside the repo)")

COUNTS = {
    "cola": (8551, 1043),
    "sst2": (67349, 872),
    "mrpc": (3668, 408),
    "rte": (2490, 277),
    "stsb": (5749, 1500),
    "wnli": (635, 71),
}


@pytest.fixture(autouse=True)
def no_glue_dir(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)


def _hub_must_not_be_called(*args, **kwargs):
    raise AssertionError("the hub must not be used when a local source has the task")


@pytest.fixture(scope="module")
def loaded():
    """Each local task loaded once for the module (SST-2 is 67k rows)."""
    if not GLUE.is_dir():
        pytest.skip(f"GLUE data not found at {GLUE}")
    return {task: load_glue(task, GLUE) for task in COUNTS}


@needs_glue
@pytest.mark.parametrize("task", sorted(COUNTS))
def test_real_files_row_counts_and_labels(loaded, task):
    data = loaded[task]
    spec = GLUE_TASKS[task]
    assert (len(data.train), len(data.validation)) == COUNTS[task]
    assert data.name == task
    assert data.text_columns == spec.text_columns
    assert data.metric_kind == spec.metric_kind
    assert data.extra_validation == {}
    for split in (data.train, data.validation):
        assert split.column_names == [*spec.text_columns, "label"]
        for column in spec.text_columns:
            assert all(text.strip() for text in split[column]), f"empty {column} in {task}"
        labels = np.asarray(split["label"])
        if data.is_regression:
            assert split.features["label"].dtype == "float32"
        else:
            assert split.features["label"].dtype == "int64"
            assert labels.min() >= 0 and labels.max() < data.num_labels
            assert len(set(labels.tolist())) == data.num_labels  # both classes occur in every split


@needs_glue
def test_stsb_scores_are_floats_in_range(loaded):
    data = loaded["stsb"]
    assert data.is_regression and data.num_labels == 1 and data.label_names is None
    for split in (data.train, data.validation):
        scores = np.asarray(split["label"])
        assert scores.min() >= 0.0 and scores.max() <= 5.0
        assert not np.allclose(scores, np.round(scores))  # real fractional scores, not truncated ints
    assert math.isclose(data.train[0]["label"], 5.0) and math.isclose(data.train[1]["label"], 3.8, rel_tol=1e-6)


@needs_glue
def test_rte_labels_mapped_from_words(loaded):
    data = loaded["rte"]
    assert data.label_names == ["entailment", "not_entailment"]
    # RTE/train.tsv row 0 is "not_entailment", dev row 0 is "not_entailment" too.
    assert data.train[0]["label"] == 1
    assert data.train[0]["sentence1"] == "No Weapons of Mass Destruction Found in Iraq Yet."
    counts = np.bincount(data.train["label"])
    assert counts.tolist() == [1249, 1241]


@needs_glue
def test_mrpc_has_no_bom_and_right_columns(loaded):
    data = loaded["mrpc"]
    first = data.train[0]
    for value in first.values():
        if isinstance(value, str):
            assert "\ufeff" not in value
    assert first["sentence1"].startswith("Amrozi accused his brother")
    assert first["label"] == 1
    assert data.metric_kind == "f1_accuracy"


@needs_glue
def test_cola_headerless_and_quotes_kept(loaded):
    data = loaded["cola"]
    assert data.train[0] == {"sentence": "Our friends won't buy this analysis, let alone the next one we propose.", "label": 1}
    assert data.label_names == ["unacceptable", "acceptable"]
    # quoting is disabled: a sentence with a double quote is kept verbatim, not merged with the next row
    assert any('"' in s for s in data.train["sentence"])


@needs_glue
def test_data_dir_may_be_the_task_folder_itself(monkeypatch):
    monkeypatch.setattr(glue.datasets, "load_dataset", _hub_must_not_be_called)
    data = load_glue("WNLI", GLUE / "WNLI")
    assert (len(data.train), len(data.validation)) == COUNTS["wnli"]


@needs_glue
def test_glue_dir_env_used_when_no_data_dir(monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(GLUE))
    monkeypatch.setattr(glue.datasets, "load_dataset", _hub_must_not_be_called)
    data = load_glue("rte")
    assert (len(data.train), len(data.validation)) == COUNTS["rte"]


def test_missing_data_dir_names_the_path(tmp_path):
    missing = tmp_path / "no_such_glue"
    with pytest.raises(UsageError, match=r"--data-dir .*no_such_glue does not exist.*RTE/train\.tsv"):
        load_glue("rte", missing)


def test_unknown_task_lists_known_tasks():
    with pytest.raises(UsageError) as info:
        load_glue("colaa")
    message = str(info.value)
    assert "'colaa'" in message and "--train-file" in message
    for task in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"):
        assert task in message
    assert "\n" not in message


def test_all_sources_failing_gives_one_error_naming_all_three(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(glue.datasets, "load_dataset", offline)
    with pytest.raises(UsageError) as info:
        load_glue("mnli")
    message = str(info.value)
    assert "no --data-dir given" in message
    assert "GLUE_DIR is not set" in message
    assert "nyu-mll/glue" in message and "ConnectionError" in message and "Couldn't reach" in message
    assert "--data-dir DIR" in message and "MNLI/train.tsv" in message  # the fix
    assert "\n" not in message


def test_all_sources_failing_with_dirs_that_lack_the_task(monkeypatch, tmp_path):
    monkeypatch.setattr(glue.datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    (tmp_path / "given").mkdir()
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "env"))
    with pytest.raises(UsageError) as info:
        load_glue("qqp", tmp_path / "given")
    message = str(info.value)
    assert f"--data-dir {tmp_path / 'given'} has no QQP/train.tsv" in message
    assert f"GLUE_DIR={tmp_path / 'env'} has no QQP/train.tsv" in message
    assert "OSError: offline" in message


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")


MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:11] + ["label2", "label3", "label4", "label5", "gold_label"]


def _mnli_row(i: int, premise: str, hypothesis: str, gold: str, dev: bool = False) -> list[str]:
    votes = [gold] * (5 if dev else 1)
    return [str(i), "1", f"{i}e", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)", premise, hypothesis, *votes, gold]


def test_mnli_layout_loads_matched_and_mismatched(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(glue.datasets, "load_dataset", _hub_must_not_be_called)
    mnli = tmp_path / "MNLI"
    train_rows = [
        _mnli_row(0, 'He said "hi.', "He spoke.", "entailment"),  # unbalanced quote must not swallow rows
        _mnli_row(1, "A cat sleeps.", "A dog barks.", "neutral"),
        _mnli_row(2, "It is raining.", "It is dry.", "contradiction"),
        ["3", "1", "3e", "fiction", "truncated row"],  # malformed: too few fields -> skipped
        _mnli_row(4, "No label here.", "None.", ""),  # empty label -> skipped
    ]
    _write_tsv(mnli / "train.tsv", MNLI_TRAIN_HEADER, train_rows)
    _write_tsv(mnli / "dev_matched.tsv", MNLI_DEV_HEADER,
               [_mnli_row(0, "P1", "H1", "neutral", dev=True), _mnli_row(1, "P2", "H2", "entailment", dev=True)])
    _write_tsv(mnli / "dev_mismatched.tsv", MNLI_DEV_HEADER, [_mnli_row(0, "P3", "H3", "contradiction", dev=True)])

    with caplog.at_level("WARNING", logger="learners.harness.glue"):
        data = load_glue("mnli", tmp_path)
    assert "skipped 2 malformed row(s)" in caplog.text
    assert data.text_columns == ("premise", "hypothesis")
    assert data.label_names == ["entailment", "neutral", "contradiction"]
    assert data.metric_kind == "accuracy"
    assert data.train.to_dict() == {
        "premise": ['He said "hi.', "A cat sleeps.", "It is raining."],
        "hypothesis": ["He spoke.", "A dog barks.", "It is dry."],
        "label": [0, 1, 2],
    }
    assert data.validation["label"] == [1, 0] and data.validation["premise"] == ["P1", "P2"]
    assert list(data.extra_validation) == ["mismatched"]
    assert data.extra_validation["mismatched"].to_dict() == {"premise": ["P3"], "hypothesis": ["H3"], "label": [2]}


def test_qqp_layout_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(glue.datasets, "load_dataset", _hub_must_not_be_called)
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    _write_tsv(tmp_path / "QQP" / "train.tsv", header, [
        ["0", "1", "2", "How do I cook rice?", "What is the way to cook rice?", "1"],
        ["1", "3", "4", 'What is "AI"?', "Who won the cup?", "0"],
        ["2", "5", "6", "Only one question"],  # malformed line, as in some QQP copies
    ])
    _write_tsv(tmp_path / "QQP" / "dev.tsv", header, [["9", "7", "8", "Q a?", "Q b?", "0"]])
    data = load_glue("qqp")
    assert data.text_columns == ("question1", "question2")
    assert data.label_names == ["not_duplicate", "duplicate"]
    assert data.metric_kind == "f1_accuracy"
    assert data.train["label"] == [1, 0]
    assert data.train["question1"] == ["How do I cook rice?", 'What is "AI"?']
    assert data.train.features["label"].dtype == "int64"
    assert len(data.validation) == 1


def test_task_folder_missing_dev_file_is_usage_error(tmp_path):
    _write_tsv(tmp_path / "RTE" / "train.tsv", ["index", "sentence1", "sentence2", "label"], [["0", "a", "b", "entailment"]])
    with pytest.raises(UsageError, match=r"lacks dev\.tsv"):
        load_glue("rte", tmp_path)


def test_hub_columns_mapped_to_task_data(monkeypatch):
    """The hub branch (no network here): a fake nyu-mll/glue DatasetDict goes through the same mapping."""
    calls = []
    names = ["entailment", "neutral", "contradiction"]
    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=names), "idx": datasets.Value("int32")})

    def split(n, label):
        return datasets.Dataset.from_dict({"premise": [f"p{i}" for i in range(n)], "hypothesis": ["h"] * n,
                                           "label": [label] * n, "idx": list(range(n))}, features=features)

    def fake_load_dataset(path, name):
        calls.append((path, name))
        return datasets.DatasetDict({"train": split(3, 0), "validation_matched": split(2, 1),
                                     "validation_mismatched": split(1, 2), "test_matched": split(1, -1)})

    monkeypatch.setattr(glue.datasets, "load_dataset", fake_load_dataset)
    data = load_glue("mnli")
    assert calls == [("nyu-mll/glue", "mnli")]
    assert data.train.column_names == ["premise", "hypothesis", "label"]
    assert data.train.features["label"] == datasets.Value("int64")
    assert (len(data.train), len(data.validation), len(data.extra_validation["mismatched"])) == (3, 2, 1)
    assert data.validation["label"] == [1, 1] and data.extra_validation["mismatched"]["label"] == [2]


def _write_hub_parquet(folder: Path, split: str, columns: dict, label) -> None:
    """One split as the hub dataset's files are: `<split>-00000-of-00001.parquet`, label as a ClassLabel."""
    features = datasets.Features({**{c: datasets.Value("string") for c in columns}, "label": label,
                                  "idx": datasets.Value("int32")})
    n = len(next(iter(columns.values())))
    folder.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict({**columns, "label": list(range(n)) if isinstance(label, datasets.ClassLabel)
                                else [float(i) for i in range(n)], "idx": list(range(n))},
                               features=features).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


def test_a_local_copy_of_the_hub_parquet_files_loads(tmp_path, monkeypatch):
    """`huggingface-cli download nyu-mll/glue` writes mnli/train-00000-of-00001.parquet, ...; --data-dir takes it
    without the network (the hub loader is never called), matched and mismatched dev sets included."""
    real_load = datasets.load_dataset

    def parquet_only(path, *args, **kwargs):
        assert path == "parquet", "the hub must not be used when a local source has the task"
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(glue.datasets, "load_dataset", parquet_only)
    names = datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])
    for split, n in (("train", 3), ("validation_matched", 2), ("validation_mismatched", 1), ("test_matched", 1)):
        _write_hub_parquet(tmp_path / "mnli", split, {"premise": [f"p{split}{i}" for i in range(n)],
                                                     "hypothesis": ["h"] * n}, names)
    data = load_glue("mnli", tmp_path)
    assert data.train.to_dict() == {"premise": ["ptrain0", "ptrain1", "ptrain2"], "hypothesis": ["h"] * 3,
                                    "label": [0, 1, 2]}
    assert data.validation["premise"] == ["pvalidation_matched0", "pvalidation_matched1"]
    assert data.extra_validation["mismatched"]["premise"] == ["pvalidation_mismatched0"]
    assert data.label_names == ["entailment", "neutral", "contradiction"]
    # the task folder itself, and a regression task (float labels)
    for split in ("train", "validation"):
        _write_hub_parquet(tmp_path / "stsb", split, {"sentence1": ["a", "b"], "sentence2": ["c", "d"]},
                           datasets.Value("float32"))
    data = load_glue("stsb", tmp_path / "stsb")
    assert data.label_names is None and data.train["label"] == [0.0, 1.0]


def test_a_hub_parquet_copy_lacking_a_split_or_with_other_labels_is_refused(tmp_path):
    names = datasets.ClassLabel(names=["unacceptable", "acceptable"])
    _write_hub_parquet(tmp_path / "cola", "train", {"sentence": ["a", "b"]}, names)
    with pytest.raises(UsageError, match=r"cola lacks validation-\*\.parquet; it needs train-\*\.parquet, "
                                         r"validation-\*\.parquet as in the hub dataset nyu-mll/glue"):
        load_glue("cola", tmp_path)
    _write_hub_parquet(tmp_path / "cola", "validation", {"sentence": ["a", "b"]}, names)
    _write_hub_parquet(tmp_path / "cola", "train", {"sentence": ["a", "b"]}, datasets.ClassLabel(names=["bad", "good"]))
    with pytest.raises(UsageError, match=r"label names \['bad', 'good'\] differ from GLUE cola's "
                                         r"\['unacceptable', 'acceptable'\]"):
        load_glue("cola", tmp_path)
    (tmp_path / "cola" / "validation-00000-of-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(UsageError, match=r"cannot read the parquet files in .*cola .*replace them"):
        load_glue("cola", tmp_path)


def test_a_named_local_source_without_the_task_warns_when_the_hub_is_used(tmp_path, monkeypatch, caplog):
    """A --data-dir (or GLUE_DIR) that lacks the task must not be passed over in silence for the network."""
    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "not_entailment"])})
    split = datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [0]}, features=features)
    monkeypatch.setattr(glue.datasets, "load_dataset",
                        lambda *a, **k: datasets.DatasetDict({"train": split, "validation": split}))
    monkeypatch.delenv("GLUE_DIR", raising=False)
    with caplog.at_level("WARNING", logger="learners.harness.glue"):
        assert len(load_glue("rte", tmp_path).train) == 1
    assert f"--data-dir {tmp_path} has no RTE/train.tsv (nor rte/train-*.parquet); loaded GLUE rte from the hub" \
        in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="learners.harness.glue"):
        load_glue("rte")  # nothing named: the hub is the expected source
    assert caplog.text == ""

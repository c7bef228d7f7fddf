"""Multi-label classification (issue 34 part 2): label sets read from JSON lists or --label-delimiter cells, a sigmoid
head trained with binary cross-entropy, --threshold, micro/macro F1 and exact match, predict's label sets and sigmoid
scores, merge, for every method."""

import csv
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from learners.harness.cli import main
from learners.harness.metrics import compute_metrics, primary_metric_name
from learners.harness.models import load_model_and_tokenizer
from learners.harness.multi_label_outputs import multi_label_columns
from learners.harness.user_data import load_user_data

WORDS = "the cat dog sat ran on a mat big small red blue happy sad old new".split()
CUES = {"cat": "animal", "dog": "animal", "red": "color", "blue": "color", "happy": "mood"}


def rows(n: int, seed: int = 0) -> list[dict]:
    """Six-word texts whose labels are the cues' classes they hold: none, one or several."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, 6))
        out.append({"text": " ".join(words), "label": sorted({CUES[w] for w in words if w in CUES})})
    return out


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def jsonl_pair(tmp_path):
    return (write_jsonl(tmp_path / "train.jsonl", rows(48)), write_jsonl(tmp_path / "dev.jsonl", rows(16, seed=1)))


# ---- reading the data -------------------------------------------------------------------------------------------

def test_json_lists_are_label_sets_as_multi_hot_vectors(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": ["sports", "politics"]}, {"text": "b", "label": []},
                                               {"text": "c", "label": [" arts", "sports", "sports"]}])
    dev = write_jsonl(tmp_path / "d.jsonl", [{"text": "d", "label": ["arts"]}, {"text": "e", "label": []}])
    task = load_user_data(train, dev)  # inferred: the labels are JSON lists
    assert task.is_multi_label and task.metric_kind == "multi_label"
    assert task.label_names == ["arts", "politics", "sports"]
    assert task.train["label"] == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]
    assert task.validation["label"] == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert task.train.features["label"].feature.dtype == "float32"


def test_a_delimited_csv_column_reads_as_the_same_label_sets(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\na,sports|politics\nb,\nc, arts | sports\n")
    (tmp_path / "d.tsv").write_text("text\tlabel\nd\tarts\ne\t\n")
    task = load_user_data(tmp_path / "t.csv", tmp_path / "d.tsv", label_delimiter="|")
    assert task.is_multi_label and task.label_names == ["arts", "politics", "sports"]
    assert task.train["label"] == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]
    assert task.validation["label"] == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    # without the flag the cell is one label: a class "sports|politics" of a single-label task
    (tmp_path / "one.csv").write_text("text,label\na,sports|politics\nc,arts\n")
    plain = load_user_data(tmp_path / "one.csv", tmp_path / "one.csv")
    assert not plain.is_multi_label and "sports|politics" in plain.label_names


def test_task_type_multi_label_reads_plain_cells_as_one_label_each(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\na,x\nb,y\nc,\n")
    task = load_user_data(tmp_path / "t.csv", tmp_path / "t.csv", task_type="multi-label")
    assert task.label_names == ["x", "y"] and task.train["label"] == [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]


# ---- the head, the loss, the metrics ----------------------------------------------------------------------------

def test_the_head_is_trained_with_binary_cross_entropy(tiny_model_dir):
    model, _ = load_model_and_tokenizer(str(tiny_model_dir), 3, ["a", "b", "c"], problem_type="multi_label_classification")
    assert model.config.problem_type == "multi_label_classification" and model.config.id2label == {0: "a", 1: "b", 2: "c"}
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2002, 102, 0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    out = model(input_ids=ids, attention_mask=(ids > 0).long(), labels=labels)
    assert torch.allclose(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels))


def test_metrics_against_hand_computed_values():
    gold = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0]])
    pred = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]])
    m = compute_metrics("multi_label", pred, gold)
    assert primary_metric_name("multi_label") == "micro_f1" == next(iter(m))
    # micro: tp 3 (a in rows 0 and 3, b in row 1), fp 1 (c in row 3), fn 2 (c in row 0, b in row 3): 2*3/(2*3+1+2)
    assert m["micro_f1"] == pytest.approx(6 / 9)
    # per label: a 2tp -> 1; b 1tp 1fn -> 2/3; c 0tp 1fp 1fn -> 0
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["exact_match"] == pytest.approx(2 / 4)  # rows 1 and 2 (the empty set predicted empty)


def test_prediction_columns_threshold_the_sigmoid_and_score_it():
    logits = torch.tensor([[2.0, -1.0, 0.1], [-3.0, -2.0, -0.5]])
    id2label = {0: "arts", 1: "politics", 2: "sports"}
    cols = multi_label_columns(logits, id2label, {"threshold": 0.5, "label_delimiter": "|"}, None, True, False)
    assert cols["prediction"] == ["arts|sports", ""]
    sig = torch.sigmoid(logits.double())
    assert cols["score_politics"] == pytest.approx(sig[:, 1].tolist())
    assert sum(cols[f"score_{n}"][0] for n in id2label.values()) != pytest.approx(1.0)  # not a softmax
    assert multi_label_columns(logits, id2label, {"threshold": 0.6}, None, False, True)["prediction"] == [["arts"], []]
    # the saved threshold is overridden; no delimiter saved (JSON lists): a CSV cell is a JSON list
    assert multi_label_columns(logits, id2label, {"threshold": 0.6}, 0.3, False, False)["prediction"] == \
        ['["arts", "sports"]', '["sports"]']


# ---- end to end -------------------------------------------------------------------------------------------------

def finetune(train, dev, model, out, *extra):
    assert main(["finetune", "--train-file", str(train), "--validation-file", str(dev), "--model", str(model),
                 "--output-dir", str(out), "--max-steps", "4", "--eval-steps", "2", "--batch-size", "8", "--no-progress",
                 *extra]) == 0
    return json.loads((out / "results.json").read_text())


def scores_of(model_dir, texts, tokenizer_dir=None):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir)
    with torch.no_grad():
        return torch.sigmoid(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.double())


def test_learners_finetune_predict_and_merge(tmp_path, tiny_model_dir, jsonl_pair):
    r = finetune(*jsonl_pair, tiny_model_dir, tmp_path / "run", "--threshold", "0.4", "--learning-rate", "1e-3")
    assert (r["metric_name"], r["method"]) == ("micro_f1", "learners")
    assert set(r["final_metrics"]) == {"micro_f1", "macro_f1", "exact_match"}
    assert all(0 <= v <= 1 for v in r["final_metrics"].values())
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and config["id2label"] == {"0": "animal", "1": "color", "2": "mood"}
    saved = json.loads((tmp_path / "run" / "learners" / "learners_task.json").read_text())
    assert (saved["threshold"], saved["label_delimiter"]) == (0.4, None)

    dev = [json.loads(line) for line in jsonl_pair[1].read_text().splitlines()]
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(jsonl_pair[1]), "--output",
                 str(tmp_path / "p.jsonl"), "--scores"]) == 0
    out = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    sig = scores_of(tmp_path / "run" / "model", [d["text"] for d in dev])
    names = ["animal", "color", "mood"]
    assert [o["prediction"] for o in out] == [[n for j, n in enumerate(names) if sig[i, j] > 0.4] for i in range(len(dev))]
    np.testing.assert_allclose([[o[f"score_{n}"] for n in names] for o in out], sig.numpy(), atol=1e-5)
    # --threshold overrides the saved one
    for threshold, expected in (("0.001", names), ("0.999", [])):
        assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(jsonl_pair[1]), "--output",
                     str(tmp_path / f"t{threshold}.jsonl"), "--threshold", threshold]) == 0
        lines = (tmp_path / f"t{threshold}.jsonl").read_text().splitlines()
        assert all(json.loads(line)["prediction"] == expected for line in lines)

    # merge: a plain model with the multi-label head, predicting as the run did
    assert main(["merge", "--learners", str(tmp_path / "run"), "--base", str(tiny_model_dir), "--output", str(tmp_path / "merged")]) == 0
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["problem_type"] == "multi_label_classification"
    np.testing.assert_allclose(scores_of(tmp_path / "merged", [d["text"] for d in dev]).numpy(), sig.numpy(), atol=1e-5)
    assert main(["predict", "--model", str(tmp_path / "merged"), "--input", str(jsonl_pair[1]), "--output",
                 str(tmp_path / "pm.jsonl"), "--scores"]) == 0
    merged = [json.loads(line) for line in (tmp_path / "pm.jsonl").read_text().splitlines()]
    assert [m["prediction"] for m in merged] == [o["prediction"] for o in out]
    # the learners on their base (predict --learners): the same label sets
    assert main(["predict", "--learners", f"tags={tmp_path / 'run'}", "--base", str(tiny_model_dir), "--input",
                 str(jsonl_pair[1]), "--output", str(tmp_path / "pl.jsonl")]) == 0
    served = [json.loads(line) for line in (tmp_path / "pl.jsonl").read_text().splitlines()]
    assert [s["prediction_tags"] for s in served] == [o["prediction"] for o in out]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora", "bitfit", "adapter", "far"])
def test_every_method_trains_a_multi_label_head(method, tmp_path, tiny_model_dir):
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"{r['text']},{'|'.join(r['label'])}\n" for r in rows(48)))
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"{r['text']},{'|'.join(r['label'])}\n" for r in rows(16, 1)))
    r = finetune(tmp_path / "t.csv", tmp_path / "d.csv", tiny_model_dir, tmp_path / "run", "--method", method,
                 "--label-delimiter", "|", "--test-file", str(tmp_path / "d.csv"))
    assert (r["method"], r["metric_name"]) == (method, "micro_f1") and all(0 <= v <= 1 for v in r["final_metrics"].values())
    model = tmp_path / "run" / "model"
    assert json.loads((model / "config.json").read_text())["problem_type"] == "multi_label_classification"
    with open(tmp_path / "run" / "test_predictions.csv", newline="") as f:
        predicted = [row["prediction"] for row in csv.DictReader(f)]
    assert len(predicted) == 16 and all(set(p.split("|")) <= {"", "animal", "color", "mood"} for p in predicted)


@pytest.mark.slow
def test_the_loss_goes_down(tmp_path, tiny_model_dir, jsonl_pair):
    r = finetune(*jsonl_pair, tiny_model_dir, tmp_path / "run", "--method", "full", "--learning-rate", "1e-2",
                 "--max-steps", "60", "--logging-steps", "10", "--eval-steps", "60")
    losses = [h["loss"] for h in r["log_history"] if "loss" in h]
    assert len(losses) >= 5 and np.mean(losses[-2:]) < losses[0] - 0.1
    assert r["best_metric"] > 0.3


def test_bench_passes_every_data_flag_to_its_runs(tmp_path, tiny_model_dir, capsys):
    """A CSV with its own column names and delimited label sets: the bench's runs get --text-columns, --label-column,
    --label-delimiter and --threshold as finetune would (each data flag of finetune is the bench's too)."""
    for name, seed, n in (("t.csv", 0, 32), ("d.csv", 1, 16)):
        (tmp_path / name).write_text("review,topics\n" + "".join(f"{r['text']},{'|'.join(r['label'])}\n"
                                                                 for r in rows(n, seed)))
    out = tmp_path / "bench"
    assert main(["bench", "--train-file", str(tmp_path / "t.csv"), "--validation-file", str(tmp_path / "d.csv"),
                 "--text-columns", "review", "--label-column", "topics", "--label-delimiter", "|", "--threshold", "0.3",
                 "--model", str(tiny_model_dir), "--methods", "learners", "--seeds", "0", "--max-steps", "2",
                 "--output-dir", str(out), "--no-progress"]) == 0
    run = out / "runs" / "custom" / "learners" / "seed0"
    assert json.loads((run / "results.json").read_text())["metric_name"] == "micro_f1"
    saved = json.loads((run / "learners" / "learners_task.json").read_text())
    assert (saved["threshold"], saved["label_delimiter"]) == (0.3, "|")
    assert "custom (micro_f1)" in (out / "bench.md").read_text()
    # the same folder with other data is refused: its report would mix the two
    (tmp_path / "t2.csv").write_text((tmp_path / "t.csv").read_text())
    capsys.readouterr()
    assert main(["bench", "--train-file", str(tmp_path / "t2.csv"), "--validation-file", str(tmp_path / "d.csv"),
                 "--text-columns", "review", "--label-column", "topics", "--label-delimiter", "|", "--model",
                 str(tiny_model_dir), "--methods", "learners", "--seeds", "0", "--output-dir", str(out),
                 "--no-progress"]) == 2
    assert "holds runs on other data" in capsys.readouterr().err
    # a --test-file added later predicts with the same runs' data: not other data (the finished runs are kept)
    assert main(["bench", "--train-file", str(tmp_path / "t.csv"), "--validation-file", str(tmp_path / "d.csv"),
                 "--text-columns", "review", "--label-column", "topics", "--label-delimiter", "|", "--threshold", "0.3",
                 "--test-file", str(tmp_path / "d.csv"), "--model", str(tiny_model_dir), "--methods", "learners",
                 "--seeds", "0", "--max-steps", "2", "--output-dir", str(out), "--no-progress"]) == 0

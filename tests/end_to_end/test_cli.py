"""`learners finetune / predict / merge` end to end on a tiny random BERT, and every bad input."""

import json
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import tiny_model
from learners.harness.cli import main

RESULT_FIELDS = {"task", "method", "model", "metric_name", "metric", "best_metric", "trainable_params", "total_params",
                 "train_seconds", "peak_memory_mb", "steps", "history"}


def finetune(tmp_path, tiny_model_dir, glue_dir, *extra, out="run"):
    args = ["finetune", "--task", "cola", "--data-dir", str(glue_dir), "--model", str(tiny_model_dir),
            "--output-dir", str(tmp_path / out), "--max-steps", "6", "--eval-steps", "3", "--batch-size", "8",
            "--max-train-samples", "64", "--no-progress", *extra]
    assert main(args) == 0
    return json.loads((tmp_path / out / "results.json").read_text())


@pytest.mark.slow
def test_full_finetune_writes_results_and_a_loadable_model(tmp_path, tiny_model_dir, glue_dir):
    r = finetune(tmp_path, tiny_model_dir, glue_dir, "--method", "full")
    assert RESULT_FIELDS <= set(r)
    assert (r["task"], r["method"], r["metric_name"], r["steps"]) == ("cola", "full", "matthews_correlation", 6)
    assert r["trainable_params"] == r["total_params"] > 0
    assert [h["step"] for h in r["history"]] == [3, 6]
    assert all(set(h) >= {"step", "seconds", "metric"} for h in r["history"])
    assert r["history"][0]["seconds"] <= r["history"][1]["seconds"] <= r["train_seconds"]
    assert r["best_metric"] == max(h["metric"] for h in r["history"])
    assert r["peak_memory_mb"] > 0 and r["train_examples"] == 64
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model")
    assert model.config.id2label == {0: "unacceptable", 1: "acceptable"}


@pytest.mark.slow
def test_learners_by_default_pick_random_neurons_and_train_them_from_the_first_step(tmp_path, tiny_model_dir, glue_dir):
    """No priming phase by default (docs/journal.md#random-default): every step is a learner step; the seed picks
    the neurons, 1/8 of each FFN's width (docs/journal.md#learner-size) in every block but the lowest
    (docs/journal.md#skip-1-default)."""
    from safetensors.torch import load_file

    r = finetune(tmp_path, tiny_model_dir, glue_dir, out="a")
    assert (r["method"], r["selection"], r["priming_steps"]) == ("learners", "random", 0)
    assert [(h["step"], h["phase"]) for h in r["history"]] == [(3, "train"), (6, "train")]
    assert r["trainable_params"] < r["total_params"] and r["learner_neurons"] == [8]  # the tiny model's FFNs: 64 wide
    assert r["learner_layers"] == [1]  # of its two blocks
    finetune(tmp_path, tiny_model_dir, glue_dir, "--seed", "1", out="b")
    picked = {run: {k: v.tolist() for k, v in load_file(str(tmp_path / run / "learners" / "learners_model.safetensors")).items()
                    if "indices" in k} for run in ("a", "b")}
    assert picked["a"] and picked["a"].keys() == picked["b"].keys() and picked["a"] != picked["b"]


@pytest.mark.parametrize("method", ["learners", "full"])
@pytest.mark.slow
def test_gradient_checkpointing_trains_the_same_weights(method, tmp_path, tiny_model_dir, glue_dir, monkeypatch):
    """--gradient-checkpointing recomputes activations in backward: the same training, so the same weights (with
    priming, it is turned on again for the learner phase's model)."""
    from safetensors.torch import load_file
    from learners.harness import train

    enabled, train_enable = [], train.enable_gradient_checkpointing

    def enable(model):  # the run's own call, recording whether checkpointing is then on
        train_enable(model)
        enabled.append((model.base_model if method == "learners" else model).is_activation_checkpointing)

    monkeypatch.setattr(train, "enable_gradient_checkpointing", enable)
    extra = ["--method", method] + (["--selection", "priming", "--priming-steps", "2"] if method == "learners" else [])
    plain = finetune(tmp_path, tiny_model_dir, glue_dir, *extra, out="plain")
    assert enabled == []
    checkpointed = finetune(tmp_path, tiny_model_dir, glue_dir, *extra, "--gradient-checkpointing", out="ckpt")
    assert enabled == ([True, True] if method == "learners" else [True])  # priming's model, then the learners'
    assert checkpointed["args"]["gradient_checkpointing"] is True and plain["args"]["gradient_checkpointing"] is False
    assert [h["metric"] for h in checkpointed["history"]] == [h["metric"] for h in plain["history"]]
    weights = {run: load_file(str(tmp_path / run / "model" / "model.safetensors")) for run in ("plain", "ckpt")}
    assert weights["plain"].keys() == weights["ckpt"].keys()
    for key, value in weights["plain"].items():
        torch.testing.assert_close(weights["ckpt"][key], value, atol=1e-6, rtol=0, msg=key)


@pytest.mark.slow
def test_a_one_block_model_gets_its_learners_in_that_block_by_default(tmp_path, glue_dir):
    """The default, skip-1, leaves the lowest block frozen; skip-N always leaves the top block, so a model with one
    block gets its learners there, by default or by name."""
    from learners.harness.models import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    tiny_model("bert", vocab_size=tokenizer.vocab_size, layers=1).save_pretrained(tmp_path / "one")
    tokenizer.save_pretrained(tmp_path / "one")
    r = finetune(tmp_path, tmp_path / "one", glue_dir)
    assert r["learner_layers"] == [0] and r["learner_neurons"] == [8]
    named = ["finetune", "--task", "cola", "--data-dir", str(glue_dir), "--model", str(tmp_path / "one"),
             "--output-dir", str(tmp_path / "named"), "--learner-layers", "skip-1", "--no-progress"]
    assert main(named) == 0
    assert json.loads((tmp_path / "named" / "results.json").read_text())["learner_layers"] == [0]


@pytest.mark.slow
def test_dropout_flags_reach_the_saved_learner_config(tmp_path, tiny_model_dir, glue_dir):
    finetune(tmp_path, tiny_model_dir, glue_dir, "--learner-layers", "top-1", "--no-frozen-dropout", "--no-attention-dropout")
    saved = json.loads((tmp_path / "run" / "learners" / "learners_config.json").read_text())["learner_config"]
    assert (saved["layers"], saved["frozen_dropout"], saved["attention_dropout"]) == ("top-1", False, False)
    finetune(tmp_path, tiny_model_dir, glue_dir, out="default")  # docs/journal.md#skip-1-default: no dropout in either by default
    saved = json.loads((tmp_path / "default" / "learners" / "learners_config.json").read_text())["learner_config"]
    assert (saved["layers"], saved["frozen_dropout"], saved["attention_dropout"]) == ("skip-1", False, False)
    finetune(tmp_path, tiny_model_dir, glue_dir, "--frozen-dropout", "--attention-dropout", out="on")
    saved = json.loads((tmp_path / "on" / "learners" / "learners_config.json").read_text())["learner_config"]
    assert (saved["frozen_dropout"], saved["attention_dropout"], saved["attention_probs_dropout"]) == (True, True, True)
    finetune(tmp_path, tiny_model_dir, glue_dir, "--attention-dropout", "--no-attention-probs-dropout", out="probs")
    saved = json.loads((tmp_path / "probs" / "learners" / "learners_config.json").read_text())["learner_config"]
    assert (saved["attention_dropout"], saved["attention_probs_dropout"]) == (True, False)


@pytest.mark.slow
def test_learners_finetune_primes_then_trains_learners_and_merges(tmp_path, tiny_model_dir, glue_dir):
    r = finetune(tmp_path, tiny_model_dir, glue_dir, "--method", "learners", "--selection", "priming", "--priming-steps", "2",
                 "--ratio", "0.25", "--learner-layers", "all")
    assert r["priming_steps"] == 2
    assert [(h["step"], h["phase"]) for h in r["history"]] == [(2, "priming"), (2, "reconfigured"), (3, "train"),
                                                                (6, "train")]
    # every block gets ceil(0.25 * 64) = 16 learner neurons
    assert r["learner_layers"] == [0, 1] and r["learner_neurons"] == [16, 16]
    # learners: 16 neurons x (32 + 1 + 32) per layer, and (by default) b2 (32) and the output LayerNorm (32 + 32);
    # head: pooler 32x32+32, classifier 32x2+2
    assert r["encoder_trainable_params"] == 2 * (16 * 65 + 32 + 64)
    assert r["head_params"] == 32 * 32 + 32 + 32 * 2 + 2
    assert r["trainable_params"] == r["encoder_trainable_params"] + r["head_params"] < r["total_params"]
    run = tmp_path / "run"
    assert (run / "learners" / "learners_model.safetensors").stat().st_size < 0.2 * (run / "model" / "model.safetensors").stat().st_size

    # learners merge writes a plain model that transformers loads without learners, with the same logits
    assert main(["merge", "--base", str(tiny_model_dir), "--learners", str(run / "learners"), "--output", str(tmp_path / "merged")]) == 0
    code = ("import sys, torch; from transformers import AutoModelForSequenceClassification as M; "
            "a = M.from_pretrained(sys.argv[1]).eval(); b = M.from_pretrained(sys.argv[2]).eval(); "
            "x = torch.randint(5, 1000, (3, 11)); assert 'learners' not in sys.modules; "
            "d = (a(input_ids=x).logits - b(input_ids=x).logits).abs().max().item(); print(d); assert d < 1e-6")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "merged"), str(run / "model")], check=True)
    assert json.loads((tmp_path / "merged" / "learners_task.json").read_text())["text_columns"] == ["sentence"]
    # the run's OUT names its learners too: the same merged weights
    assert main(["merge", "--base", str(tiny_model_dir), "--learners", str(run), "--output", str(tmp_path / "merged_out")]) == 0
    assert ((tmp_path / "merged_out" / "model.safetensors").read_bytes()
            == (tmp_path / "merged" / "model.safetensors").read_bytes())
    # a directory that holds a model is written over only when asked (the refusal: test_bad_inputs, mg-output-holds-a-model)
    (tmp_path / "merged_out" / "model.safetensors").write_bytes(b"another model")
    assert main(["merge", "--base", str(tiny_model_dir), "--learners", str(run), "--output", str(tmp_path / "merged_out")]) == 2
    assert (tmp_path / "merged_out" / "model.safetensors").read_bytes() == b"another model"
    assert main(["merge", "--base", str(tiny_model_dir), "--learners", str(run), "--output", str(tmp_path / "merged_out"),
                 "--overwrite"]) == 0
    assert ((tmp_path / "merged_out" / "model.safetensors").read_bytes()
            == (tmp_path / "merged" / "model.safetensors").read_bytes())


@pytest.mark.slow
def test_predict_writes_one_label_per_row(tmp_path, tiny_model_dir, glue_dir):
    finetune(tmp_path, tiny_model_dir, glue_dir, "--method", "full")
    (tmp_path / "in.csv").write_text('sentence\nThe cat sat.\n"He said, ""go""."\nCats sleeps.\n')
    assert main(["predict", "--model", str(tmp_path / "run" / "model"), "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["sentence"] for r in rows] == ["The cat sat.", 'He said, "go".', "Cats sleeps."]
    assert all(r["prediction"] in {"acceptable", "unacceptable"} for r in rows)
    # the run's OUT names its model too: same predictions, same saved text columns
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "out_run.jsonl")]) == 0
    assert (tmp_path / "out_run.jsonl").read_text() == (tmp_path / "out.jsonl").read_text()
    # a header that differs only in case names the model's column; the output keeps the input's header
    (tmp_path / "in_caps.csv").write_text('Sentence\nThe cat sat.\n"He said, ""go""."\nCats sleeps.\n')
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(tmp_path / "in_caps.csv"),
                 "--output", str(tmp_path / "out_caps.jsonl")]) == 0
    caps = [json.loads(line) for line in (tmp_path / "out_caps.jsonl").read_text().splitlines()]
    assert [(r["Sentence"], r["prediction"]) for r in caps] == [(r["sentence"], r["prediction"]) for r in rows]


def test_user_data_regression_end_to_end(tmp_path, tiny_model_dir):
    rows = [{"a": f"text {i}", "b": f"other {i % 3}", "score": i / 7} for i in range(24)]
    for name in ("train.jsonl", "dev.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["finetune", "--train-file", str(tmp_path / "train.jsonl"), "--validation-file", str(tmp_path / "dev.jsonl"),
                 "--text-columns", "a,b", "--label-column", "score", "--model", str(tiny_model_dir), "--method", "learners",
                 "--selection", "magnitude", "--max-steps", "3", "--batch-size", "8", "--output-dir", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (r["task"], r["metric_name"], r["priming_steps"]) == ("custom", "pearson", 0)
    assert main(["predict", "--model", str(tmp_path / "run" / "model"), "--input", str(tmp_path / "dev.jsonl"),
                 "--output", str(tmp_path / "pred.csv")]) == 0
    lines = (tmp_path / "pred.csv").read_text().splitlines()
    assert lines[0] == "a,b,score,prediction" and len(lines) == 25
    float(lines[1].split(",")[-1])


@pytest.mark.slow
def test_predict_serves_several_tasks_from_one_backbone(tmp_path, tiny_model_dir, glue_dir):
    """Two learners runs (CoLA, and a 3-class CSV with another text column) on one base model: one pass of
    `predict --learners` gives each task's predictions, the same as each merged model's own predict."""
    finetune(tmp_path, tiny_model_dir, glue_dir, "--method", "learners", "--selection", "priming", "--priming-steps", "2", "--ratio", "0.25",
             out="cola")
    rows = [f"word{i % 7} thing{i % 5},{'abc'[i % 3]}" for i in range(24)]
    (tmp_path / "abc.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    assert main(["finetune", "--train-file", str(tmp_path / "abc.csv"), "--validation-file", str(tmp_path / "abc.csv"),
                 "--model", str(tiny_model_dir), "--num-neurons", "5", "--learner-layers", "1", "--max-steps", "4",
                 "--selection", "priming", "--priming-steps", "1", "--batch-size", "8", "--output-dir", str(tmp_path / "abc"), "--no-progress"]) == 0
    (tmp_path / "in.csv").write_text('sentence,text\nThe cat sat.,word1 thing2\n"He said, ""go"".",word3 thing0\n'
                                     'Cats sleeps.,word6 thing4\n')
    spec = f"cola={tmp_path / 'cola'},abc={tmp_path / 'abc' / 'learners'}"
    assert main(["predict", "--learners", spec, "--base", str(tiny_model_dir), "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "both.jsonl")]) == 0
    both = [json.loads(line) for line in (tmp_path / "both.jsonl").read_text().splitlines()]
    assert list(both[0]) == ["sentence", "text", "prediction_cola", "prediction_abc"] and len(both) == 3
    for task in ("cola", "abc"):
        assert main(["predict", "--model", str(tmp_path / task / "model"), "--input", str(tmp_path / "in.csv"),
                     "--output", str(tmp_path / f"{task}.jsonl")]) == 0
        alone = [json.loads(line)["prediction"] for line in (tmp_path / f"{task}.jsonl").read_text().splitlines()]
        assert [row[f"prediction_{task}"] for row in both] == alone
    assert {row["prediction_abc"] for row in both} <= {"a", "b", "c"}
    # one run's directory alone, as merge takes it: named after the task its run saved
    assert main(["predict", "--learners", str(tmp_path / "cola"), "--base", str(tiny_model_dir), "--input",
                 str(tmp_path / "in.csv"), "--output", str(tmp_path / "one.jsonl")]) == 0
    one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert [row["prediction_cola"] for row in one] == [row["prediction_cola"] for row in both]


@pytest.mark.parametrize("args,message", [
    (["--task", "colaa"], "unknown GLUE task 'colaa'.*--train-file"),
    (["--task", "cola", "--data-dir", "/no/such/glue"], "/no/such/glue"),
    (["--train-file", "/no/such.csv", "--validation-file", "/no/such.csv"], "does not exist"),
    (["--task", "cola", "--batch-size", "0"], "--batch-size must be positive"),
    (["--task", "cola", "--epochs", "-1"], "--epochs must be positive"),
    (["--task", "cola", "--learning-rate", "0"], "--learning-rate must be positive"),
    (["--task", "cola", "--method", "magic"], "unknown method 'magic'"),
    (["--task", "cola", "--model", "/no/such/model-dir"], "--model /no/such/model-dir: no such model directory"),
    (["--task", "cola", "--ratio", "0"], r"ratio must be in \(0, 1\]"),
    (["--task", "cola", "--ratio", "2"], r"ratio must be in \(0, 1\]"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(args, message, tmp_path, capsys, glue_dir):
    full = ["finetune", "--output-dir", str(tmp_path / "o"), "--no-progress", *args]
    if "--data-dir" not in args:
        full += ["--data-dir", str(glue_dir)]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert err.startswith("learners: error: ") and re.search(message, err), err
    assert "Traceback" not in err and err.count("\n") == 1


def test_user_data_errors_reach_the_cli(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("sentence,label\nhello,1\n")
    (tmp_path / "empty.csv").write_text("")
    assert main(["finetune", "--train-file", str(tmp_path / "t.csv"), "--validation-file", str(tmp_path / "t.csv"),
                 "--text-columns", "sentnce", "--output-dir", str(tmp_path / "o")]) == 2
    assert "columns found: sentence, label" in capsys.readouterr().err
    assert main(["finetune", "--train-file", str(tmp_path / "empty.csv"), "--validation-file", str(tmp_path / "t.csv"),
                 "--output-dir", str(tmp_path / "o")]) == 2
    assert "no examples" in capsys.readouterr().err


def test_existing_run_is_not_overwritten_without_flag(tmp_path, tiny_model_dir, glue_dir, capsys):
    finetune(tmp_path, tiny_model_dir, glue_dir, "--method", "full")
    before = (tmp_path / "run" / "results.json").read_text()
    with pytest.raises(AssertionError):
        finetune(tmp_path, tiny_model_dir, glue_dir, "--method", "full")
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "run" / "results.json").read_text() == before


def test_unparseable_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--output-dir", "x", "--batch-size", "abc"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid int value: 'abc'" in err and err.count("\n") == 1


def test_console_script_help():
    out = subprocess.run(["learners", "finetune", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--task" in out and "--method" in out and "--output-dir" in out


@pytest.mark.slow
def test_no_progress_also_quiets_the_tokenizing_and_saving_bars(tmp_path, tiny_model_dir, glue_dir, capfd):
    """--no-progress keeps a run's log to lines: without it datasets' "Map" bar (tokenizing) and transformers'
    "Writing model shards" bar filled every bench log.txt."""
    import datasets
    import transformers

    datasets.enable_progress_bars()
    transformers.utils.logging.enable_progress_bar()
    try:
        finetune(tmp_path, tiny_model_dir, glue_dir, "--method", "full")
        quiet = capfd.readouterr()
        assert "cola full: matthews_correlation" in quiet.out
        assert "Map" not in quiet.err + quiet.out and "it/s" not in quiet.err + quiet.out
    finally:
        datasets.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
    # the bars it silences do show without the flag (so the check above can fail)
    args = ["finetune", "--task", "cola", "--data-dir", str(glue_dir), "--model", str(tiny_model_dir), "--method",
            "full", "--output-dir", str(tmp_path / "loud"), "--max-steps", "1", "--batch-size", "8",
            "--max-train-samples", "16"]
    assert main(args) == 0
    loud = capfd.readouterr()
    assert "Map" in loud.err


@pytest.mark.slow
def test_merge_and_predict_learners_load_the_base_the_learners_record(tmp_path, tiny_model_dir, glue_dir, capsys):
    """Learners trained on --model DIR merge without --base DIR; a base they were not trained on is refused by name."""
    finetune(tmp_path, tiny_model_dir, glue_dir)
    assert main(["merge", "--learners", str(tmp_path / "run"), "--output", str(tmp_path / "merged")]) == 0
    assert f"base model: {tiny_model_dir}, which the learners record" in capsys.readouterr().err
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert merged.config.num_hidden_layers == 2  # the tiny model, not the embedded one
    (tmp_path / "in.csv").write_text("sentence\nThe cat sat.\n")
    assert main(["predict", "--learners", f"cola={tmp_path / 'run'}", "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "out.csv")]) == 0
    other = tmp_path / "other-base"  # the tiny model's architecture and tokenizer, other weights
    tiny_model("bert", seed=1, vocab_size=merged.config.vocab_size).save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other)
    capsys.readouterr()
    assert main(["merge", "--learners", str(tmp_path / "run"), "--output", str(tmp_path / "m2"), "--base", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"trained on another base model ({tiny_model_dir})" in err and f"here --base was {other}" in err

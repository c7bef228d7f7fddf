"""Reliability (issue 9): same seed, same run; tiny runs; diverging runs stop; outputs checked up front."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from learners.harness.cli import main

METHODS = ["full", "head", "bitfit", "lora", "adapter", "far", "learners"]
WORDS = "the cat dog sat ran on a mat big small red blue happy sad old new".split()


def write_data(directory, rows=60, classes=("a", "b", "c"), regression=False):
    """A tiny three-class CSV (three classes: the tiny model's saved two-class head is re-initialised), or with
    `regression` scores from 0 to 5."""
    rng = random.Random(0)
    lines = ["text,label"] + [" ".join(rng.choice(WORDS) for _ in range(6)) + ","
                              + (f"{rng.uniform(0, 5):.2f}" if regression else classes[i % len(classes)])
                              for i in range(rows)]
    (directory / "train.csv").write_text("\n".join(lines) + "\n")
    (directory / "dev.csv").write_text("\n".join(lines[:13]) + "\n")


def finetune_args(tmp_path, model_dir, out, method, *extra):
    if not (tmp_path / "train.csv").exists():
        write_data(tmp_path)
    args = ["finetune", "--train-file", str(tmp_path / "train.csv"), "--validation-file", str(tmp_path / "dev.csv"),
            "--model", str(model_dir), "--method", method, "--output-dir", str(tmp_path / out), "--no-progress", *extra]
    if method == "learners":
        args += ["--ratio", "0.25"]
    return args


def run_ok(tmp_path, model_dir, out, method, *extra) -> dict:
    assert main(finetune_args(tmp_path, model_dir, out, method, *extra)) == 0
    return json.loads((tmp_path / out / "results.json").read_text())


def weights(directory):
    return load_file(str(directory / "model" / "model.safetensors"))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.slow
def test_same_seed_same_run(method, tmp_path, tiny_model_dir):
    extra = ["--max-steps", "4", "--batch-size", "8", "--eval-steps", "2", "--seed", "3"]
    if method == "learners":
        extra += ["--selection", "priming", "--priming-steps", "1"]
    a = run_ok(tmp_path, tiny_model_dir, "a", method, *extra)
    b = run_ok(tmp_path, tiny_model_dir, "b", method, *extra)
    assert [(h["step"], h["metrics"]) for h in a["history"]] == [(h["step"], h["metrics"]) for h in b["history"]]
    assert (a["metric"], a["best_metric"], a["best_step"]) == (b["metric"], b["best_metric"], b["best_step"])
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    head = [k for k in wa if k.startswith("classifier.")]
    assert head and wa[head[0]].shape[0] == 3  # a freshly initialised (three-class) head, seeded too


@pytest.mark.parametrize("method", ["full", "learners"])
@pytest.mark.slow
def test_how_often_a_run_evaluates_does_not_change_its_training(method, tmp_path):
    """Evaluating draws nothing from the random generators that shuffling and dropout use (a DataLoader without a
    generator of its own draws its base seed from torch's global one each time it is iterated). A regression task,
    so that the last evaluation's Pearson and MSE would show any difference in the weights (the saved model is the
    best evaluation's, which depends on when the run evaluates)."""
    from conftest import save_tiny_model_dir

    write_data(tmp_path, regression=True)
    # dropout draws from torch's generator while training
    model_dir = save_tiny_model_dir(tmp_path / "tiny-bert-with-dropout", dropout=True)
    extra = ["--max-steps", "6", "--batch-size", "8", "--seed", "3"]
    a = run_ok(tmp_path, model_dir, "a", method, *extra, "--eval-steps", "1")
    b = run_ok(tmp_path, model_dir, "b", method, *extra, "--eval-steps", "6")
    assert [h["step"] for h in a["history"]] == [1, 2, 3, 4, 5, 6] and [h["step"] for h in b["history"]] == [6]
    assert "pearson" in b["history"][-1]["metrics"]
    assert a["history"][-1]["metrics"] == b["history"][-1]["metrics"]


def test_diverging_run_stops_with_the_fix_and_writes_nothing(tmp_path, tiny_model_dir, capsys):
    args = finetune_args(tmp_path, tiny_model_dir, "nan", "full", "--max-steps", "8", "--batch-size", "8",
                         "--learning-rate", "1e6")
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("learners: error: training diverged at step") and "lower --learning-rate (now 1e+06)" in err
    assert not (tmp_path / "nan").exists()


@pytest.mark.slow
def test_non_finite_gradient_stops_before_the_weights_change():
    """The step itself reads nothing on the host: its update is skipped on the device, and the next check of the
    step log names the step."""
    from accelerate import Accelerator

    from conftest import tiny_batch, tiny_model
    from learners.errors import TrainingDiverged
    from learners.harness.train import StepLog, TrainConfig, make_optimizer, training_step

    model = tiny_model("bert")
    optimizer, scheduler = make_optimizer(model, TrainConfig(learning_rate=1e-3), 1e-3, 0, 10, 0)
    log = StepLog()
    log.add(1, *training_step(model, tiny_batch(), optimizer, scheduler, Accelerator(cpu=True), 1.0))
    assert [step for step, _, _ in log.check()] == [1]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hook = model.classifier.weight.register_hook(lambda g: g * float("inf"))
    log.add(2, *training_step(model, tiny_batch(), optimizer, scheduler, Accelerator(cpu=True), 1.0))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    hook.remove()
    log.add(3, *training_step(model, tiny_batch(), optimizer, scheduler, Accelerator(cpu=True), 1.0))
    with pytest.raises(TrainingDiverged, match="gradient norm is (inf|nan)") as error:
        log.check()
    assert error.value.step == 2


def test_non_finite_learners_are_neither_saved_nor_merged(tmp_path):
    from conftest import tiny_model
    from learners import LearnerConfig, get_learner_model
    from learners.errors import UsageError

    model = get_learner_model(tiny_model("bert"), LearnerConfig.primed(ratio=0.25, selection="magnitude"))
    with torch.no_grad():
        model.base_model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(UsageError, match="NaN or infinite values .*classifier.weight"):
        model.save_pretrained(tmp_path / "l")
    assert not (tmp_path / "l").exists()
    with pytest.raises(UsageError, match="cannot be merged"):
        model.merge_and_unload()


@pytest.mark.parametrize("method", METHODS)
def test_one_step_runs_work_for_every_method(method, tmp_path, tiny_model_dir):
    priming = ["--selection", "priming"] if method == "learners" else []  # the default selection has no priming
    r = run_ok(tmp_path, tiny_model_dir, "one", method, "--max-steps", "1", "--batch-size", "8", *priming)
    primed = method in ("far", "learners")
    assert r["steps"] == 1 and r["history"][-1]["step"] == 1
    assert r["history"][-1]["phase"] == ("reconfigured" if primed else "train")
    assert r["priming_steps"] == (1 if method in ("far", "learners") else 0)
    assert r["trainable_params"] < r["total_params"] or method == "full"
    assert (tmp_path / "one" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("method", ["learners", "far"])
@pytest.mark.slow
def test_one_epoch_of_one_batch_primes_then_selects(method, tmp_path, tiny_model_dir, capsys):
    priming = ["--selection", "priming"] if method == "learners" else []
    r = run_ok(tmp_path, tiny_model_dir, "tiny", method, "--epochs", "1", "--batch-size", "64", *priming)
    assert (r["steps"], r["priming_steps"]) == (1, 1)
    assert [h["phase"] for h in r["history"]] == ["priming", "reconfigured"]
    assert "priming takes 1, then selection, then no learner-only steps" in capsys.readouterr().err
    if method == "learners":
        assert main(["merge", "--base", str(tiny_model_dir), "--learners", str(tmp_path / "tiny" / "learners"),
                     "--output", str(tmp_path / "merged")]) == 0


def unwritable_dir(tmp_path, monkeypatch):
    """A read-only directory; as root (who may write anyway) the permission check is made to say no."""
    import os

    import learners.errors

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:
        monkeypatch.setattr(learners.errors, "_writable", lambda d: d != locked.absolute())
    return locked


@pytest.mark.parametrize("where,message", [
    ("file", "is a file; pass a directory path"),
    ("under-file", "cannot be created: .* is a file, not a directory"),
    ("read-only", "no write permission in"),
    ("under-read-only", "no write permission in"),
])
def test_unwritable_output_dir_fails_before_training(where, message, tmp_path, tiny_model_dir, monkeypatch, capsys):
    import re

    import learners.harness.finetune

    (tmp_path / "afile").write_text("x")
    locked = unwritable_dir(tmp_path, monkeypatch)
    out = {"file": tmp_path / "afile", "under-file": tmp_path / "afile" / "run",
           "read-only": locked, "under-read-only": locked / "run"}[where]
    monkeypatch.setattr(learners.harness.finetune, "load_task", lambda *a, **k: pytest.fail("work started"))
    args = finetune_args(tmp_path, tiny_model_dir, "x", "full")
    args[args.index("--output-dir") + 1] = str(out)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "afile").is_dir() and list(locked.iterdir()) == []


def test_max_length_limit_comes_from_the_model_config():
    from conftest import tiny_config
    from learners.errors import UsageError
    from learners.harness.models import check_max_length, max_sequence_length

    assert [max_sequence_length(tiny_config(f)) for f in ("bert", "distilbert", "roberta")] == [64, 64, 70]
    assert check_max_length(None, tiny_config("roberta")) == 70  # the default 128, capped to the limit
    assert check_max_length(None, tiny_config("bert", vocab_size=30)) == 64
    with pytest.raises(UsageError, match="--max-length 71 is longer than this model takes \\(70 tokens"):
        check_max_length(71, tiny_config("roberta"))


def test_method_check_runs_before_training(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import learners.harness.finetune

    monkeypatch.setattr(learners.harness.finetune, "train", lambda *a, **k: pytest.fail("training started"))
    args = finetune_args(tmp_path, tiny_model_dir, "x", "lora", "--lora-target-modules", "query,qkv")
    assert main(args) == 2
    assert "--lora-target-modules qkv name no module of this bert model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

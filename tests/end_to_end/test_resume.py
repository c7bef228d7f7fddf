"""No lost work: checkpoints, resuming a killed or interrupted run bit-exactly, refusing a different run.

A run is killed (SIGKILL) or interrupted (SIGINT) at a step by tests/stop_at_step.py (a wrapper of the training
loop's end of a step, in this process or a child's), then resumed; its results and saved model must equal an
uninterrupted run's exactly. The tiny model has dropout on, so the random states matter; the task is a regression,
so every evaluation's Pearson correlation shows whether the weights at that step are the same.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

import learners
from learners.harness.cli import main
from conftest import save_regression_run
from stop_at_step import SCRIPT, each_step, interrupt_at

# 60 examples, batch 8: 8 batches an epoch; 20 steps cross two epoch boundaries (after steps 8 and 16).
# Evaluations (and checkpoints) at steps 4, 8, 12, 16, 20; learners prime for 6 steps, FAR for 2.
TRAINING = ["--batch-size", "8", "--max-steps", "20", "--eval-steps", "4", "--seed", "1", "--no-progress"]
METHOD_FLAGS = {"learners": ["--ratio", "0.25"], "far": ["--far-priming-fraction", "0.25"]}
LEARNER_PRIMING = ["--selection", "priming", "--priming-steps", "6"]


def method_flags(method: str, extra: list[str]) -> list[str]:
    """METHOD_FLAGS; learners prime unless `extra` picks another selection (priming flags would be an error)."""
    priming = LEARNER_PRIMING if method == "learners" and "--selection" not in extra else []
    return [*METHOD_FLAGS.get(method, []), *priming]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny BERT with dropout, a small regression data set, and a cache of uninterrupted runs."""
    root = save_regression_run(tmp_path_factory.mktemp("resume"), dropout=True)
    return {"root": root, "references": {}}


def finetune_args(setup, out: Path, method: str, *extra) -> list[str]:
    root = setup["root"]
    return ["finetune", "--train-file", str(root / "train.jsonl"), "--validation-file", str(root / "dev.jsonl"),
            "--model", str(root / "model"), "--method", method, "--output-dir", str(out),
            *TRAINING, *method_flags(method, extra), *extra]


def reference(setup, method: str, *extra) -> Path:
    """The uninterrupted run of `method` with `extra` flags (run once, in this process)."""
    key = (method, *extra)
    if key not in setup["references"]:
        out = setup["root"] / f"reference-{len(setup['references'])}"
        assert main(finetune_args(setup, out, method, *extra)) == 0
        setup["references"][key] = out
    return setup["references"][key]


def run_subprocess(setup, out: Path, method: str, stop: str, step: int, *extra) -> subprocess.CompletedProcess:
    """`learners finetune` in a child process that stop_at_step kills or interrupts ("kill", "interrupt") at `step`."""
    src = str(Path(learners.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, SCRIPT, stop, str(step), *finetune_args(setup, out, method, *extra)],
                          env=env, capture_output=True, text=True, timeout=120)


def checkpoint_step(out: Path) -> int:
    return json.loads((out / "checkpoint" / "checkpoint.json").read_text())["step"]


def assert_same_run(a: Path, b: Path) -> None:
    """Same evaluations, same final and best metric, same saved weights, same logits."""
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert [(h["step"], h["phase"], h["metrics"]) for h in ra["history"]] == \
           [(h["step"], h["phase"], h["metrics"]) for h in rb["history"]]
    keys = ("metric", "best_metric", "best_step", "steps", "priming_steps", "trainable_params")
    assert [ra[k] for k in keys] == [rb[k] for k in keys]
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    batch = {"input_ids": torch.tensor([[101, 1996, 4937, 2938, 102], [101, 3407, 3407, 6517, 102]])}
    with torch.no_grad():
        la, lb = (AutoModelForSequenceClassification.from_pretrained(d / "model").eval()(**batch).logits for d in (a, b))
    assert torch.equal(la, lb)
    assert not (b / "checkpoint").exists()  # a finished run keeps no checkpoint


@pytest.mark.parametrize("method,step,extra", [
    ("learners", 4, []),   # during priming
    ("learners", 6, []),   # right after selection (the checkpoint is written after the reconfiguration)
    ("learners", 12, []),  # during learner training, mid-epoch
    ("learners", 4, ["--learner-layers", "auto", "--priming-scope", "learner-layers"]),  # layers probed before priming
    ("learners", 12, ["--selection", "gradient"]),
    ("learners", 12, ["--learner-layers", "top-1", "--no-frozen-dropout"]),  # the frozen-prefix cache starts empty
    ("far", 2, []),        # right after FAR's selection
    ("far", 12, []),
    ("full", 8, []),       # at the end of an epoch
    ("head", 20, []),      # after the last step, before results.json
    ("bitfit", 12, []),
    ("lora", 12, []),
    ("adapter", 12, []),
])
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(setup, tmp_path, method, step, extra):
    ref = reference(setup, method, *extra)
    out = tmp_path / "run"
    killed = run_subprocess(setup, out, method, "kill", step, *extra)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert checkpoint_step(out) == step and not (out / "results.json").exists()
    assert main(finetune_args(setup, out, method, "--resume", *extra)) == 0
    assert_same_run(ref, out)


@pytest.mark.slow
def test_the_frozen_prefix_cache_serves_the_later_epochs(setup):
    """Learners above block 0 with frozen dropout off: block 0 runs once per distinct example, in the learner phase."""
    results = json.loads((reference(setup, "learners", "--learner-layers", "top-1", "--no-frozen-dropout")
                          / "results.json").read_text())
    stats = results["frozen_prefix_cache"]
    assert stats["examples"] == 60 and stats["misses"] == 60  # every training and dev sentence (dev: 16 of them)
    assert stats["hits"] > 0 and stats["mb"] > 0


@pytest.mark.slow
def test_checkpoint_steps_and_a_plain_rerun_resumes(setup, tmp_path):
    """--checkpoint-steps 5 checkpoints at step 5 too; rerunning the same command (no --resume) continues."""
    ref = reference(setup, "full")
    out = tmp_path / "run"
    killed = run_subprocess(setup, out, "full", "kill", 5, "--checkpoint-steps", "5")
    assert killed.returncode == -signal.SIGKILL and checkpoint_step(out) == 5
    assert main(finetune_args(setup, out, "full", "--checkpoint-steps", "5")) == 0
    assert_same_run(ref, out)


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_exits_130(setup, tmp_path):
    ref = reference(setup, "learners")
    out = tmp_path / "run"
    interrupted = run_subprocess(setup, out, "learners", "interrupt", 10)  # not a checkpoint step
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    last = interrupted.stderr.strip().splitlines()[-1]
    assert last.startswith("learners: interrupted at step 10/20") and "--resume" in last and "Traceback" not in interrupted.stderr
    assert checkpoint_step(out) == 10
    assert main(finetune_args(setup, out, "learners", "--resume")) == 0
    assert_same_run(ref, out)


@pytest.mark.slow
def test_ctrl_c_twice_stops_at_once_with_a_line_saying_how_to_resume(setup, tmp_path, monkeypatch, capsys):
    """The second Ctrl-C interrupts at once (no checkpoint of this step): one line, not an empty `learners: `; the
    same command then resumes from the last checkpoint to the uninterrupted run's result."""
    ref = reference(setup, "learners")
    out = tmp_path / "run"

    def twice(step):
        if step == 10:  # not a checkpoint step: the last one is step 8's
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    each_step(monkeypatch.setattr, before=twice)
    assert main(finetune_args(setup, out, "learners")) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("learners: stopped at once by a second Ctrl-C") and "run the same command again" in last, last
    assert checkpoint_step(out) == 8
    monkeypatch.undo()
    assert main(finetune_args(setup, out, "learners")) == 0
    assert_same_run(ref, out)


@pytest.mark.slow
def test_a_run_resumes_with_gradient_checkpointing_turned_on(setup, tmp_path, monkeypatch):
    """--gradient-checkpointing changes memory and time, not results: it is not an option a resume compares, and the
    resumed run ends as the uninterrupted one without it, bit for bit."""
    ref = reference(setup, "learners")
    out = tmp_path / "run"
    interrupt_at(monkeypatch.setattr, 10)  # Ctrl-C, in this process
    assert main(finetune_args(setup, out, "learners")) == 130
    monkeypatch.undo()
    assert main(finetune_args(setup, out, "learners", "--gradient-checkpointing")) == 0
    assert json.loads((out / "results.json").read_text())["args"]["gradient_checkpointing"] is True
    assert_same_run(ref, out)


@pytest.mark.slow
def test_a_different_configuration_is_refused(setup, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupt_at(monkeypatch.setattr, 3)  # Ctrl-C, in this process
    assert main(finetune_args(setup, out, "head")) == 130
    monkeypatch.undo()
    assert checkpoint_step(out) == 3
    capsys.readouterr()
    assert main(finetune_args(setup, out, "head", "--learning-rate", "0.01")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--learning-rate" in err and "--overwrite" in err and "--output-dir" in err
    assert main(finetune_args(setup, out, "head", "--resume", "--ratio", "0.5", "--method", "learners")) == 2
    assert "--method" in capsys.readouterr().err
    assert checkpoint_step(out) == 3  # refused runs leave the checkpoint alone
    assert main(finetune_args(setup, out, "head", "--learning-rate", "0.01", "--overwrite")) == 0  # starts afresh
    result = json.loads((out / "results.json").read_text())
    assert result["learning_rate"] == 0.01 and result["steps"] == 20 and not (out / "checkpoint").exists()


def test_resume_without_a_checkpoint_is_a_clear_error(setup, tmp_path, capsys):
    assert main(finetune_args(setup, tmp_path / "none", "head", "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no checkpoint" in err
    assert main(finetune_args(setup, tmp_path / "none", "head", "--resume", "--overwrite")) == 2
    assert "pass one of them" in capsys.readouterr().err


@pytest.mark.slow
def test_a_kill_between_the_renames_of_a_save_keeps_the_previous_checkpoint(setup, tmp_path, monkeypatch):
    ref = reference(setup, "bitfit")
    out = tmp_path / "run"
    interrupt_at(monkeypatch.setattr, 6)
    assert main(finetune_args(setup, out, "bitfit")) == 130
    monkeypatch.undo()
    os.replace(out / "checkpoint", out / "checkpoint.old")  # as if killed after the first rename
    (out / "checkpoint.tmp").mkdir()  # and a half-written new one
    assert main(finetune_args(setup, out, "bitfit", "--resume")) == 0
    assert_same_run(ref, out)
    assert not (out / "checkpoint.old").exists() and not (out / "checkpoint.tmp").exists()


def test_a_damaged_checkpoint_is_one_line_naming_the_fix(setup, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupt_at(monkeypatch.setattr, 3)
    assert main(finetune_args(setup, out, "head")) == 130
    monkeypatch.undo()
    tensors = out / "checkpoint" / "checkpoint.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    capsys.readouterr()
    assert main(finetune_args(setup, out, "head", "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint.safetensors" in err and "--overwrite" in err

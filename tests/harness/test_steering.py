"""A run you can steer: early stopping (also across a kill and resume), gradient accumulation (the same weights as
one big batch), the evaluation's batch size and subset, a config file, and transformers' flag spellings."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import learners
from conftest import save_regression_run, tiny_model
from stop_at_step import SCRIPT, interrupt_at
from learners.harness import config_file
from learners.harness.cli import build_parser, main
from learners.harness.early_stopping import evaluations_without_improvement, patience_exhausted

# 60 examples: batch 8 is 8 batches an epoch (the last of 4), batch 4 is 15 (accumulated by 2: 8 steps, the last
# of one micro-batch). At --learning-rate 1e-5 and patience 2, evaluating every 2 steps, the dev Pearson
# correlation peaks at step 4 and the run stops at step 8 of 16.
EARLY = ["--batch-size", "8", "--max-steps", "16", "--eval-steps", "2", "--learning-rate", "1e-5",
         "--early-stopping-patience", "2", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny BERT without dropout and a small regression data set (train.jsonl, dev.jsonl)."""
    return save_regression_run(tmp_path_factory.mktemp("steering"))


def finetune(data: Path, out: Path, *extra) -> list[str]:
    return ["finetune", "--train-file", str(data / "train.jsonl"), "--validation-file", str(data / "dev.jsonl"),
            "--model", str(data / "model"), "--output-dir", str(out), *map(str, extra)]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def weights(out: Path) -> dict:
    return load_file(str(out / "model" / "model.safetensors"))


# ---- early stopping ----------------------------------------------------------------------------

def history(*metrics, phase="train"):
    return [{"step": i + 1, "metric": m, "phase": phase} for i, m in enumerate(metrics)]


def test_patience_counts_evaluations_without_improvement_as_transformers_does():
    assert evaluations_without_improvement(history(0.5, 0.6, 0.6, 0.55)) == 2  # equal is no improvement
    assert evaluations_without_improvement(history(0.5, 0.4, 0.7)) == 0
    # a gain within the threshold raises the best but does not reset the count; the next must beat the new best
    assert evaluations_without_improvement(history(0.5, 0.505, 0.51), threshold=0.01) == 2
    assert evaluations_without_improvement(history(0.5, 0.505, 0.516), threshold=0.01) == 0
    # the primed and the reconfigured model's evaluations do not count (nor set the best)
    primed = history(0.9, 0.9, phase="priming") + [{"step": 3, "metric": 0.9, "phase": "reconfigured"}]
    assert evaluations_without_improvement(primed + history(0.5, 0.6)) == 0
    assert evaluations_without_improvement([]) == 0
    assert patience_exhausted(history(0.5, 0.4, 0.3), 2) and not patience_exhausted(history(0.5, 0.4, 0.3), 3)


@pytest.fixture(scope="module")
def stopped(data) -> Path:
    """The uninterrupted run with early stopping."""
    assert main(finetune(data, data / "stopped", *EARLY)) == 0
    return data / "stopped"


@pytest.mark.slow
def test_early_stopping_ends_the_run_at_the_patience_and_keeps_the_best(data, stopped, tmp_path):
    r = results(stopped)
    steps = [h["step"] for h in r["history"]]
    assert r["stopped_early"] is True and r["early_stopping_step"] == r["steps"] == steps[-1] == 8
    metrics = [h["metric"] for h in r["history"]]
    best = max(range(len(metrics)), key=metrics.__getitem__)
    assert len(metrics) - 1 - best == 2 and r["best_step"] == steps[best]  # two evaluations after the best
    assert r["best_metric"] == metrics[best] and r["early_stopping_patience"] == 2
    assert (stopped / "model" / "model.safetensors").exists() and not (stopped / "checkpoint").exists()
    # without early stopping the same run goes on, through the same evaluations
    assert main(finetune(data, tmp_path / "full", *EARLY[:-3], "--no-progress")) == 0
    full = results(tmp_path / "full")
    assert full["stopped_early"] is False and full["early_stopping_step"] is None and full["steps"] == 16
    assert [h["metric"] for h in full["history"][:len(metrics)]] == metrics


def run_killed(data: Path, out: Path, step: int) -> subprocess.CompletedProcess:
    src = str(Path(learners.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, SCRIPT, "kill", str(step), *finetune(data, out, *EARLY)], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kill_at", [6, 8])  # one evaluation without improvement; the stop step itself
@pytest.mark.slow
def test_a_resumed_run_stops_at_the_same_step(data, stopped, tmp_path, kill_at):
    """The patience is read from the history that the checkpoint restores: killed after the checkpoint at step
    6 (one evaluation without improvement) or at the stop step 8 itself, the resumed run stops at step 8 with the
    same weights as the uninterrupted one."""
    ref = results(stopped)
    assert ref["early_stopping_step"] == 8
    killed = run_killed(data, tmp_path / "run", kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "checkpoint" / "checkpoint.json").read_text())["step"] == kill_at
    assert main(finetune(data, tmp_path / "run", *EARLY, "--resume")) == 0
    r = results(tmp_path / "run")
    assert (r["steps"], r["early_stopping_step"], r["best_step"]) == (8, 8, ref["best_step"])
    assert [h["metric"] for h in r["history"]] == [h["metric"] for h in ref["history"]]
    wa, wb = weights(stopped), weights(tmp_path / "run")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- gradient accumulation ---------------------------------------------------------------------

@pytest.mark.parametrize("method", ["full", "learners"])
@pytest.mark.slow
def test_accumulating_two_batches_of_4_trains_as_one_batch_of_8(data, tmp_path, method):
    """fp32, no dropout: the same weights up to float rounding, across an epoch's end where the last step has one
    micro-batch of 4 (as the big batch has 4 examples there); one batch of 4 without accumulation differs."""
    common = ["--max-steps", 10, "--eval-steps", 5, "--mixed-precision", "no", "--method", method, "--no-progress"]
    runs = {"8x1": (8, 1), "4x2": (4, 2), **({"4x1": (4, 1)} if method == "full" else {})}
    for name, (batch, k) in runs.items():
        assert main(finetune(data, tmp_path / name, "--batch-size", batch, "--gradient-accumulation-steps", k, *common)) == 0
    base, accumulated = weights(tmp_path / "8x1"), weights(tmp_path / "4x2")
    assert max((base[k] - accumulated[k]).abs().max().item() for k in base) < 1e-6
    if method == "full":  # the test can fail: batches of 4 train other weights
        small = weights(tmp_path / "4x1")
        assert max((base[k] - small[k]).abs().max().item() for k in base) > 1e-4
    r = results(tmp_path / "4x2")
    assert (r["steps"], r["gradient_accumulation_steps"], r["effective_batch_size"]) == (10, 2, 8)
    assert [h["step"] for h in r["history"]] == [5, 10]


@pytest.mark.slow
def test_epochs_and_priming_count_optimizer_steps(data, tmp_path):
    """One epoch of 15 micro-batches accumulated by 2 is 8 optimizer steps; priming's 3 steps are optimizer steps."""
    assert main(finetune(data, tmp_path / "run", "--batch-size", 4, "--gradient-accumulation-steps", 2, "--epochs", 1,
                         "--selection", "priming", "--priming-steps", 3, "--eval-steps", 4, "--no-progress")) == 0
    r = results(tmp_path / "run")
    assert (r["steps"], r["priming_steps"]) == (8, 3)
    assert [(h["step"], h["phase"]) for h in r["history"]] == [(3, "priming"), (3, "reconfigured"), (4, "train"),
                                                                (8, "train")]


def test_an_accumulated_step_reads_nothing_on_the_host():
    from accelerate import Accelerator

    from conftest import tiny_batch
    from learners.harness.train import TrainConfig, make_optimizer, trainable_parameters, training_step
    from test_train import HostReads

    model = tiny_model("bert")
    optimizer, scheduler = make_optimizer(model, TrainConfig(learning_rate=1e-3), 1e-3, 0, 10, 0)
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    params = trainable_parameters(optimizer)
    micro = [{k: v for k, v in tiny_batch(seed=s).items() if k != "attention_mask"} for s in (1, 2)]
    training_step(model, micro, optimizer, scheduler, accelerator, 1.0, params)
    with HostReads() as step:
        loss, norm = training_step(model, micro, optimizer, scheduler, accelerator, 1.0, params)
    assert step.reads == [] and loss.shape == () and torch.isfinite(loss)


# ---- evaluation ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_eval_subset_is_fixed_and_recorded(data, tmp_path):
    from datasets import Dataset

    from learners.harness.finetune import eval_subsets

    dev = Dataset.from_dict({"x": list(range(20))})
    first, again = (eval_subsets({"": dev, "mm_": dev}, 5) for _ in range(2))
    assert first[""]["x"] == again[""]["x"] == first["mm_"]["x"] and len(set(first[""]["x"])) == 5
    assert first[""]["x"] != list(range(5))  # a random subset, not the first rows
    assert eval_subsets({"": dev}, 50)[""] is dev and eval_subsets({"": dev}, None)[""] is dev
    assert main(finetune(data, tmp_path / "run", "--max-steps", 2, "--max-eval-samples", 5, "--eval-batch-size", 2,
                         "--no-progress")) == 0
    r = results(tmp_path / "run")
    assert (r["eval_examples"], r["eval_batch_size"], r["args"]["max_eval_samples"]) == (5, 2, 5)


# ---- config file and transformers' spellings -------------------------------------------------------

def parse(argv):
    parser = build_parser()
    return parser.parse_args(config_file.expand(argv, parser))


def test_a_config_file_sets_flags_and_the_command_line_wins(tmp_path):
    (tmp_path / "run.yaml").write_text("learning_rate: 3e-4\nper_device_train_batch_size: 16\nearly-stopping-patience: 3\n"
                                       "bf16: true\nfrozen_dropout: false\ncompile: false\nnum_neurons: [4, 8]\n"
                                       "output_dir: from-file\ntask: rte\n")
    args = parse(["finetune", "--config", str(tmp_path / "run.yaml"), "--batch_size", "8"])
    assert (args.learning_rate, args.batch_size, args.early_stopping_patience) == (3e-4, 8, 3)
    assert (args.mixed_precision, args.frozen_dropout, args.compile) == ("bf16", False, False)
    assert (args.num_neurons, args.output_dir, args.task) == ([4, 8], "from-file", "rte")
    (tmp_path / "run.json").write_text(json.dumps({"max_steps": 5, "gradient_accumulation_steps": 4, "task": "cola"}))
    args = parse(["finetune", f"--config={tmp_path / 'run.json'}", "--output-dir", "o", "--task", "mrpc"])
    assert (args.max_steps, args.gradient_accumulation_steps, args.task) == (5, 4, "mrpc")


def test_transformers_spellings_are_aliases():
    args = parse(["finetune", "--task", "rte", "--output_dir", "o", "--learning_rate", "2e-5",
                  "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64", "--num_train_epochs", "2",
                  "--max_steps=7", "--warmup_ratio", "0.1", "--weight_decay", "0.0", "--gradient_accumulation_steps", "2",
                  "--seed", "3", "--eval_steps", "5", "--lr_scheduler_type", "constant", "--max_seq_length", "64",
                  "--fp16"])
    assert (args.output_dir, args.learning_rate, args.batch_size, args.eval_batch_size, args.epochs) == ("o", 2e-5, 16, 64, 2.0)
    assert (args.max_steps, args.warmup_ratio, args.weight_decay, args.gradient_accumulation_steps) == (7, 0.1, 0.0, 2)
    assert (args.seed, args.eval_steps, args.lr_scheduler, args.max_length, args.mixed_precision) == \
           (3, 5, "constant", 64, "fp16")
    bench = parse(["bench", "--output_dir", "b", "--early_stopping_patience", "3", "--bf16"])
    assert (bench.output_dir, bench.early_stopping_patience, bench.mixed_precision) == ("b", 3, "bf16")
    # predict's one batch size is an evaluation's: transformers' eval batch size means it, the training one nothing
    predict = ["predict", "--model", "m", "--input", "i.csv", "--output", "o.csv"]
    assert parse([*predict, "--per_device_eval_batch_size", "16"]).batch_size == 16
    with pytest.raises(SystemExit):
        parse([*predict, "--per_device_train_batch_size", "16"])


@pytest.mark.slow
def test_a_checkpoint_from_before_these_options_resumes(data, tmp_path, monkeypatch):
    """A checkpoint whose saved options predate early stopping, accumulation and the eval options continues under
    the same command (they are taken at their defaults), instead of being refused as another run's."""
    command = finetune(data, tmp_path / "run", "--batch-size", 8, "--max-steps", 4, "--eval-steps", 2, "--no-progress")
    interrupt_at(monkeypatch.setattr, 2)
    assert main(command) == 130  # Ctrl-C at step 2: a checkpoint and exit
    monkeypatch.undo()
    facts_file = tmp_path / "run" / "checkpoint" / "checkpoint.json"
    facts = json.loads(facts_file.read_text())
    for name in ("early_stopping_patience", "early_stopping_threshold", "gradient_accumulation_steps",
                 "eval_batch_size", "max_eval_samples"):
        del facts["run_args"][name]
    facts_file.write_text(json.dumps(facts))
    assert main(command) == 0
    assert results(tmp_path / "run")["steps"] == 4

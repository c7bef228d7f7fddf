"""A run you can watch (harness/run_log.py): the training log in results.json and OUT/history.jsonl, on stderr,
in TensorBoard (read back with TensorBoard's own reader), kept across a resume, and finetune's curves.png."""

import json
import math
import random
import sys

import pytest
import torch

from learners.errors import UsageError
from learners.harness.cli import main
from learners.harness.run_log import RunLog, parse_report_to, training_entry
from stop_at_step import interrupt_at

WORDS = "the cat dog sat ran on a mat big small red blue happy sad".split()
# 48 examples, batch 8: 6 steps an epoch; 12 steps, evaluations at 5, 10 and 12, logging every 4 steps.
TRAINING = ["--batch-size", "8", "--max-steps", "12", "--eval-steps", "5", "--logging-steps", "4", "--seed", "0",
            "--learning-rate", "1e-3", "--warmup-ratio", "0"]
TRAINING_STEPS = [4, 5, 8, 10, 12]  # every 4 steps, and at each evaluation
EVAL_STEPS = [5, 10, 12]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-log")
    rng = random.Random(0)
    rows = []
    for _ in range(48):
        words = [rng.choice(WORDS) for _ in range(5)]
        rows.append({"text": " ".join(words), "label": int("happy" in words)})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    return root


def finetune(data, model_dir, out, *extra) -> list[str]:
    return ["finetune", "--train-file", str(data / "train.jsonl"), "--validation-file", str(data / "dev.jsonl"),
            "--model", str(model_dir), "--output-dir", str(out), *TRAINING, *extra]


def results(out) -> dict:
    return json.loads((out / "results.json").read_text())


def jsonl(out) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def scalars(out) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in OUT/tensorboard, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(out / "tensorboard"))
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def training(log: list[dict]) -> list[dict]:
    return [e for e in log if "loss" in e]


def evaluations(log: list[dict]) -> list[dict]:
    return [e for e in log if "eval_accuracy" in e]


def test_a_run_logs_loss_rate_norm_and_throughput_and_reports_them_to_tensorboard(data, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(finetune(data, tiny_model_dir, out, "--report-to", "tensorboard", "--no-progress")) == 0
    r = results(out)
    assert [set(h) for h in r["history"]] == [{"step", "epoch", "seconds", "metric", "phase", "metrics"}] * 3
    log = r["log_history"]
    assert [e["step"] for e in training(log)] == TRAINING_STEPS
    assert [(e["step"], e["eval_accuracy"]) for e in evaluations(log)] == [(h["step"], h["metric"]) for h in r["history"]]
    for entry in training(log):
        assert entry["learning_rate"] == pytest.approx(1e-3 * (12 - entry["step"]) / 12)  # linear decay, no warm-up
        assert math.isfinite(entry["loss"]) and entry["loss"] > 0 and entry["grad_norm"] > 0
        assert entry["examples_per_second"] > 0 and entry["tokens_per_second"] > entry["examples_per_second"]
    assert jsonl(out) == log  # the file holds the same log, line by line

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": loss " in line]
    assert [line.split("/")[0] for line in lines] == [f"step {s}" for s in TRAINING_STEPS]
    assert lines[0].startswith(f"step 4/12 (train): loss {training(log)[0]['loss']:.4f}, learning rate 0.000667, grad norm")
    assert lines[0].endswith("tokens/s") and "examples/s" in lines[0]

    series = scalars(out)
    assert [s for s, _ in series["train/loss"]] == TRAINING_STEPS
    assert [v for _, v in series["train/loss"]] == pytest.approx([e["loss"] for e in training(log)])
    assert [v for _, v in series["train/learning_rate"]] == pytest.approx([e["learning_rate"] for e in training(log)])
    assert [s for s, _ in series["eval/accuracy"]] == EVAL_STEPS
    assert {"train/grad_norm", "train/examples_per_second", "eval/macro_f1"} <= set(series)
    assert (out / "curves.png").read_bytes()[:8] == PNG and (out / "curves.png").stat().st_size > 10_000


def test_the_logged_loss_and_norm_are_the_means_over_the_interval():
    rows = [(9, 1.0, 2.0), (10, 3.0, 5.0)]
    entry = training_entry(rows, 0.5, examples=16, tokens=256, step=10, epoch=10 / 6, phase="train",
                           learning_rate=1e-3, train_seconds=4.0)
    assert entry == {"step": 10, "epoch": 1.6667, "seconds": 4.0, "phase": "train", "loss": 2.0, "grad_norm": 3.5,
                     "learning_rate": 1e-3, "examples_per_second": 32.0, "tokens_per_second": 512.0}


def test_counting_a_batch_reads_nothing_from_the_device(tmp_path):
    """The log counts examples and tokens from shapes: no host read in the training step (test_train.HostReads)."""
    from test_train import HostReads

    log = RunLog([], None)
    batch = {"input_ids": torch.ones(4, 9, dtype=torch.long), "labels": torch.zeros(4, dtype=torch.long)}
    with HostReads() as reads:
        log.count(batch)
        log.count(batch)
    assert reads.reads == [] and (log.examples, log.tokens) == (8, 72)


def test_only_the_main_process_logs(tmp_path):
    other = RunLog([], str(tmp_path), main=False, world_size=2)
    other.count({"input_ids": torch.ones(4, 9, dtype=torch.long)})
    assert other.training([(1, 0.5, 1.0)], 1.0, step=1, epoch=0.1, phase="train", learning_rate=1e-3,
                          train_seconds=1.0) is None
    other.evaluation({"step": 1, "epoch": 0.1, "seconds": 1.0, "phase": "train", "metric": 0.5, "metrics": {"a": 0.5}})
    assert other.entries == [] and list(tmp_path.iterdir()) == []
    main_log = RunLog([], str(tmp_path), world_size=2)
    main_log.count({"input_ids": torch.ones(4, 9, dtype=torch.long)})
    entry = main_log.training([(1, 0.5, 1.0)], 2.0, step=1, epoch=0.1, phase="train", learning_rate=1e-3,
                              train_seconds=1.0)
    assert entry["examples_per_second"] == 4.0  # 4 examples on each of 2 ranks, in 2 s
    assert jsonl(tmp_path) == [entry]


@pytest.mark.slow
def test_a_resumed_run_continues_its_log_without_losing_or_repeating_entries(data, tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    reference = tmp_path / "reference"
    assert main(finetune(data, tiny_model_dir, reference, "--no-progress")) == 0
    out = tmp_path / "run"
    interrupt_at(monkeypatch.setattr, 8)  # Ctrl-C, in this process: a checkpoint at step 8
    assert main(finetune(data, tiny_model_dir, out, "--report-to", "tensorboard", "--no-progress")) == 130
    monkeypatch.undo()
    assert [e["step"] for e in training(jsonl(out))] == [4, 5, 8]
    # A killed run may have logged past its checkpoint: those steps run again after the resume, and count once.
    with open(out / "history.jsonl", "a") as f:
        f.write(json.dumps({"step": 10, "loss": 99.0}) + "\n")
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(out / "tensorboard")) as writer:
        writer.add_scalar("train/loss", 99.0, 10)

    assert main(finetune(data, tiny_model_dir, out, "--report-to", "tensorboard", "--no-progress")) == 0
    ran, resumed = results(reference)["log_history"], results(out)["log_history"]
    same = ("step", "phase", "loss", "grad_norm", "learning_rate", "eval_accuracy")
    assert [{k: e.get(k) for k in same} for e in resumed] == [{k: e.get(k) for k in same} for e in ran]
    assert jsonl(out) == resumed
    losses = scalars(out)["train/loss"]
    assert [s for s, _ in losses] == TRAINING_STEPS and 99.0 not in [v for _, v in losses]


@pytest.mark.slow
def test_an_overwrite_replaces_the_old_runs_logs(data, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(finetune(data, tiny_model_dir, out, "--report-to", "tensorboard", "--no-progress")) == 0
    assert main(finetune(data, tiny_model_dir, out, "--no-progress", "--logging-steps", "3", "--overwrite")) == 0
    assert not (out / "tensorboard").exists() and not (out / ".replacement").exists()
    assert [e["step"] for e in training(jsonl(out))] == [3, 5, 6, 9, 10, 12] and jsonl(out) == results(out)["log_history"]
    assert (out / "curves.png").read_bytes()[:8] == PNG


def test_report_to_names():
    assert parse_report_to("none") == () and parse_report_to(None) == ()
    assert parse_report_to("TensorBoard, tensorboard") == ("tensorboard",)
    with pytest.raises(UsageError, match=r"--report-to 'comet' is not one of tensorboard, wandb, all, none"):
        parse_report_to("comet")
    with pytest.raises(UsageError, match=r"'none' and 'all' stand alone"):
        parse_report_to("all,wandb")


def test_report_to_all_is_every_reporter_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    assert parse_report_to("all") == ("tensorboard",)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert parse_report_to("all") == ()


@pytest.mark.parametrize("package", ["wandb", "tensorboard"])
def test_a_reporter_whose_package_is_missing_is_one_line_naming_the_install(package, data, tiny_model_dir, tmp_path,
                                                                              monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    out = tmp_path / "run"
    assert main(finetune(data, tiny_model_dir, out, "--report-to", package, "--no-progress")) == 2
    err = capsys.readouterr().err
    assert err == f"learners: error: --report-to {package} needs the {package} package, which is not installed: " \
                  f"pip install {package}\n" and not out.exists()


@pytest.mark.slow
def test_the_progress_bar_shows_the_last_entry(data, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(finetune(data, tiny_model_dir, out)) == 0
    last = training(results(out)["log_history"])[-1]
    err = capsys.readouterr().err
    bar = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("training:")]
    # tqdm pads a line shorter than the one before with spaces
    assert bar[-1].rstrip().endswith(f"loss={last['loss']:.4f}, lr=0.00e+00, grad={last['grad_norm']:.3g}, "
                                     f"ex/s={last['examples_per_second']:.1f}]")
    assert ": loss " not in err  # no log lines: the bar has it


def test_report_to_wandb_writes_an_offline_run(data, tiny_model_dir, tmp_path):
    """Only where the wandb package is installed (it is not a test dependency): an offline run, nothing uploaded."""
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    assert main(finetune(data, tiny_model_dir, out, "--report-to", "wandb", "--no-progress")) == 0
    run_id = (out / "wandb" / "learners_run_id").read_text().strip()
    [record] = list((out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert record.stat().st_size > 0

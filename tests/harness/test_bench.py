"""`learners bench`: the grid runner (resumable, failures reported), time to target, and the report."""

import csv
import json
import re

import pytest

from learners.harness import bench
from learners.harness.cli import build_parser, main
from learners.harness.report import CSV_COLUMNS, build_report, task_targets, time_to_target
from stop_at_step import SCRIPT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def small_glue(tmp_path, glue_dir):
    """CoLA cut down from glue_dir (a spread of its rows), so each run's evaluations cost next to nothing."""
    folder = tmp_path / "glue" / "CoLA"
    folder.mkdir(parents=True)
    for name, every in (("train.tsv", 40), ("dev.tsv", 16)):
        lines = (glue_dir / "CoLA" / name).read_text().splitlines(keepends=True)
        (folder / name).write_text("".join(lines[::every]))
    return tmp_path / "glue"


def bench_args(out, tiny_model_dir, data_dir, *extra):
    return ["bench", "--tasks", "cola", "--methods", "full,learners", "--seeds", "0,1", "--output-dir", str(out),
            "--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--max-steps", "3", "--max-train-samples", "32",
            "--batch-size", "8", "--eval-steps", "1", "--selection", "priming", "--priming-steps", "1", "--no-progress", *extra]


@pytest.mark.slow
def test_bench_runs_the_grid_writes_the_report_and_resumes(tmp_path, tiny_model_dir, small_glue, monkeypatch, capsys):
    out = tmp_path / "bench"
    assert main(bench_args(out, tiny_model_dir, small_glue)) == 0

    rows = list(csv.DictReader(open(out / "bench.csv")))
    assert list(rows[0]) == CSV_COLUMNS
    assert [(r["task"], r["method"], r["seed"]) for r in rows] == [
        ("cola", "full", "0"), ("cola", "full", "1"), ("cola", "learners", "0"), ("cola", "learners", "1")]
    for r in rows:
        assert r["metric_name"] == "matthews_correlation"
        for column in ("metric", "best_metric", "train_seconds", "step_ms", "peak_memory_mb", "trainable_params", "total_params"):
            float(r[column])
        assert float(r["peak_memory_mb"]) > 0 and float(r["step_ms"]) > 0
        assert r["time_to_target_s"] == "" or float(r["time_to_target_s"]) >= 0
    full, learners = rows[0], rows[2]
    assert int(full["trainable_params"]) == int(full["total_params"]) > int(learners["trainable_params"]) > 0

    md = (out / "bench.md").read_text()
    assert re.search(r"^\| full \| -?\d\.\d{3} ± \d\.\d{3} \|", md, re.M)
    assert re.search(r"^\| learners \| -?\d\.\d{3} ± \d\.\d{3} \|", md, re.M)
    assert "- cola: " in md  # the target (or why there is none) is stated
    for name in ("curve_cola.png", "step_time.png", "peak_memory.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    log = (out / "runs" / "cola" / "learners" / "seed1" / "log.txt").read_text()
    assert "--priming-steps 1" in log and "--seed 1" in log and "results.json" in log

    # a killed bench: one run lost its results.json; the re-run redoes that one only
    capsys.readouterr()
    done = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/seed*/results.json")}
    lost = out / "runs" / "cola" / "full" / "seed1" / "results.json"
    lost.unlink()
    calls = []
    real_launch = bench.launch
    monkeypatch.setattr(bench, "launch", lambda command, log: calls.append(command) or real_launch(command, log))
    assert main(bench_args(out, tiny_model_dir, small_glue)) == 0
    assert len(calls) == 1 and calls[0][calls[0].index("--output-dir") + 1] == str(lost.parent)
    assert lost.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in done.items() if p != lost)
    printed = capsys.readouterr().out
    assert printed.count("skip (done)") == 3 and "redo (no results.json)" in printed
    assert len(list(csv.DictReader(open(out / "bench.csv")))) == 4


@pytest.mark.slow
def test_bench_resumes_a_killed_run_from_its_checkpoint(tmp_path, tiny_model_dir, small_glue, monkeypatch, capsys):
    out = tmp_path / "bench"
    args = bench_args(out, tiny_model_dir, small_glue, "--methods", "full", "--seeds", "0")
    real_launch = bench.launch  # the run kills itself after step 2: `python -m learners.cli` becomes stop_at_step's
    monkeypatch.setattr(bench, "launch", lambda command, log: real_launch(
        [command[0], SCRIPT, "kill", "2", *command[command.index("learners.cli") + 1:]], log))
    assert main(args) == 1
    run = out / "runs" / "cola" / "full" / "seed0"
    assert (run / "checkpoint").is_dir() and not (run / "results.json").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(args) == 0
    assert "resume (checkpoint)" in capsys.readouterr().out
    assert "resuming from" in (run / "log.txt").read_text() and (run / "results.json").exists()

    # under other training options the unfinished run starts afresh
    (run / "results.json").unlink()
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "checkpoint.json").write_text("{}")
    calls = []
    monkeypatch.setattr(bench, "launch", lambda command, log: calls.append(command) or 1)
    assert main(bench_args(out, tiny_model_dir, small_glue, "--methods", "full", "--seeds", "0", "--warmup-ratio", "0.1")) == 1
    assert calls[0][-1] == "--overwrite" and "redo (other options)" in capsys.readouterr().out


def fake_results(task, method, seed, history, best=None, metric_name="matthews_correlation", trainable=1000, total=100_000):
    metrics = [h[1] for h in history]
    return {"task": task, "method": method, "seed": seed, "model": "tiny", "metric_name": metric_name,
            "metric": metrics[-1], "best_metric": max(metrics) if best is None else best,
            "trainable_params": trainable, "encoder_trainable_params": trainable - 100, "head_params": 100,
            "total_params": total, "trainable_percent": 100 * trainable / total, "train_seconds": history[-1][0],
            "peak_memory_mb": 500.0 + seed, "steps": 10 * len(history), "priming_steps": 0, "step_ms": 20.0 + seed,
            "device": "cpu", "history": [{"step": 10 * (i + 1), "seconds": s, "metric": m} for i, (s, m) in enumerate(history)]}


def write_runs(out, results):
    for r in results:
        directory = bench.run_dir(out, r["task"], r["method"], r["seed"])
        directory.mkdir(parents=True)
        (directory / "results.json").write_text(json.dumps(r))


def test_time_to_target_is_the_first_second_the_metric_reaches_it():
    history = [{"seconds": 1.0, "metric": -0.1}, {"seconds": 2.5, "metric": 0.3}, {"seconds": 4.0, "metric": 0.5},
               {"seconds": 6.0, "metric": 0.45}]
    assert time_to_target(history, 0.3) == 2.5  # reached exactly
    assert time_to_target(history, 0.4) == 4.0
    assert time_to_target(history, -0.2) == 1.0  # negative metrics (MCC) compare as numbers
    assert time_to_target(history, 0.51) is None  # never reached
    assert time_to_target(history, None) is None
    assert time_to_target([], 0.1) is None


def test_time_to_target_counts_only_models_the_run_can_return():
    """The primed model (full fine-tuning) and the just reconfigured one are not what a learners run returns."""
    history = [{"step": 20, "seconds": 80.0, "metric": 0.60, "phase": "priming"},
               {"step": 20, "seconds": 81.0, "metric": 0.58, "phase": "reconfigured"},
               {"step": 40, "seconds": 120.0, "metric": 0.52, "phase": "train"},
               {"step": 60, "seconds": 160.0, "metric": 0.57, "phase": "train"}]
    assert time_to_target(history, 0.55) == 160.0
    assert time_to_target(history, 0.59) is None


def test_targets_default_to_95_percent_of_full_mean_best_and_never_made_up():
    results = [fake_results("mrpc", "full", 0, [(1, 0.7), (2, 0.8)]), fake_results("mrpc", "full", 1, [(1, 0.9), (2, 0.85)]),
               fake_results("mrpc", "learners", 0, [(1, 0.5)]),
               fake_results("cola", "full", 0, [(1, -0.05), (2, 0.0)]), fake_results("cola", "full", 1, [(1, -0.02)]),
               fake_results("rte", "learners", 0, [(1, 0.6)])]
    targets = task_targets(results)
    assert targets["mrpc"][0] == pytest.approx(0.95 * 0.85)  # mean of the bests 0.8 and 0.9
    assert "95%" in targets["mrpc"][1]
    assert targets["cola"][0] is None and "<= 0" in targets["cola"][1]  # full's mean best -0.01: no bar
    assert targets["rte"][0] is None and "not in this bench" in targets["rte"][1]
    assert task_targets(results, 0.5)["cola"][0] == 0.5
    per_task = task_targets(results, {"cola": 0.25})
    assert per_task["cola"][0] == 0.25 and per_task["mrpc"][0] == pytest.approx(0.8075) and per_task["rte"][0] is None


def test_report_only_rebuilds_csv_md_and_plots_from_runs(tmp_path, capsys):
    out = tmp_path / "bench"
    write_runs(out, [
        fake_results("cola", "full", 0, [(10, 0.1), (20, 0.3), (30, 0.4)]),
        fake_results("cola", "full", 1, [(12, 0.2), (24, 0.4), (36, 0.4)]),  # mean best 0.4 -> target 0.38
        fake_results("cola", "learners", 0, [(5, 0.2), (8, 0.37), (11, 0.41)], trainable=2000),
        fake_results("cola", "learners", 1, [(5, 0.1), (8, 0.2), (11, 0.3)], trainable=2000),  # never reaches 0.38
        fake_results("mrpc", "full", 0, [(10, 0.8)], metric_name="f1"),
        fake_results("mrpc", "learners", 0, [(4, 0.5)], metric_name="f1", trainable=2000),
    ])
    (out / "runs" / "mrpc" / "full" / "seed1").mkdir()  # a killed run: no results.json
    assert main(["bench", "--report-only", "--output-dir", str(out), "--methods", "learners,full"]) == 0
    rows = list(csv.DictReader(open(out / "bench.csv")))
    assert [(r["task"], r["method"], r["seed"]) for r in rows] == [
        ("cola", "learners", "0"), ("cola", "learners", "1"), ("cola", "full", "0"), ("cola", "full", "1"),
        ("mrpc", "learners", "0"), ("mrpc", "full", "0")]
    assert [r["time_to_target_s"] for r in rows] == ["11.0", "", "30.0", "24.0", "", "10.0"]
    assert float(rows[0]["target"]) == pytest.approx(0.38) and float(rows[4]["target"]) == pytest.approx(0.76)

    md = (out / "bench.md").read_text()
    assert "| learners | 0.355 ± 0.078 | 0.500 (1/2 seeds) | 0.427 | 2,000 (2.00%) | 20.0 | 501 |" in md
    assert "| full | 0.400 ± 0.000 | 0.800 (1/2 seeds) | 0.600 | 1,000 (1.00%) | 20.0 | 501 |" in md
    assert "| learners | 11.0 (1/2 reached) | n/a (0/1 reached) |" in md
    assert "| full | 27.0 | 10.0 |" in md
    assert "- cola: matthews_correlation 0.3800 = 95% of `full`'s mean best 0.4000 over 2 seed(s)" in md
    assert "runs/mrpc/full/seed1" in md
    for name in ("curve_cola.png", "curve_mrpc.png", "step_time.png", "peak_memory.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # each written whole, then renamed into place

    # an absolute target; without `full` there is no default target, and the md says why
    build_report(out, target=0.35)
    assert "| learners | 8.0 (1/2 reached) | 4.0 |" in (out / "bench.md").read_text()
    build_report(out, methods=["learners"])
    md = (out / "bench.md").read_text()
    assert "n/a (no target)" in md and "`full` is not in this bench" in md


def test_a_failed_run_is_reported_and_the_bench_goes_on(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"

    def launch(command, log):
        seed = int(command[command.index("--seed") + 1])
        method = command[command.index("--method") + 1]
        if method == "learners" and seed == 0:
            log.write_text("learners: error: something went wrong\n")
            return 1
        log.write_text("ok\n")
        (log.parent / "results.json").write_text(json.dumps(fake_results("cola", method, seed, [(1, 0.2), (2, 0.3)])))
        return 0

    monkeypatch.setattr(bench, "launch", launch)
    assert main(["bench", "--tasks", "cola", "--methods", "full,learners", "--seeds", "0,1", "--output-dir", str(out)]) == 1
    captured = capsys.readouterr()
    failed_log = str(out / "runs" / "cola" / "learners" / "seed0" / "log.txt")
    assert "FAILED (exit 1): learners: error: something went wrong" in captured.out and failed_log in captured.out
    assert "1 of 4 runs failed" in captured.err and failed_log in captured.err
    assert len(list(csv.DictReader(open(out / "bench.csv")))) == 3
    assert "| learners | 0.300 (1/2 seeds) |" in (out / "bench.md").read_text()  # one seed: no ±, the missing one said


def test_a_task_method_or_seed_named_twice_is_planned_once(tmp_path, monkeypatch, capsys):
    runs = []

    def launch(command, log):
        runs.append(tuple(command[command.index(flag) + 1] for flag in ("--task", "--method", "--seed")))
        log.write_text("ok\n")
        (log.parent / "results.json").write_text(json.dumps(fake_results("cola", runs[-1][1], int(runs[-1][2]), [(1, 0.2)])))
        return 0

    monkeypatch.setattr(bench, "launch", launch)
    assert main(["bench", "--tasks", "cola,cola", "--methods", "full,full", "--seeds", "0,00,1", "--output-dir",
                 str(tmp_path / "b")]) == 0
    assert runs == [("cola", "full", "0"), ("cola", "full", "1")]
    assert "[2/2]" in capsys.readouterr().out


def test_each_run_gets_only_the_flags_of_its_method(tmp_path, monkeypatch, capsys):
    """One bench line for several methods: a full run gets no learners or LoRA flag (finetune would refuse it),
    the learners run gets its own and the priming flags, the LoRA run its own; shared flags go to every run."""
    commands = {}

    def launch(command, log):
        method = command[command.index("--method") + 1]
        commands[method] = command
        log.write_text("ok\n")
        (log.parent / "results.json").write_text(json.dumps(fake_results("cola", method, 0, [(1, 0.2)])))
        return 0

    monkeypatch.setattr(bench, "launch", launch)
    assert main(["bench", "--tasks", "cola", "--methods", "full,learners,lora", "--seeds", "0", "--output-dir",
                 str(tmp_path / "b"), "--epochs", "2", "--ratio", "0.125", "--selection", "priming",
                 "--priming-learning-rate", "2e-4", "--lora-rank", "4"]) == 0
    tail = lambda method: commands[method][commands[method].index("--output-dir") + 2:]  # noqa: E731
    assert tail("full") == ["--epochs", "2.0", "--no-progress"]
    assert tail("learners") == ["--epochs", "2.0", "--priming-learning-rate", "0.0002", "--ratio", "0.125",
                                "--selection", "priming", "--no-progress"]
    assert tail("lora") == ["--epochs", "2.0", "--lora-rank", "4", "--no-progress"]
    settings = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert "--ratio" in settings["training_flags"] and "--lora-rank" in settings["training_flags"]


def test_every_training_option_passes_through_to_finetune_unchanged():
    """Generic over add_training_arguments: set each option away from its default, bench turns them back into flags,
    and finetune parses them to the same values (options added later are covered too)."""
    import argparse

    from learners.harness.arguments import add_training_arguments
    probe = argparse.ArgumentParser(add_help=False)
    add_training_arguments(probe)
    given = []
    for action in probe._actions:
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:
            given.append(flag)
        elif action.choices:
            given += [flag, str(next(c for c in action.choices if c != action.default))]
        else:
            given += [flag, "7" if action.dest != "num_neurons" else "4,8"]
    parser = build_parser()
    args = parser.parse_args(["bench", "--tasks", "cola", "--output-dir", "o", *given])
    flags = bench.training_flags(args)
    again = parser.parse_args(["finetune", "--output-dir", "o", *flags])
    for action in probe._actions:
        if action.dest != "no_progress":
            assert getattr(again, action.dest) == getattr(args, action.dest) != action.default, action.dest
    assert "--no-progress" not in flags  # the bench always adds it itself
    defaults = bench.training_flags(parser.parse_args(["bench", "--output-dir", "o", "--epochs", "1.5"]))
    assert defaults == ["--epochs", "1.5"]  # options left at their default stay implicit
    # on/off flags pass on as given, either way (b2 and the LayerNorm train by default; a run can turn them off)
    both = ["--train-ffn-output-bias", "--no-train-layer-norm"]
    assert bench.training_flags(parser.parse_args(["bench", "--output-dir", "o", *both]), "learners") == both
    assert bench.training_flags(parser.parse_args(["bench", "--output-dir", "o", *both]), "full") == []


@pytest.mark.parametrize("args,message", [
    (["--tasks", "colaa"], "unknown GLUE task 'colaa'"),
    (["--tasks", "cola", "--methods", "full,magic"], "unknown method"),
    (["--tasks", "cola", "--seeds", "a"], "--seeds takes"),
    (["--tasks", "cola", "--target", "cola=x"], "--target takes"),
    (["--report-only"], "no finished runs"),
])
def test_bad_bench_input_is_one_line_exit_2(args, message, tmp_path, capsys):
    assert main(["bench", "--output-dir", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("learners: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "runs").exists()


def test_the_bench_passes_its_own_data_flags_with_local_paths_absolute(tmp_path, monkeypatch):
    """Every finetune data flag set reaches the runs; files and a local --dataset as absolute paths, a hub set by
    name; what only predicts after training (--test-file) is left out of what says which data the runs used."""
    from learners.harness.bench_data import data_flags
    from learners.harness.data_arguments import AFTER_TRAINING_FLAGS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "saved").mkdir()
    args = build_parser().parse_args(["bench", "--output-dir", "out", "--dataset", "saved", "--columns", "label,text",
                                      "--no-header", "--test-file", "test.csv", "--threshold", "0.25"])
    assert data_flags(args) == ["--threshold", "0.25", "--dataset", str(tmp_path / "saved"), "--test-file",
                                str(tmp_path / "test.csv"), "--columns", "label,text", "--no-header"]
    assert "--test-file" not in data_flags(args, AFTER_TRAINING_FLAGS)
    hub = build_parser().parse_args(["bench", "--output-dir", "out", "--dataset", "nyu-mll/glue", "--dataset-config",
                                     "sst2"])
    assert data_flags(hub) == ["--dataset", "nyu-mll/glue", "--dataset-config", "sst2"]

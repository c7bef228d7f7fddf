"""Data-parallel runs: `torchrun --nproc_per_node 2` (gloo, CPU) against one process with the same global batch.

Tolerance: the two runs see the same 8 examples per step, but DDP averages two 4-example mean gradients
(all-reduce: a sum in another order) where one process takes one 8-example mean, and pads each half-batch
to its own length. float32 rounding then differs in the last bits (measured: 4e-9 on the weights after
6 steps, up to 5e-6 on the STS-B Pearson of this near-random tiny model), so weights must agree within 1e-5
and the dev metric within 1e-4, not bit for bit.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learners.harness.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"
WEIGHT_TOLERANCE = 1e-5
METRIC_TOLERANCE = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finetune_args(glue_dir, model_dir, out, batch_size, *extra):
    """In fp32: two processes match one up to the all-reduce's rounding, which bf16 (the default on a CPU that has it)
    would magnify past the tolerance."""
    return ["finetune", "--task", "stsb", "--data-dir", str(glue_dir), "--model", str(model_dir), "--output-dir", str(out),
            "--max-steps", "6", "--eval-steps", "3", "--max-train-samples", "48", "--batch-size", str(batch_size),
            "--mixed-precision", "no", "--no-progress", *extra]


def torchrun(tmp_path, args, module="learners.cli", timeout=120) -> tuple[subprocess.CompletedProcess, Path]:
    """Two gloo processes on this machine; each rank's stdout/stderr in its own file under the returned folder."""
    logs = tmp_path / "rank-logs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "--log-dir", str(logs), "--redirects", "3", "-m", module, *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return done, logs


def rank_log(logs: Path, rank: int, stream: str) -> str:
    return "".join(p.read_text() for p in logs.glob(f"*/attempt_*/{rank}/{stream}.log"))


def files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def max_difference(a: Path, b: Path) -> float:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    return max((x[k].double() - y[k].double()).abs().max().item() for k in x if x[k].is_floating_point())


def compare_with_one_process(tmp_path, tiny_model_dir, glue_dir, *extra, module="learners.cli"):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(finetune_args(glue_dir, tiny_model_dir, one, 8, *extra)) == 0
    done, logs = torchrun(tmp_path, finetune_args(glue_dir, tiny_model_dir, two, 4, *extra), module)
    assert done.returncode == 0, rank_log(logs, 0, "stderr") + rank_log(logs, 1, "stderr") + done.stderr
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (one, two))

    assert (r1["world_size"], r1["global_batch_size"]) == (1, 8)
    assert (r2["world_size"], r2["global_batch_size"], r2["batch_size"]) == (2, 8, 4)
    assert r2["steps"] == r1["steps"] == 6
    assert [(h["step"], h["phase"]) for h in r2["history"]] == [(h["step"], h["phase"]) for h in r1["history"]]
    for h1, h2 in zip(r1["history"], r2["history"]):
        assert h2["metric"] == pytest.approx(h1["metric"], abs=METRIC_TOLERANCE)
    assert max_difference(one / "model" / "model.safetensors", two / "model" / "model.safetensors") < WEIGHT_TOLERANCE

    # rank 0 alone wrote: the same files as one process (one results.json, no checkpoint left), and
    # rank 1 printed nothing while rank 0 logged the evaluations and the summary
    assert files(two) == files(one) and files(two).count("results.json") == 1
    assert rank_log(logs, 1, "stdout") == "" and rank_log(logs, 1, "stderr") == ""
    assert "step 6/6" in rank_log(logs, 0, "stderr") and "results.json" in rank_log(logs, 0, "stdout")

    # the training log (run_log.py): rank 0's alone, its loss the mean over both ranks' halves of each batch
    t1, t2 = ([e for e in r["log_history"] if "loss" in e] for r in (r1, r2))
    assert [e["step"] for e in t2] == [e["step"] for e in t1] and len(t1) >= 2
    assert [e["loss"] for e in t2] == pytest.approx([e["loss"] for e in t1], abs=METRIC_TOLERANCE)
    assert [json.loads(line) for line in (two / "history.jsonl").read_text().splitlines()] == r2["log_history"]
    return r1, r2, one, two


@pytest.mark.slow
def test_learners_with_priming_on_two_processes_match_one(tmp_path, tiny_model_dir, glue_dir):
    r1, r2, one, two = compare_with_one_process(tmp_path, tiny_model_dir, glue_dir, "--method", "learners",
                                                "--selection", "priming", "--priming-steps", "2", "--ratio", "0.25")
    assert r2["priming_steps"] == 2 and r2["learner_layers"] == r1["learner_layers"]
    l1, l2 = (load_file(str(d / "learners" / "learners_model.safetensors")) for d in (one, two))
    indices = [k for k in l1 if "indices" in k]
    assert indices and all(torch.equal(l1[k], l2[k]) for k in indices)
    assert max_difference(one / "learners" / "learners_model.safetensors",
                          two / "learners" / "learners_model.safetensors") < WEIGHT_TOLERANCE


@pytest.mark.slow
def test_full_finetune_on_two_processes_matches_one(tmp_path, tiny_model_dir, glue_dir):
    compare_with_one_process(tmp_path, tiny_model_dir, glue_dir, "--method", "full", module="learners")


@pytest.mark.slow
def test_accumulation_and_early_stopping_on_two_processes_match_one(tmp_path, tiny_model_dir, glue_dir):
    """Two processes x batch 2 x 2 accumulated micro-batches train on the same 8 examples a step as one process x
    batch 8 (DDP all-reduces in the last backward only); early stopping's decision, taken on rank 0, which alone
    evaluates, reaches rank 1 at every evaluation (a rank going on alone would hang the run)."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--method", "full", "--eval-steps", "1", "--early-stopping-patience", "1"]
    assert main(finetune_args(glue_dir, tiny_model_dir, one, 8, *common)) == 0
    done, logs = torchrun(tmp_path, finetune_args(glue_dir, tiny_model_dir, two, 2, "--gradient-accumulation-steps", "2",
                                                  *common))
    assert done.returncode == 0, rank_log(logs, 0, "stderr") + rank_log(logs, 1, "stderr") + done.stderr
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert (r2["world_size"], r2["effective_batch_size"], r1["effective_batch_size"]) == (2, 8, 8)
    assert r1["stopped_early"] and (r2["steps"], r2["early_stopping_step"]) == (r1["steps"], r1["early_stopping_step"]) < (6, 6)
    for h1, h2 in zip(r1["history"], r2["history"], strict=True):
        assert h2["metric"] == pytest.approx(h1["metric"], abs=METRIC_TOLERANCE)
    assert max_difference(one / "model" / "model.safetensors", two / "model" / "model.safetensors") < WEIGHT_TOLERANCE


@pytest.mark.slow
def test_bad_input_fails_on_every_rank_without_hanging(tmp_path, tiny_model_dir, glue_dir):
    (tmp_path / "file").write_text("in the way")
    done, logs = torchrun(tmp_path, finetune_args(glue_dir, tiny_model_dir, tmp_path / "file", 4), timeout=60)
    assert done.returncode != 0
    # Both ranks check before any collective, so neither waits for the other. torchrun stops the remaining
    # rank as soon as one exits non-zero, so on a busy machine the other may be stopped before it prints.
    messages = [rank_log(logs, rank, "stderr") for rank in (0, 1)]
    assert any("learners: error: --output-dir" in m for m in messages)
    assert not any("Traceback" in m for m in messages)


def test_python_dash_m_learners_runs_the_cli():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "learners", "finetune", "--help"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "--output-dir" in done.stdout

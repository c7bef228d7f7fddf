"""The examples run end to end (on a tiny random model and a few GLUE-format rows)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Header-less CoLA rows: source, label, original label, sentence.
COLA_ROWS = [("gj04", 1, "The sailors rode the breeze clear of the rocks."), ("gj04", 0, "The more does Bill smoke."),
             ("bc01", 1, "John wrote a letter to Mary."), ("bc01", 0, "Mary was wrote a letter by John."),
             ("r-67", 1, "She is proud of her sons."), ("r-67", 0, "She is proud her sons of."),
             ("cj99", 1, "They left early."), ("cj99", 0, "Left they early the.")]


@pytest.fixture
def tiny_cola(tmp_path) -> Path:
    folder = tmp_path / "glue" / "CoLA"
    folder.mkdir(parents=True)
    rows = "".join(f"{source}\t{label}\t\t{sentence}\n" for source, label, sentence in COLA_ROWS)
    (folder / "train.tsv").write_text(rows * 3)
    (folder / "dev.tsv").write_text(rows)
    return tmp_path / "glue"


@pytest.mark.slow
def test_glue_trainer_example_primes_trains_and_writes_its_metric(tmp_path, tiny_model_dir, tiny_cola):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "glue_trainer.py"), "--task", "cola", "--model", str(tiny_model_dir),
         "--data-dir", str(tiny_cola), "--output-dir", str(out), "--max-train-samples", "20", "--batch-size", "4",
         "--epochs", "2", "--seed", "0"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "metrics.json").read_text())
    assert results["task"] == "cola" and results["metric_name"] == "matthews_correlation"
    assert -1 <= results["metric"] <= 1 and results["best_metric"] >= results["final_metric"]
    assert results["metric"] == pytest.approx(results["best_metric"], abs=1e-6)  # the best evaluation is kept
    assert results["priming_steps"] == 1 and results["steps"] == 10  # a quarter of 5 batches, of 2 epochs
    assert results["history"][-1]["step"] == 10  # evaluated at the end, not only every eval_steps
    assert (out / "learners" / "learners_config.json").is_file()
    assert "cola dev matthews_correlation: kept" in done.stdout


def test_the_examples_use_only_the_public_library_api():
    """No example reaches into the harness (the `learners` command's internals): the library's API only."""
    import ast

    for path in sorted((ROOT / "examples").glob("*.py")):
        modules = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules.add(node.module)
            elif isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
        ours = {m for m in modules if m == "learners" or m.startswith("learners.")}
        assert ours and not {m for m in ours if m.startswith("learners.harness")}, (path.name, ours)


def test_the_glue_example_defaults_to_the_embedded_model_without_the_harness():
    import importlib.util

    from learners.harness.models import embedded_model_dir

    spec = importlib.util.spec_from_file_location("glue_trainer", ROOT / "examples" / "glue_trainer.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert Path(example.default_model()) == embedded_model_dir()

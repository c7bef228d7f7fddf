"""benchmarks/switch_learners.py on a tiny model: a table row per approach."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import switch_learners  # noqa: E402

pytestmark = pytest.mark.slow  # the benchmark script on a tiny model: seconds


def test_switch_benchmark_prints_a_row_per_approach(tiny_model_dir, capsys):
    assert switch_learners.main(["--tasks", "2", "--switches", "2", "--forwards", "1", "--length", "16", "--model", str(tiny_model_dir)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 5 and rows[0].startswith("| approach")
    learners = rows[1].split("|")
    assert "learner sets" in learners[1] and 0 < float(learners[6]) < 0.1  # MB per extra set on the tiny model

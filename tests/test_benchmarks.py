"""benchmarks/gpu_step_time.py on the tiny size: a table row per method, a failed method keeps its row."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_step_time  # noqa: E402
import step_time_memory  # noqa: E402


def in_process_worker(method, batch_size, length, steps, warmup, arch=None, precision="no", compile=False,
                      options=None, label=None, timeout=None, model=None):
    """run_worker without the fresh process (seconds saved per method; peak memory is then not per method)."""
    if label == "lora":
        raise RuntimeError("boom")
    args = argparse.Namespace(worker=method, batch_size=batch_size, length=length, steps=steps, warmup=warmup,
                              arch=arch, precision=precision, compile=compile, options=json.dumps(options),
                              label=label, model=model)
    return step_time_memory.worker(args)


def test_gpu_step_time_prints_a_row_per_method(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gpu_step_time, "run_worker", in_process_worker)
    status = gpu_step_time.main(["--sizes", "tiny", "--batch-sizes", "2", "--steps", "1", "--warmup", "0",
                                 "--precision", "no", "--output", str(tmp_path / "steps")])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) == {"method", "full", "bitfit", "lora", "learners", "learners-all"}
    assert "failed: boom" in rows["lora"] and status == 1  # one failure keeps the others
    assert rows["full"].count("1.00x") == 3
    assert rows["learners-all"].split("|")[2].strip() == "2/2"  # learners in both blocks of the tiny model
    assert "torch" in out and (tmp_path / "steps.md").exists() and (tmp_path / "steps.json").exists()

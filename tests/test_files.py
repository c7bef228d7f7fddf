"""Files other processes read (bench.json, bench.csv, results.json, plots) are never seen half-written."""

import json
import subprocess
import sys

import pytest

from learners.harness.files import replaced_atomically


def test_the_old_file_stays_whole_until_the_new_one_is_complete(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text('{"old": 1}')
    with replaced_atomically(path) as tmp:
        tmp.write_text('{"ne')  # another process reading now...
        assert json.loads(path.read_text()) == {"old": 1}  # ...reads the old file, whole
        assert tmp.parent == path.parent and tmp.suffix == ".json"  # same filesystem (atomic rename); savefig's suffix
        tmp.write_text('{"new": 2}')
    assert json.loads(path.read_text()) == {"new": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "bench.csv"
    path.write_text("task,method\n")
    with pytest.raises(RuntimeError):
        with replaced_atomically(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "task,method\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.csv"]


def test_two_benches_sharing_an_output_dir_never_read_a_half_written_bench_json(tmp_path):
    """Two queues of `learners bench` on one output dir (two lanes on one machine): each rewrites bench.json
    while the other reads it back. Before the writes were atomic this failed with a JSONDecodeError."""
    out = tmp_path / "bench"
    loop = ("import sys; from pathlib import Path; from learners.harness.bench import record_settings\n"
            "for i in range(400): record_settings(Path(sys.argv[1]), ['stsb'], ['learners'], [i], ['--seed-' + 'x' * 2000])")
    lanes = [subprocess.Popen([sys.executable, "-c", loop, str(out)], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [lane.communicate()[1] for lane in lanes]
    assert [lane.returncode for lane in lanes] == [0, 0], errors
    assert json.loads((out / "bench.json").read_text())["seeds"] == [399]
    assert sorted(p.name for p in out.iterdir()) == ["bench.json"]

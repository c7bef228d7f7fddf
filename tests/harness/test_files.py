"""Files other processes read (bench.json, bench.csv, results.json, plots) are never seen half-written."""

import json
import os
import subprocess
import sys

import pytest
from stop_at_step import interrupt_at
from test_bench import fake_results

from learners.harness import bench
from learners.harness.cli import main
from learners.harness.files import (LOCK_NAME, OutputDirInUse, exclusive_output_dir, output_dir_in_use,
                                    replaced_atomically)


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


@pytest.mark.slow
def test_two_benches_sharing_an_output_dir_never_read_a_half_written_bench_json(tmp_path):
    """Two queues of `learners bench` on one output dir (two lanes on one machine): each rewrites bench.json
    while the other reads it back. Before the writes were atomic this failed with a JSONDecodeError."""
    out = tmp_path / "bench"
    loop = ("import sys; from pathlib import Path; from learners.harness.bench import record_settings\n"
            "for i in range(400): record_settings(Path(sys.argv[1]), ['stsb'], ['learners'], [i], ['--seed-' + 'x' * 2000], [])")
    lanes = [subprocess.Popen([sys.executable, "-c", loop, str(out)], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [lane.communicate()[1] for lane in lanes]
    assert [lane.returncode for lane in lanes] == [0, 0], errors
    assert json.loads((out / "bench.json").read_text())["seeds"] == [399]
    assert sorted(p.name for p in out.iterdir()) == ["bench.json"]


def write_csv_task(directory):
    rows = ["text,label"] + [f"{'good fine nice' if i % 2 else 'bad poor sad'} film {i},{'pos' if i % 2 else 'neg'}"
                             for i in range(24)]
    (directory / "train.csv").write_text("\n".join(rows) + "\n")
    (directory / "dev.csv").write_text("\n".join(rows[:9]) + "\n")


def finetune_into(tmp_path, model_dir, out, *extra):
    write_csv_task(tmp_path)
    return main(["finetune", "--train-file", str(tmp_path / "train.csv"), "--validation-file", str(tmp_path / "dev.csv"),
                 "--model", str(model_dir), "--method", "full", "--max-steps", "2", "--batch-size", "8",
                 "--output-dir", str(out), "--no-progress", *extra])


def test_a_second_run_into_a_held_output_dir_fails_at_once_and_writes_nothing(tmp_path, tiny_model_dir, capsys):
    """Two runs in one output directory would resume one checkpoint and overwrite each other's files."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.txt").write_text("mine")  # (a bench's log of the run)
    with exclusive_output_dir(out):  # another run, live (flock: a second open of the file conflicts, in any process)
        assert finetune_into(tmp_path, tiny_model_dir, out) == 2
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "log.txt"]
    err = capsys.readouterr().err
    assert f"{out} is in use by another learners run (process {os.getpid()}); wait for it to finish, or choose " \
           "another --output-dir" in err and "Traceback" not in err
    # once it is free the run goes ahead, and leaves no lock behind
    assert finetune_into(tmp_path, tiny_model_dir, out) == 0
    assert (out / "results.json").exists() and not (out / LOCK_NAME).exists()


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    hold = ("import sys, time; from learners.harness.files import exclusive_output_dir\n"
            "with exclusive_output_dir(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert output_dir_in_use(out) == f"process {holder.pid}"
        with pytest.raises(OutputDirInUse):
            with exclusive_output_dir(out):
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up ran, the lock file stays...
        holder.wait()
    assert (out / LOCK_NAME).exists()
    assert output_dir_in_use(out) is None  # ...but the kernel released the lock with the process
    with exclusive_output_dir(out):
        pass


def test_a_run_that_fails_before_writing_leaves_no_directory(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "new-run"
    assert finetune_into(tmp_path, tiny_model_dir, out, "--text-columns", "no_such_column") == 2
    assert "no_such_column" in capsys.readouterr().err
    assert not out.exists()


def test_bench_leaves_a_run_another_process_is_running_to_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"
    launched = []

    def launch(command, log):
        launched.append(command[command.index("--seed") + 1])
        log.write_text("ok\n")
        (log.parent / "results.json").write_text(json.dumps(fake_results("cola", "full", int(launched[-1]), [(1, 0.3)])))
        return 0

    monkeypatch.setattr(bench, "launch", launch)
    busy = out / "runs" / "cola" / "full" / "seed1"
    busy.mkdir(parents=True)
    with exclusive_output_dir(busy):
        assert main(["bench", "--tasks", "cola", "--methods", "full", "--seeds", "0,1", "--output-dir", str(out)]) == 0
    assert launched == ["0"]
    assert f"[2/2] cola full seed1: skip (running in process {os.getpid()})" in capsys.readouterr().out


def test_a_filesystem_that_refuses_locks_runs_unguarded(tmp_path, monkeypatch):
    import errno
    import fcntl

    def refuse(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    out = tmp_path / "on-a-network-mount"
    with exclusive_output_dir(out):
        (out / "results.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


@pytest.mark.slow
def test_every_file_a_run_or_a_merge_writes_has_the_users_permissions(tmp_path, tiny_model_dir, monkeypatch):
    """As any other new file of the process (0o666 less the umask): safetensors writes its files 0600."""
    def modes(folder):
        return {p.name: p.stat().st_mode & 0o777 for p in folder.rglob("*") if p.is_file()}

    previous = os.umask(0o027)
    try:
        interrupt_at(monkeypatch.setattr, 1)  # Ctrl-C: a checkpoint stays
        out = tmp_path / "run"
        assert finetune_into(tmp_path, tiny_model_dir, out, "--method", "learners", "--ratio", "0.25") == 130
        monkeypatch.undo()
        written = modes(out / "checkpoint")
        assert finetune_into(tmp_path, tiny_model_dir, out, "--method", "learners", "--ratio", "0.25") == 0
        assert main(["merge", "--learners", str(out), "--output", str(tmp_path / "merged")]) == 0
        written = [written, modes(out), modes(tmp_path / "merged")]
    finally:
        os.umask(previous)
    assert [sorted(w) for w in written] == [
        ["checkpoint.json", "checkpoint.safetensors"],
        ["README.md", "config.json", "curves.png", "history.jsonl", "learners_config.json", "learners_model.safetensors",
         "learners_task.json", "model.safetensors", "results.json", "tokenizer.json", "tokenizer_config.json"],
        ["config.json", "learners_task.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]]
    assert [{name: oct(mode) for name, mode in w.items() if mode != 0o640} for w in written] == [{}, {}, {}]

"""Nothing lost, part two (issue 32): a full disk at any write of a run, and an --overwrite killed at any write.

The writes a run makes under its output directory are counted by an audit hook (sys.addaudithook: files opened
for writing, directories made, renames and removals) and by wrappers around the writers that are not Python
(safetensors' and tokenizers' Rust code). A full disk: at the n-th write the hook raises OSError(ENOSPC)
(safetensors' and tokenizers' own errors where they write). A kill: before each write the hook copies the output
directory, which is what a SIGKILL there leaves on disk (one run is also killed for real, in a child process,
while a replacement is being moved in). From each state a fault left the run is rerun, with space, and must end
as an uninterrupted run, bit for bit. A real full disk (a small tmpfs) is tried where the machine lets a test
mount one.
"""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import learners
from learners.harness import checkpoint
from learners.harness.cli import main
from stop_at_step import interrupt_at

pytestmark = pytest.mark.slow  # every test here runs whole trainings, many of them, or subprocesses

WORDS = "the cat dog sat ran on a mat big small red blue happy sad old new".split()
SPACE = {"open", "os.mkdir", "safetensors", "tokenizers"}  # the writes that take space
ANY_WRITE = SPACE | {"os.rename", "os.remove", "os.rmdir", "shutil.rmtree"}  # and what else a kill may come before
STAGING = (".final", ".final.moving", ".replacement.moving", "checkpoint.tmp", ".learners.lock")


class Faults:
    """Counts the writes under `root` (the kinds in `kinds`), calls `each(n)` before the n-th and fails the `at`-th
    with `fail(event, path)`."""

    def __init__(self):
        self.root, self.writes = None, []

    def arm(self, root: Path, kinds: set, at: int | None = None, fail=None, each=None) -> None:
        self.root, self.kinds, self.at, self.fail, self.each, self.writes = str(root), kinds, at, fail, each, []

    def disarm(self) -> int:
        """Stop counting; the number of writes counted."""
        self.root = None
        return len(self.writes)

    @property
    def failed(self) -> str:
        """The write that failed (for the messages of failed assertions)."""
        return self.writes[self.at - 1] if self.at and len(self.writes) >= self.at else "none"

    def hook(self, event: str, args: tuple) -> None:
        if self.root is None or event not in self.kinds or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.fsdecode(args[0])
        if not (path == self.root or path.startswith(self.root + os.sep)) or (event == "open" and not writes(args)):
            return
        if event == "os.mkdir" and os.path.isdir(path):  # mkdir(exist_ok=True) of a folder there: nothing written
            return
        if event in ("os.rename", "os.remove", "os.rmdir", "shutil.rmtree") and not os.path.lexists(path):
            return  # nothing there to move or remove: no new state to be killed in
        self.writes.append(f"{event} {path[len(self.root):]}")
        if self.each is not None:
            self.each(len(self.writes))
        if len(self.writes) == self.at:
            raise self.fail(event, path)


def writes(args: tuple) -> bool:
    """Whether an `open` audit event (path, mode, flags) opens for writing."""
    mode, flags = args[1], args[2]
    return any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))


def no_space(event: str, path: str) -> Exception:
    """What a full disk raises where `event` writes."""
    from safetensors import SafetensorError

    if event == "safetensors":
        return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    if event == "tokenizers":
        return Exception("No space left on device (os error 28)")
    return OSError(errno.ENOSPC, "No space left on device", path)


FAULTS = Faults()
sys.addaudithook(FAULTS.hook)  # for the whole session (hooks cannot be removed): idle while disarmed


@pytest.fixture
def faults(monkeypatch):
    """FAULTS, with safetensors' and tokenizers' writes counted too."""
    import safetensors.torch
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    serialize, save = safetensors.torch.serialize_file, TokenizersBackend._save_pretrained

    def serializing(tensors, filename, *args, **kwargs):
        FAULTS.hook("safetensors", (filename,))
        return serialize(tensors, filename, *args, **kwargs)

    def saving(self, save_directory, *args, **kwargs):
        FAULTS.hook("tokenizers", (os.path.join(str(save_directory), "tokenizer.json"),))
        return save(self, save_directory, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "serialize_file", serializing)
    monkeypatch.setattr(TokenizersBackend, "_save_pretrained", saving)
    yield FAULTS
    FAULTS.disarm()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny BERT with dropout, a small regression set, the uninterrupted run of `command` and an older run of
    another method (LoRA: its lora/ must go when a run replaces it)."""
    from conftest import save_tiny_model_dir

    root = tmp_path_factory.mktemp("full-disk")
    save_tiny_model_dir(root / "model", dropout=True)
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(6)), "label": round(rng.uniform(0, 5), 2)} for _ in range(40)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    setup = {"root": root}
    assert main(command(setup, root / "reference")) == 0
    assert main(command(setup, root / "old", method="lora")) == 0
    return setup


def command(setup, out: Path, *extra, method="learners", selection="priming") -> list[str]:
    """Two steps, a checkpoint at each (the first ends priming)."""
    root = setup["root"]
    learner = ["--ratio", "0.25", "--selection", selection] + (["--priming-steps", "1"] if selection == "priming" else [])
    return ["finetune", "--train-file", str(root / "train.jsonl"), "--validation-file", str(root / "dev.jsonl"),
            "--model", str(root / "model"), "--method", method, *(learner if method == "learners" else []),
            "--max-steps", "2", "--eval-steps", "1", "--batch-size", "8", "--seed", "1", "--output-dir", str(out),
            "--no-progress", *extra]


def files(run: Path, *names: str) -> dict:
    """The bytes of the run's results (history and metric), weights and method files."""
    results = json.loads((run / "results.json").read_text())
    found = {"results": [(h["step"], h["metrics"]) for h in results["history"]] + [results["metric"]]}
    for name in names:
        found.update({str(p.relative_to(run)): p.read_bytes() for p in sorted((run / name).rglob("*")) if p.is_file()})
    return found


def assert_is(run: Path, expected: Path, *names: str) -> None:
    # no checkpoint, nothing staged; the training log and its curves (run_log.py)
    assert sorted(p.name for p in run.iterdir()) == sorted(["results.json", "history.jsonl", "curves.png", *names])
    assert files(run, *names) == files(expected, *names)


def fingerprint(out: Path) -> tuple:
    """The state a fault left: the names under OUT and the step of the checkpoint(s) there."""
    names = tuple(sorted(str(p.relative_to(out)) for p in out.rglob("*"))) if out.exists() else ()
    steps = tuple(checkpoint.load_facts(d)["step"] for d in (out / "checkpoint", out / ".replacement" / "checkpoint")
                  if checkpoint.exists(d))
    return names, steps


def count_writes(setup, faults, out: Path, argv: list[str], kinds: set, before=None) -> int:
    if before:
        before(out)
    faults.arm(out, kinds)
    assert main(argv) == 0
    total = faults.disarm()
    shutil.rmtree(out)
    return total


def old_run(setup):
    return lambda out: shutil.copytree(setup["root"] / "old", out)


def assert_no_half_written(out: Path) -> None:
    assert not [p for p in out.rglob("*") if p.name in STAGING] if out.exists() else True
    if (out / ".replacement").exists():  # an unfinished replacement stays only with its checkpoint
        assert checkpoint.exists(out / ".replacement" / "checkpoint")


@pytest.mark.parametrize("replacing", [False, True], ids=["new-run", "overwrite"])
def test_a_full_disk_at_any_write_is_one_line_and_the_rerun_ends_as_an_uninterrupted_run(setup, faults, tmp_path,
                                                                                         capsys, replacing):
    """At each write that takes space: exit 2 with one line naming the folder, the last checkpoint kept, nothing
    half-written; with --overwrite the old run stays whole. A rerun from each state left ends as `reference`."""
    out, extra = tmp_path / "run", (["--overwrite"] if replacing else [])
    before = old_run(setup) if replacing else None
    total = count_writes(setup, faults, out, command(setup, out, *extra), SPACE, before)
    assert total > 15  # the lock, two checkpoints, the finished run's files, results.json
    rerun_from = set()
    for at in range(1, total + 1):
        if before:
            before(out)
        faults.arm(out, SPACE, at, no_space)
        capsys.readouterr()
        assert main(command(setup, out, *extra)) == 2, f"write {at}: {faults.failed}"
        faults.disarm()
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("learners: error: no space left on the device") and str(out) in err[-1], err
        assert not any("Traceback" in line for line in err)
        assert_no_half_written(out)
        if replacing:
            assert files(out, "model", "lora") == files(setup["root"] / "old", "model", "lora")
        if fingerprint(out) not in rerun_from:
            rerun_from.add(fingerprint(out))
            assert main(command(setup, out, *extra)) == 0, f"rerun after write {at}: {faults.failed}"
            assert_is(out, setup["root"] / "reference", "model", "learners")
        shutil.rmtree(out, ignore_errors=True)
    assert len(rerun_from) >= 3  # no checkpoint; one of step 1; one of step 2 (at least)


def test_an_overwrite_killed_at_any_write_leaves_the_old_run_or_the_new_one(setup, faults, tmp_path):
    """Killed before any write of an --overwrite over a finished run: OUT holds the old run whole, or the new one
    whole (in OUT, or complete in its staging folder while it is being moved in); the same command then ends with
    exactly the new run, the old run's lora/ gone."""
    out, old, killed = tmp_path / "run", setup["root"] / "old", tmp_path / "killed"
    argv = command(setup, out, "--overwrite")
    shutil.copytree(old, out)
    faults.arm(out, ANY_WRITE, each=lambda n: shutil.copytree(out, killed / str(n)))  # what a kill there leaves
    assert main(argv) == 0
    total = faults.disarm()
    rerun_from = set()
    for at in range(1, total + 1):
        shutil.rmtree(out)
        os.replace(killed / str(at), out)
        if (out / "results.json").exists():
            new = json.loads((out / "results.json").read_text())["method"] == "learners"
            names = ("model", "learners") if new else ("model", "lora")
            assert files(out, *names) == files(setup["root"] / ("reference" if new else "old"), *names), faults.writes[at - 1]
        else:  # being moved in: the new run is whole where the move takes it from
            assert any((out / name / "results.json").is_file() for name in (".replacement", ".replacement.moving"))
        if fingerprint(out) not in rerun_from:
            rerun_from.add(fingerprint(out))
            assert main(argv) == 0, f"rerun after a kill before {faults.writes[at - 1]}"
            assert_is(out, setup["root"] / "reference", "model", "learners")
    assert total > 40 and len(rerun_from) >= 10


def test_an_overwrite_killed_for_real_while_moving_in_is_finished_by_the_rerun(setup, tmp_path, capsys):
    """SIGKILL (no clean-up at all) right before the first of the new run's files moves into OUT: the old run's
    files are gone, the new run is whole in .replacement.moving, the lock file stays; the rerun moves it in and
    reports it, without training again."""
    out = tmp_path / "run"
    shutil.copytree(setup["root"] / "old", out)
    child = ("import os, signal, sys\n"
             "def hook(event, args):\n"
             "    if event == 'os.rename' and os.fsdecode(args[0]).startswith(sys.argv[1]):\n"
             "        os.kill(os.getpid(), signal.SIGKILL)\n"
             "sys.addaudithook(hook)\n"
             "from learners.harness.cli import main\n"
             "sys.exit(main(sys.argv[2:]))\n")
    src = str(Path(learners.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", child, str(out / ".replacement.moving") + os.sep,
                             *command(setup, out, "--overwrite")], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [".learners.lock", ".replacement.moving"]
    capsys.readouterr()
    assert main(command(setup, out, "--overwrite")) == 0
    assert_is(out, setup["root"] / "reference", "model", "learners")
    assert "step " not in capsys.readouterr().err  # nothing trained again


def test_an_overwrite_stopped_by_ctrl_c_leaves_the_old_run_and_the_same_command_continues_it(setup, tmp_path, capsys,
                                                                                            monkeypatch):
    """Over a finished run: the old run stays and is named; a run without --overwrite is refused while the
    replacement is unfinished; the same command continues it. Into a new folder: the same command continues too."""
    for out, old in ((tmp_path / "over-old", setup["root"] / "old"), (tmp_path / "new", None)):
        if old:
            shutil.copytree(old, out)
        interrupt_at(monkeypatch.setattr, 1)
        assert main(command(setup, out, "--overwrite")) == 130
        monkeypatch.undo()
        kept = f"; the run in {out} stays as it is until this one finishes" if old else ""
        assert capsys.readouterr().err.strip().splitlines()[-1] == \
            f"learners: interrupted at step 1/2{kept}: run the same command (with --overwrite) again to continue"
        if old:
            assert files(out, "model", "lora") == files(old, "model", "lora")
            assert main(command(setup, out)) == 2
            assert "holds an unfinished --overwrite run" in capsys.readouterr().err
        assert main(command(setup, out, "--overwrite")) == 0
        assert "resuming from" in capsys.readouterr().err
        assert_is(out, setup["root"] / "reference", "model", "learners")
        assert json.loads((out / "results.json").read_text())["learners_dir"] == str(out / "learners")  # not staging's


def test_a_full_disk_in_merge_or_predict_is_one_line_and_leaves_nothing(setup, faults, tmp_path, capsys):
    reference = setup["root"] / "reference"
    commands = {"merge": ["merge", "--learners", str(reference), "--output", str(tmp_path / "out")],
                "predict": ["predict", "--model", str(reference), "--input", str(setup["root"] / "dev.jsonl"),
                            "--output", str(tmp_path / "out" / "predictions.csv")]}
    for name, argv in commands.items():
        total = count_writes(setup, faults, tmp_path / "out", argv, SPACE)
        for at in range(1, total + 1):
            faults.arm(tmp_path / "out", SPACE, at, no_space)
            capsys.readouterr()
            assert main(argv) == 2, f"{name}, write {at}"
            faults.disarm()
            err = capsys.readouterr().err.strip().splitlines()  # (merge first says which base model it loads)
            assert err[-1].startswith("learners: error: no space left on the device") and "Traceback" not in str(err), err
            assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), f"{name}, write {at}"
            shutil.rmtree(tmp_path / "out", ignore_errors=True)


TMPFS_SCRIPT = """
set -u
mount -t tmpfs -o size=12m tmpfs "$1" || exit 99
head -c 10485760 /dev/zero > "$1/ballast"
shift
python=$1; shift
"$python" -m learners.cli "$@" 2> "$HOST/first.err"; echo $? > "$HOST/first.rc"
ls -A "$DISK/run" > "$HOST/first.ls"
rm "$DISK/ballast"
"$python" -m learners.cli "$@" 2> "$HOST/second.err"; echo $? > "$HOST/second.rc"
cp -r "$DISK/run" "$HOST/run"
"""


def unshare_command() -> list[str] | None:
    """`unshare` with a mount namespace of its own (and, for a user other than root, a user namespace)."""
    if shutil.which("unshare") is None:
        return None
    return ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]


def test_a_real_full_disk_stops_with_one_line_and_a_rerun_with_space_resumes(setup, tmp_path):
    """A 12 MB tmpfs that a ballast file fills to 2 MB free: the checkpoints fit, the finished model (4 MB) does
    not. Then the ballast goes and the same command resumes from the last checkpoint."""
    unshare = unshare_command()
    disk = tmp_path / "disk"
    disk.mkdir()
    probe = subprocess.run([*unshare, "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {disk}"], capture_output=True) \
        if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("this machine does not let a test mount a tmpfs (unshare -m)")
    reference = setup["root"] / "reference-random"
    if not reference.exists():
        assert main(command(setup, reference, selection="random")) == 0
    src = str(Path(learners.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HOST": str(tmp_path), "DISK": str(disk),
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([*unshare, "bash", "-c", TMPFS_SCRIPT, "tmpfs", str(disk), sys.executable,
                    *command(setup, disk / "run", selection="random")], env=env, timeout=300)
    first = (tmp_path / "first.err").read_text().strip().splitlines()
    assert (tmp_path / "first.rc").read_text().strip() == "2", first[-20:]
    assert first[-1].startswith(f"learners: error: no space left on the device of {disk / 'run'} (") and \
        "for the finished run's files, which needs about" in first[-1] and "run the same command again" in first[-1]
    assert not any("Traceback" in line for line in first)
    # the last checkpoint and the training log so far (run_log.py), nothing half-written
    assert (tmp_path / "first.ls").read_text().split() == ["checkpoint", "history.jsonl"]
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()[-2000:]
    assert_is(tmp_path / "run", reference, "model", "learners")
    assert "resuming from" in (tmp_path / "second.err").read_text()

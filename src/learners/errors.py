"""The one exception type for bad user input, and the checks that raise it.

Everything a user can get wrong (a task name, a path, a column, a flag value)
raises `UsageError` with a message that names the problem and the fix. The CLI
prints it on one line and exits with status 2, without a traceback.
"""

import errno
import json
import numbers
import os
import shutil
from pathlib import Path


class UsageError(ValueError):
    """Bad input from the user; the message says what is wrong and how to fix it."""


class TrainingDiverged(UsageError):
    """The loss or gradient norm became NaN or infinite: the settings (most often the learning rate)
    do not train this model. A usage error too (exit status 2): the fix is a different setting.
    `step`: the training step where it happened, where known."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after a checkpoint was written; the message says how to resume."""


class DiskFull(UsageError):
    """No space left on the device being written (or the user's disk quota). One line and exit status 2 like a
    usage error: the fix is to free space (or write elsewhere); what was half-written is gone, the last whole
    file or checkpoint stays."""


def check_argument(value, kinds, name: str, where: str, expected: str) -> None:
    """Raise UsageError naming `where`'s argument `name` unless `value` is an instance of `kinds`. A bool is
    refused where a number is expected (True is an int to Python, but never a sensible ratio or count)."""
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        raise UsageError(f"{where}: {name} must be {expected}, got {value!r} ({type(value).__name__})")


def _as_tuple(kinds) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)


NUMBER = (numbers.Real,)  # int, float, NumPy's numbers; a bool is refused (check_argument)
INTEGER = (numbers.Integral,)
PATH = (str, os.PathLike)


def check_finite(named_tensors, what: str, fix: str) -> None:
    """Raise UsageError naming the first floating-point tensor with a NaN or infinite value.

    `what` says whose tensors they are ("the trained model"), `fix` what to do about it."""
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise UsageError(f"{what} has NaN or infinite values (first in {name}); nothing was written. {fix}")


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


def check_output_path(path, flag: str, directory: bool = True) -> Path:
    """Fail now, before any work, if `path` (a directory, or a file with `directory=False`) cannot be
    written: a file or directory of the wrong kind in the way, a parent that is a file, no permission.
    Creates nothing."""
    path = Path(path).expanduser()
    kind = "directory" if directory else "file"
    if path.is_symlink() and not path.exists():
        raise UsageError(f"{flag} {path} is a broken symbolic link; remove it or choose another {kind}")
    if path.exists() and path.is_dir() != directory:
        raise UsageError(f"{flag} {path} is a {'file' if directory else 'directory'}; pass a {kind} path")
    existing = next(p for p in [path.absolute(), *path.absolute().parents] if p.exists())
    if not existing.is_dir() and existing != path.absolute():
        raise UsageError(f"{flag} {path} cannot be created: {existing} is a file, not a directory")
    folder = existing if existing.is_dir() else existing.parent
    if not _writable(folder):
        raise UsageError(f"{flag} {path} cannot be written: no write permission in {folder}; choose another {kind}")
    return path


def read_json_file(path, what: str) -> dict:
    """A JSON object from `path`; a missing, unreadable or malformed file is a UsageError naming `what`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{what} {path} cannot be read: {first_line(e)}; it is damaged or not from learners") from e
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path} holds no JSON object; it is damaged or not from learners")
    return data


def read_safetensors(path, what: str) -> dict:
    """The tensors in a safetensors file (never a pickle); a damaged file is a UsageError naming `what`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UsageError(f"{what} {path} is not a readable safetensors file ({first_line(e)}); "
                         "it is truncated or damaged: copy or write it again") from e


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# ---- writing files ----------------------------------------------------------------------------

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# How a full disk reads where the writer is not Python (safetensors and tokenizers are Rust: the OS error in the text)
NO_SPACE_TEXT = ("(os error 28)", "(os error 122)", "No space left on device", "Disk quota exceeded")


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) is a full disk or an exceeded quota."""
    while error is not None:
        if isinstance(error, DiskFull) or (isinstance(error, OSError) and error.errno in NO_SPACE):
            return True
        if isinstance(error, Exception) and any(text in str(error) for text in NO_SPACE_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False


def raise_if_disk_full(error: BaseException, folder, what: str, needed: int | None = None,
                       fix: str = "free some space and run the same command again") -> None:
    """If `error` is a full disk, raise DiskFull from it: one line naming `folder`, what was being written, the
    space it needs where known (`needed` bytes) and the space free now. Call it after removing what was
    half-written, so that the space free is what the user has."""
    if not is_disk_full(error) or isinstance(error, DiskFull):
        return
    folder = Path(folder)
    existing = next((p for p in [folder, *folder.parents] if p.exists()), folder)
    try:
        free = f"{_megabytes(shutil.disk_usage(existing).free)} free"
    except OSError:
        free = "free space unknown"
    need = f", which needs about {_megabytes(needed)}" if needed else ""
    raise DiskFull(f"no space left on the device of {folder} ({free}) for {what}{need}; {fix}") from error


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def user_file_mode() -> int:
    """The permissions a new file of this process gets (0o666 less the umask). Read by setting the umask and
    putting it back: not thread-safe, as everywhere in Python."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def give_user_permissions(path) -> None:
    """Give the file `path`, or every file under the folder `path`, the permissions of any new file of this
    process: safetensors (0.8) writes through a temporary file of mode 0600 and keeps that mode."""
    path, mode = Path(path), user_file_mode()
    for file in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]):
        os.chmod(file, mode)

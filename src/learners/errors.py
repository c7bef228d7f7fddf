"""The one exception type for bad user input, and the checks that raise it.

Everything a user can get wrong (a task name, a path, a column, a flag value)
raises `UsageError` with a message that names the problem and the fix. The CLI
prints it on one line and exits with status 2, without a traceback.
"""

import json
import os
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

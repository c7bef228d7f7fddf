"""The one exception type for bad user input.

Everything a user can get wrong (a task name, a path, a column, a flag value)
raises `UsageError` with a message that names the problem and the fix. The CLI
prints it on one line and exits with status 2, without a traceback.
"""


class UsageError(ValueError):
    """Bad input from the user; the message says what is wrong and how to fix it."""


class TrainingDiverged(UsageError):
    """The loss or gradient norm became NaN or infinite: the settings (most often the learning rate)
    do not train this model. A usage error too (exit status 2): the fix is a different setting."""


def check_finite(named_tensors, what: str, fix: str) -> None:
    """Raise UsageError naming the first floating-point tensor with a NaN or infinite value.

    `what` says whose tensors they are ("the trained model"), `fix` what to do about it."""
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise UsageError(f"{what} has NaN or infinite values (first in {name}); nothing was written. {fix}")

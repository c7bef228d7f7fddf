"""The one exception type for bad user input.

Everything a user can get wrong (a task name, a path, a column, a flag value)
raises `UsageError` with a message that names the problem and the fix. The CLI
prints it on one line and exits with status 2, without a traceback.
"""


class UsageError(ValueError):
    """Bad input from the user; the message says what is wrong and how to fix it."""

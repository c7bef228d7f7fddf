"""Fine-tuning methods by name: the project's learners and the baselines, each in its own file."""

from ..errors import UsageError
from .base import Method
from .full import FullFineTuning
from .learners import LearnersMethod

METHODS: dict[str, type[Method]] = {
    "full": FullFineTuning,
    "learners": LearnersMethod,
}


def build_method(name: str, options: dict | None = None) -> Method:
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name](options)

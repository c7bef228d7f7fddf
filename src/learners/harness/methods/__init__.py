"""Fine-tuning methods by name: the project's learners and the baselines, each in its own file."""

from ...errors import UsageError
from .adapter import BottleneckAdapters
from .base import Method
from .bitfit import BitFit
from .far import FreezeAndReconfigure
from .full import FullFineTuning
from .head import HeadOnly
from .learners import LearnersMethod
from .lora import LoRA

METHODS: dict[str, type[Method]] = {
    "full": FullFineTuning,
    "head": HeadOnly,
    "bitfit": BitFit,
    "lora": LoRA,
    "adapter": BottleneckAdapters,
    "far": FreezeAndReconfigure,
    "learners": LearnersMethod,
}


def build_method(name: str, options: dict | None = None) -> Method:
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name](options)


def check_priming_flags(method: Method, given: list[str]) -> None:
    """The priming flags (`given`, e.g. --priming-learning-rate) act only where a priming phase runs."""
    if given and not method.primes:
        fix = ("add --selection priming (the default selection, random, has no priming phase)" if method.name == "learners"
               else f"drop {'it' if len(given) == 1 else 'them'}")
        raise UsageError(f"{' and '.join(given)} {'shapes' if len(given) == 1 else 'shape'} the priming phase, "
                         f"but this --method {method.name} run has none: {fix}")

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


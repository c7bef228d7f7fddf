"""Full fine-tuning: every parameter trains."""

from .base import Method


class FullFineTuning(Method):
    name = "full"
    default_learning_rate = 1e-4

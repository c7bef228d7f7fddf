"""Learner modules with priming (the method of this project).

prepare       -> priming: snapshot the FFNs and train the whole model (full fine-tuning);
                 gradient/magnitude/random: select now and wrap.
after_priming -> score neurons by how far they moved, keep the top-k per FFN,
                 optionally reset the encoder to the pre-trained weights, wrap.
"""

from itertools import islice
from pathlib import Path

import torch
from torch import nn

from ..learner import LearnerConfig, LearnerModel, get_learner_model
from ..learner.selection import select_by_gradient, select_by_priming, snapshot_ffns
from .base import Method


DEFAULT_RATIO = 1 / 16  # 96 of MiniLM's 1536 FFN neurons: 1.95% of the model's parameters


class LearnersMethod(Method):
    name = "learners"
    default_learning_rate = 1e-3

    def __init__(self, options: dict | None = None):
        super().__init__(options)
        options = {k: v for k, v in (options or {}).items() if v is not None}
        if "ratio" not in options and "num_neurons" not in options:
            options["ratio"] = DEFAULT_RATIO
        self.config = LearnerConfig(**options)
        self.before = None
        self.pretrained = None

    def prepare(self, model: nn.Module, batches) -> nn.Module:
        super().prepare(model, batches)
        config = self.config
        if config.selection == "priming":
            self.before = snapshot_ffns(model, config)
            if config.reset_after_priming:
                self.pretrained = {n: p.detach().clone() for n, p in model.named_parameters() if n not in self.head_names}
            return model
        if config.selection == "gradient":
            return LearnerModel(model, config, select_by_gradient(model, config, islice(batches, config.gradient_batches)))
        return get_learner_model(model, config)

    def priming_steps(self, steps_per_epoch: int) -> int:
        if self.config.selection != "priming":
            return 0
        return self.config.priming_steps or max(1, round(self.config.priming_fraction * steps_per_epoch))

    def after_priming(self, model: nn.Module, batches) -> nn.Module:
        indices = select_by_priming(model, self.config, self.before)
        if self.pretrained is not None:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in self.pretrained.items():
                    params[name].copy_(value)
            self.pretrained = None
        return LearnerModel(model, self.config, indices)

    def parameter_counts(self, model: nn.Module) -> dict[str, int]:
        c = model.parameter_counts()
        return {"encoder": c["learners"], "head": c["head"], "trainable": c["trainable"], "total": c["total"]}

    def save_extra(self, model: nn.Module, output_dir: Path) -> dict:
        learners_dir = model.save_pretrained(output_dir / "learners")
        size = sum(f.stat().st_size for f in learners_dir.iterdir())
        return {"learners_dir": str(learners_dir), "learners_checkpoint_bytes": size,
                "learner_neurons": [int(i.numel()) for i in model.indices]}

    def plain_model(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()

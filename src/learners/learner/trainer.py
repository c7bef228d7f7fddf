"""Priming with a transformers `Trainer`: a Trainer run stopped after the priming budget, then reconfiguration.

    trainer = Trainer(model=model, args=TrainingArguments(learning_rate=1e-4, num_train_epochs=3, ...), ...)
    learner_model = prime_with_trainer(trainer, LearnerConfig.primed())   # primes, selects, reconfigures
    Trainer(model=learner_model, args=TrainingArguments(learning_rate=1e-3, ...), ...).train()

The priming Trainer's arguments may describe the whole run (e.g. 3 epochs): it stops after the priming
budget, so priming follows the first steps of that run's schedule. For the learner phase a second Trainer
is made on the LearnerModel (a new optimizer over the learner slices and the head only).
Without the helper: `primer = Primer(model, config)`, `trainer.add_callback(PrimingCallback(primer.steps(n)))`,
`trainer.train()`, `primer.reconfigure()`; the primer also holds the selection signals.

This module imports transformers' trainer machinery; `Trainer` itself needs accelerate, which the rest of
the library does not.
"""

from torch import nn
from transformers import TrainerCallback

from ..errors import UsageError, check_argument
from .config import LearnerConfig
from .model import LearnerModel
from .priming import Primer


class PrimingCallback(TrainerCallback):
    """Stops a Trainer run after `steps` optimizer steps: the priming budget (`Primer.steps`)."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True
        return control


def steps_per_epoch(trainer) -> int:
    """Optimizer steps in one epoch of `trainer`'s training data (per process), as Trainer counts them."""
    batches = len(trainer.get_train_dataloader())
    accumulation = trainer.args.gradient_accumulation_steps
    return max(1, -(-batches // accumulation))


def prime_with_trainer(trainer, config: LearnerConfig) -> LearnerModel:
    """Prime `trainer.model` by training it with `trainer` for the priming budget, then reconfigure.

    `trainer` must not have trained yet: it builds its optimizer in `train()` from the parameters that
    require gradients, which the Primer sets (`config.priming_scope`). With layers="auto" and
    priming_scope="learner-layers" the gradient probe reads the first batches of its training data.
    Returns the LearnerModel (base model + primed learners + primed head) for the learner-phase Trainer.
    """
    if not all(hasattr(trainer, name) for name in ("model", "state", "train", "get_train_dataloader")):
        raise UsageError(f"prime_with_trainer: trainer must be a transformers Trainer, got {type(trainer).__name__}")
    check_argument(config, LearnerConfig, "config", "prime_with_trainer", "a LearnerConfig")
    if trainer.state.global_step > 0:
        raise UsageError("prime_with_trainer needs a Trainer that has not trained yet: priming decides which "
                         "parameters its optimizer holds; make a new Trainer on the pre-trained model")
    model: nn.Module = trainer.model
    probe = None
    if config.layers == "auto" and config.priming_scope == "learner-layers":
        device = next(model.parameters()).device
        probe = ({k: v.to(device) for k, v in batch.items()} for batch in trainer.get_train_dataloader())
    primer = Primer(model, config, batches=probe)
    callback = PrimingCallback(primer.steps(steps_per_epoch(trainer)))
    trainer.add_callback(callback)
    try:
        trainer.train()
    finally:
        trainer.remove_callback(callback)
    return primer.reconfigure()

"""What every fine-tuning method provides to the training engine."""

from pathlib import Path

from torch import nn

from ...errors import UsageError
from ...learner.ffn import head_parameter_names


class Method:
    """A fine-tuning method: which parameters train, and how the result is saved.

    `prepare` runs before the first step (it may read a few `batches`);
    methods with a priming phase return a positive `priming_steps`, train the
    whole model for that many steps, then `after_priming` reconfigures.
    """

    name = "method"
    default_learning_rate = 1e-4
    # Measured on CoLA with the default model (../shared/DESIGN.md): LoRA and BitFit stay at the majority
    # class for 3 epochs under linear decay + weight decay, and learn under a constant rate without decay.
    default_lr_scheduler = "linear"
    default_weight_decay = 0.01
    primes = False  # whether a priming phase runs (see `priming_steps`)

    def __init__(self, options: dict | None = None):
        self.options = options or {}
        self.head_names: set[str] = set()

    def check(self, model: nn.Module) -> None:
        """Raise UsageError if this method's options do not fit `model`; runs before any training."""

    def prepare(self, model: nn.Module, batches) -> nn.Module:
        self.head_names = set(head_parameter_names(model))
        return model

    def priming_steps(self, steps_per_epoch: int) -> int:
        return 0

    def check_priming_flags(self, given: list[str]) -> None:
        """Flags that shape a priming phase (`given`, e.g. --priming-learning-rate) are an error where none runs."""
        if given and not self.primes:
            raise UsageError(f"{' and '.join(given)} {'shapes' if len(given) == 1 else 'shape'} the priming phase, "
                             f"but {self.no_priming(given)}")

    def no_priming(self, given: list[str]) -> str:
        """Why this run has no priming phase, and the fix (the end of check_priming_flags' message)."""
        return f"this --method {self.name} run has none: drop {'it' if len(given) == 1 else 'them'}"

    def after_priming(self, model: nn.Module, batches) -> nn.Module:
        return model

    def checkpoint_state(self, model: nn.Module) -> tuple[dict, dict]:
        """What a checkpoint needs to rebuild this method's model (see `restore`): JSON facts and tensors."""
        return {}, {}

    def restore(self, model: nn.Module, batches, facts: dict, tensors: dict) -> nn.Module:
        """Resuming: `model` (the freshly loaded base model) made into this method's model as it was when
        `checkpoint_state` was taken; the checkpoint then loads its trainable tensors."""
        return self.prepare(model, batches)

    def parameter_counts(self, model: nn.Module) -> dict[str, int]:
        """Trainable parameters: the encoder part and the task head separately, and the model's total."""
        head = encoder = total = 0
        for name, p in model.named_parameters():
            total += p.numel()
            if p.requires_grad:
                if name in self.head_names:
                    head += p.numel()
                else:
                    encoder += p.numel()
        return {"encoder": encoder, "head": head, "trainable": encoder + head, "total": total}

    def plain_model(self, model: nn.Module) -> nn.Module:
        """The trained model as a plain transformers model (merged where the method allows)."""
        return model

    def save_extra(self, model: nn.Module, output_dir: Path) -> dict:
        """Method-specific files beside OUT/model; returns facts for results.json."""
        return {}

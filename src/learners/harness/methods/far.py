"""FAR, "Freeze And Reconfigure" (the learners authors' earlier method), as a baseline.

1. Priming: full fine-tuning (encoder and head) for a fraction of the first epoch
   (`priming_fraction`, default 0.25), at the priming learning rate.
2. Selection, for each FFN linear separately (W1 and W2 of every block): score each output
   unit j by how far its weights moved, `s_j = ||W[j,:] - W0[j,:]||_1 + |b[j] - b0[j]|`
   (primed minus pre-trained), and keep the top r = ceil(ratio * out_features) units.
3. Reconfiguration: the WHOLE encoder returns to its pre-trained weights (the selected units
   too: FAR trains them from the original weights); the task head keeps its primed values.
4. Training: only the selected output rows (weight row + bias entry) of the FFN linears and the
   task head train, through `LearnerRowLinear` (frozen full weight, the rows a small Parameter).

Unlike learners, FAR picks W1's rows and W2's rows independently (W2's output units are the
d hidden dimensions, not FFN neurons), so a unit of W1 and a unit of W2 are unrelated.
At the end each `LearnerRowLinear` merges back into an `nn.Linear`.
"""

import math

import torch
from torch import nn

from .. import distributed
from ...errors import UsageError
from ...learner.ffn import locate_ffn_blocks, set_submodule
from ...learner.layer import LearnerRowLinear
from ...learner.priming import restore_parameters, snapshot_parameters
from ...learner.selection import moved_l1
from .base import Method

# 1/8 of each FFN linear's output units: on DistilBERT-base 384 of 3072 rows of W1 and 96 of 768 rows
# of W2 per block, 3.54M FFN parameters (5.3% of 66.96M), with the 0.59M head 4.13M (6.2%).
DEFAULT_RATIO = 1 / 8
DEFAULTS = {"ratio": DEFAULT_RATIO, "priming_fraction": 0.25, "priming_steps": None}


def ffn_linear_names(model: nn.Module) -> list[str]:
    """Module names of every FFN linear, W1 then W2 of each block, in encoder order."""
    names = []
    for block in locate_ffn_blocks(model):
        prefix = f"{block.name}." if block.name else ""
        names += [prefix + block.up_name, prefix + block.down_name]
    return names


def select_units(weight: torch.Tensor, bias: torch.Tensor, weight0: torch.Tensor, bias0: torch.Tensor,
                 k: int) -> torch.Tensor:
    """The k output units (rows) that moved most from (weight0, bias0) in L1 distance, sorted."""
    score = moved_l1(weight, weight0, dim=1) + moved_l1(bias, bias0)
    return score.topk(k).indices.sort().values


class FreezeAndReconfigure(Method):
    """After priming, trains only the selected output rows (weight rows and their bias entries) of
    each FFN linear, W1 (`intermediate.dense` / `ffn.lin1`) and W2 (`output.dense` / `ffn.lin2`),
    starting from their pre-trained values, plus the task head (`head_parameter_names`, starting
    from its primed values). Everything else is frozen at its pre-trained value.
    During priming (a fraction of the first epoch) every parameter trains.

    Options: `ratio` (fraction of each linear's output units, default 1/8), `priming_fraction`
    (of the first epoch, default 0.25) or `priming_steps`.
    """

    name = "far"
    primes = True
    # FAR updates pre-trained weights in place, like full fine-tuning (1e-4), but only ~6% of them,
    # so each step moves the function less and a higher rate fits; it starts from the pre-trained
    # rows, not from a primed warm start as learners (1e-3) do. Untuned; see docs/cli.md#default-hyperparameters.
    default_learning_rate = 5e-4

    def __init__(self, options: dict | None = None):
        super().__init__(options)
        unknown = set(self.options) - set(DEFAULTS)
        if unknown:
            raise UsageError(f"unknown FAR option(s) {sorted(unknown)}; known: {', '.join(DEFAULTS)}")
        opts = {**DEFAULTS, **{k: v for k, v in self.options.items() if v is not None}}
        if not 0 < opts["ratio"] <= 1:
            raise UsageError(f"--far-ratio must be in (0, 1], got {opts['ratio']}")
        if not 0 < opts["priming_fraction"] <= 1:
            raise UsageError(f"--far-priming-fraction must be in (0, 1] (a fraction of the first epoch), "
                             f"got {opts['priming_fraction']}")
        if opts["priming_steps"] is not None and opts["priming_steps"] < 1:
            raise UsageError(f"FAR priming_steps must be >= 1, got {opts['priming_steps']}")
        self.ratio, self.priming_fraction, self.steps = opts["ratio"], opts["priming_fraction"], opts["priming_steps"]
        self.original: dict[str, torch.Tensor] | None = None
        self.units: dict[str, torch.Tensor] = {}
        self.linears: list[str] = []
        self.total_params = 0

    def prepare(self, model: nn.Module, batches) -> nn.Module:
        super().prepare(model, batches)
        self.total_params = sum(p.numel() for p in model.parameters())
        self.linears = ffn_linear_names(model)
        self.original = snapshot_parameters(model, {n for n, _ in model.named_parameters()} - self.head_names)
        return model

    def priming_steps(self, steps_per_epoch: int) -> int:
        return self.steps or max(1, round(self.priming_fraction * steps_per_epoch))

    def after_priming(self, model: nn.Module, batches) -> nn.Module:
        with torch.no_grad():
            for name in self.linears:
                linear = model.get_submodule(name)
                k = math.ceil(self.ratio * linear.out_features)
                self.units[name] = select_units(linear.weight, linear.bias, self.original[f"{name}.weight"],
                                                self.original[f"{name}.bias"], k)
            self.units = distributed.broadcast({n: idx.cpu() for n, idx in self.units.items()})  # rank 0's choice on every rank
        restore_parameters(model, self.original)
        self.original = None
        return self._reconfigure(model)

    def _reconfigure(self, model: nn.Module) -> nn.Module:
        """Freeze everything but the head; the selected rows of each FFN linear train."""
        for name, p in model.named_parameters():
            p.requires_grad_(name in self.head_names)
        for name, idx in self.units.items():
            set_submodule(model, name, LearnerRowLinear(model.get_submodule(name), idx))
        return model

    def checkpoint_state(self, model: nn.Module) -> tuple[dict, dict]:
        return {"selected": bool(self.units)}, {f"units.{name}": idx for name, idx in self.units.items()}

    def restore(self, model: nn.Module, batches, facts: dict, tensors: dict) -> nn.Module:
        """Prepare again on the pre-trained model; after selection, wrap the saved units (the checkpoint
        then loads their trained rows and the head)."""
        model = self.prepare(model, batches)
        if facts["selected"]:
            self.original = None
            self.units = {name: tensors[f"units.{name}"] for name in self.linears}
            model = self._reconfigure(model)
        return model

    def parameter_counts(self, model: nn.Module) -> dict[str, int]:
        """encoder: the selected FFN rows (weights + bias entries); head: the task head; total: the base model."""
        counts = super().parameter_counts(model)
        return {**counts, "total": self.total_params or counts["total"]}

    def save_extra(self, model, output_dir) -> dict:
        return {"far_units": [int(idx.numel()) for idx in self.units.values()]}

    def plain_model(self, model: nn.Module) -> nn.Module:
        """Write the trained rows back: every LearnerRowLinear becomes an nn.Linear again."""
        for name, module in list(model.named_modules()):
            if isinstance(module, LearnerRowLinear):
                set_submodule(model, name, module.to_linear())
        model.requires_grad_(True)
        return model

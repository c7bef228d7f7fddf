"""Priming with any training loop: a short fine-tuning that picks the learner neurons and warm-starts them.

    primer = Primer(model, LearnerConfig.primed())      # what priming trains gets requires_grad; snapshot
    optimizer = torch.optim.AdamW(primer.parameters(), lr=1e-4)
    for batch in islice(batches, primer.steps(len(train_loader))):  # your loop, or a Trainer (learner.trainer)
        model(**batch).loss.backward(); optimizer.step(); optimizer.zero_grad()
    learner_model = primer.reconfigure()              # select, put the rest back, wrap: a LearnerModel

`reconfigure` scores each FFN neuron by how far priming moved it, `|dW1[i,:]|_1 + |dW2[:,i]|_1 + |db1[i]|`,
keeps the top k per learner block (with layers="auto" the scores choose the blocks too), and puts every
weight priming moved back to its pre-trained value except the learner slices (their primed values are the
warm start; `reset_after_priming` puts them back too) and the task head (it keeps its primed values).
So the result is exactly base model + learners + head, which `save_pretrained` stores and merging restores.
"""

from itertools import islice

import torch
from torch import nn

from ..errors import UsageError, check_argument
from .config import LearnerConfig
from .ffn import FFNBlock, head_parameter_names
from .model import LearnerModel
from .plan import LearnerPlan, plan_learners
from .selection import gradient_scores, priming_scores, rank0_scores, select


class Primer:
    """Primes `model` under `config` (selection="priming"); `reconfigure()` then returns its LearnerModel.

    On construction: with layers="auto" and priming_scope="learner-layers" the learner blocks are chosen
    first by a gradient probe over `config.gradient_batches` of `batches` (dicts of model inputs with
    labels, on the model's device; no update); then exactly the parameters priming trains (`priming_scope`:
    the whole model, every FFN, or the learner blocks' FFNs; the head always) require gradients, and their
    pre-trained values (the head's excepted) are copied. Pass the unwrapped model (not a DDP wrapper).
    """

    def __init__(self, model: nn.Module, config: LearnerConfig, batches=None):
        check_argument(model, nn.Module, "model", "Primer", "a transformers model (a torch.nn.Module)")
        check_argument(config, LearnerConfig, "config", "Primer", "a LearnerConfig")
        if config.selection != "priming":
            raise UsageError(f"Primer selects by priming, but config.selection is {config.selection!r}: use "
                             "LearnerConfig.primed() (the paper's method) or LearnerConfig(selection='priming'), or "
                             "get_learner_model(model, config) for random/magnitude")
        if isinstance(model, LearnerModel):
            raise UsageError("this model already has learners; prime the plain transformers model")
        plan = plan_learners(model, config)
        self.model = model
        self.head_names = set(head_parameter_names(model))
        self.probe_signal: list[float] | None = None  # per-block sum of the gradient probe's scores
        self.layer_signal: list[float] | None = None  # per-block sum of the priming scores, after reconfigure
        if config.layers == "auto" and config.priming_scope == "learner-layers":
            plan = self._probe_layers(plan, batches)
        self.plan = plan
        self.trained_names = priming_parameter_names(model, plan, self.head_names)
        for name, p in model.named_parameters():
            p.requires_grad_(name in self.trained_names)
        self.pretrained = snapshot_parameters(model, self.trained_names - self.head_names)

    @property
    def config(self) -> LearnerConfig:
        """The config primed under (after a gradient probe, its layers name the blocks it chose)."""
        return self.plan.config

    def _probe_layers(self, plan: LearnerPlan, batches) -> LearnerPlan:
        """The plan with the learner blocks chosen by gradient magnitudes over a few batches (no updates)."""
        if batches is None:
            raise UsageError("layers='auto' with priming_scope='learner-layers' chooses the learner blocks before "
                             "priming, from gradients: pass batches= (dicts of model inputs with labels), or fix "
                             "the blocks with layers=")
        scores = rank0_scores(gradient_scores(self.model, plan, islice(batches, plan.config.gradient_batches)))
        self.probe_signal = [round(float(s.sum()), 6) for s in scores]
        resolved, _ = select(plan, scores)  # only the blocks: priming picks the neurons
        return resolved

    def parameters(self) -> list[nn.Parameter]:
        """What priming trains, in model order: give these to the priming optimizer."""
        return [p for name, p in self.model.named_parameters() if name in self.trained_names]

    def steps(self, steps_per_epoch: int) -> int:
        """The priming budget in optimizer steps (see `priming_steps`)."""
        return priming_steps(self.plan.config, steps_per_epoch)

    def reconfigure(self) -> LearnerModel:
        """Select by priming; keep the primed learner slices and head, put every other weight back; wrap.

        Call it once, after training the model for `steps(...)` steps. Scores are rank 0's on every rank.
        """
        if self.pretrained is None:
            raise UsageError("this Primer has already reconfigured its model; prime a fresh model with a new Primer")
        model, plan = self.model, self.plan
        before = [tuple(self.pretrained[f"{b.name}.{module}.{kind}"].float().cpu() for module, kind in
                        ((b.up_name, "weight"), (b.up_name, "bias"), (b.down_name, "weight")))
                  for b in plan.learner_blocks]
        scores = rank0_scores(priming_scores(plan, before))
        if not any(bool(s.any()) for s in scores):
            raise UsageError("no FFN weight moved since Primer(model, config): train the model for primer.steps(...) "
                             "steps before reconfigure() (a schedule whose warm-up starts at 0 moves nothing in step 1)")
        self.layer_signal = [round(float(s.sum()), 4) for s in scores]
        plan, indices = select(plan, scores)
        config = plan.config
        with torch.no_grad():
            primed = [_trained_slices(b, idx, plan) for b, idx in zip(plan.learner_blocks, indices)]
            restore_parameters(model, self.pretrained)
        # Wrap the pre-trained model first, so the learners sit on the base model (unload() gives it back),
        # then warm-start the learner slices with their primed values.
        learner_model = LearnerModel(model, config, indices, plan=plan)
        if not config.reset_after_priming:
            with torch.no_grad():
                for block, slices in zip(learner_model.ffn_blocks, primed):
                    _warm_start(block, slices)
        self.pretrained, self.plan = None, plan
        return learner_model


def priming_steps(config: LearnerConfig, steps_per_epoch: int) -> int:
    """The priming budget in optimizer steps: `config.priming_steps`, else `config.priming_fraction` of an
    epoch of `steps_per_epoch` steps (at least one)."""
    return config.priming_steps or max(1, round(config.priming_fraction * steps_per_epoch))


def priming_parameter_names(model: nn.Module, plan: LearnerPlan, head_names: set[str]) -> set[str]:
    """What trains during priming under `plan.config.priming_scope` (the head, `head_names`, always does)."""
    if plan.config.priming_scope == "all":
        return {n for n, _ in model.named_parameters()}
    blocks = plan.learner_blocks if plan.config.priming_scope == "learner-layers" else plan.blocks
    prefixes = tuple(f"{b.name}.{module}." for b in blocks for module in (b.up_name, b.down_name))
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)} | set(head_names)


def snapshot_parameters(model: nn.Module, names: set[str]) -> dict[str, torch.Tensor]:
    """Copies of the named parameters (on their device), to measure how far they move and to put them back."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in names}


def restore_parameters(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Write `values` (from `snapshot_parameters`) back into the model's parameters, in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in values.items():
            params[name].copy_(value)


def _trained_slices(block: FFNBlock, idx: torch.Tensor, plan: LearnerPlan) -> dict:
    """Copies of what the learner phase will train in one FFN block: W1[L,:], b1[L], W2[:,L] (+ b2, LayerNorm)."""
    slices = {"w1": block.up.weight[idx].clone(), "b1": block.up.bias[idx].clone(), "w2": block.down.weight[:, idx].clone()}
    if plan.config.train_ffn_output_bias:
        slices["b2"] = block.down.bias.clone()
    if plan.trains_layer_norm:
        slices["ln"] = {k: v.clone() for k, v in block.layer_norm.state_dict().items()}
    return slices


def _warm_start(block: FFNBlock, slices: dict) -> None:
    """Write the primed values (from `_trained_slices`) into a learner block's trainable tensors."""
    block.up.learner_weight.copy_(slices["w1"])
    block.up.learner_bias.copy_(slices["b1"])
    block.down.learner_weight.copy_(slices["w2"])
    if "b2" in slices:
        block.down.bias.copy_(slices["b2"])
    if "ln" in slices:
        block.layer_norm.load_state_dict(slices["ln"])

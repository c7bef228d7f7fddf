"""Learner modules with priming (the method of this project).

prepare       -> priming: snapshot what priming will train (`priming_scope`: the whole model, every
                 FFN, or the learner blocks' FFNs; the head always) and freeze the rest;
                 gradient/magnitude/random: select now and wrap.
after_priming -> score neurons by how far they moved; with layers="auto" the scores also choose
                 the learner blocks; keep the top-k per block with their primed values (warm start)
                 and the primed head, put the rest back to the pre-trained weights, wrap.
"""

from itertools import islice
from pathlib import Path

import torch
from torch import nn

from .. import distributed
from ...errors import UsageError
from ...learner import LearnerConfig, LearnerModel, get_learner_model
from ...learner.ffn import FFNBlock, find_ffn_blocks
from ...learner.selection import gradient_scores, priming_scores, select
from .base import Method


DEFAULT_RATIO = 1 / 16  # 96 of MiniLM's 1536 FFN neurons per learner block
# Every block. Measured (BENCHMARKS.md, section 5): skipping the lowest block (skip-1, top-5 on the default
# model) makes a step 0.60x of full fine-tuning's matmul FLOPs instead of 0.66x (0.67x vs 0.70x wall time),
# but cost CoLA 0.023 MCC over 3 seeds (0.247 vs 0.270) and never reached CoLA's time-to-target, which learners
# in every block do; shallower learners lost more. So depth stays the default; `--learner-layers` trades it.
DEFAULT_LAYERS = "all"


class LearnersMethod(Method):
    name = "learners"
    default_learning_rate = 1e-3

    def __init__(self, options: dict | None = None):
        super().__init__(options)
        options = {k: v for k, v in (options or {}).items() if v is not None}
        if "ratio" not in options and "num_neurons" not in options:
            options["ratio"] = DEFAULT_RATIO
        options.setdefault("layers", DEFAULT_LAYERS)
        self.config = LearnerConfig(**options)
        self.pretrained = None
        self.layer_signal = None  # per-block sum of the priming scores, for results.json
        self.probe_signal = None  # per-block sum of the gradient probe's scores (auto layers, learner-layers scope)

    def check(self, model: nn.Module) -> None:
        """Fail before training if the learner layers or sizes do not fit `model`."""
        config = self.config
        blocks = find_ffn_blocks(model, config)
        if isinstance(config.num_neurons, list):
            if config.layers == "auto":
                raise UsageError("--learner-layers auto chooses how many blocks get learners, so --num-neurons must be "
                                 "one count, not a list")
            if len(config.num_neurons) != len(blocks):
                raise UsageError(f"--num-neurons gives {len(config.num_neurons)} counts but {len(blocks)} FFN blocks get "
                                 "learners; give one count, or one per learner block")
        for i, block in enumerate(blocks):
            config.neurons_for(i, block.width)

    def prepare(self, model: nn.Module, batches) -> nn.Module:
        super().prepare(model, batches)
        config = self.config
        if config.selection == "priming":
            if config.layers == "auto" and config.priming_scope == "learner-layers":
                config = self.config = self._probe_layers(model, batches)
            primed = priming_parameter_names(model, config, self.head_names)
            for name, p in model.named_parameters():
                p.requires_grad_(name in primed)
            self.pretrained = {n: p.detach().clone() for n, p in model.named_parameters()
                               if n in primed and n not in self.head_names}
            return model
        if config.selection == "gradient":
            scores = _rank0(gradient_scores(model, config, islice(batches, config.gradient_batches)))
            self.config, indices = select(model, config, scores)
            return LearnerModel(model, self.config, indices)
        model = get_learner_model(model, config)
        self.config = model.learner_config
        return model

    def _probe_layers(self, model: nn.Module, batches) -> LearnerConfig:
        """Choose the learner blocks before priming from gradient magnitudes over a few batches (no updates)."""
        config = self.config
        scores = _rank0(gradient_scores(model, config, islice(batches, config.gradient_batches)))
        self.probe_signal = [round(float(s.sum()), 6) for s in scores]
        resolved, _ = select(model, config, scores)  # only the blocks: priming picks the neurons
        distributed.log(f"learners: blocks {resolved.layers} get learners; gradient probe signal per block "
                        f"{self.probe_signal}")
        return resolved

    def priming_steps(self, steps_per_epoch: int) -> int:
        if self.config.selection != "priming":
            return 0
        return self.config.priming_steps or max(1, round(self.config.priming_fraction * steps_per_epoch))

    def after_priming(self, model: nn.Module, batches) -> nn.Module:
        """Select by priming; keep the primed learner slices (and head), put every other weight back.

        Everything outside the learners and the head returns to its pre-trained value, so the
        final model is exactly base model + learners + head: the small checkpoint that
        save_pretrained writes restores it on the base model, and merging is exact.
        With reset_after_priming the learner slices return to their pre-trained values too.
        """
        candidates = find_ffn_blocks(model, self.config)
        before = [tuple(self.pretrained[f"{b.name}.{module}.{kind}"].float().cpu() for module, kind in
                        ((b.up_name, "weight"), (b.up_name, "bias"), (b.down_name, "weight"))) for b in candidates]
        scores = _rank0(priming_scores(model, self.config, before))
        self.layer_signal = [round(float(s.sum()), 4) for s in scores]
        self.config, indices = select(model, self.config, scores)
        distributed.log(f"learners: blocks {self.config.layers if self.config.layers is not None else 'all'} get "
                        f"learners; priming signal per block {self.layer_signal}")
        blocks = find_ffn_blocks(model, self.config)
        with torch.no_grad():
            primed = [_trained_slices(b, idx, self.config) for b, idx in zip(blocks, indices)]
            params = dict(model.named_parameters())
            for name, value in self.pretrained.items():
                params[name].copy_(value)
            if not self.config.reset_after_priming:
                for block, idx, slices in zip(blocks, indices, primed):
                    _restore_slices(block, idx, slices)
        self.pretrained = None
        return LearnerModel(model, self.config, indices)

    def checkpoint_state(self, model: nn.Module) -> tuple[dict, dict]:
        """The config (after selection with the chosen layers), whether selection happened, and the indices."""
        facts = {"selected": isinstance(model, LearnerModel), "config": self.config.to_dict(),
                 "layer_signal": self.layer_signal, "probe_signal": self.probe_signal}
        indices = model.indices if isinstance(model, LearnerModel) else []
        return facts, {f"indices.{i}": idx for i, idx in enumerate(indices)}

    def restore(self, model: nn.Module, batches, facts: dict, tensors: dict) -> nn.Module:
        """Before selection: prepare again (priming's snapshot of the pre-trained weights, with the saved
        config, so layers chosen by a probe are not probed again). After it: wrap the base model with
        the saved learners' config and indices; the checkpoint loads the learner slices and the head."""
        self.config = LearnerConfig.from_dict(facts["config"])
        self.layer_signal, self.probe_signal = facts["layer_signal"], facts["probe_signal"]
        if not facts["selected"]:
            return self.prepare(model, batches)
        Method.prepare(self, model, batches)
        return LearnerModel(model, self.config, [tensors[f"indices.{i}"] for i in range(len(tensors))])

    def parameter_counts(self, model: nn.Module) -> dict[str, int]:
        c = model.parameter_counts()
        return {"encoder": c["learners"], "head": c["head"], "trainable": c["trainable"], "total": c["total"]}

    def save_extra(self, model: nn.Module, output_dir: Path) -> dict:
        learners_dir = model.save_pretrained(output_dir / "learners")
        size = sum(f.stat().st_size for f in learners_dir.iterdir())
        blocks = len(find_ffn_blocks(model.base_model, LearnerConfig(ratio=1.0, ffn_modules=self.config.ffn_modules)))
        return {"learners_dir": str(learners_dir), "learners_checkpoint_bytes": size,
                "learner_layers": self.config.layer_positions(blocks),
                "learner_neurons": [int(i.numel()) for i in model.indices], "priming_layer_signal": self.layer_signal,
                "probe_layer_signal": self.probe_signal}

    def plain_model(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()


def _rank0(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rank 0's scores on every data-parallel rank, so all select the same neurons and blocks. (Priming's
    scores agree anyway, DDP keeps the weights equal; the gradient probe's come from each rank's own
    forward and backward passes, equal only as long as the kernels are deterministic.)"""
    return distributed.broadcast([s.cpu() for s in scores])


def priming_parameter_names(model: nn.Module, config: LearnerConfig, head_names: set[str]) -> set[str]:
    """What trains during priming under `config.priming_scope` (the head always does)."""
    if config.priming_scope == "all":
        return {n for n, _ in model.named_parameters()}
    blocks = find_ffn_blocks(model, config if config.priming_scope == "learner-layers" else LearnerConfig(
        ratio=1.0, ffn_modules=config.ffn_modules, layer_norm_module=config.layer_norm_module))
    prefixes = tuple(f"{b.name}.{module}." for b in blocks for module in (b.up_name, b.down_name))
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)} | set(head_names)


def _trained_slices(block: FFNBlock, idx: torch.Tensor, config: LearnerConfig) -> dict:
    """Copies of what the learner phase will train in one FFN block: W1[L,:], b1[L], W2[:,L] (+ b2, LayerNorm)."""
    slices = {"w1": block.up.weight[idx].clone(), "b1": block.up.bias[idx].clone(), "w2": block.down.weight[:, idx].clone()}
    if config.train_ffn_output_bias:
        slices["b2"] = block.down.bias.clone()
    if config.train_layer_norm and block.layer_norm is not None:
        slices["ln"] = {k: v.clone() for k, v in block.layer_norm.state_dict().items()}
    return slices


def _restore_slices(block: FFNBlock, idx: torch.Tensor, slices: dict) -> None:
    block.up.weight[idx] = slices["w1"]
    block.up.bias[idx] = slices["b1"]
    block.down.weight[:, idx] = slices["w2"]
    if "b2" in slices:
        block.down.bias.copy_(slices["b2"])
    if "ln" in slices:
        block.layer_norm.load_state_dict(slices["ln"])

"""Learner sets: what one task adds to a shared base model, built so that several share one backbone.

A learner set is, per FFN block, a `LearnerRowLinear` / `LearnerColumnLinear` pair (its neuron
indices, its learner slices and the base values under them), a copy of the block's output
LayerNorm if the config trains it, its own copy of the task head, and its labels (id2label,
label2id, problem_type). The layers of every set hold the *same* frozen full weights (the base
model's own Parameters), so an extra set costs only its slices and its head. `LearnerModel`
installs one set (or none) at a time; the others, and the base modules they replace, are kept
outside the module tree.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError
from .config import LearnerConfig
from .ffn import find_ffn_blocks, join
from .layer import LearnerColumnLinear, LearnerRowLinear, _LearnerLinear


def head_module_paths(head_names) -> list[str]:
    """The modules that own the head's parameters (e.g. `bert.pooler.dense`, `classifier`), in order."""
    return list(dict.fromkeys(name.rpartition(".")[0] for name in sorted(head_names)))


def read_labels(model: nn.Module) -> dict:
    """The label facts of `model.config` that a task head comes with."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    id2label = getattr(config, "id2label", None)
    return {"id2label": dict(id2label) if id2label is not None else None,
            "label2id": dict(getattr(config, "label2id", None) or {}),
            "problem_type": getattr(config, "problem_type", None)}


def apply_labels(model: nn.Module, labels: dict) -> None:
    """Set `model.config`'s labels (and the `num_labels` that the model's forward reads) to `labels`."""
    config = getattr(model, "config", None)
    if config is None or not labels:
        return
    config.id2label = labels["id2label"]
    config.label2id = labels["label2id"]
    config.problem_type = labels["problem_type"]
    if labels["id2label"] is not None and hasattr(model, "num_labels"):
        model.num_labels = len(labels["id2label"])


def saved_labels(meta: dict) -> dict | None:
    """The labels saved in learners_config.json (None when the file has none)."""
    if meta.get("num_labels") is None:
        return None
    try:
        id2label = {int(k): v for k, v in (meta.get("id2label") or {}).items()}
        num_labels = int(meta["num_labels"])
    except (AttributeError, TypeError, ValueError) as e:
        raise UsageError(f"learners_config.json has malformed labels (num_labels, id2label: {e}); it is damaged") from e
    if len(id2label) != num_labels:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    return {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}, "problem_type": meta.get("problem_type")}


@dataclass
class LearnerSet:
    """One task's learners: the modules to install (by their path in the base model), config and labels."""

    name: str
    config: LearnerConfig
    modules: dict[str, nn.Module]
    labels: dict

    @property
    def layers(self) -> list[_LearnerLinear]:
        return [m for m in self.modules.values() if isinstance(m, _LearnerLinear)]

    def requires_grad_(self, trainable: bool) -> None:
        """Learner slices, head, and b2 / LayerNorm if trained; never the shared frozen full weights."""
        for module in self.modules.values():
            if isinstance(module, _LearnerLinear):
                for p in module.learner_parameters():
                    p.requires_grad_(trainable)
            else:
                module.requires_grad_(trainable)


def build_set(model: nn.Module, name: str, config: LearnerConfig, indices: list[torch.Tensor],
              head_paths: list[str]) -> LearnerSet:
    """A new learner set on `model`, which must hold its base modules (no set installed): the layers
    record the base values under their indices, LayerNorm and head are copies of the base's."""
    if config.layers == "auto":
        raise UsageError("layers='auto' is chosen from a selection signal: get the config with the chosen layers and "
                         "the indices from learners.learner.selection.select(model, config, scores)")
    blocks = find_ffn_blocks(model, config)
    if len(indices) != len(blocks):
        raise UsageError(f"got learner indices for {len(indices)} FFN blocks, but the model has {len(blocks)} that get learners")
    modules = {}
    for block, idx in zip(blocks, indices):
        if isinstance(block.up, _LearnerLinear):
            raise UsageError("this model already has learners; call merge_and_unload() before adding new ones")
        modules[join(block.name, block.up_name)] = LearnerRowLinear(block.up, idx, learner_first=True)
        modules[join(block.name, block.down_name)] = LearnerColumnLinear(block.down, idx, train_bias=config.train_ffn_output_bias,
                                                                         learner_first=True)
        if config.train_layer_norm and block.layer_norm is not None:
            modules[join(block.name, block.layer_norm_name)] = copy.deepcopy(block.layer_norm)
    for path in head_paths:
        modules[path] = copy.deepcopy(model.get_submodule(path))
    return LearnerSet(name, config, modules, read_labels(model))

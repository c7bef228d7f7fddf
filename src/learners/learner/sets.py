"""Learner sets: what one task adds to a shared base model, built so that several share one backbone.

A learner set is, per FFN block, a `LearnerRowLinear` / `LearnerColumnLinear` pair (its neuron
indices, its learner slices and the base values under them), a copy of the block's output
LayerNorm if the config trains it, its own copy of the task head, and its labels (id2label,
label2id, problem_type). The layers of every set hold the *same* frozen full weights (the base
model's own Parameters), so an extra set costs only its slices and its head. `LearnerModel`
installs one set (or none) at a time; the others, and the base modules they replace, are kept
outside the module tree (`LearnerSetsMixin`, LearnerModel's switching between sets).
"""

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError
from .config import LearnerConfig
from .ffn import join, set_submodule
from .layer import LearnerColumnLinear, LearnerRowLinear, _LearnerLinear
from .plan import LearnerPlan


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
    """One task's learners: the modules to install (by their path in the base model), its plan and labels."""

    name: str
    plan: LearnerPlan
    modules: dict[str, nn.Module]
    labels: dict

    @property
    def config(self) -> LearnerConfig:
        return self.plan.config

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


def build_set(model: nn.Module, name: str, plan: LearnerPlan, indices: list[torch.Tensor],
              head_paths: list[str]) -> LearnerSet:
    """A new learner set on `model` (planned by `plan`), which must hold its base modules (no set installed): the
    layers record the base values under their indices, LayerNorm and head are copies of the base's."""
    if plan.config.layers == "auto":
        raise UsageError("layers='auto' is chosen from a selection signal: get the plan with the chosen layers and "
                         "the indices from learners.learner.selection.select(plan, scores)")
    blocks = plan.learner_blocks
    if len(indices) != len(blocks):
        raise UsageError(f"got learner indices for {len(indices)} FFN blocks, but the model has {len(blocks)} that get learners")
    modules = {}
    for block, idx in zip(blocks, indices):
        if isinstance(block.up, _LearnerLinear):
            raise UsageError("this model already has learners; call merge_and_unload() before adding new ones")
        modules[join(block.name, block.up_name)] = LearnerRowLinear(block.up, idx, learner_first=True)
        modules[join(block.name, block.down_name)] = LearnerColumnLinear(block.down, idx,
                                                                         train_bias=plan.config.train_ffn_output_bias,
                                                                         learner_first=True)
        if plan.trains_layer_norm:
            modules[join(block.name, block.layer_norm_name)] = copy.deepcopy(block.layer_norm)
    for path in head_paths:
        modules[path] = copy.deepcopy(model.get_submodule(path))
    return LearnerSet(name, plan, modules, read_labels(model))


class LearnerSetsMixin:
    """LearnerModel's several learner sets on one backbone: `set_learners` switches, `disable_learners` runs the
    base model, `delete_learners` drops one (`load_learners`, in saving.py, adds one). Switching writes the old
    set's base values back and the new set's slices in: O(k) per block, never a copy of the backbone."""

    @property
    def learner_sets(self) -> list[str]:
        """The names of the loaded learner sets."""
        return list(self._sets)

    @property
    def active_learners(self) -> str | None:
        """The name of the learner set in use (None: the base model as it was)."""
        return self._active

    def set_learners(self, name: str | None) -> None:
        """Run with learner set `name` (its learners, head and labels); None runs the base model exactly as it
        was. Switching writes the old set's base values back and the new set's slices in: O(k) per block."""
        if name is not None and name not in self._sets:
            raise UsageError(f"no learner set named {name!r}; loaded: {', '.join(self._sets) or 'none'} "
                             "(add one with load_learners(directory, name))")
        if name != self._active:
            self._switch(name)

    @contextlib.contextmanager
    def disable_learners(self):
        """`with model.disable_learners():` runs the base model exactly as it was, then the set in use again."""
        previous = self._active
        self.set_learners(None)
        try:
            yield self
        finally:
            self.set_learners(previous)

    def delete_learners(self, name: str) -> None:
        """Drop learner set `name` (the base model runs if it was the active one)."""
        if name not in self._sets:
            raise UsageError(f"no learner set named {name!r}; loaded: {', '.join(self._sets) or 'none'}")
        if name == self._active:
            self._switch(None)
        del self._sets[name]

    def _switch(self, name: str | None) -> None:
        """Take the active set's modules out (base values back into the shared weights, the base modules and
        labels back in), then put set `name`'s in (its slices written into the shared weights)."""
        cache_mb = self._prefix_cache_mb
        self.disable_frozen_prefix_cache()
        if self._active is not None:
            old = self._sets[self._active]
            for layer in old.layers:
                layer.restore_base()
            old.labels = read_labels(self.base_model)
            for path in old.modules:
                set_submodule(self.base_model, path, self._base_modules[path])
        elif name is not None:
            self._base_labels = read_labels(self.base_model)
        self._active = None
        new = self._sets[name] if name is not None else None
        for path, module in (new.modules if new else {}).items():
            current = self._base_modules.setdefault(path, self.base_model.get_submodule(path))
            module.train(current.training)
            set_submodule(self.base_model, path, module)
        for layer in new.layers if new else []:
            layer.sync()
        apply_labels(self.base_model, new.labels if new else self._base_labels)
        self._active = name
        if self.training:
            self.train(True)  # frozen_dropout may differ between sets
        if cache_mb is not None:
            if name is not None and self.plan.frozen_blocks:
                self.enable_frozen_prefix_cache(cache_mb)
            else:
                self._prefix_cache_mb = cache_mb  # no set, or one in the lowest block: nothing to cache for now

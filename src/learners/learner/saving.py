"""Saving and loading learners: PEFT's `get_peft_model_state_dict` and `save_pretrained` / `from_pretrained`.

`state_dict()` is the active set's learner state only (learner slices, b2 / LayerNorm if the config trains them,
the task head, the neuron indices, and learners_config.json's content as a uint8 tensor), chosen by key, so
`transformers.Trainer.save_model` writes a small, self-describing checkpoint, and `load_state_dict` of that takes
it back (checking the indices). The frozen base weights are the base model's business. `save_pretrained` writes
the same tensors with a JSON config and a model card; `from_pretrained` and `load_learners` read either form.
"""

import json
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import PATH, UsageError, check_argument, check_finite, give_user_permissions, raise_if_disk_full
from .config import CONFIG_NAME
from .hub import local_or_from_hub, push_folder
from .model_card import CARD_NAME, model_card, save_card
from .saved_learners import (CONFIG_KEY, SAVED_FILES, WEIGHTS_NAME, SavedLearners, base_fingerprint, read_metadata)
from .plan import plan_learners
from .sets import apply_labels, build_set, head_module_paths, join, saved_labels

DEFAULT_NAME = "default"


class LearnerSavingMixin:
    """LearnerModel's learner state, saving and loading."""

    def learner_state(self) -> dict[str, torch.Tensor]:
        """The active set's tensors by key (not by requires_grad): per block the learner slices (`...learner_weight`,
        `...learner_bias`), b2 (`...bias` of W2) and the LayerNorm if the config trains them, then the task head
        and the neuron indices (`learner_indices.0`, ...). Empty while no set is active."""
        if self._active is None:
            return {}
        config, blocks, tensors = self.learner_config, self.ffn_blocks, {}
        for block in blocks:
            up, down = join(block.name, block.up_name), join(block.name, block.down_name)
            tensors[f"{up}.learner_weight"] = block.up.learner_weight
            tensors[f"{up}.learner_bias"] = block.up.learner_bias
            tensors[f"{down}.learner_weight"] = block.down.learner_weight
            if config.train_ffn_output_bias:
                tensors[f"{down}.bias"] = block.down.bias
            if config.train_layer_norm and block.layer_norm is not None:
                for name, p in block.layer_norm.named_parameters():
                    tensors[f"{join(block.name, block.layer_norm_name)}.{name}"] = p
        params = dict(self.base_model.named_parameters())
        tensors.update({name: params[name] for name in sorted(self.head_names)})
        tensors.update({f"learner_indices.{i}": block.up.indices for i, block in enumerate(blocks)})
        return tensors

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        """The learner state (`learner_state()`, what save_pretrained writes), not the frozen base weights:
        `Trainer.save_model` and its checkpoints hold a few MB. nn.Module's signature, so wrappers (DDP,
        accelerate) that call it with a prefix get `prefix + key`. `base_model.state_dict()` has everything.
        With a set active it also holds `learners_config`: learners_config.json's content as a uint8 tensor, so
        that a Trainer's model.safetensors is self-describing (`from_pretrained` loads a Trainer checkpoint)."""
        if args:  # nn.Module's deprecated positional form: destination, prefix, keep_vars
            destination, prefix, keep_vars = (list(args) + [destination, prefix, keep_vars][len(args):])[:3]
        if destination is None:
            destination = OrderedDict()
            destination._metadata = OrderedDict()
        for name, tensor in self.learner_state().items():
            destination[prefix + name] = tensor if keep_vars else tensor.detach()
        if self._active is not None:
            destination[prefix + CONFIG_KEY] = torch.tensor(list(json.dumps(self._metadata()).encode()), dtype=torch.uint8)
        return destination

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """`load_state_dict` of a learner state: the indices must equal this model's, the tensors' shapes too.
        (A state dict in nn.Module's own layout, keys `base_model.*`, is left to the submodules.)"""
        own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if any(k.startswith("base_model.") for k in own):
            return
        own.pop(CONFIG_KEY, None)  # describes the state; the indices below are what must agree
        expected = self.learner_state()
        for key in [k for k in expected if k.startswith("learner_indices.") and k in own]:
            saved = own[key]
            if saved.shape != expected[key].shape or not torch.equal(saved.to(expected[key]), expected[key]):
                raise UsageError(f"the state dict's {key} differs from this model's learner neurons; load it into a "
                                 "LearnerModel built with its indices (LearnerModel.from_pretrained, or LearnerModel"
                                 "(model, config, indices) with the saved learner_indices)")
        self._copy_learner_tensors({k: v for k, v in own.items() if k in expected and not k.startswith("learner_indices.")},
                                   "the state dict")
        missing_keys.extend(prefix + k for k in expected if k not in own)
        unexpected_keys.extend(prefix + k for k in own if k not in expected)
        self._loading_prefix = prefix

    def _copy_learner_tensors(self, values: dict, source: str, resize_head: bool = False) -> None:
        """Copy `values` into the active set's tensors of the same key, every shape checked first. With
        `resize_head` a head tensor may differ in its first dimension (another label count): the set's own
        head copy gets a tensor of that shape."""
        targets, resize = self.learner_state(), []
        for name, value in values.items():
            shape = tuple(targets[name].shape)
            if tuple(value.shape) == shape:
                continue
            if resize_head and name in self.head_names and value.dim() == len(shape) and value.shape[1:] == shape[1:]:
                resize.append(name)
                continue
            raise UsageError(f"{source}: tensor {name} has shape {tuple(value.shape)} but this model's is {shape}; "
                             "these learners come from another base model: load them on the one they were trained from")
        for name in resize:
            _resize_parameter(self.base_model, name, values[name].shape)
        targets = self.learner_state()
        with torch.no_grad():
            for name, value in values.items():
                targets[name].copy_(value)

    def save_pretrained(self, save_directory: str | Path, task: str | None = None, metrics: dict | None = None,
                        base_model: str | None = None) -> Path:
        """Write the active set's learner state (`learner_state()`: slices, b2 / LayerNorm if trained, head,
        indices), its config with the labels and the base model's name and fingerprint, and a model card
        (README.md, model_card.py) that names the `task`, its `metrics` and the `base_model` where given."""
        check_argument(save_directory, PATH, "save_directory", "save_pretrained", "a path")
        if self._active is None:
            raise UsageError("no learner set is active, so there is nothing to save; call set_learners(NAME) first")
        tensors = {name: t.detach().contiguous().cpu() for name, t in self.learner_state().items()}
        check_finite(tensors.items(), "the learners", "Retrain them with a lower learning rate.")
        meta = self._metadata()
        out = Path(save_directory)
        try:
            out.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
            give_user_permissions(out / WEIGHTS_NAME)
            (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
            save_card(out, model_card(meta, task, metrics, base_model))  # a README.md of the user's own is kept
        except Exception as e:  # safetensors writes a temporary file and renames it: a full disk leaves no half file
            raise_if_disk_full(e, out, "the learners", sum(t.nbytes for t in tensors.values()), "free some space and save again")
            raise
        return out

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool | None = None,
                    commit_message: str = "Upload learners", task: str | None = None, metrics: dict | None = None,
                    base_model: str | None = None) -> str:
        """Upload what save_pretrained writes (the learners, their config and the model card; never the base
        model's weights) to the hub repository `repo_id`, created if needed; return the commit's URL."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, task, metrics, base_model)
            (Path(folder) / CARD_NAME).write_text(model_card(self._metadata(), task, metrics, base_model, repo_id),
                                                  encoding="utf-8")
            return push_folder(folder, repo_id, token, private, commit_message)

    def _metadata(self) -> dict:
        """learners_config.json's content: the active set's config, its labels, the base model's name and fingerprint."""
        model_config = getattr(self.base_model, "config", None)
        return {
            "learner_config": self.learner_config.to_dict(),
            "base_model_name_or_path": getattr(model_config, "_name_or_path", None),
            "model_type": getattr(model_config, "model_type", None),
            "num_labels": getattr(model_config, "num_labels", None),
            "id2label": {str(k): v for k, v in (getattr(model_config, "id2label", None) or {}).items()},
            "problem_type": getattr(model_config, "problem_type", None),
            "base_fingerprint": base_fingerprint(self.base_model),
        }

    read_metadata = staticmethod(read_metadata)

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path, is_trainable: bool = False,
                        name: str = DEFAULT_NAME):
        """Restore saved learners (and head, and its labels) onto `model`, the base model they were trained from.

        As in PEFT, `is_trainable=False` loads them for inference: everything frozen, the model in eval mode;
        `is_trainable=True` lets the learners and the head train. `directory` may be a hub repository id
        ("user/name", what push_to_hub wrote) that is no local path: its learners are downloaded."""
        check_argument(model, nn.Module, "model", "from_pretrained", "a transformers model (a torch.nn.Module)")
        check_argument(directory, PATH, "directory", "from_pretrained", "a path")
        saved = SavedLearners.read(local_or_from_hub(directory, SAVED_FILES))
        saved.check_base(model)
        try:
            learner_model = cls(model, saved.config, saved.indices, name)
        except ValueError as e:
            if isinstance(e, UsageError):
                raise
            raise UsageError(f"the learner indices in {saved.weights_path} do not fit this model: {e}") from e
        try:
            learner_model._load_saved(saved)
        except Exception:
            learner_model.unload()  # the model as it was passed in
            raise
        learner_model._sets[name].requires_grad_(is_trainable)
        return learner_model if is_trainable else learner_model.eval()

    def _load_saved(self, saved: "SavedLearners") -> None:
        """Load saved learners into the active set: every tensor present, head resized to the saved label count;
        the saved labels become the set's."""
        expected = {k for k in self.learner_state() if not k.startswith("learner_indices.")}
        unknown, missing = sorted(set(saved.tensors) - expected), sorted(expected - set(saved.tensors))
        if unknown:
            raise UsageError(f"saved learners do not fit this base model (unknown tensors {unknown[:3]}...); "
                             f"load them on the model they were trained from: {saved.meta.get('base_model_name_or_path')}")
        if missing:
            raise UsageError(f"{saved.weights_path} lacks trained tensors {missing[:3]}; it is incomplete")
        self._copy_learner_tensors(saved.tensors, str(saved.weights_path), resize_head=True)
        labels = saved_labels(saved.meta)
        if labels is not None:
            self._sets[self._active].labels = labels
            apply_labels(self.base_model, labels)


    def load_learners(self, directory: str | Path, name: str, is_trainable: bool = False) -> None:
        """Add the learners saved in `directory` as set `name`, sharing this backbone: it costs only their slices
        and head. The active set stays active (as PEFT's load_adapter); `set_learners(name)` switches."""
        if not isinstance(name, str) or not name:
            raise UsageError(f"a learner set needs a non-empty name, got {name!r}")
        if name in self._sets:
            raise UsageError(f"a learner set named {name!r} is already loaded; choose another name or delete_learners it")
        check_argument(directory, PATH, "directory", "load_learners", "a path")
        saved = SavedLearners.read(local_or_from_hub(directory, SAVED_FILES))
        saved.check_base(self.base_model)
        previous = self._active
        self._switch(None)  # new layers record the base values under their indices
        try:
            try:
                self._sets[name] = build_set(self.base_model, name, plan_learners(self.base_model, saved.config),
                                             saved.indices, head_module_paths(self.head_names))
            except ValueError as e:
                if isinstance(e, UsageError):
                    raise
                raise UsageError(f"the learner indices in {saved.weights_path} do not fit this model: {e}") from e
            self._switch(name)
            self._load_saved(saved)
            self._sets[name].requires_grad_(is_trainable)
        except Exception:
            self._switch(None)
            self._sets.pop(name, None)
            raise
        finally:
            self._switch(previous)


def forget_frozen_keys(module: nn.Module, incompatible_keys) -> None:
    """After loading a learner state, the frozen base weights are not "missing": they are not in that state."""
    prefix, module._loading_prefix = module._loading_prefix, None
    if prefix is not None:
        incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys
                                             if not k.startswith(prefix + "base_model.")]


def _resize_parameter(model: nn.Module, name: str, shape) -> None:
    """Give the parameter `name` a new (uninitialised) tensor of `shape`; an nn.Linear's sizes follow."""
    path, _, attr = name.rpartition(".")
    module = model.get_submodule(path)
    old = getattr(module, attr)
    setattr(module, attr, nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device),
                                       requires_grad=old.requires_grad))
    if isinstance(module, nn.Linear) and attr == "weight":
        module.out_features, module.in_features = shape[0], shape[1]



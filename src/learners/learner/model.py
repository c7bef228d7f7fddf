"""`LearnerModel`: injects learners into a transformers model; saves, restores, merges and switches them.

Layout follows HF PEFT: the config is a dataclass (config.py), the layers own the math (layer.py),
a learner set is what one task adds (sets.py), and this wrapper owns injection, the state dict,
saving and loading, merging and unloading, and several named learner sets on one backbone.

`state_dict()` is PEFT's `get_peft_model_state_dict`: the active set's learner state only (learner
slices, b2 / LayerNorm if the config trains them, the task head, the neuron indices), chosen by key,
so `transformers.Trainer.save_model` writes a small checkpoint, and `load_state_dict` of that takes
it back (checking the indices). The frozen base weights are the base model's business.
"""

import contextlib
import functools
import json
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import (NUMBER, PATH, UsageError, check_argument, check_finite, give_user_permissions, raise_if_disk_full,
                      read_json_file, read_safetensors)
from .config import CONFIG_NAME, LearnerConfig, config_from_metadata
from .ffn import FFNBlock, find_ffn_blocks, has_submodule, head_parameter_names, set_submodule
from .forwarding import FORWARDED, not_forwarded
from .hub import local_or_from_hub, push_folder
from .model_card import CARD_NAME, model_card, save_card
from .prefix_cache import FrozenPrefixCache, unsupported_reason
from .selection import magnitude_scores, select, select_at_random
from .sets import LearnerSet, apply_labels, build_set, head_module_paths, join, read_labels, saved_labels

WEIGHTS_NAME = "learners_model.safetensors"
TRAINER_WEIGHTS_NAME = "model.safetensors"  # what transformers.Trainer writes (save_model, checkpoints): state_dict()
SAVED_FILES = [WEIGHTS_NAME, CONFIG_NAME, CARD_NAME]  # what save_pretrained writes (and push_to_hub uploads)
CONFIG_KEY = "learners_config"  # in state_dict(): the metadata of learners_config.json, as UTF-8 JSON bytes (uint8)
DEFAULT_NAME = "default"
FINGERPRINT_SIZE = 16
FINGERPRINT_TOLERANCE = 1e-2  # relative; casting the base model to bf16 moves a weight by at most 0.4%


class LearnerModel(nn.Module):
    """A transformers model whose FFNs train only their learner neurons (plus the task head).

    `LearnerModel(model, ...)` is an instance of a subclass made for `type(model)` (cached), whose
    `forward` carries the wrapped model's signature: `Trainer` keeps the dataset columns the model takes,
    finds its `labels` argument, and so computes the evaluation loss and metrics (see `_learner_class`).
    The learners passed here are the set `name`; `load_learners` adds more, `set_learners` switches.
    """

    _wraps: type | None = None  # the wrapped model's class, in the subclass made for it

    def __new__(cls, model: nn.Module, *args, **kwargs):
        check_argument(model, nn.Module, "model", cls.__name__, "a transformers model (a torch.nn.Module)")
        base = cls.__bases__[0] if cls.__dict__.get("_wraps") is not None else cls
        return super().__new__(_learner_class(base, type(model)))

    def __reduce_ex__(self, protocol):
        """Pickling (`torch.save(model)`, multiprocessing) and copying: the subclass made for the wrapped
        model's class cannot be found by name on load, so the load makes it again (`_learner_class`)."""
        return _rebuild_learner_model, (type(self).__bases__[0], self._wraps), self.__dict__

    def __init__(self, model: nn.Module, config: LearnerConfig, indices: list[torch.Tensor], name: str = DEFAULT_NAME):
        check_config_and_indices(config, indices, "LearnerModel")
        if not (config.attention_dropout and config.attention_probs_dropout):  # an error now, before the model changes,
            for attention in block_attention(find_ffn_blocks(model, config)):  # if its blocks have no such modules
                if not config.attention_probs_dropout:
                    attention_core(attention)
        super().__init__()
        self.base_model = model
        self.training = model.training
        self.head_names = set(head_parameter_names(model))
        self.total_params = sum(p.numel() for p in model.parameters())
        self._base_requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        self._base_modules: dict[str, nn.Module] = {}  # path -> the base model's module there, once replaced
        self._base_labels = read_labels(model)
        self._sets: dict[str, LearnerSet] = {}
        self._active: str | None = None
        self._loading_prefix: str | None = None
        self._prefix_cache: FrozenPrefixCache | None = None
        self._prefix_cache_mb: float | None = None  # kept across set switches while the cache is on
        self.register_load_state_dict_post_hook(_forget_frozen_keys)
        learner_set = build_set(model, name, config, indices, head_module_paths(self.head_names))
        model.requires_grad_(False)
        self._sets[name] = learner_set
        learner_set.requires_grad_(True)
        self._switch(name)

    def __getattr__(self, name):
        """Forward the wrapped model's facts (config, device, ...) and what Trainer reads: an explicit list
        (forwarding.py), so that none of the base model's methods (its push_to_hub, save_pretrained) passes for ours."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model" or name not in FORWARDED:
                raise not_forwarded(type(self).__name__, name) from None
            return getattr(self.base_model, name)

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def train(self, mode: bool = True) -> "LearnerModel":
        """As nn.Module.train; with `frozen_dropout=False` the frozen part below the lowest learner block
        (embeddings and blocks) stays in inference mode: nothing there trains, so only its dropout changes; with
        `attention_dropout=False` (`attention_probs_dropout=False`) so does each learner block's attention (its core)."""
        super().train(mode)
        config = self.learner_config
        if not mode or config is None:
            return self
        if not config.frozen_dropout:
            for module in self.frozen_below_learners():
                module.eval()
        if not (config.attention_dropout and config.attention_probs_dropout):  # the whole sublayer, or its core
            for attention in self.learner_block_attention():
                (attention if not config.attention_dropout else attention_core(attention)).eval()
        return self

    def learner_block_attention(self) -> list[nn.Module]:
        """The attention sublayers of the blocks that hold a learner (see block_attention)."""
        return block_attention(self.ffn_blocks)

    def _apply(self, fn, recurse=True):
        """`.to()`, `.half()`, ... also reach the modules kept outside the tree (other sets, replaced base modules)."""
        super()._apply(fn, recurse)
        if recurse:
            installed = self._sets[self._active].modules if self._active is not None else {}
            for path, module in self._base_modules.items():
                if path in installed:
                    module._apply(fn)
            for name, learner_set in self._sets.items():
                if name != self._active:
                    for module in learner_set.modules.values():
                        module._apply(fn)
        return self

    def frozen_below_learners(self) -> list[nn.Module]:
        """The embeddings (with ELECTRA's projection to the blocks' width) and the transformer blocks below the
        lowest block that holds a learner."""
        embeddings, blocks = self._frozen_prefix()
        return embeddings + blocks

    def frozen_blocks_below_learners(self) -> list[nn.Module]:
        """The transformer blocks below the lowest block that holds a learner (what the frozen-prefix cache skips)."""
        return self._frozen_prefix()[1]

    def _frozen_prefix(self) -> tuple[list[nn.Module], list[nn.Module]]:
        all_blocks = find_ffn_blocks(self.base_model, replace(self.learner_config, layers="all"))
        lowest = [b.name for b in all_blocks].index(self.ffn_blocks[0].name)
        backbone = getattr(self.base_model, getattr(self.base_model, "base_model_prefix", ""), self.base_model)
        embeddings = [getattr(backbone, name, None) for name in ("embeddings", "embeddings_project")]
        return [m for m in embeddings if isinstance(m, nn.Module)], [b.block for b in all_blocks[:lowest]]

    def enable_frozen_prefix_cache(self, max_mb: float = 2048) -> FrozenPrefixCache:
        """Cache each example's output of the frozen blocks below the lowest learner block (prefix_cache.py).
        With learners in the upper blocks only, and those frozen blocks deterministic (`frozen_dropout=False`
        in training; always in evaluation), a step on an example seen before skips them. Holds up to `max_mb`
        of values. Stays on across `set_learners` (emptied; off while the set has a learner in the lowest block)."""
        check_argument(max_mb, NUMBER, "max_mb", "enable_frozen_prefix_cache", "a number of MB")
        if not max_mb > 0:
            raise UsageError(f"enable_frozen_prefix_cache: max_mb must be positive, got {max_mb}")
        self.disable_frozen_prefix_cache()
        if self._active is None:
            raise UsageError("no learner set is active: set_learners(name) first, then enable the frozen-prefix cache")
        reason = unsupported_reason(self.base_model)
        if reason is not None:
            raise UsageError(f"{reason}; leave it off for this model")
        embeddings, blocks = self._frozen_prefix()
        if not embeddings:
            raise UsageError("the frozen-prefix cache needs the model's embeddings module (BERT, DistilBERT, RoBERTa); "
                             "leave it off for this model")
        self._prefix_cache = FrozenPrefixCache(self.base_model, embeddings, blocks, self.ffn_blocks[0].block,
                                               self.ffn_blocks[0].up.in_features, int(max_mb * 2**20))
        self._prefix_cache_mb = max_mb
        return self._prefix_cache

    def disable_frozen_prefix_cache(self) -> None:
        if self._prefix_cache is not None:
            self._prefix_cache.close()
        self._prefix_cache, self._prefix_cache_mb = None, None

    @property
    def frozen_prefix_cache(self) -> FrozenPrefixCache | None:
        return self._prefix_cache

    @property
    def learner_config(self) -> LearnerConfig | None:
        """The active learner set's config (None while no set is active)."""
        return self._sets[self._active].config if self._active is not None else None

    @property
    def ffn_blocks(self) -> list[FFNBlock]:
        return find_ffn_blocks(self.base_model, self.learner_config) if self._active is not None else []

    @property
    def indices(self) -> list[torch.Tensor]:
        return [b.up.indices.cpu() for b in self.ffn_blocks]

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters split into learners (encoder) and task head, and the model's total."""
        learners = head = 0
        for name, p in self.base_model.named_parameters():
            if p.requires_grad:
                if name in self.head_names:
                    head += p.numel()
                else:
                    learners += p.numel()
        return {"learners": learners, "head": head, "trainable": learners + head, "total": self.total_params}

    def print_trainable_parameters(self) -> None:
        c = self.parameter_counts()
        print(f"trainable params: {c['trainable']:,} (learners {c['learners']:,} + head {c['head']:,}) "
              f"|| all params: {c['total']:,} || trainable%: {100 * c['trainable'] / c['total']:.4f} "
              f"|| learners%: {100 * c['learners'] / c['total']:.4f}")

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs) -> None:
        """The wrapped model's activation checkpointing (what `Trainer` calls). transformers also makes the
        embeddings' output require grad; non-reentrant checkpointing (its default) does not need that, so the
        hook goes again: nothing runs backward below the lowest learner block, with checkpointing or without."""
        had_hook = bool(getattr(self.base_model, "_require_grads_hooks", None))
        self.base_model.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                                                        **kwargs)
        if not had_hook and not (activation_checkpointing_kwargs or {}).get("use_reentrant", False):
            self.base_model.disable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs) -> None:
        """transformers' older name for `activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    # ---- the learner state: PEFT's get_peft_model_state_dict -------------------------------

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

    # ---- saving and loading -------------------------------------------------------

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
            "base_fingerprint": _base_fingerprint(self.base_model),
        }

    @staticmethod
    def read_metadata(directory: str | Path) -> dict:
        """The saved metadata, its `learner_config` checked to be a valid LearnerConfig: save_pretrained's
        learners_config.json, or the `learners_config` tensor of a Trainer's model.safetensors (state_dict())."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file() or not (Path(directory) / WEIGHTS_NAME).is_file():
            meta = _trainer_metadata(Path(directory))
            if meta is None:
                raise UsageError(f"{directory} holds no saved learners ({CONFIG_NAME} and {WEIGHTS_NAME}, or a "
                                 f"Trainer's {TRAINER_WEIGHTS_NAME} of a LearnerModel); pass the directory that "
                                 "LearnerModel.save_pretrained, learners finetune or Trainer.save_model wrote")
            path = Path(directory) / TRAINER_WEIGHTS_NAME
        else:
            meta = read_json_file(path, "learner config")
        config_from_metadata(meta, path)
        return meta

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path, is_trainable: bool = False,
                        name: str = DEFAULT_NAME) -> "LearnerModel":
        """Restore saved learners (and head, and its labels) onto `model`, the base model they were trained from.

        As in PEFT, `is_trainable=False` loads them for inference: everything frozen, the model in eval mode;
        `is_trainable=True` lets the learners and the head train. `directory` may be a hub repository id
        ("user/name", what push_to_hub wrote) that is no local path: its learners are downloaded."""
        check_argument(model, nn.Module, "model", "from_pretrained", "a transformers model (a torch.nn.Module)")
        check_argument(directory, PATH, "directory", "from_pretrained", "a path")
        saved = _SavedLearners.read(local_or_from_hub(directory, SAVED_FILES))
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

    def _load_saved(self, saved: "_SavedLearners") -> None:
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

    # ---- several learner sets on one backbone ---------------------------------------

    @property
    def learner_sets(self) -> list[str]:
        """The names of the loaded learner sets."""
        return list(self._sets)

    @property
    def active_learners(self) -> str | None:
        """The name of the learner set in use (None: the base model as it was)."""
        return self._active

    def load_learners(self, directory: str | Path, name: str, is_trainable: bool = False) -> None:
        """Add the learners saved in `directory` as set `name`, sharing this backbone: it costs only their slices
        and head. The active set stays active (as PEFT's load_adapter); `set_learners(name)` switches."""
        if not isinstance(name, str) or not name:
            raise UsageError(f"a learner set needs a non-empty name, got {name!r}")
        if name in self._sets:
            raise UsageError(f"a learner set named {name!r} is already loaded; choose another name or delete_learners it")
        check_argument(directory, PATH, "directory", "load_learners", "a path")
        saved = _SavedLearners.read(local_or_from_hub(directory, SAVED_FILES))
        saved.check_base(self.base_model)
        previous = self._active
        self._switch(None)  # new layers record the base values under their indices
        try:
            try:
                self._sets[name] = build_set(self.base_model, name, saved.config, saved.indices,
                                             head_module_paths(self.head_names))
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
            if name is not None and self._frozen_prefix()[1]:
                self.enable_frozen_prefix_cache(cache_mb)
            else:
                self._prefix_cache_mb = cache_mb  # no set, or one in the lowest block: nothing to cache for now

    # ---- merging and unloading ----------------------------------------------------

    def merge_and_unload(self, safe_merge: bool = False) -> nn.Module:
        """Write the active set's learners into their FFNs for good and return the plain transformers model with
        that set's head and labels. Non-finite learner tensors are refused; `safe_merge=True` also checks every
        weight of the merged model; either check runs before anything changes. Each parameter's requires_grad
        goes back to what it was in the model that was wrapped. Other sets are dropped."""
        if self._active is None:
            return self.unload()
        active = self._sets[self._active]
        for layer in active.layers:
            layer.sync()  # the shared weights already hold the merged values; now check them
        checked = self.base_model.named_parameters() if safe_merge else self.learner_state().items()
        check_finite(checked, "the learner model", "They cannot be merged; retrain them with a lower learning rate.")
        for path, module in active.modules.items():
            if hasattr(module, "to_linear"):
                set_submodule(self.base_model, path, module.to_linear())
        return self._release()

    def unload(self) -> nn.Module:
        """Take every learner set out, unmerged, and return the base model exactly as it was wrapped: its FFN
        weights, head and labels, and each parameter's requires_grad."""
        self._switch(None)
        return self._release()

    def _release(self) -> nn.Module:
        self.disable_frozen_prefix_cache()
        model = self.base_model
        for name, p in model.named_parameters():
            p.requires_grad_(self._base_requires_grad.get(name, False))
        self._sets, self._base_modules, self._active = {}, {}, None
        return model


@dataclass
class _SavedLearners:
    """What save_pretrained wrote in `directory`: config, per-block indices, tensors (without indices), metadata."""

    directory: Path
    config: LearnerConfig
    indices: list[torch.Tensor]
    tensors: dict[str, torch.Tensor]
    meta: dict
    weights_path: Path

    @classmethod
    def read(cls, directory: str | Path) -> "_SavedLearners":
        directory = Path(directory)
        meta = LearnerModel.read_metadata(directory)
        config = config_from_metadata(meta, directory / CONFIG_NAME)
        saved = (directory / CONFIG_NAME).is_file() and (directory / WEIGHTS_NAME).is_file()  # else a Trainer's
        weights = directory / (WEIGHTS_NAME if saved else TRAINER_WEIGHTS_NAME)
        tensors = read_safetensors(weights, "learner weights")
        tensors.pop(CONFIG_KEY, None)
        indices = _pop_indices(tensors, weights)
        return cls(directory, config, indices, tensors, meta, weights)

    def check_base(self, model: nn.Module) -> None:
        """Refuse learners whose base model fingerprint is not `model`'s."""
        if not _same_base(_base_fingerprint(model), self.meta.get("base_fingerprint")):
            raise UsageError(f"the learners in {self.directory} were trained on another base model "
                             f"({self.meta.get('base_model_name_or_path')}): its input embeddings differ from this "
                             "model's; load them on the base model they were trained from")


def _trainer_metadata(directory: Path) -> dict | None:
    """The learners_config.json content that a LearnerModel's state_dict() put in a Trainer's model.safetensors
    (None where the folder has no such file, or that file holds no learners: a whole model's weights)."""
    from safetensors import SafetensorError, safe_open

    path = directory / TRAINER_WEIGHTS_NAME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if CONFIG_KEY not in f.keys():
                return None
            raw = f.get_tensor(CONFIG_KEY)
    except (SafetensorError, OSError) as e:
        raise UsageError(f"learner weights {path} is not a readable safetensors file ({e}); it is truncated or "
                         "damaged: copy or write it again") from e
    try:
        meta = json.loads(bytes(raw.tolist()).decode())
    except (ValueError, TypeError) as e:
        raise UsageError(f"{path}: its {CONFIG_KEY} tensor is not the JSON a LearnerModel writes; it is damaged") from e
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: its {CONFIG_KEY} tensor is not the JSON a LearnerModel writes; it is damaged")
    return meta


def block_attention(blocks: list[FFNBlock]) -> list[nn.Module]:
    """The attention sublayer (the block's `attention` module: projections, dropout, output LayerNorm) of each of
    `blocks`; an FFN block without one (MobileBERT's extra FFNs) has none to give."""
    modules = [b.block.get_submodule("attention") for b in blocks if has_submodule(b.block, "attention")]
    if not modules:
        raise UsageError("attention_dropout=False / --no-attention-dropout (or the probabilities' alone): the learner "
                         "blocks of this model have no 'attention' submodule to run without dropout; leave attention "
                         "dropout on")
    return modules


def attention_core(attention: nn.Module) -> nn.Module:
    """The module inside a block's attention sublayer that computes the attention and drops out its probabilities:
    the one (the sublayer itself included) with three or more linears of its own, the query, key and value
    projections (BERT's attention.self, DistilBERT's and MPNet's q, k, v, o, DeBERTa's *_proj)."""
    for _, module in attention.named_modules():
        if sum(isinstance(child, nn.Linear) for child in module.children()) >= 3:
            return module
    raise UsageError("attention_probs_dropout=False / --no-attention-probs-dropout: no module with the query, key and "
                     f"value projections found in {type(attention).__name__}; leave it on, or use --no-attention-dropout")


def _forget_frozen_keys(module: LearnerModel, incompatible_keys) -> None:
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


def _base_fingerprint(model: nn.Module) -> list[float] | None:
    """16 values of the input embeddings at fixed positions: learners never change them, so other values mean
    another base model (None where the model has no such embeddings)."""
    try:
        weight = model.get_input_embeddings().weight
    except (AttributeError, NotImplementedError):
        return None
    if not weight.is_floating_point():
        return None
    flat = weight.detach().reshape(-1)
    positions = torch.arange(FINGERPRINT_SIZE, device=flat.device) * (flat.numel() // FINGERPRINT_SIZE)
    return [float(v) for v in flat[positions].double().cpu()]


def _same_base(ours: list[float] | None, theirs) -> bool:
    """The fingerprints agree up to a cast of the base model (bf16 moves a value by at most 0.4%)."""
    if ours is None or not isinstance(theirs, list) or len(theirs) != len(ours) or not all(
            isinstance(b, (int, float)) for b in theirs):
        return True  # nothing to compare (older files, models without input embeddings)
    scale = (sum(float(b) ** 2 for b in theirs) / len(theirs)) ** 0.5
    return all(abs(a - float(b)) <= FINGERPRINT_TOLERANCE * (abs(float(b)) + scale) for a, b in zip(ours, theirs))


def _rebuild_learner_model(cls: type, model_class: type) -> "LearnerModel":
    """An empty instance of the subclass of `cls` made for `model_class`; unpickling then sets its state."""
    return nn.Module.__new__(_learner_class(cls, model_class))


@functools.cache
def _learner_class(cls: type, model_class: type) -> type:
    """`cls` with a `forward` that calls the wrapped model and shows `model_class.forward`'s signature.

    `Trainer` reads the signature from the class (`find_labels`) and from the bound method (column pruning);
    `*args, **kwargs` alone would hide `labels` and every input. The name keeps the model's, as Trainer
    also reads the class name (e.g. "QuestionAnswering").
    """
    @functools.wraps(model_class.forward)
    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    forward.__doc__ = f"Calls the wrapped {model_class.__name__} (its signature is shown)."
    return type(f"LearnerModelFor{model_class.__name__}", (cls,), {"forward": forward, "_wraps": model_class,
                                                                    "__module__": cls.__module__})


def _pop_indices(tensors: dict, path: Path) -> list[torch.Tensor]:
    """Remove and return the integer tensors `learner_indices.0`, `.1`, ... from the loaded `tensors`."""
    count = sum(1 for k in tensors if k.startswith("learner_indices."))
    try:
        indices = [tensors.pop(f"learner_indices.{i}") for i in range(count)]
    except KeyError as e:
        raise UsageError(f"{path} lacks learner indices {e}; it is damaged") from e
    if any(idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool for idx in indices):
        raise UsageError(f"{path} holds learner indices that are not integers; it is damaged")
    return indices


def get_learner_model(model: nn.Module, config: LearnerConfig, indices: list[torch.Tensor] | None = None) -> LearnerModel:
    """Wrap `model` with learners. `magnitude` and `random` select at once; `priming` and
    `gradient` select from training batches, so pass their `indices=` (see learners.learner.selection)."""
    check_argument(model, nn.Module, "model", "get_learner_model", "a transformers model (a torch.nn.Module)")
    check_config_and_indices(config, indices, "get_learner_model", indices_optional=True)
    if indices is None:
        if config.selection == "magnitude":
            config, indices = select(model, config, magnitude_scores(model, config))
        elif config.selection == "random":
            indices = select_at_random(model, config)
        else:
            raise UsageError(
                f"selection={config.selection!r} picks neurons from training batches: prime with "
                "learners.Primer(model, config), train, then primer.reconfigure() (with a Trainer: "
                "learners.learner.trainer.prime_with_trainer); for 'gradient': config, indices = learners.learner."
                "selection.select(model, config, gradient_scores(model, config, batches)), then pass indices="
            )
    return LearnerModel(model, config, indices)


def check_config_and_indices(config, indices, where: str, indices_optional: bool = False) -> None:
    """`config` a LearnerConfig; `indices` a list of integer tensors, one per learner block (or None where allowed)."""
    check_argument(config, LearnerConfig, "config", where, "a LearnerConfig")
    if indices is None and indices_optional:
        return
    if not isinstance(indices, (list, tuple)) or not all(isinstance(i, torch.Tensor) for i in indices):
        raise UsageError(f"{where}: indices must be a list of integer tensors (one per learner block), got "
                         f"{type(indices).__name__}")

"""`LearnerModel`: injects learners into a transformers model, saves, restores and merges them.

Layout follows HF PEFT: the config is a dataclass (config.py), the layers own
the math (layer.py), and this wrapper owns injection, saving and merging.
"""

import functools
import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import UsageError, check_finite, read_json_file, read_safetensors
from .config import LearnerConfig
from .ffn import FFNBlock, find_ffn_blocks, head_parameter_names, set_submodule
from .layer import LearnerColumnLinear, LearnerRowLinear
from .selection import magnitude_scores, select, select_at_random

CONFIG_NAME = "learners_config.json"
WEIGHTS_NAME = "learners_model.safetensors"


class LearnerModel(nn.Module):
    """A transformers model whose FFNs train only their learner neurons (plus the task head).

    `LearnerModel(model, ...)` is an instance of a subclass made for `type(model)` (cached), whose
    `forward` carries the wrapped model's signature: `Trainer` keeps the dataset columns the model takes,
    finds its `labels` argument, and so computes the evaluation loss and metrics (see `_learner_class`).
    """

    _wraps: type | None = None  # the wrapped model's class, in the subclass made for it

    def __new__(cls, model: nn.Module, *args, **kwargs):
        base = cls.__bases__[0] if cls.__dict__.get("_wraps") is not None else cls
        return super().__new__(_learner_class(base, type(model)))

    def __init__(self, model: nn.Module, config: LearnerConfig, indices: list[torch.Tensor]):
        super().__init__()
        if config.layers == "auto":
            raise UsageError("layers='auto' is chosen from a selection signal: get the config with the chosen layers and "
                             "the indices from learners.learner.selection.select(model, config, scores)")
        blocks = find_ffn_blocks(model, config)
        if len(indices) != len(blocks):
            raise UsageError(f"got learner indices for {len(indices)} FFN blocks, but the model has {len(blocks)} that get learners")
        head_names = set(head_parameter_names(model))
        self.total_params = sum(p.numel() for p in model.parameters())
        self.base_model = model
        self.learner_config = config
        for p in model.parameters():
            p.requires_grad_(False)
        for block, idx in zip(blocks, indices):
            if isinstance(block.up, LearnerRowLinear):
                raise UsageError("this model already has learners; call merge_and_unload() before adding new ones")
            up = LearnerRowLinear(block.up, idx)
            down = LearnerColumnLinear(block.down, idx, train_bias=config.train_ffn_output_bias)
            set_submodule(block.block, block.up_name, up)
            set_submodule(block.block, block.down_name, down)
            if config.train_layer_norm and block.layer_norm is not None:
                block.layer_norm.requires_grad_(True)
        for name, p in model.named_parameters():
            if name in head_names:
                p.requires_grad_(True)
        self.head_names = head_names

    def __getattr__(self, name):
        """Forward unknown attributes (config, device, ...) to the wrapped model, as PEFT does."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def train(self, mode: bool = True) -> "LearnerModel":
        """As nn.Module.train; with `frozen_dropout=False` the frozen part below the lowest learner block
        (embeddings and blocks) stays in inference mode: nothing there trains, so only its dropout changes."""
        super().train(mode)
        if mode and not self.learner_config.frozen_dropout:
            for module in self.frozen_below_learners():
                module.eval()
        return self

    def frozen_below_learners(self) -> list[nn.Module]:
        """The embeddings and the transformer blocks below the lowest block that holds a learner."""
        all_blocks = find_ffn_blocks(self.base_model, replace(self.learner_config, layers="all"))
        lowest = [b.name for b in all_blocks].index(self.ffn_blocks[0].name)
        backbone = getattr(self.base_model, getattr(self.base_model, "base_model_prefix", ""), self.base_model)
        embeddings = [backbone.embeddings] if isinstance(getattr(backbone, "embeddings", None), nn.Module) else []
        return embeddings + [b.block for b in all_blocks[:lowest]]

    @property
    def ffn_blocks(self) -> list[FFNBlock]:
        return find_ffn_blocks(self.base_model, self.learner_config)

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

    # ---- saving and loading -------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write only the trained tensors (learner slices, head, options) and neuron indices, plus the config."""
        tensors = {name: p.detach().contiguous().cpu() for name, p in self.base_model.named_parameters() if p.requires_grad}
        check_finite(tensors.items(), "the learners", "Retrain them with a lower learning rate.")
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        for i, idx in enumerate(self.indices):
            tensors[f"learner_indices.{i}"] = idx.contiguous()
        save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        model_config = getattr(self.base_model, "config", None)
        meta = {
            "learner_config": self.learner_config.to_dict(),
            "base_model_name_or_path": getattr(model_config, "_name_or_path", None),
            "model_type": getattr(model_config, "model_type", None),
            "num_labels": getattr(model_config, "num_labels", None),
            "id2label": {str(k): v for k, v in (getattr(model_config, "id2label", None) or {}).items()},
            "problem_type": getattr(model_config, "problem_type", None),
        }
        (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        return out

    @staticmethod
    def read_metadata(directory: str | Path) -> dict:
        """The saved metadata, its `learner_config` checked to be a valid LearnerConfig."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file() or not (Path(directory) / WEIGHTS_NAME).is_file():
            raise UsageError(f"{directory} holds no saved learners ({CONFIG_NAME} and {WEIGHTS_NAME}); "
                             "pass the directory that LearnerModel.save_pretrained / learners finetune wrote")
        meta = read_json_file(path, "learner config")
        _learner_config(meta, path)
        return meta

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path) -> "LearnerModel":
        """Restore saved learners (and head) onto `model`, the same base model they were trained from."""
        meta = cls.read_metadata(directory)
        config = _learner_config(meta, Path(directory) / CONFIG_NAME)
        tensors = read_safetensors(Path(directory) / WEIGHTS_NAME, "learner weights")
        indices = _pop_indices(tensors, Path(directory) / WEIGHTS_NAME)
        try:
            learner_model = cls(model, config, indices)
        except (ValueError, IndexError) as e:
            if isinstance(e, UsageError):
                raise
            raise UsageError(f"the learner indices in {Path(directory) / WEIGHTS_NAME} do not fit this model: {e}") from e
        params = dict(learner_model.base_model.named_parameters())
        unknown = sorted(set(tensors) - set(params))
        if unknown:
            raise UsageError(f"saved learners do not fit this base model (unknown tensors {unknown[:3]}...); "
                             f"load them on the model they were trained from: {meta.get('base_model_name_or_path')}")
        missing = sorted(n for n, p in params.items() if p.requires_grad and n not in tensors)
        if missing:
            raise UsageError(f"{Path(directory) / WEIGHTS_NAME} lacks trained tensors {missing[:3]}; it is incomplete")
        with torch.no_grad():
            for name, value in tensors.items():
                if params[name].shape != value.shape:
                    raise UsageError(f"saved tensor {name} has shape {tuple(value.shape)} but the base model's is "
                                     f"{tuple(params[name].shape)}; use the base model the learners were trained from")
                params[name].copy_(value)
        return learner_model

    # ---- merging ------------------------------------------------------------------

    def merge_and_unload(self) -> nn.Module:
        """Write the learners back into their FFNs and return the plain transformers model."""
        check_finite(self.base_model.named_parameters(), "the learner model",
                     "They cannot be merged; retrain them with a lower learning rate.")
        for block in self.ffn_blocks:
            set_submodule(block.block, block.up_name, block.up.to_linear())
            set_submodule(block.block, block.down_name, block.down.to_linear())
        model = self.base_model
        for p in model.parameters():
            p.requires_grad_(True)
        return model


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


def _learner_config(meta: dict, path: Path) -> LearnerConfig:
    """The LearnerConfig saved in `meta`; unknown keys or bad values are a UsageError naming the file."""
    saved = meta.get("learner_config")
    if not isinstance(saved, dict):
        raise UsageError(f"{path} has no learner_config object; it is damaged or not from learners")
    try:
        return LearnerConfig.from_dict(saved)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from e
    except (TypeError, ValueError) as e:
        raise UsageError(f"{path} is not a valid learner config ({e}); it is damaged or from another version") from e


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

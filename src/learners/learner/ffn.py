"""Finding the feed-forward networks (and the task head) inside a transformers model."""

import re
from dataclasses import dataclass

from torch import nn

from ..errors import UsageError
from .config import FFN_MODULES, LearnerConfig


@dataclass
class FFNBlock:
    """One transformer block's FFN: `up` is W1 (m x d), `down` is W2 (d x m)."""

    name: str  # the block's module name, e.g. "bert.encoder.layer.3"
    block: nn.Module
    up_name: str
    down_name: str
    layer_norm_name: str | None

    @property
    def up(self) -> nn.Module:
        return self.block.get_submodule(self.up_name)

    @property
    def down(self) -> nn.Module:
        return self.block.get_submodule(self.down_name)

    @property
    def layer_norm(self) -> nn.Module | None:
        return self.block.get_submodule(self.layer_norm_name) if self.layer_norm_name else None

    @property
    def width(self) -> int:
        return self.up.out_features


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path `name` under `root` (used to swap FFN/adapter layers in and out)."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _linear_listing(model: nn.Module) -> str:
    """The model's Linear modules, with layer numbers folded into '*', for error messages."""
    seen = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            seen.setdefault(re.sub(r"\.\d+\.", ".*.", name), (module.out_features, module.in_features))
    return "; ".join(f"{n} ({o}x{i})" for n, (o, i) in seen.items())


def find_ffn_blocks(model: nn.Module, config: LearnerConfig) -> list[FFNBlock]:
    """The FFN blocks that get learners under `config.layers`, in encoder order ("auto": all of them)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if config.ffn_modules is not None:
        up_name, down_name = config.ffn_modules
        layer_norm_name = config.layer_norm_module
    elif model_type in FFN_MODULES:
        up_name, down_name, layer_norm_name = FFN_MODULES[model_type]
        layer_norm_name = config.layer_norm_module or layer_norm_name
    else:
        raise UsageError(
            f"learners does not know where the FFN is in model type {model_type!r}. Its Linear modules are: "
            f"{_linear_listing(model)}. Name the FFN pair relative to a transformer block, e.g. "
            "LearnerConfig(ffn_modules=('intermediate.dense', 'output.dense')) or --ffn-modules intermediate.dense,output.dense"
        )
    blocks = []
    for name, module in model.named_modules():
        try:
            up, down = module.get_submodule(up_name), module.get_submodule(down_name)
        except AttributeError:
            continue
        if not (_is_linear_like(up) and _is_linear_like(down)) or up.out_features != down.in_features:
            continue
        blocks.append(FFNBlock(name, module, up_name, down_name, layer_norm_name))
    if not blocks:
        raise UsageError(
            f"no FFN pair {up_name!r} -> {down_name!r} found in the model. Its Linear modules are: {_linear_listing(model)}. "
            "Pass the names of the FFN's two linears relative to a transformer block with ffn_modules= / --ffn-modules"
        )
    return [blocks[i] for i in config.layer_positions(len(blocks))]


def _is_linear_like(module: nn.Module) -> bool:
    return hasattr(module, "in_features") and hasattr(module, "out_features")


def head_parameter_names(model: nn.Module) -> list[str]:
    """Parameters of the task head: everything outside the backbone, plus the backbone's pooler.

    BERT's head is its pooler + classifier; RoBERTa's is classifier.dense + out_proj;
    DistilBERT's is pre_classifier + classifier. Counting BERT's pooler as head makes
    the three families train the same two-layer head.
    """
    prefix = getattr(model, "base_model_prefix", "")
    has_head = bool(prefix) and hasattr(model, prefix)  # False for a bare backbone
    pooler = f"{prefix}.pooler." if has_head else "pooler."
    names = []
    for name, _ in model.named_parameters():
        in_backbone = not has_head or name.startswith(prefix + ".")
        if not in_backbone or name.startswith(pooler):
            names.append(name)
    return names

"""Finding the feed-forward networks (and the task head) inside a transformers model."""

import re
from dataclasses import dataclass

from torch import nn

from ..errors import UsageError
from .config import FFN_MODULES


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


# A BERT block's modules, relative to it. Many encoders keep these names under a model type of their own
# (ERNIE, RoFormer, Data2Vec-text, MegatronBERT, BigBird, Nezha, ...): BERT's entries in the tables apply to them.
BERT_BLOCK_MODULES = ("attention.self.query", "attention.self.value", "attention.output.dense", "intermediate.dense",
                      "output.dense")


def layout_type(model: nn.Module) -> str | None:
    """The model type to look `model` up by in tables keyed by model type (FFN_MODULES, LoRA's targets, the
    adapters' sites): its own `config.model_type` when FFN_MODULES has it, "bert" when its blocks keep BERT's
    module names, else its own type (which the tables lack)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in FFN_MODULES:
        return model_type
    for _, module in model.named_modules():
        if all(has_submodule(module, name) for name in BERT_BLOCK_MODULES):
            return "bert"
    return model_type


def has_submodule(root: nn.Module, name: str) -> bool:
    try:
        root.get_submodule(name)
    except AttributeError:
        return False
    return True


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


def locate_ffn_blocks(model: nn.Module, ffn_modules: tuple[str, str] | None = None,
                      layer_norm_module: str | None = None) -> list[FFNBlock]:
    """Every FFN block of `model`, in encoder order: found by the module names of its model type (FFN_MODULES), or
    by `ffn_modules` (W1's and W2's names relative to a block) and `layer_norm_module` where given. Where the
    learners go among them is the plan's business (plan.py)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = FFN_MODULES.get(layout_type(model))
    if ffn_modules is not None:
        up_name, down_name = ffn_modules
        table_layer_norm = known[2] if known and tuple(known[:2]) == (up_name, down_name) else None
    elif known:
        up_name, down_name, table_layer_norm = known
    else:
        raise UsageError(
            f"learners does not know where the FFN is in model type {model_type!r}. Its Linear modules are: "
            f"{_linear_listing(model)}. Name the FFN pair relative to a transformer block, e.g. "
            "LearnerConfig(ffn_modules=('intermediate.dense', 'output.dense')) or --ffn-modules intermediate.dense,output.dense"
        )
    pairs, mismatched = [], []  # (block name, block module) of every matching FFN
    for name, module in model.named_modules():
        try:
            up, down = module.get_submodule(up_name), module.get_submodule(down_name)
        except AttributeError:
            continue
        if not (_is_linear_like(up) and _is_linear_like(down)):
            continue
        if up.out_features != down.in_features:
            mismatched.append(f"{join(name, up_name)} has {up.out_features} outputs, {join(name, down_name)} {down.in_features} inputs")
            continue
        for linear_name, linear in ((up_name, up), (down_name, down)):
            if getattr(linear, "bias", None) is None:
                raise UsageError(f"{join(name, linear_name)} has no bias, and learners train a slice of each FFN "
                                 "linear's bias: FFNs without biases are not supported")
        pairs.append((name, module))
    if not pairs:
        why = (f" Two linears have these names but are not an FFN pair ({mismatched[0]}); a gated FFN (GLU, as in "
               "ModernBERT), whose W1 makes two halves, is not supported." if mismatched else "")
        raise UsageError(
            f"no FFN pair {up_name!r} -> {down_name!r} found in the model.{why} Its Linear modules are: {_linear_listing(model)}. "
            "Pass the names of the FFN's two linears relative to a transformer block with ffn_modules= / --ffn-modules"
        )
    if table_layer_norm and not has_submodule(pairs[0][1], table_layer_norm):
        table_layer_norm = None  # BERT's names without BERT's output LayerNorm (a pre-LN block, as MegatronBERT's)
    layer_norm_name = layer_norm_module or table_layer_norm or _norm_beside(pairs[0][1], down_name)
    for name, module in pairs:
        if layer_norm_name is not None:
            try:
                module.get_submodule(layer_norm_name)
            except AttributeError:
                raise UsageError(f"{join(name, layer_norm_name)} does not exist: name the block's output LayerNorm "
                                 "relative to the block (the third --ffn-modules name, or layer_norm_module=)") from None
    return [FFNBlock(name, module, up_name, down_name, layer_norm_name) for name, module in pairs]


def _norm_beside(block: nn.Module, down_name: str) -> str | None:
    """The one norm module (LayerNorm or the like, with parameters) among W2's siblings, e.g. BERT's
    output.LayerNorm beside output.dense, ALBERT's full_layer_layer_norm beside ffn_output; None if none or several."""
    norms = norms_beside(block, down_name)
    return norms[0] if len(norms) == 1 else None


def norms_beside(block: nn.Module, down_name: str) -> list[str]:
    """The norm modules with parameters among W2's siblings, named relative to the block."""
    parent_name = down_name.rpartition(".")[0]
    parent = block.get_submodule(parent_name) if parent_name else block
    return [join(parent_name, name) for name, child in parent.named_children()
            if "norm" in type(child).__name__.lower() and any(True for _ in child.parameters(recurse=False))]


def join(*parts: str) -> str:
    """A dotted module path from parts, skipping empty ones (a block may be the model itself)."""
    return ".".join(p for p in parts if p)


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

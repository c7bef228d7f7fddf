"""Bottleneck adapters (Houlsby et al., 2019): small residual MLPs inside every transformer block.

Each adapter is `h + up(act(down(h)))` with `down` d -> size and `up` size -> d. Two per block,
as in Houlsby et al.: one on the attention sublayer's output projection and one on the FFN's
output projection, before the residual connection and the block's LayerNorm
(BERT/RoBERTa `attention.output.dense` and `output.dense`, DistilBERT `attention.out_lin` and
`ffn.lin2`). The adapter wraps that projection, so dropout (a no-op in eval) follows the adapter.
`up` starts at zero, so the model starts exactly as the pre-trained one.

Why not the `adapters` library: version 1.3 pins transformers ~=4.57 and this project runs
transformers 5; PEFT has no bottleneck adapter. This file is the whole implementation.

Adapters cannot be merged into the weights. `learners finetune` writes OUT/model as the plain
transformers model without adapters (trained LayerNorms and head included; its files hold no
adapter keys, so plain loading is clean) and the adapters beside it (`adapters.safetensors`,
`adapters_config.json`); `learners predict` (predict.load_finetuned) puts them back in.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ...errors import UsageError, first_line, read_json_file, read_safetensors
from ...learner.ffn import has_submodule, layout_type, locate_ffn_blocks, set_submodule
from .base import Method

CONFIG_NAME = "adapters_config.json"
WEIGHTS_NAME = "adapters.safetensors"
DEFAULT_SIZE = 64

# The attention sublayer's output projection relative to a block, by `config.model_type`
# (the FFN's output projection comes from learners.learner.config.FFN_MODULES).
ATTENTION_OUTPUT = {
    "bert": "attention.output.dense",
    "roberta": "attention.output.dense",
    "xlm-roberta": "attention.output.dense",
    "camembert": "attention.output.dense",
    "electra": "attention.output.dense",
    "mpnet": "attention.attn.o",
    "deberta": "attention.output.dense",
    "deberta-v2": "attention.output.dense",
    "distilbert": "attention.out_lin",
}


class BottleneckAdapter(nn.Module):
    """h -> h + up(gelu(down(h))); `up` is zero at the start, so the adapter starts as the identity."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.down = nn.Linear(dim, size)
        self.act = nn.GELU()
        self.up = nn.Linear(size, dim)
        nn.init.normal_(self.down.weight, std=1e-2)  # Houlsby et al.: near-zero Gaussian, std 1e-2
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class AdapterLinear(nn.Module):
    """A (frozen) sublayer output projection followed by its adapter: adapter(linear(x))."""

    def __init__(self, linear: nn.Linear, size: int):
        super().__init__()
        self.linear = linear
        self.adapter = BottleneckAdapter(linear.out_features, size).to(linear.weight.device, linear.weight.dtype)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.linear(x))


def adapter_sites(model: nn.Module) -> list[str]:
    """Module names of the projections that get an adapter: attention output and FFN output of every block."""
    model_type = layout_type(model)
    if model_type not in ATTENTION_OUTPUT:
        raise UsageError(f"adapters support model types {', '.join(ATTENTION_OUTPUT)} and encoders with BERT's module "
                         f"names; got {model_type!r}")
    sites = []
    for block in locate_ffn_blocks(model):
        prefix = f"{block.name}." if block.name else ""
        if has_submodule(block.block, ATTENTION_OUTPUT[model_type]):  # MobileBERT's extra FFNs have no attention
            sites.append(prefix + ATTENTION_OUTPUT[model_type])
        sites.append(prefix + block.down_name)
    return sites


def add_adapters(model: nn.Module, size: int, sites: list[str] | None = None) -> list[str]:
    """Wrap each site's projection with an adapter of bottleneck `size`; returns the sites."""
    sites = adapter_sites(model) if sites is None else sites
    for name in sites:
        linear = model.get_submodule(name)
        if isinstance(linear, AdapterLinear):
            raise UsageError(f"{name} already has an adapter")
        set_submodule(model, name, AdapterLinear(linear, size))
    return sites


def adapter_modules(model: nn.Module) -> dict[str, AdapterLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def remove_adapters(model: nn.Module) -> nn.Module:
    """Put the plain projections back (the adapters are dropped; save them first)."""
    for name, module in adapter_modules(model).items():
        set_submodule(model, name, module.linear)
    return model


def save_adapters(model: nn.Module, directory: str | Path) -> Path:
    """Write the adapter weights (keyed by site) and their config into `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    modules = adapter_modules(model)
    if not modules:
        raise UsageError("the model has no adapters to save")
    tensors = {f"{site}.{k}": v.detach().contiguous().cpu()
               for site, m in modules.items() for k, v in m.adapter.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    size = next(iter(modules.values())).adapter.down.out_features
    meta = {"adapter": "houlsby-bottleneck", "bottleneck_size": size, "non_linearity": "gelu",
            "model_type": getattr(getattr(model, "config", None), "model_type", None), "sites": list(modules)}
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return out


def has_adapters(directory: str | Path) -> bool:
    return (Path(directory) / CONFIG_NAME).is_file()


def load_adapters(model: nn.Module, directory: str | Path) -> nn.Module:
    """Insert the adapters saved in `directory` (save_adapters) into `model` and load their weights."""
    directory = Path(directory)
    if not (directory / WEIGHTS_NAME).is_file():
        raise UsageError(f"{directory} has {CONFIG_NAME} but no {WEIGHTS_NAME}; the adapter weights are missing")
    meta = read_json_file(directory / CONFIG_NAME, "adapter config")
    try:
        add_adapters(model, int(meta["bottleneck_size"]), list(meta["sites"]))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise UsageError(f"the adapters in {directory} do not fit this model ({type(e).__name__}: {e})") from e
    tensors = read_safetensors(directory / WEIGHTS_NAME, "adapter weights")
    modules = adapter_modules(model)
    try:
        with torch.no_grad():
            for site, module in modules.items():
                state = {k: tensors.pop(f"{site}.{k}") for k in module.adapter.state_dict()}
                module.adapter.load_state_dict(state)
    except (KeyError, RuntimeError) as e:
        raise UsageError(f"{directory / WEIGHTS_NAME} does not match its {CONFIG_NAME} ({first_line(e)})") from e
    if tensors:
        raise UsageError(f"{directory / WEIGHTS_NAME} holds tensors for no adapter site: {sorted(tensors)[:3]}")
    return model


class BottleneckAdapters(Method):
    """Trains the adapters (two per block, bottleneck `size`, default 64), every LayerNorm of the
    model (embeddings LayerNorm included, as Houlsby et al. train the layer norms) and the task head
    (`head_parameter_names`). All pre-trained weight matrices and biases are frozen.
    """

    name = "adapter"
    default_learning_rate = 1e-3
    default_lr_scheduler = "constant"
    default_weight_decay = 0.0

    def __init__(self, options: dict | None = None):
        super().__init__(options)
        unknown = set(self.options) - {"bottleneck_size"}
        if unknown:
            raise UsageError(f"unknown adapter option(s) {sorted(unknown)}; known: bottleneck_size")
        size = self.options.get("bottleneck_size")
        self.size = DEFAULT_SIZE if size is None else size
        if not (isinstance(self.size, int) and self.size >= 1):
            raise UsageError(f"--adapter-size must be a positive integer, got {self.size}")
        self.total_params = 0

    def check(self, model: nn.Module) -> None:
        adapter_sites(model)  # the model type has known adapter sites

    def prepare(self, model: nn.Module, batches) -> nn.Module:
        super().prepare(model, batches)
        self.total_params = sum(p.numel() for p in model.parameters())
        model.requires_grad_(False)
        add_adapters(model, self.size)
        for module in model.modules():
            if isinstance(module, (BottleneckAdapter, nn.LayerNorm)):
                module.requires_grad_(True)
        for name, p in model.named_parameters():
            if name in self.head_names:
                p.requires_grad_(True)
        return model

    def parameter_counts(self, model: nn.Module) -> dict[str, int]:
        """encoder: adapters + LayerNorms; head: the task head; total: the base model without adapters."""
        counts = super().parameter_counts(model)
        return {**counts, "total": self.total_params or counts["total"]}

    def save_extra(self, model: nn.Module, output_dir: Path) -> dict:
        """The adapters go into OUT/model beside the plain model, where `learners predict` finds them."""
        directory = save_adapters(model, output_dir / "model")
        return {"adapter_sites": len(adapter_modules(model)),
                "adapters_checkpoint_bytes": (directory / WEIGHTS_NAME).stat().st_size}

    def plain_model(self, model: nn.Module) -> nn.Module:
        """The plain transformers model WITHOUT the adapters (trained LayerNorms and head included):
        what OUT/model's weights hold. Adapters cannot merge; save_extra writes them beside it."""
        remove_adapters(model)
        model.requires_grad_(True)
        return model

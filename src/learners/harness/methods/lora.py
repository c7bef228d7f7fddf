"""LoRA (Hu et al., 2022) through HF PEFT: low-rank updates of the attention projections, plus the head.

A targeted linear `W` (d_out x d_in) becomes `W x + (alpha / r) * B A dropout(x)` with
`A` (r x d_in, random) and `B` (d_out x r, zero), so the model starts unchanged. At the end
`merge_and_unload()` folds `B A` into `W`: a plain transformers model without overhead.
"""

import warnings
from pathlib import Path

from torch import nn

from ...errors import UsageError
from ...learner.ffn import layout_type
from .base import Method

# Default LoRA targets by `config.model_type`: query and value projections, as in the LoRA paper.
TARGET_MODULES = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "camembert": ("query", "value"),
    "electra": ("query", "value"),
    "mpnet": ("attn.q", "attn.v"),
    "deberta": ("in_proj",),  # DeBERTa v1 projects query, key and value with one linear
    "deberta-v2": ("query_proj", "value_proj"),
    "distilbert": ("q_lin", "v_lin"),
}
DEFAULTS = {"rank": 8, "alpha": 16.0, "dropout": 0.1, "target_modules": None}


def head_modules(model: nn.Module, head_names: set[str]) -> list[str]:
    """The shallowest modules that hold only head parameters, e.g. ["bert.pooler", "classifier"]."""
    all_names = [n for n, _ in model.named_parameters()]
    modules = []
    for name in sorted(head_names):
        parts = name.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if all(n in head_names for n in all_names if n.startswith(prefix + ".")):
                if prefix not in modules:
                    modules.append(prefix)
                break
    return modules


class LoRA(Method):
    """Trains the LoRA matrices A and B of each targeted linear (default: the attention query and
    value projections of every block, `query`/`value` in BERT/RoBERTa, `q_lin`/`v_lin` in DistilBERT)
    and the whole task head (`head_parameter_names`, BERT's pooler included, as PEFT
    `modules_to_save`). Everything else, the targeted weights and their biases included, is frozen.

    Options: `rank` r (8), `alpha` (16; the update is scaled by alpha / r), `dropout` on the LoRA
    input (0.1), `target_modules` (module name suffixes; default by model type).
    """

    name = "lora"
    default_learning_rate = 5e-4
    default_lr_scheduler = "constant"
    default_weight_decay = 0.0

    def __init__(self, options: dict | None = None):
        super().__init__(options)
        unknown = set(self.options) - set(DEFAULTS)
        if unknown:
            raise UsageError(f"unknown LoRA option(s) {sorted(unknown)}; known: {', '.join(DEFAULTS)}")
        opts = {**DEFAULTS, **{k: v for k, v in self.options.items() if v is not None}}
        if not (isinstance(opts["rank"], int) and opts["rank"] >= 1):
            raise UsageError(f"--lora-rank must be a positive integer, got {opts['rank']}")
        if not opts["alpha"] > 0:
            raise UsageError(f"--lora-alpha must be positive, got {opts['alpha']}")
        if not 0 <= opts["dropout"] < 1:
            raise UsageError(f"--lora-dropout must be in [0, 1), got {opts['dropout']}")
        if isinstance(opts["target_modules"], str):
            opts["target_modules"] = [m.strip() for m in opts["target_modules"].split(",") if m.strip()]
        self.rank, self.alpha, self.dropout = opts["rank"], float(opts["alpha"]), float(opts["dropout"])
        self.target_modules = list(opts["target_modules"]) if opts["target_modules"] else None
        self.total_params = 0
        self.head_params = 0

    def targets(self, model: nn.Module) -> list[str]:
        """The LoRA target module suffixes for `model`; each must name at least one of its modules."""
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        defaults = TARGET_MODULES.get(layout_type(model), ())
        targets = self.target_modules or list(defaults)
        if not targets:
            raise UsageError(f"no default LoRA target modules for model type {model_type!r}; "
                             "name them with --lora-target-modules, e.g. query,value")
        names = [n for n, _ in model.named_modules()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise UsageError(f"--lora-target-modules {','.join(missing)} name no module of this {model_type} model; "
                             f"use module name suffixes such as {','.join(defaults or ('query', 'value'))}")
        return targets

    def check(self, model: nn.Module) -> None:
        self.targets(model)

    def prepare(self, model: nn.Module, batches) -> nn.Module:
        from peft import LoraConfig, TaskType, get_peft_model

        super().prepare(model, batches)
        targets = self.targets(model)
        sizes = {n: p.numel() for n, p in model.named_parameters()}
        self.total_params = sum(sizes.values())
        self.head_params = sum(sizes[n] for n in self.head_names)
        token = type(model).__name__.endswith("ForTokenClassification")  # a tag per token (token_data.py)
        config = LoraConfig(task_type=TaskType.TOKEN_CLS if token else TaskType.SEQ_CLS, r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=targets, modules_to_save=head_modules(model, self.head_names))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                peft_model = get_peft_model(model, config)
        except ValueError as e:
            raise UsageError(f"LoRA target modules {targets} do not fit this model: {str(e).splitlines()[0]}") from e
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        lora = self.parameter_counts(peft_model)["encoder"]
        if trainable != lora + self.head_params:
            raise UsageError(f"LoRA set-up trains {trainable} parameters, expected the LoRA matrices ({lora}) "
                             f"and the task head ({self.head_params}); check --lora-target-modules")
        return peft_model

    def parameter_counts(self, model: nn.Module) -> dict[str, int]:
        """encoder: the LoRA matrices; head: the task head; total: the base model (no PEFT copies)."""
        lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n)
        return {"encoder": lora, "head": self.head_params, "trainable": lora + self.head_params,
                "total": self.total_params}

    def save_extra(self, model: nn.Module, output_dir: Path) -> dict:
        """OUT/lora: PEFT's own checkpoint (LoRA matrices, head, adapter_config.json)."""
        lora_dir = output_dir / "lora"
        model.save_pretrained(lora_dir)
        size = sum(f.stat().st_size for f in lora_dir.iterdir() if f.is_file())
        return {"lora_dir": str(lora_dir), "lora_checkpoint_bytes": size}

    def plain_model(self, model: nn.Module) -> nn.Module:
        """Fold B A into each targeted weight and put the trained head in place: a plain transformers model."""
        plain = model.merge_and_unload()
        for p in plain.parameters():
            p.requires_grad_(True)
        return plain

"""`LearnerModel`: a transformers model whose FFNs train only their learner neurons (plus the task head).

Layout follows HF PEFT: the config is a dataclass (config.py), where the learners go is a plan (plan.py), the
layers own the math (layer.py, kept current by weight_sync.py), a learner set is what one task adds (sets.py).
The wrapper's jobs, a file each: wrapping, forward, train/eval modes, merging and unloading (here); the
Trainer-facing signature (signature.py); the learner state, saving and loading (saving.py); several learner sets
on one backbone (sets.py); the frozen-prefix cache's plumbing (prefix_cache.py). docs/design.md names the
mechanisms a maintainer must know, and the tests that guard them.
"""

import torch
from torch import nn

from ..errors import UsageError, check_argument, check_finite
from .config import LearnerConfig
from .ffn import FFNBlock, has_submodule, head_parameter_names, set_submodule
from .forwarding import FORWARDED, not_forwarded
from .plan import LearnerPlan, plan_learners
from .prefix_cache import FrozenPrefixCache, PrefixCacheMixin
from .saving import DEFAULT_NAME, LearnerSavingMixin, forget_frozen_keys
from .selection import magnitude_scores, random_indices, select
from .sets import LearnerSet, LearnerSetsMixin, build_set, head_module_paths, read_labels
from .signature import learner_class, rebuild_learner_model


class LearnerModel(LearnerSavingMixin, LearnerSetsMixin, PrefixCacheMixin, nn.Module):
    """A transformers model whose FFNs train only their learner neurons (plus the task head).

    `LearnerModel(model, ...)` is an instance of a subclass made for `type(model)` (cached), whose
    `forward` carries the wrapped model's signature: `Trainer` keeps the dataset columns the model takes,
    finds its `labels` argument, and so computes the evaluation loss and metrics (see signature.py).
    The learners passed here are the set `name`; `load_learners` adds more, `set_learners` switches.
    """

    _wraps: type | None = None  # the wrapped model's class, in the subclass made for it

    def __new__(cls, model: nn.Module, *args, **kwargs):
        check_argument(model, nn.Module, "model", cls.__name__, "a transformers model (a torch.nn.Module)")
        base = cls.__bases__[0] if cls.__dict__.get("_wraps") is not None else cls
        return super().__new__(learner_class(base, type(model)))

    def __reduce_ex__(self, protocol):
        """Pickling (`torch.save(model)`, multiprocessing) and copying: the subclass made for the wrapped
        model's class cannot be found by name on load, so the load makes it again (signature.py)."""
        return rebuild_learner_model, (type(self).__bases__[0], self._wraps), self.__dict__

    def __init__(self, model: nn.Module, config: LearnerConfig, indices: list[torch.Tensor], name: str = DEFAULT_NAME,
                 plan: LearnerPlan | None = None):
        """`plan`: `config`'s plan on `model` where the caller made one already (get_learner_model, Primer), so the
        FFN blocks are located once; by default it is made here."""
        check_config_and_indices(config, indices, "LearnerModel")
        plan = plan_learners(model, config) if plan is None else check_plan(plan, model, config)
        if not (config.attention_dropout and config.attention_probs_dropout):  # an error now, before the model changes,
            for attention in block_attention(plan.learner_blocks):  # if its blocks have no such modules
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
        self.register_load_state_dict_post_hook(forget_frozen_keys)
        learner_set = build_set(model, name, plan, indices, head_module_paths(self.head_names))
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

    @property
    def plan(self) -> LearnerPlan | None:
        """The active learner set's plan: the model's FFN blocks and which of them hold learners (None while no set
        is active)."""
        return self._sets[self._active].plan if self._active is not None else None

    @property
    def learner_config(self) -> LearnerConfig | None:
        """The active learner set's config (None while no set is active)."""
        return self._sets[self._active].config if self._active is not None else None

    @property
    def ffn_blocks(self) -> list[FFNBlock]:
        return self.plan.learner_blocks if self._active is not None else []

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


def get_learner_model(model: nn.Module, config: LearnerConfig, indices: list[torch.Tensor] | None = None) -> LearnerModel:
    """Wrap `model` with learners. `magnitude` and `random` select at once; `priming` and
    `gradient` select from training batches, so pass their `indices=` (see learners.learner.selection)."""
    check_argument(model, nn.Module, "model", "get_learner_model", "a transformers model (a torch.nn.Module)")
    check_config_and_indices(config, indices, "get_learner_model", indices_optional=True)
    plan = None
    if indices is None:
        plan = plan_learners(model, config)
        if config.selection == "magnitude":
            plan, indices = select(plan, magnitude_scores(plan))
            config = plan.config
        elif config.selection == "random":
            indices = random_indices(plan)
        else:
            raise UsageError(
                f"selection={config.selection!r} picks neurons from training batches: prime with "
                "learners.Primer(model, config), train, then primer.reconfigure() (with a Trainer: "
                "learners.learner.trainer.prime_with_trainer); for 'gradient': indices = learners.learner.selection."
                "select_by_gradient(model, config, batches), then pass indices="
            )
    return LearnerModel(model, config, indices, plan=plan)


def check_plan(plan: LearnerPlan, model: nn.Module, config: LearnerConfig) -> LearnerPlan:
    """`plan`, if it is `config`'s plan on `model` (its blocks are `model`'s modules); else a UsageError."""
    check_argument(plan, LearnerPlan, "plan", "LearnerModel", "a LearnerPlan (learners.learner.plan.plan_learners)")
    if plan.config != config:
        raise UsageError("LearnerModel: plan was made for another LearnerConfig than config; pass plan_learners(model, "
                         "config), or leave plan out")
    modules = dict(model.named_modules())
    if any(modules.get(b.name) is not b.block for b in plan.blocks):
        raise UsageError("LearnerModel: plan was made for another model (its FFN blocks are not this model's "
                         "modules); pass plan_learners(model, config), or leave plan out")
    return plan


def check_config_and_indices(config, indices, where: str, indices_optional: bool = False) -> None:
    """`config` a LearnerConfig; `indices` a list of integer tensors, one per learner block (or None where allowed)."""
    check_argument(config, LearnerConfig, "config", where, "a LearnerConfig")
    if indices is None and indices_optional:
        return
    if not isinstance(indices, (list, tuple)) or not all(isinstance(i, torch.Tensor) for i in indices):
        raise UsageError(f"{where}: indices must be a list of integer tensors (one per learner block), got "
                         f"{type(indices).__name__}")

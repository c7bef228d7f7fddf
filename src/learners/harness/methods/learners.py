"""Learner modules (the method of this project): the CLI's adapter over the library.

prepare       -> random (the default), magnitude, gradient: select now and wrap; priming: a
                 `learners.learner.priming.Primer` (it snapshots what priming trains and freezes the rest).
after_priming -> `Primer.reconfigure`: select by how far neurons moved (the blocks too with layers="auto"),
                 keep the primed learner slices and head, put the rest back to pre-trained, wrap.
"""

from itertools import islice
from pathlib import Path

from torch import nn

from .. import distributed
from ...errors import UsageError
from ...learner import LearnerConfig, LearnerModel, get_learner_model
from ...learner import priming
from ...learner.plan import plan_learners
from ...learner.prefix_cache import unsupported_reason
from ...learner.priming import Primer
from ...learner.selection import gradient_scores, rank0_scores, select
from .base import Method


# The method's defaults are LearnerConfig's (learner/config.py, with the evidence for each): the CLI runs
# `LearnerConfig()` with the flags given. Only the frozen-prefix cache's memory is the harness's own.
# Options that shape the priming phase (LearnerConfig field -> CLI flag): an error without --selection priming.
PRIMING_OPTIONS = {"priming_steps": "--priming-steps", "priming_fraction": "--priming-fraction",
                   "priming_scope": "--priming-scope", "reset_after_priming": "--reset-after-priming"}
# Memory for the frozen-prefix cache (learner/prefix_cache.py), used when learners skip the lowest blocks and
# those run without dropout (--no-frozen-dropout; and in every evaluation). CoLA's 8.5k training sentences
# take about 0.15 GB at the default model's width; a set that does not fit is mostly computed as without it.
# On by default on the CPU only (see LearnersMethod.with_prefix_cache).
DEFAULT_PREFIX_CACHE_MB = 2048


def without_cache_when_compiled(options: dict, compile: bool) -> dict:
    """Learners options for a compiled run: the frozen-prefix cache off unless asked for (it works per example in
    Python, hooks and all, so a compiled step would be traced again and again: a tiny model's step took seconds).
    Asked for by size together with --compile, it is an error."""
    if not compile:
        return options
    if (options.get("frozen_prefix_cache_mb") or 0) > 0:
        raise UsageError("--compile and --frozen-prefix-cache-mb do not go together: the cache's per-example work "
                         "would make torch.compile trace the step again and again; drop one of them")
    if options.get("frozen_prefix_cache_mb") is None:
        distributed.log("learners: frozen-prefix cache off with --compile (its per-example work defeats compiling)")
    return {**options, "frozen_prefix_cache_mb": 0}


class LearnersMethod(Method):
    name = "learners"
    default_learning_rate = 1e-3

    def __init__(self, options: dict | None = None):
        super().__init__(options)
        options = {k: v for k, v in (options or {}).items() if v is not None}
        if "layer_coverage" in options and options.get("layers") != "auto":
            raise UsageError(f"--layer-coverage sets how many blocks --learner-layers auto picks, but --learner-layers is "
                             f"{options.get('layers', LearnerConfig().layers)!r}: drop it, or use --learner-layers auto")
        self.prefix_cache_asked = options.get("frozen_prefix_cache_mb", 0) > 0  # by the user, not by default
        self.prefix_cache_mb = options.pop("frozen_prefix_cache_mb", DEFAULT_PREFIX_CACHE_MB)
        if not self.prefix_cache_mb >= 0:
            raise UsageError(f"--frozen-prefix-cache-mb must be 0 (off) or a positive size in MB, not {self.prefix_cache_mb}")
        self.config = LearnerConfig(**options)
        self.check_priming_flags([flag for key, flag in PRIMING_OPTIONS.items() if options.get(key) not in (None, False)])
        self.primer: Primer | None = None  # during priming
        self.layer_signal = None  # per-block sum of the priming scores, for results.json
        self.probe_signal = None  # per-block sum of the gradient probe's scores (auto layers, learner-layers scope)

    def check(self, model: nn.Module) -> None:
        """Fail before training if the learner layers or sizes do not fit `model` (the library's plan)."""
        plan_learners(model, self.config)
        reason = unsupported_reason(model)
        if self.prefix_cache_asked and reason is not None:
            raise UsageError(f"--frozen-prefix-cache-mb: {reason}; drop the option for this model")

    def prepare(self, model: nn.Module, batches) -> nn.Module:
        super().prepare(model, batches)
        config = self.config
        plan = plan_learners(model, config)
        if config.train_layer_norm and not plan.trains_layer_norm:
            distributed.log("learners: this model has no LayerNorm after its FFNs (pre-LN blocks), so none trains")
        if config.selection == "priming":
            self.primer = Primer(model, config, batches)
            self.config = self.primer.config
            if self.primer.probe_signal is not None:
                self.probe_signal = self.primer.probe_signal
                distributed.log(f"learners: blocks {self.config.layers} get learners; gradient probe signal per block "
                                f"{self.probe_signal}")
            return model
        if config.selection == "gradient":
            plan, indices = select(plan, rank0_scores(gradient_scores(model, plan,
                                                                      islice(batches, config.gradient_batches))))
            self.config = plan.config
            return self.with_prefix_cache(LearnerModel(model, self.config, indices, plan=plan))
        model = get_learner_model(model, config)
        self.config = model.learner_config
        return self.with_prefix_cache(model)

    def with_prefix_cache(self, model: LearnerModel) -> LearnerModel:
        """The frozen-prefix cache on, when there is something below the learners to cache and room for it.

        By default only on the CPU: on a GPU a small model's step is bound by kernel launches, not FLOPs, so
        filling the cache (the frozen blocks run once per example) made the first epoch's step 2.1x (MiniLM-L6,
        32 x 128) and 3.9x (BERT-base, 128 x 128) full fine-tuning's, and a cached step saved little
        (docs/journal.md#gpu-h200). Asked for by size (--frozen-prefix-cache-mb N), it is on everywhere."""
        blocks = len(model.frozen_blocks_below_learners())
        if self.prefix_cache_mb == 0 or blocks == 0:
            return model
        device = next(model.parameters()).device
        if device.type != "cpu" and not self.prefix_cache_asked:
            distributed.log(f"learners: frozen-prefix cache off on {device.type} (it pays on the CPU; on a GPU filling "
                            "it costs more than it saves); --frozen-prefix-cache-mb N turns it on")
            return model
        reason = unsupported_reason(model.base_model)
        if reason is not None:  # on by default, so not an error (check() refuses it when asked for): say why it is off
            distributed.log(f"learners: frozen-prefix cache off: {reason}")
            return model
        model.enable_frozen_prefix_cache(self.prefix_cache_mb)
        distributed.log(f"learners: frozen-prefix cache on: the {blocks} frozen block(s) below the learners run "
                        f"once per example{'' if not self.config.frozen_dropout else ' in evaluation (frozen dropout is on in training)'}, "
                        f"up to {self.prefix_cache_mb:g} MB")
        return model

    @property
    def pretrained(self) -> dict | None:
        """Priming's copy of the pre-trained values of what it trains (None outside priming)."""
        return self.primer.pretrained if self.primer is not None else None

    @property
    def primes(self) -> bool:
        return self.config.selection == "priming"

    def no_priming(self, given: list[str]) -> str:
        return (f"--selection is {self.config.selection!r}, which has none (the default selection is random, "
                "without priming): add --selection priming")

    def priming_steps(self, steps_per_epoch: int) -> int:
        if not self.primes:
            return 0
        return priming.priming_steps(self.config, steps_per_epoch)

    def after_priming(self, model: nn.Module, batches) -> nn.Module:
        """Select by priming; keep the primed learner slices (and head), put every other weight back
        (see `learners.learner.priming.Primer.reconfigure`)."""
        learner_model = self.with_prefix_cache(self.primer.reconfigure())
        self.config, self.layer_signal, self.primer = learner_model.learner_config, self.primer.layer_signal, None
        distributed.log(f"learners: blocks {self.config.layers if self.config.layers is not None else 'all'} get "
                        f"learners; priming signal per block {self.layer_signal}")
        return learner_model

    def checkpoint_state(self, model: nn.Module) -> tuple[dict, dict]:
        """The config (after selection with the chosen layers), whether selection happened, and the indices."""
        facts = {"selected": isinstance(model, LearnerModel), "config": self.config.to_dict(),
                 "layer_signal": self.layer_signal, "probe_signal": self.probe_signal}
        indices = model.indices if isinstance(model, LearnerModel) else []
        return facts, {f"indices.{i}": idx for i, idx in enumerate(indices)}

    def restore(self, model: nn.Module, batches, facts: dict, tensors: dict) -> nn.Module:
        """Before selection: prepare again (priming's snapshot of the pre-trained weights, with the saved
        config, so layers chosen by a probe are not probed again). After it: wrap the base model with
        the saved learners' config and indices; the checkpoint loads the learner slices and the head."""
        self.config = LearnerConfig.from_dict(facts["config"])
        self.layer_signal, self.probe_signal = facts["layer_signal"], facts["probe_signal"]
        if not facts["selected"]:
            return self.prepare(model, batches)
        Method.prepare(self, model, batches)
        return self.with_prefix_cache(LearnerModel(model, self.config,
                                                   [tensors[f"indices.{i}"] for i in range(len(tensors))]))

    def parameter_counts(self, model: nn.Module) -> dict[str, int]:
        if not isinstance(model, LearnerModel):  # during priming: what priming trains
            return super().parameter_counts(model)
        c = model.parameter_counts()
        return {"encoder": c["learners"], "head": c["head"], "trainable": c["trainable"], "total": c["total"]}

    def save_extra(self, model: nn.Module, output_dir: Path) -> dict:
        learners_dir = model.save_pretrained(output_dir / "learners")
        size = sum(f.stat().st_size for f in learners_dir.iterdir())
        return {"learners_dir": str(learners_dir), "learners_checkpoint_bytes": size, "selection": self.config.selection,
                "learner_layers": list(model.plan.positions),
                "learner_neurons": [int(i.numel()) for i in model.indices], "priming_layer_signal": self.layer_signal,
                "probe_layer_signal": self.probe_signal, "frozen_prefix_cache": _cache_stats(model)}

    def plain_model(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()


def _cache_stats(model: LearnerModel) -> dict | None:
    cache = model.frozen_prefix_cache
    if cache is None:
        return None
    return {"examples": len(cache.entries), "mb": round(cache.bytes / 2**20, 1), "hits": cache.hits,
            "misses": cache.misses}

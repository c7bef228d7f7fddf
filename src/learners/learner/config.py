"""`LearnerConfig`: how big the learners are, how they are chosen, where they go."""

import json
from fractions import Fraction
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from ..errors import INTEGER, NUMBER, PATH, UsageError, check_argument, read_json_file

CONFIG_NAME = "learners_config.json"  # beside the learner weights; LearnerModel.save_pretrained adds model facts
SELECTION_STRATEGIES = ("priming", "gradient", "magnitude", "random")
PRIMING_SCOPES = ("all", "ffn", "learner-layers")
# The paper's method (`LearnerConfig.primed()`): what differs from the recommended recipe, `LearnerConfig()`.
PRIMED_PRESET = {"ratio": 1 / 16, "selection": "priming", "layers": "all", "frozen_dropout": True,
                 "attention_dropout": True, "train_ffn_output_bias": False, "train_layer_norm": False}
# The type each field takes, with the words for it (None passes where the field's default is None); num_neurons,
# layers and ffn_modules take several forms and are checked by their own code.
FIELD_TYPES = {
    "ratio": (NUMBER, "a number in (0, 1]"), "selection": (str, "a string"), "priming_steps": (INTEGER, "an integer"),
    "priming_fraction": (NUMBER, "a number in (0, 1]"), "reset_after_priming": (bool, "True or False"),
    "gradient_batches": (INTEGER, "an integer"), "layer_coverage": (NUMBER, "a number in (0, 1]"),
    "priming_scope": (str, "a string"), "frozen_dropout": (bool, "True or False"),
    "attention_dropout": (bool, "True or False"), "attention_probs_dropout": (bool, "True or False"),
    "train_ffn_output_bias": (bool, "True or False"), "train_layer_norm": (bool, "True or False"),
    "layer_norm_module": (str, "a module name"), "seed": (INTEGER, "an integer"), "extra": (dict, "a dict"),
}

# FFN module names relative to a transformer block, by `config.model_type`:
# (first linear W1, second linear W2, the block's output LayerNorm).
FFN_MODULES = {
    "bert": ("intermediate.dense", "output.dense", "output.LayerNorm"),
    "roberta": ("intermediate.dense", "output.dense", "output.LayerNorm"),
    "xlm-roberta": ("intermediate.dense", "output.dense", "output.LayerNorm"),
    "camembert": ("intermediate.dense", "output.dense", "output.LayerNorm"),
    "electra": ("intermediate.dense", "output.dense", "output.LayerNorm"),
    "mpnet": ("intermediate.dense", "output.dense", "output.LayerNorm"),
    "deberta": ("intermediate.dense", "output.dense", "output.LayerNorm"),
    "deberta-v2": ("intermediate.dense", "output.dense", "output.LayerNorm"),
    "distilbert": ("ffn.lin1", "ffn.lin2", "output_layer_norm"),
}


DEFAULT_RATIO = 1 / 8  # what `ratio` becomes where neither it nor num_neurons is given


def _option(default, help: str, **kwargs):
    """A field with its default and its one-line description for users: `finetune --help` and LearnerConfig's
    docstring are written from these (`option_help`), so the CLI and the library state one set of defaults."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class LearnerConfig:
    """Configuration of Learner modules (PEFT conventions: one dataclass, saved as JSON).

    `LearnerConfig()` is the recommended recipe, the one `learners finetune` runs; `LearnerConfig.primed()` is the
    paper's method (priming). Give at most one of `ratio` (k = ceil(ratio * m) per FFN of width m) and
    `num_neurons` (one count for all learner blocks, or one per block); with neither, ratio is 1/8.
    Fields and defaults are listed below (written from the fields themselves).
    """

    # 192 of MiniLM's 1536 FFN neurons per learner block. Measured (docs/journal.md#learner-size; random neurons in
    # every block, seeds 0-2 paired): 1/8 scored above 1/16 on all four of CoLA, MRPC, RTE and STS-B (four-task mean
    # 0.639 vs 0.629) at the same step time; 1/32 lost 0.012 on seed 0.
    ratio: float | None = _option(None, "learner size as a fraction of each FFN's width", default_text=str(Fraction(DEFAULT_RATIO)))
    num_neurons: int | list[int] | None = _option(None, "learner size in neurons: one count, or one per learner block")
    # Random neurons, no priming. Measured (docs/journal.md#random-vs-priming, docs/journal.md#random-default; every
    # block, 1/16, the same seeds): as good as priming on every task (CoLA 0.251 vs 0.250 over 5 seeds; STS-B 0.857
    # vs 0.850, MRPC 0.857 vs 0.855, RTE 0.556 vs 0.556 over 3) and cheaper: no priming steps at full fine-tuning's
    # price.
    selection: str = _option("random", "how the learner neurons are chosen: random (no priming phase), priming (a short "
                             "full fine-tuning first, then the neurons that moved most), gradient or magnitude")
    priming_steps: int | None = _option(None, "with selection priming: the priming budget in optimizer steps")
    priming_fraction: float = _option(0.25, "with selection priming: the priming budget as a fraction of the first epoch")
    # After priming, learners start from their primed values (warm start) or, with this, the pre-trained ones.
    # All other encoder weights always return to pre-trained, so base model + learners + head is the model.
    reset_after_priming: bool = _option(False, "with selection priming, an ablation: start the learners from their "
                                        "pre-trained weights, not the primed ones")
    gradient_batches: int = _option(8, "batches whose accumulated gradient magnitude scores neurons (selection "
                                    "gradient, and the probe of layers auto with priming_scope learner-layers)")
    # Every block but the lowest. Measured (docs/journal.md#skip-1-default; seeds 0-2 on CoLA, MRPC, RTE and STS-B,
    # seed 0 on SST-2 10k): with the two dropout defaults below, a learner step 0.46-0.47x of full fine-tuning's,
    # five-task mean best 0.690 against full fine-tuning's 0.696, above LoRA and BitFit on each task. Every block
    # cannot get under its matmul FLOPs (0.67x); top-4 lost 0.012-0.014 on the five-task mean.
    layers: str | list[int] = _option("skip-1", "FFN blocks that get learners: skip-1 (all but the lowest; the only "
                                      "block of a one-block model), all, skip-N (all but the N lowest), top-N (the N "
                                      "blocks nearest the output), auto (chosen by the selection signal: not with "
                                      "selection random) or block numbers, e.g. 3,4,5. Nothing below the lowest learner "
                                      "block runs backward")
    layer_coverage: float = _option(0.5, "with layers auto: the fewest top blocks holding this share of the "
                                    "selection signal")
    priming_scope: str = _option("all", "with selection priming, what trains during priming: all (the whole model), "
                                 "ffn (every FFN) or learner-layers (only the learner blocks' FFNs); the head always")
    # False: the frozen blocks below the lowest learner block (and the embeddings) run in inference mode while the
    # learners train: no dropout noise there, on the CPU the fused attention kernel, and their output can be cached
    # (prefix_cache.py). Part of the default-skip-1 measurement above.
    frozen_dropout: bool = _option(False, "dropout in the frozen blocks below the lowest learner block (and the "
                                   "embeddings) while the learners train; off: inference mode there (faster, and "
                                   "their output can be cached)")
    # The learner blocks' attention sublayers are frozen too (only the FFN's slices train there); False runs them in
    # inference mode while the learners train (docs/journal.md#attention-dropout); the FFN's own dropout stays.
    attention_dropout: bool = _option(False, "dropout in the attention sublayers of the learner blocks (frozen: only "
                                      "the FFN slices train there) while the learners train; the FFN's dropout stays")
    attention_probs_dropout: bool = _option(True, "dropout on the learner blocks' attention probabilities alone (with "
                                            "attention_dropout on: off keeps the dropout after the attention's output "
                                            "projection)")
    # Measured (docs/journal.md#bias-and-layernorm; 1/8, random, every block, seeds 0-2 paired): the mean
    # best rose on every task (each rise inside the seeds' spread) at the same step time; 6,912 parameters on MiniLM.
    train_ffn_output_bias: bool = _option(True, "also train each learner block's FFN output bias b2")
    train_layer_norm: bool = _option(True, "also train each learner block's output LayerNorm, where the block has one "
                                     "after its FFN (pre-LN blocks have none)")
    # None picks them from FFN_MODULES by model type; with ffn_modules given and no LayerNorm named, it is
    # FFN_MODULES' for the same pair, else the one norm module beside W2 (see ffn.locate_ffn_blocks).
    ffn_modules: tuple[str, str] | None = _option(None, "the FFN's two linears relative to a block, and optionally "
                                                  "its output LayerNorm, e.g. intermediate.dense,output.dense(,output."
                                                  "LayerNorm): for models whose FFN is not found by itself")
    layer_norm_module: str | None = _option(None, "the block's output LayerNorm, relative to the block")
    seed: int = _option(0, "seed of random selection")
    extra: dict = _option({}, "free-form notes saved with the config")

    @classmethod
    def primed(cls, **overrides) -> "LearnerConfig":
        """The paper's method: priming (a short full fine-tuning picks each FFN's learner neurons by how far they
        moved and warm-starts them), learners in every block with dropout everywhere, 1/16 of each FFN. Fields given
        here override the preset (`num_neurons=` replaces its ratio)."""
        preset = dict(PRIMED_PRESET)
        if "num_neurons" in overrides:
            preset.pop("ratio")
        return cls(**{**preset, **overrides})

    def __post_init__(self):
        self._check_types()
        if self.ffn_modules is not None:
            self._check_ffn_modules()
        if self.ratio is not None and self.num_neurons is not None:
            raise UsageError("LearnerConfig takes one of ratio= (a fraction of the FFN width) and num_neurons=, not both")
        if self.ratio is None and self.num_neurons is None:
            self.ratio = DEFAULT_RATIO
        if not 0 < self.ratio <= 1 if self.ratio is not None else False:
            raise UsageError(f"learner ratio must be in (0, 1], got {self.ratio}; e.g. ratio=0.0625 trains 1/16 of each FFN")
        counts = self.num_neurons if isinstance(self.num_neurons, list) else [self.num_neurons]
        if self.num_neurons is not None and any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in counts):
            raise UsageError(f"num_neurons must be positive integers, got {self.num_neurons}")
        if self.selection not in SELECTION_STRATEGIES:
            raise UsageError(f"unknown selection {self.selection!r}; choose one of {', '.join(SELECTION_STRATEGIES)}")
        if self.priming_steps is not None and self.priming_steps < 1:
            raise UsageError(f"priming_steps must be >= 1, got {self.priming_steps}")
        if not 0 < self.priming_fraction <= 1:
            raise UsageError(f"priming_fraction must be in (0, 1] (a fraction of the first epoch), got {self.priming_fraction}")
        self.layers = LayerSpec.parse(self.layers).value
        if self.layers == "auto" and self.selection == "random":
            raise UsageError("learner layers 'auto' are ranked by the selection signal (priming, gradient or magnitude), "
                             "and selection 'random' has none: pick another (--selection priming), or name the layers "
                             "(all, top-N, skip-N, or block numbers)")
        if not 0 < self.layer_coverage <= 1:
            raise UsageError(f"layer_coverage must be in (0, 1], got {self.layer_coverage}")
        if self.priming_scope not in PRIMING_SCOPES:
            raise UsageError(f"unknown priming_scope {self.priming_scope!r}; choose one of {', '.join(PRIMING_SCOPES)}")
        if self.gradient_batches < 1:
            raise UsageError(f"gradient_batches must be >= 1, got {self.gradient_batches}")

    def _check_types(self) -> None:
        """Each field of the type it takes (FIELD_TYPES), so that a wrong one is an error naming it, not a
        comparison failing deep inside."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in FIELD_TYPES and not (value is None and f.default is None):
                kinds, words = FIELD_TYPES[f.name]
                check_argument(value, kinds, f.name, "LearnerConfig", words)
        if not isinstance(self.ffn_modules, (str, list, tuple, type(None))):
            raise UsageError(f"LearnerConfig: ffn_modules must be two or three module names, got {self.ffn_modules!r} "
                             f"({type(self.ffn_modules).__name__})")

    def _check_ffn_modules(self) -> None:
        """Two names (W1, W2), or three with the block's output LayerNorm, which then sets layer_norm_module."""
        names = self.ffn_modules.split(",") if isinstance(self.ffn_modules, str) else list(self.ffn_modules)
        names = [n.strip() if isinstance(n, str) else n for n in names]
        if len(names) not in (2, 3) or not all(isinstance(n, str) and n for n in names):
            raise UsageError(f"ffn_modules names the FFN's two linears relative to a transformer block, and optionally its "
                             f"output LayerNorm, e.g. intermediate.dense,output.dense or "
                             f"intermediate.dense,output.dense,output.LayerNorm; got {','.join(map(str, names))!r}")
        if len(names) == 3:
            if self.layer_norm_module not in (None, names[2]):
                raise UsageError(f"ffn_modules names the LayerNorm {names[2]!r} but layer_norm_module is "
                                 f"{self.layer_norm_module!r}; give it once")
            self.layer_norm_module = names[2]
        self.ffn_modules = tuple(names[:2])

    @property
    def layer_spec(self) -> "LayerSpec":
        return LayerSpec.parse(self.layers)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["ffn_modules"] is not None:
            d["ffn_modules"] = list(d["ffn_modules"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LearnerConfig":
        return cls(**d)

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write `learners_config.json` (key `learner_config`), keeping any other keys already in that file
        (the labels and base model that LearnerModel.save_pretrained writes)."""
        check_argument(save_directory, PATH, "save_directory", "LearnerConfig.save_pretrained", "a path")
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        path = out / CONFIG_NAME
        meta = read_json_file(path, "learner config") if path.is_file() else {}
        meta["learner_config"] = self.to_dict()
        path.write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "LearnerConfig":
        """The config in `directory/learners_config.json` (as LearnerConfig or LearnerModel.save_pretrained wrote it)."""
        check_argument(directory, PATH, "directory", "LearnerConfig.from_pretrained", "a path")
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise UsageError(f"{directory} holds no {CONFIG_NAME}; pass a directory written by save_pretrained")
        return config_from_metadata(read_json_file(path, "learner config"), path)


def config_from_metadata(meta: dict, path: Path) -> LearnerConfig:
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


@dataclass(frozen=True)
class LayerSpec:
    """Which FFN blocks get learners, as given by `LearnerConfig.layers` or `--learner-layers` (parsed in `parse`,
    the one place that reads the text): every block, "auto" (chosen by the selection signal), the top N, all
    but the lowest N, or block numbers."""

    kind: str  # "all", "auto", "top", "skip" or "list"
    count: int = 0  # N of top-N and skip-N
    blocks: tuple[int, ...] = ()  # the block numbers of "list", ascending

    @classmethod
    def parse(cls, value) -> "LayerSpec":
        """From "all", "auto", "top-N", "skip-N", block numbers ("3,4,5" or [3, 4, 5]) or None (every block)."""
        if value is None or value in ("all", "auto"):
            return cls(value or "all")
        if isinstance(value, str):
            kind, _, n = value.strip().partition("-")
            if kind in ("top", "skip") and n.isdigit() and int(n) >= (1 if kind == "top" else 0):
                return cls(kind, int(n))
            try:
                value = [int(x) for x in value.split(",") if x.strip()]
            except ValueError:
                raise UsageError(f"learner layers {value!r} not understood; use 'all', 'auto', 'top-N' (the N blocks "
                                 "nearest the output, N >= 1), 'skip-N' (all but the N lowest blocks) or block numbers "
                                 "such as 3,4,5") from None
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"LearnerConfig: layers must be 'all', 'auto', 'top-N', 'skip-N' or a list of block "
                             f"numbers, got {value!r} ({type(value).__name__})")
        if not value or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in value):
            raise UsageError(f"learner layers must be block numbers >= 0, got {list(value)}")
        if len(set(value)) != len(value):
            raise UsageError(f"learner layers must be distinct, got {list(value)}")
        return cls("list", blocks=tuple(sorted(value)))

    @property
    def value(self) -> str | list[int]:
        """The form LearnerConfig keeps and saves: the text, or the list of block numbers."""
        return list(self.blocks) if self.kind == "list" else self.kind if self.kind in ("all", "auto") else f"{self.kind}-{self.count}"

    def positions(self, num_blocks: int) -> list[int]:
        """The blocks (0-based) of `num_blocks` that get learners; "auto": every block (the candidates). skip-N
        leaves at least the top block: the default, skip-1, puts a one-block model's learners in its block."""
        if self.kind in ("all", "auto"):
            return list(range(num_blocks))
        if self.kind == "skip":
            return list(range(min(self.count, num_blocks - 1), num_blocks))
        if self.kind == "top":
            if self.count > num_blocks:
                raise UsageError(f"learner layers 'top-{self.count}' asks for {self.count} blocks, but the model has "
                                 f"{num_blocks}; use at most top-{num_blocks}")
            return list(range(num_blocks - self.count, num_blocks))
        bad = [i for i in self.blocks if i >= num_blocks]
        if bad:
            raise UsageError(f"learner layers {bad} do not exist: the model has {num_blocks} FFN blocks (0..{num_blocks - 1})")
        return list(self.blocks)


def option_help(name: str) -> str:
    """A field's description with its default, as `finetune --help` and LearnerConfig's docstring show it."""
    f = {f.name: f for f in fields(LearnerConfig)}[name]
    default = f.metadata.get("default_text", f.default)
    if isinstance(default, bool):
        default = "on" if default else "off"
    return f"{f.metadata['help']} (default {default})" if default not in (None, MISSING) else f.metadata["help"]


LearnerConfig.__doc__ += "\n" + "\n".join(f"    {f.name}: {option_help(f.name)}" for f in fields(LearnerConfig)) + "\n"

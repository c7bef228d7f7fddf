"""`LearnerConfig`: how big the learners are, how they are chosen, where they go."""

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import INTEGER, NUMBER, PATH, UsageError, check_argument, read_json_file

CONFIG_NAME = "learners_config.json"  # beside the learner weights; LearnerModel.save_pretrained adds model facts
SELECTION_STRATEGIES = ("priming", "gradient", "magnitude", "random")
PRIMING_SCOPES = ("all", "ffn", "learner-layers")
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


@dataclass
class LearnerConfig:
    """Configuration of Learner modules (PEFT conventions: a plain dataclass, saved as JSON).

    Give exactly one of `ratio` (k = ceil(ratio * m) per FFN of width m) or
    `num_neurons` (one count for all layers, or one per layer).
    """

    ratio: float | None = None
    num_neurons: int | list[int] | None = None
    selection: str = "priming"
    # Priming budget: a number of full fine-tuning steps, or a fraction of the first epoch.
    priming_steps: int | None = None
    priming_fraction: float = 0.25
    # After priming, learners start from their primed values (warm start) or, with this, the pre-trained ones.
    # All other encoder weights always return to pre-trained, so base model + learners + head is the model.
    reset_after_priming: bool = False
    # Batches whose accumulated gradient magnitude scores neurons for selection="gradient".
    gradient_batches: int = 8
    # Which FFN blocks get learners: None or "all" (every block), "top-N" (the N blocks nearest the
    # output), "skip-N" (every block but the N lowest), "auto" (chosen by the priming/gradient signal, see selection.choose_layers), or a
    # list of block positions (0-based). Nothing below the lowest learner block runs backward.
    layers: str | list[int] | None = None
    # For layers="auto": the learner blocks are the fewest top blocks that hold this share of
    # the selection signal summed over all blocks.
    layer_coverage: float = 0.5
    # What trains during priming: "all" (the whole model), "ffn" (every FFN's W1, b1, W2 and the
    # head: no gradients or optimizer state for embeddings and attention), "learner-layers" (only
    # the FFNs of the learner blocks and the head, so priming back-propagates no deeper than the
    # learner phase; with layers="auto" a gradient probe of `gradient_batches` batches, without
    # updates, chooses the blocks before priming).
    priming_scope: str = "all"
    # Dropout in the frozen blocks below the lowest learner block (and in the embeddings). False runs
    # them in inference mode while the learners train: no dropout noise there, and on the CPU the fast
    # fused attention kernel instead of the one with dropout (measured in BENCHMARKS.md).
    frozen_dropout: bool = True
    # Dropout in the attention sublayers of the learner blocks. Those are frozen as well (in a learner block only
    # the FFN's slices train, and b2 and the output LayerNorm with the options below). False runs them in inference
    # mode while the learners train; the FFN's own dropout stays. On the CPU the attention then runs the fused
    # kernel that has no dropout, as in the frozen blocks (BENCHMARKS.md 5.22).
    attention_dropout: bool = True
    # Dropout on the attention probabilities of the learner blocks only: False runs each learner block's
    # self-attention core (BERT's attention.self, DistilBERT's attention) in inference mode, so on the CPU it takes
    # the fused kernel, while the dropout after the attention's output projection stays (attention_dropout=False
    # turns that off too).
    attention_probs_dropout: bool = True
    # Also train the FFN's output bias b2 and the block's output LayerNorm.
    train_ffn_output_bias: bool = False
    train_layer_norm: bool = False
    # FFN (W1, W2) module names relative to a block (a third name sets layer_norm_module), and the output
    # LayerNorm's name; None picks them from FFN_MODULES by model type. With ffn_modules given and no LayerNorm
    # named, it is FFN_MODULES' for the same pair, else the one norm module beside W2 (see ffn.find_ffn_blocks).
    ffn_modules: tuple[str, str] | None = None
    layer_norm_module: str | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self._check_types()
        if self.ffn_modules is not None:
            self._check_ffn_modules()
        if (self.ratio is None) == (self.num_neurons is None):
            raise UsageError("LearnerConfig needs exactly one of ratio= (a fraction of the FFN width) or num_neurons=")
        if self.ratio is not None and not 0 < self.ratio <= 1:
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
        self._check_layers()
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
        if not isinstance(self.layers, (str, list, tuple, type(None))):
            raise UsageError(f"LearnerConfig: layers must be 'all', 'auto', 'top-N', 'skip-N' or a list of block "
                             f"numbers, got {self.layers!r} ({type(self.layers).__name__})")
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

    def _check_layers(self) -> None:
        layers = self.layers
        if layers is None or layers in ("all", "auto"):
            return
        if isinstance(layers, str):
            kind, _, n = layers.partition("-")
            if kind in ("top", "skip") and n.isdigit() and int(n) >= (1 if kind == "top" else 0):
                return
            raise UsageError(f"learner layers {layers!r} not understood; use 'all', 'auto', 'top-N' (the N blocks "
                             "nearest the output, N >= 1), 'skip-N' (all but the N lowest blocks) or a list of block "
                             "numbers such as 3,4,5")
        if not layers or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in layers):
            raise UsageError(f"learner layers must be block numbers >= 0, got {layers}")
        if len(set(layers)) != len(layers):
            raise UsageError(f"learner layers must be distinct, got {layers}")
        self.layers = sorted(layers)

    def layer_positions(self, num_blocks: int) -> list[int]:
        """The FFN blocks (0-based) that get learners, of `num_blocks`; "auto" gives every block (candidates)."""
        layers = self.layers
        if layers is None or layers in ("all", "auto"):
            return list(range(num_blocks))
        if isinstance(layers, str):  # "top-N" or "skip-N"
            kind, n = layers.split("-")[0], int(layers.split("-")[1])
            if kind == "skip":
                if n >= num_blocks:
                    raise UsageError(f"learner layers {layers!r} skips {n} blocks, but the model has {num_blocks}; "
                                     f"use at most skip-{num_blocks - 1}")
                return list(range(n, num_blocks))
            if n > num_blocks:
                raise UsageError(f"learner layers {layers!r} asks for {n} blocks, but the model has {num_blocks}; "
                                 f"use at most top-{num_blocks}")
            return list(range(num_blocks - n, num_blocks))
        bad = [i for i in layers if i >= num_blocks]
        if bad:
            raise UsageError(f"learner layers {bad} do not exist: the model has {num_blocks} FFN blocks (0..{num_blocks - 1})")
        return list(layers)

    def neurons_for(self, layer_position: int, ffn_width: int) -> int:
        """k for the FFN at `layer_position` (among the layers that get learners)."""
        if self.ratio is not None:
            k = math.ceil(self.ratio * ffn_width)
        elif isinstance(self.num_neurons, list):
            k = self.num_neurons[layer_position]
        else:
            k = self.num_neurons
        if k > ffn_width:
            raise UsageError(f"learner size k={k} is larger than the FFN width m={ffn_width}; use at most {ffn_width} neurons")
        return k

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

"""The training flags `finetune` and `bench` share, and which methods they mean something to (bench passes each run
the shared flags and its own method's; finetune refuses another method's).

Their own module so that both the CLI (cli.py) and the bench (bench.py) use them without importing each other."""

import argparse

from ..errors import UsageError
from ..learner.config import SELECTION_STRATEGIES, PRIMING_SCOPES, LayerSpec, option_help
from .precision import PRECISIONS


def _positive_int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _learner_layers(text: str) -> str | list[int]:
    """--learner-layers, read by the library's one parser of the layer spec (learner/config.py's LayerSpec)."""
    try:
        return LayerSpec.parse(text).value
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _method_group(p: argparse.ArgumentParser, title: str, methods: tuple[str, ...]):
    """An argument group whose flags mean something only to `methods` (see `given_training_flags`)."""
    group = p.add_argument_group(title)
    group.methods = methods
    return group


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by `finetune` and `bench` (bench passes them through to every run)."""
    p.add_argument("--model", help="HF hub id or local directory (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--data-dir", help="GLUE in its official layout, e.g. ../shared/glue (else $GLUE_DIR, else the hub)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, help="train this many steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, help="peak learning rate (default: the method's, see docs/cli.md#default-hyperparameters)")
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: the method's, see docs/cli.md#default-hyperparameters)")
    p.add_argument("--lr-scheduler", choices=["linear", "constant"], help="after warm-up (default: the method's, see docs/cli.md#default-hyperparameters)")
    p.add_argument("--max-length", type=int, help="truncate inputs to this many tokens (default 128, or the model's limit if lower)")
    p.add_argument("--pad-to-multiple-of", type=int,
                   help="pad each batch up to a multiple of this many tokens (e.g. 32: lengths 32, 64, 96, 128), so that "
                        "--compile traces a few shapes; default: to the batch's longest example")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model for the training steps (evaluation runs uncompiled); with "
                        "--pad-to-multiple-of it compiles once per length")
    p.add_argument("--eval-steps", type=int, help="evaluate every N steps (default: four times an epoch) and at the end")
    p.add_argument("--max-train-samples", type=int, help="train on a fixed random subset of this many examples")
    add_steering_arguments(p)
    p.add_argument("--mixed-precision", choices=list(PRECISIONS), default="auto",
                   help="auto (default): bf16 where the device computes it natively (CPUs with AVX512-BF16 or AMX, GPUs), "
                        "else fp32; bf16: autocast to bf16 with the frozen weights kept in bf16; fp16: GPUs only; no: fp32")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each block's activations in the backward pass instead of keeping them: less memory, "
                        "a slower step, the same results (a run may resume with it on or off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (training, tokenizing, saving)")
    _add_logging_arguments(p)
    g = _method_group(p, "priming options (--method learners --selection priming, --method far)", ("learners", "far"))
    g.add_argument("--priming-learning-rate", type=float, help="peak learning rate of the priming phase (default 1e-4)")
    g.add_argument("--learner-warmup-steps", type=int, default=0,
                   help="after priming, ramp the new learner optimizer's rate up over this many steps (default 0)")
    _add_learners_arguments(p)
    g = _method_group(p, "LoRA options (--method lora)", ("lora",))
    g.add_argument("--lora-rank", type=int, help="rank r of the update B A (default 8)")
    g.add_argument("--lora-alpha", type=float, help="scaling: the update is multiplied by alpha / r (default 16)")
    g.add_argument("--lora-dropout", type=float, help="dropout on the LoRA input (default 0.1)")
    g.add_argument("--lora-target-modules", help="linears that get LoRA, name suffixes, comma-separated "
                                                 "(default query,value; q_lin,v_lin for DistilBERT)")
    g = _method_group(p, "adapter options (--method adapter)", ("adapter",))
    g.add_argument("--adapter-size", type=int, help="bottleneck size of each adapter (default 64)")
    g = _method_group(p, "FAR options (--method far)", ("far",))
    g.add_argument("--far-ratio", type=float, help="trained output units as a fraction of each FFN linear's (default 1/8)")
    g.add_argument("--far-priming-fraction", type=float, help="priming budget as a fraction of the first epoch (default 0.25)")


def add_steering_arguments(p: argparse.ArgumentParser) -> None:
    """Early stopping, gradient accumulation and the evaluation's size."""
    p.add_argument("--early-stopping-patience", type=int,
                   help="stop once N evaluations in a row have not improved the best dev metric (the best is kept)")
    p.add_argument("--early-stopping-threshold", type=float, default=0.0,
                   help="with --early-stopping-patience: an improvement must exceed this to count (default 0)")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1,
                   help="micro-batches per optimizer step: each step trains on batch-size x N examples (a step, as "
                        "in --max-steps and --eval-steps, is an optimizer step)")
    p.add_argument("--eval-batch-size", type=int, help="batch size for evaluation (default: 128, or --batch-size if larger)")
    p.add_argument("--max-eval-samples", type=int,
                   help="evaluate on a fixed random subset of this many dev examples (the same for every run)")


def _add_logging_arguments(p: argparse.ArgumentParser) -> None:
    """Watching a run: the training log's interval and where it is reported (harness/run_log.py)."""
    p.add_argument("--logging-steps", type=int, default=10,
                   help="log the training loss, learning rate, gradient norm and throughput every N steps (default 10) "
                        "and at each evaluation: OUT/history.jsonl, results.json's log_history, stderr with --no-progress")
    p.add_argument("--report-to", default="none",
                   help="also report the training log to tensorboard (OUT/tensorboard), wandb (offline, OUT/wandb) or "
                        "none (default); a comma-separated list for more than one; all: every one installed")


def _add_learners_arguments(p: argparse.ArgumentParser) -> None:
    """The learners method's own flags: LearnerConfig's fields, whose defaults and descriptions the help shows."""
    g = _method_group(p, "learners options (--method learners)", ("learners",))
    g.add_argument("--ratio", type=float, help=option_help("ratio"))
    g.add_argument("--num-neurons", type=_positive_int_list, help=option_help("num_neurons") + " (comma-separated)")
    g.add_argument("--selection", choices=SELECTION_STRATEGIES, help=option_help("selection"))
    g.add_argument("--priming-steps", type=int, help=option_help("priming_steps"))
    g.add_argument("--priming-fraction", type=float, help=option_help("priming_fraction"))
    g.add_argument("--reset-after-priming", action="store_true", help=option_help("reset_after_priming"))
    g.add_argument("--learner-layers", type=_learner_layers, help=option_help("layers"))
    g.add_argument("--layer-coverage", type=float, help=option_help("layer_coverage"))
    g.add_argument("--priming-scope", choices=PRIMING_SCOPES, help=option_help("priming_scope"))
    for flag, name in (("--frozen-dropout", "frozen_dropout"), ("--attention-dropout", "attention_dropout"),
                       ("--attention-probs-dropout", "attention_probs_dropout"),
                       ("--train-ffn-output-bias", "train_ffn_output_bias"), ("--train-layer-norm", "train_layer_norm")):
        g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=option_help(name))
    g.add_argument("--frozen-prefix-cache-mb", type=float, default=None,
                   help="memory for caching each example's output of the frozen blocks below the lowest learner "
                        "block, so later epochs skip them (used where they run without dropout: "
                        "--no-frozen-dropout, and evaluation; default 2048 on the CPU and off on a GPU, where filling it "
                        "costs more than it saves; 0 = off)")
    g.add_argument("--ffn-modules", help=option_help("ffn_modules"))


def given_flags(args: argparse.Namespace, add_arguments, skip: tuple[str, ...] = ()):
    """(flag, value, action, group) for each option that `add_arguments(parser)` defines and `args` sets away from
    its default (options whose dest is in `skip` left out), in the order they are defined."""
    probe = argparse.ArgumentParser(add_help=False)
    add_arguments(probe)
    for group in probe._action_groups:
        for action in group._group_actions:
            value = getattr(args, action.dest, None)
            if action.dest in skip or value is None or value == action.default:
                continue
            if isinstance(action, argparse.BooleanOptionalAction):  # --name or --no-name, as given
                flag = min(action.option_strings, key=len) if value else max(action.option_strings, key=len)
            else:
                flag = max(action.option_strings, key=len)
            yield flag, value, action, group


def flag_argv(flag: str, value, action: argparse.Action) -> list[str]:
    """The command-line words that give `flag` its `value` (given_flags' flag, value and action)."""
    if action.nargs == 0:  # store_true / store_const / --name or --no-name
        return [flag]
    if isinstance(value, (list, tuple)) and action.nargs in ("+", "*"):
        return [flag, *map(str, value)]
    if isinstance(value, (list, tuple)):
        return [flag, ",".join(map(str, value))]
    return [flag, str(value)]


def given_training_flags(args: argparse.Namespace):
    """(flag, value, action, methods) for each training option set away from its default.

    `methods` names the methods the flag means something to (None: every method)."""
    for flag, value, action, group in given_flags(args, add_training_arguments, skip=("no_progress",)):
        yield flag, value, action, getattr(group, "methods", None)


# Training options that act only where a priming phase runs (FinetuneArgs / argparse dest -> flag).
PRIMING_FLAGS = {"priming_learning_rate": "--priming-learning-rate", "learner_warmup_steps": "--learner-warmup-steps"}


def priming_flags_given(args) -> list[str]:
    """The PRIMING_FLAGS set in `args` (an argparse Namespace or a FinetuneArgs)."""
    return [flag for dest, flag in PRIMING_FLAGS.items() if getattr(args, dest, None)]


def check_flags_fit_method(args: argparse.Namespace) -> None:
    """A flag of another method is an error, not silently ignored (`--method full --ratio 0.1`)."""
    other = [f"{flag} ({' or '.join(methods)})" for flag, _, _, methods in given_training_flags(args)
             if methods is not None and args.method not in methods]
    if other:
        raise UsageError(f"{', '.join(other)} {'is an option of another method' if len(other) == 1 else 'are options of other methods'}, "
                         f"not of --method {args.method}: drop {'it' if len(other) == 1 else 'them'}, "
                         "or choose the method named in brackets")


def method_options(args: argparse.Namespace) -> dict:
    """The options of the chosen method (None: the method's default)."""
    if args.method == "lora":
        return {"rank": args.lora_rank, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
                "target_modules": args.lora_target_modules}
    if args.method == "adapter":
        return {"bottleneck_size": args.adapter_size}
    if args.method == "far":
        return {"ratio": args.far_ratio, "priming_fraction": args.far_priming_fraction}
    if args.method != "learners":
        return {}
    num = args.num_neurons
    return {
        "ratio": args.ratio,
        "num_neurons": (num[0] if num and len(num) == 1 else num),
        "selection": args.selection,
        "priming_steps": args.priming_steps,
        "priming_fraction": args.priming_fraction,
        "reset_after_priming": args.reset_after_priming,
        "layers": args.learner_layers,
        "layer_coverage": args.layer_coverage,
        "priming_scope": args.priming_scope,
        "train_ffn_output_bias": args.train_ffn_output_bias,
        "frozen_dropout": args.frozen_dropout,
        "attention_dropout": args.attention_dropout,
        "attention_probs_dropout": args.attention_probs_dropout,
        "frozen_prefix_cache_mb": args.frozen_prefix_cache_mb,
        "train_layer_norm": args.train_layer_norm,
        "ffn_modules": tuple(args.ffn_modules.split(",")) if args.ffn_modules else None,
        "seed": args.seed,
    }

"""`--config run.json|run.yaml` and transformers' flag spellings, both turned into this CLI's own flags before
argparse reads the command line.

A config file's keys are a command's flags (`learning_rate` or `learning-rate`); its flags go in front of those on
the command line, so that the command line wins (argparse keeps an option's last value). A flag may be spelled with
underscores (`--learning_rate`), and the transformers names that differ from ours are mapped (TRANSFORMERS_NAMES)."""

import argparse
import difflib
import json
from pathlib import Path

from ..errors import UsageError

# transformers' TrainingArguments names (and run_glue's --max_seq_length) that mean what one of our flags means.
TRANSFORMERS_NAMES = {
    "--per_device_train_batch_size": ["--batch-size"],
    "--per_device_eval_batch_size": ["--eval-batch-size"],
    "--num_train_epochs": ["--epochs"],
    "--lr_scheduler_type": ["--lr-scheduler"],
    "--max_seq_length": ["--max-length"],
    "--fp16": ["--mixed-precision", "fp16"],
    "--bf16": ["--mixed-precision", "bf16"],
}
# A command that only predicts (no --eval-batch-size: predict) has one batch size, an evaluation's.
PREDICTING_NAMES = {"--per_device_eval_batch_size": ["--batch-size"], "--per_device_train_batch_size": None}
ALIASES_HELP = ("transformers' spellings work too: --learning_rate, --per_device_train_batch_size, --num_train_epochs, "
                "--gradient_accumulation_steps, --bf16 and the like (any flag with _ for -)")


def add_config_argument(p: argparse.ArgumentParser) -> None:
    """--config, and the one line of --help on transformers' spellings."""
    p.epilog = ALIASES_HELP
    p.add_argument("--config", metavar="FILE",
                   help="a JSON or YAML file whose keys are this command's flags, e.g. {\"learning_rate\": 3e-4, "
                        "\"early_stopping_patience\": 3}; flags on the command line win over it")


def command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser | None:
    """The subcommand's parser (None: not a subcommand, e.g. -h)."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices.get(command)


def ours(name: str, known) -> list[str] | None:
    """A flag name (`--learning_rate`) in this parser's spelling, with any value it implies (`--bf16`); None if
    there is none."""
    if name in known:
        return [name]
    mapped = TRANSFORMERS_NAMES.get(name)
    if "--eval-batch-size" not in known and name in PREDICTING_NAMES:  # predict: its --batch-size is an evaluation's
        mapped = PREDICTING_NAMES[name]
    if mapped and mapped[0] in known:
        return mapped
    dashed = "--" + name[2:].replace("_", "-")
    return [dashed] if dashed in known else None


def spelled_ours(tokens: list[str], known) -> list[str]:
    """`tokens` with every flag in another spelling rewritten to ours (`--learning_rate=1e-4` too)."""
    result = []
    for token in tokens:
        name, eq, value = token.partition("=")
        flag = ours(name, known) if token.startswith("--") else None
        if flag is None:
            result.append(token)
        elif eq and len(flag) == 1:
            result.append(f"{flag[0]}={value}")
        else:
            result += flag
    return result


def expand(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`argv` with flags in our spelling and `--config FILE` replaced by the file's flags (in front, so that the
    command line wins)."""
    sub = command_parser(parser, argv[0]) if argv else None
    if sub is None:
        return argv
    known = sub._option_string_actions
    rest = spelled_ours(argv[1:], known)
    path, rest = _take_config(rest)
    if path is None:
        return [argv[0], *rest]
    return [argv[0], *file_flags(path, sub), *rest]


def _take_config(tokens: list[str]) -> tuple[str | None, list[str]]:
    """The --config FILE among `tokens` (its last one), and the tokens without it."""
    path, rest, i = None, [], 0
    while i < len(tokens):
        if tokens[i] == "--config":
            if i + 1 >= len(tokens):
                raise UsageError("--config needs a file: --config run.json (or .yaml)")
            path, i = tokens[i + 1], i + 2
            continue
        if tokens[i].startswith("--config="):
            path = tokens[i].partition("=")[2]
        else:
            rest.append(tokens[i])
        i += 1
    return path, rest


def read_config(path: str) -> dict:
    """The file's mapping of keys to values; one line naming the problem otherwise."""
    file = Path(path)
    kind = file.suffix.lower()
    if kind not in (".json", ".yaml", ".yml"):
        raise UsageError(f"--config {path}: a config file is .json, .yaml or .yml")
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file; check the path") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise UsageError(f"--config {path}: cannot be read ({type(e).__name__}); pass a JSON or YAML file") from None
    if kind == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"--config {path}: not valid JSON ({e}); fix the file") from None
    else:
        import yaml
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            raise UsageError(f"--config {path}: not valid YAML{at} ({getattr(e, 'problem', None) or 'syntax'}); "
                             "fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: must hold keys and values (learning_rate: 3e-4), not a "
                         f"{type(data).__name__}")
    return data


def file_flags(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The config file's keys and values as command-line tokens of `parser`'s command."""
    known = parser._option_string_actions
    tokens = []
    for key, value in read_config(path).items():
        name = "--" + str(key).lstrip("-")
        flag = ours(name, known)
        if flag is None or flag[0] in ("--config", "-h", "--help"):
            close = difflib.get_close_matches("--" + name[2:].replace("_", "-"),
                                              [f for f in known if f.startswith("--") and f != "--config"], n=1)
            hint = f"did you mean {close[0]}?" if close else f"see learners {parser.prog.split()[-1]} --help"
            raise UsageError(f"--config {path}: unknown key {key!r} ({hint})")
        action = known[flag[0]]
        if (action.nargs == 0 or len(flag) > 1) and not isinstance(value, bool) and value is not None:
            raise UsageError(f"--config {path}: key {key!r} is a switch: give true or false, not {value!r}")
        tokens += _value_tokens(flag, value, action)
    return tokens


def _value_tokens(flag: list[str], value, action: argparse.Action) -> list[str]:
    """One key's tokens: a switch given when true (a --name/--no-name pair either way), lists comma-joined,
    null left out."""
    if value is None:
        return []
    if action.nargs == 0 or len(flag) > 1:  # a switch, or a transformers name implying its value (--bf16)
        if isinstance(action, argparse.BooleanOptionalAction) and value is False:
            return ["--no-" + flag[0][2:]]
        return flag if value is True else []
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return [flag[0], str(value)]

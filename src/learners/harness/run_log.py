"""A run you can watch: the training log, written as the run goes.

At each logging point (every `--logging-steps` steps, and at each evaluation and checkpoint: the points where the
training engine reads the steps' losses on the host anyway, train.StepLog) one training entry:

    {"step", "epoch", "seconds", "phase", "loss", "grad_norm", "learning_rate", "examples_per_second",
     "tokens_per_second"}

`loss` and `grad_norm` are the means over the steps since the previous entry (as transformers' Trainer logs the
loss), `learning_rate` the scheduler's rate after the entry's step, `seconds` the run's training seconds so far
(evaluation excluded, as in `history`); the throughputs count the examples and tokens (padding included) of those
steps over their training time. In a data-parallel run the loss is the mean over the ranks (a collective at each
logging point, which every rank reaches in step), and the throughputs count every rank's examples. At each
evaluation one entry `{"step", "epoch", "seconds", "phase", "eval_<metric>": value, ...}`.

The entries go, on the main process only, to:

- the run's `log_history` (results.json; checkpoints keep it, so a resumed run continues it, nothing duplicated);
- `history.jsonl` in the run folder, one JSON object a line, appended as they come (`tail -f`); a resumed run
  rewrites it from its checkpoint's log first;
- stderr, one line per training entry, with `--no-progress` (else the progress bar's postfix shows it);
- with `--report-to`, TensorBoard (`OUT/tensorboard`, through torch.utils.tensorboard; tags `train/loss`,
  `train/learning_rate`, `train/grad_norm`, `train/examples_per_second`, `train/tokens_per_second`,
  `eval/<metric>`) and W&B (offline mode, `OUT/wandb`; `wandb sync` uploads it), under the same names.
"""

import importlib.util
import json
import math
import sys
import uuid
from pathlib import Path

from tqdm.auto import tqdm

from . import distributed
from ..errors import UsageError

HISTORY_FILE = "history.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
REPORTERS = ("tensorboard", "wandb")  # --report-to names (transformers'), each also the package it needs


def parse_report_to(text: str | None) -> tuple[str, ...]:
    """The reporters a `--report-to` value names (comma-separated; `none`: none; `all`: those installed), each
    checked to be installed."""
    names = [name.strip().lower() for name in (text or "none").split(",") if name.strip()]
    unknown = [name for name in names if name not in (*REPORTERS, "none", "all")]
    if unknown:
        raise UsageError(f"--report-to {unknown[0]!r} is not one of {', '.join(REPORTERS)}, all, none (or a "
                         "comma-separated list of them)")
    if ("none" in names or "all" in names) and len(names) > 1:
        raise UsageError(f"--report-to {text}: 'none' and 'all' stand alone; drop the others")
    if names == ["all"]:
        return tuple(name for name in REPORTERS if importlib.util.find_spec(name) is not None)
    names = tuple(dict.fromkeys(name for name in names if name != "none"))
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise UsageError(f"--report-to {name} needs the {name} package, which is not installed: pip install {name}")
    return names


def training_entry(rows: list[tuple[int, float, float]], seconds: float, examples: int, tokens: int, *, step: int,
                   epoch: float, phase: str, learning_rate: float, train_seconds: float) -> dict:
    """The training log's entry for `rows` (step, loss, gradient norm), which took `seconds` of training."""
    return {"step": step, "epoch": round(epoch, 4), "seconds": round(train_seconds, 3), "phase": phase,
            "loss": sum(loss for _, loss, _ in rows) / len(rows),
            "grad_norm": sum(norm for _, _, norm in rows) / len(rows),
            "learning_rate": learning_rate,
            "examples_per_second": round(examples / seconds, 2) if seconds > 0 else None,
            "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 and tokens else None}


def evaluation_entry(evaluation: dict) -> dict:
    """The training log's entry for a `history` evaluation: its dev metrics as `eval_<name>`."""
    return {**{k: evaluation[k] for k in ("step", "epoch", "seconds", "phase")},
            **{f"eval_{name}": value for name, value in evaluation["metrics"].items()}}


def scalars(entry: dict) -> dict:
    """An entry's numbers under TensorBoard's and W&B's tags (`train/loss`, `eval/mcc`), as transformers names them."""
    values = {}
    for key, value in entry.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)  # (None: a throughput not measured)
        if key in ("step", "epoch", "seconds", "phase") or not number:
            continue
        values[f"eval/{key[len('eval_'):]}" if key.startswith("eval_") else f"train/{key}"] = float(value)
    return values


def summary(entry: dict) -> dict:
    """A training entry, short, for the progress bar's postfix."""
    shown = {"loss": f"{entry['loss']:.4f}", "lr": f"{entry['learning_rate']:.2e}", "grad": f"{entry['grad_norm']:.3g}"}
    if entry["examples_per_second"] is not None:
        shown["ex/s"] = f"{entry['examples_per_second']:.1f}"
    return shown


def line(entry: dict, total: int) -> str:
    """A training entry as one stderr line (--no-progress)."""
    text = (f"step {entry['step']}/{total} ({entry['phase']}): loss {entry['loss']:.4f}, learning rate "
            f"{entry['learning_rate']:.3g}, grad norm {entry['grad_norm']:.4g}")
    if entry["examples_per_second"] is not None:
        text += f", {entry['examples_per_second']:.1f} examples/s"
    if entry["tokens_per_second"] is not None:
        text += f", {entry['tokens_per_second']:.0f} tokens/s"
    return text


class TensorBoard:
    """Scalars into OUT/tensorboard. A resumed run purges what the run logged after its checkpoint's step
    (SummaryWriter's purge_step), so the curves hold each step once."""

    def __init__(self, directory: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(directory / TENSORBOARD_DIR), purge_step=start_step + 1)

    def log(self, values: dict, step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    """Metrics into an offline W&B run under OUT/wandb (`wandb sync OUT/wandb/offline-run-*` uploads it). A resumed
    run goes on under the same run id (kept in OUT/wandb/learners_run_id): a new offline folder, one run once synced."""

    def __init__(self, directory: Path, config: dict | None, resumed: bool):
        import wandb

        folder = directory / WANDB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "learners_run_id"
        run_id = id_file.read_text().strip() if resumed and id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(mode="offline", dir=str(directory), config=config or {}, id=run_id, resume="allow")

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class RunLog:
    """The training log of one run (see the module's docstring). `entries` is the run's `log_history`, continued in
    place (a resumed run's holds the entries up to its checkpoint). Off the main process it only counts. Its files
    are made at the first entry: a run that fails before it leaves nothing behind."""

    def __init__(self, entries: list[dict], directory: str | None, report_to: tuple[str, ...] = (), *,
                 start_step: int = 0, total: int = 0, main: bool = True, echo: bool = False, world_size: int = 1,
                 config: dict | None = None):
        self.entries, self.main, self.echo, self.total, self.world_size = entries, main, echo, total, world_size
        self.examples = self.tokens = 0
        self.directory = Path(directory) if directory and main else None
        self.report_to, self.start_step, self.config = report_to, start_step, config
        self.file, self.reporters = None, []

    def _open(self) -> None:
        """history.jsonl, holding the entries so far (a resumed run's, up to its checkpoint), and the reporters."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.file = open(self.directory / HISTORY_FILE, "w")
        self.file.writelines(json.dumps(entry) + "\n" for entry in self.entries)
        for name in self.report_to:
            self.reporters.append(TensorBoard(self.directory, self.start_step) if name == "tensorboard" else
                                  WandB(self.directory, self.config, resumed=self.start_step > 0))

    def count(self, batch) -> None:
        """A training step's examples and tokens (shapes only: nothing is read from the device)."""
        ids = batch.get("input_ids") if hasattr(batch, "get") else None
        if ids is not None:
            self.examples += ids.shape[0]
            self.tokens += ids.numel()
        elif "labels" in batch:
            self.examples += batch["labels"].shape[0]

    def training(self, rows: list[tuple[int, float, float]], seconds: float, **where) -> dict | None:
        """Log the steps `rows` (step, loss, gradient norm), which took `seconds` of training; `where`: see
        training_entry. Returns the entry (None off the main process)."""
        examples, tokens = self.examples * self.world_size, self.tokens * self.world_size
        self.examples = self.tokens = 0
        if self.world_size > 1:  # each rank's loss is its own share of the batch: log their mean, as one process
            losses = distributed.mean([loss for _, loss, _ in rows])  # would (the gradient norm is the global one)
            rows = [(step, loss, norm) for (step, _, norm), loss in zip(rows, losses)]
        if not self.main or not rows:
            return None
        entry = training_entry(rows, seconds, examples, tokens, **where)
        self._add(entry)
        if self.echo:
            tqdm.write(line(entry, self.total), file=sys.stderr)
        return entry

    def evaluation(self, evaluation: dict) -> None:
        """Log a `history` evaluation's dev metrics."""
        if self.main:
            self._add(evaluation_entry(evaluation))

    def _add(self, entry: dict) -> None:
        if self.file is None and self.directory is not None:
            self._open()
        self.entries.append(entry)
        if self.file is not None:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()
        values = {tag: value for tag, value in scalars(entry).items() if math.isfinite(value)}
        for reporter in self.reporters:
            reporter.log(values, entry["step"])

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()
        if self.file is not None:
            self.file.close()
        self.file, self.reporters = None, []

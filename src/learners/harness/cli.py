"""The `learners` command line: finetune, predict, merge, bench."""

import argparse
import sys

from ..errors import UsageError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming the problem and where to look, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _learner_layers(text: str) -> str | list[int]:
    """'auto', 'all', 'top-N', 'skip-N', or block numbers such as '3,4,5' (checked by LearnerConfig)."""
    text = text.strip()
    if text in ("auto", "all") or text.startswith(("top-", "skip-")):
        return text
    try:
        return _positive_int_list(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto', 'all', 'top-N' or block numbers such as 3,4,5")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by `finetune` and `bench` (bench passes them through to every run)."""
    p.add_argument("--model", help="HF hub id or local directory (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--data-dir", help="GLUE in its official layout, e.g. ../shared/glue (else $GLUE_DIR, else the hub)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, help="train this many steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, help="peak learning rate (default: the method's, see README)")
    p.add_argument("--priming-learning-rate", type=float, help="peak learning rate of the priming phase (default 1e-4)")
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--learner-warmup-steps", type=int, default=0,
                   help="after priming, ramp the new learner optimizer's rate up over this many steps (default 0)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: the method's, see README)")
    p.add_argument("--lr-scheduler", choices=["linear", "constant"], help="after warm-up (default: the method's, see README)")
    p.add_argument("--max-length", type=int, help="truncate inputs to this many tokens (default 128, or the model's limit if lower)")
    p.add_argument("--eval-steps", type=int, help="evaluate every N steps (default: four times an epoch) and at the end")
    p.add_argument("--max-train-samples", type=int, help="train on a fixed random subset of this many examples")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("learners options (--method learners)")
    g.add_argument("--ratio", type=float, help="learner size as a fraction of each FFN's width (default 1/16)")
    g.add_argument("--num-neurons", type=_positive_int_list, help="learner size in neurons: one count, or one per layer (comma-separated)")
    g.add_argument("--selection", choices=["priming", "gradient", "magnitude", "random"], default="priming")
    g.add_argument("--priming-steps", type=int, help="priming budget in steps")
    g.add_argument("--priming-fraction", type=float, default=0.25, help="priming budget as a fraction of the first epoch (default 0.25)")
    g.add_argument("--reset-after-priming", action="store_true", help="ablation: start the learners from their pre-trained weights, not the primed ones")
    g.add_argument("--learner-layers", type=_learner_layers,
                   help="FFN blocks that get learners: all (default), skip-N (all but the N lowest), top-N "
                        "(the N blocks nearest the output), auto (chosen by the priming signal) or block numbers, e.g. 3,4,5")
    g.add_argument("--layer-coverage", type=float,
                   help="with --learner-layers auto: the fewest top blocks holding this share of the priming signal (default 0.5)")
    g.add_argument("--priming-scope", choices=["all", "ffn", "learner-layers"],
                   help="what trains during priming: the whole model, every FFN, or only the learner blocks' FFNs "
                        "(the head always; default all)")
    g.add_argument("--no-frozen-dropout", dest="frozen_dropout", action="store_false",
                   help="run the frozen blocks below the lowest learner block (and the embeddings) without dropout "
                        "while the learners train: faster on the CPU, no dropout noise below the learners")
    g.add_argument("--train-ffn-output-bias", action="store_true", help="also train each FFN's output bias b2")
    g.add_argument("--train-layer-norm", action="store_true", help="also train each block's output LayerNorm")
    g.add_argument("--ffn-modules", help="FFN linears relative to a block, e.g. intermediate.dense,output.dense")
    g = p.add_argument_group("LoRA options (--method lora)")
    g.add_argument("--lora-rank", type=int, help="rank r of the update B A (default 8)")
    g.add_argument("--lora-alpha", type=float, help="scaling: the update is multiplied by alpha / r (default 16)")
    g.add_argument("--lora-dropout", type=float, help="dropout on the LoRA input (default 0.1)")
    g.add_argument("--lora-target-modules", help="linears that get LoRA, name suffixes, comma-separated "
                                                 "(default query,value; q_lin,v_lin for DistilBERT)")
    g = p.add_argument_group("adapter options (--method adapter)")
    g.add_argument("--adapter-size", type=int, help="bottleneck size of each adapter (default 64)")
    g = p.add_argument_group("FAR options (--method far)")
    g.add_argument("--far-ratio", type=float, help="trained output units as a fraction of each FFN linear's (default 1/8)")
    g.add_argument("--far-priming-fraction", type=float, help="priming budget as a fraction of the first epoch (default 0.25)")


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
        "train_layer_norm": args.train_layer_norm,
        "ffn_modules": tuple(args.ffn_modules.split(",")) if args.ffn_modules else None,
        "seed": args.seed,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="learners", description="Fine-tune small BERT-family encoders with Learner modules and priming.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ft = sub.add_parser("finetune", help="fine-tune a model on a GLUE task or your own data")
    ft.add_argument("--task", help="GLUE task: cola sst2 mrpc stsb qqp mnli qnli rte wnli")
    ft.add_argument("--method", default="learners",
                    help="full, head, bitfit, lora, adapter, far, learners (default); see README for what each trains")
    ft.add_argument("--output-dir", required=True)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--overwrite", action="store_true", help="replace a finished run (or a checkpoint) in --output-dir")
    ft.add_argument("--resume", action="store_true",
                    help="continue the run in --output-dir from its checkpoint (a rerun with the same options does too)")
    ft.add_argument("--checkpoint-steps", type=int,
                    help="write a checkpoint every N steps (default: at every evaluation) into OUTPUT_DIR/checkpoint")
    ft.add_argument("--train-file", help="your training data: CSV, TSV or JSONL")
    ft.add_argument("--validation-file", help="your dev data, same columns")
    ft.add_argument("--text-columns", help="one text column or a pair, e.g. sentence1,sentence2")
    ft.add_argument("--label-column", default="label")
    ft.add_argument("--task-type", choices=["classification", "regression"], help="default: inferred from the labels")
    add_training_arguments(ft)

    pr = sub.add_parser("predict", help="predict with a fine-tuned model directory, or several tasks' learners on one base")
    which = pr.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a model directory written by finetune (OUT/model) or merge")
    which.add_argument("--learners", help="several tasks on one loaded base model: NAME=DIR pairs, e.g. "
                                          "cola=runs/cola,sst2=runs/sst2 (DIR: a learners finetune's OUT or OUT/learners); "
                                          "writes a prediction_NAME column per task")
    pr.add_argument("--base", help="with --learners: the base model they were trained from (default: the embedded model)")
    pr.add_argument("--input", required=True, help="CSV, TSV or JSONL with the model's text columns")
    pr.add_argument("--output", required=True, help="where to write predictions (.csv, .tsv or .jsonl)")
    pr.add_argument("--text-columns", help="override the text columns saved with the model")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--max-length", type=int, help="truncate inputs to this many tokens (default 128, or the model's limit if lower)")

    mg = sub.add_parser("merge", help="merge saved learners into their base model; write a plain HF model")
    mg.add_argument("--base", help="the base model the learners were trained from (default: the embedded model)")
    mg.add_argument("--learners", required=True, help="directory written by save_pretrained (OUT/learners)")
    mg.add_argument("--output", required=True)

    bn = sub.add_parser("bench", help="run finetune over tasks x methods x seeds; write bench.csv, bench.md and plots")
    bn.add_argument("--tasks", help="GLUE tasks, comma-separated, e.g. cola,mrpc")
    bn.add_argument("--methods", help="methods, comma-separated (default full,learners; with --report-only: every method found)")
    bn.add_argument("--seeds", help="seeds, comma-separated (default 0,1,2)")
    bn.add_argument("--output-dir", required=True, help="runs go to OUT/runs/TASK/METHOD/seedN; finished ones are skipped")
    bn.add_argument("--target", help="time-to-target bar: 0.5 for every task, or cola=0.25,mrpc=0.85 "
                                     "(default: 95%% of full's mean best on the task)")
    bn.add_argument("--report-only", action="store_true", help="only rebuild bench.csv, bench.md and the plots from OUT/runs")
    add_training_arguments(bn)
    return parser


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "finetune":
        from .finetune import FinetuneArgs, run_finetune
        results = run_finetune(FinetuneArgs(
            output_dir=args.output_dir, task=args.task, method=args.method, model=args.model, data_dir=args.data_dir,
            train_file=args.train_file, validation_file=args.validation_file, text_columns=args.text_columns,
            label_column=args.label_column, task_type=args.task_type, epochs=args.epochs, max_steps=args.max_steps,
            batch_size=args.batch_size, learning_rate=args.learning_rate, priming_learning_rate=args.priming_learning_rate,
            learner_warmup_steps=args.learner_warmup_steps,
            warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, lr_scheduler=args.lr_scheduler,
            max_length=args.max_length, eval_steps=args.eval_steps, max_train_samples=args.max_train_samples,
            seed=args.seed, mixed_precision=args.mixed_precision, overwrite=args.overwrite, resume=args.resume,
            checkpoint_steps=args.checkpoint_steps,
            progress=not args.no_progress, method_options=method_options(args)))
        if results is None:  # a data-parallel rank other than 0: rank 0 reports
            return 0
        print(f"{results['task']} {results['method']}: {results['metric_name']} {results['metric']:.4f} "
              f"(best {results['best_metric']:.4f}), {results['trainable_params']:,} trainable params, "
              f"{results['train_seconds']:.1f}s training -> {args.output_dir}/results.json")
    elif args.command == "predict":
        from .predict import run_predict, run_predict_learners
        if args.learners is not None:
            n = run_predict_learners(args.learners, args.base, args.input, args.output, args.text_columns,
                                     args.batch_size, args.max_length)
        else:
            if args.base is not None:
                raise UsageError("--base goes with --learners; a --model directory is a whole model already")
            n = run_predict(args.model, args.input, args.output, args.text_columns, args.batch_size, args.max_length)
        print(f"wrote {n} predictions to {args.output}")
    elif args.command == "merge":
        from .merge import run_merge
        run_merge(args.base, args.learners, args.output)
        print(f"wrote merged model to {args.output}")
    elif args.command == "bench":
        from .bench import run_bench
        return run_bench(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except UsageError as e:
        print(f"learners: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"learners: {e or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

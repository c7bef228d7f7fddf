"""Step time and peak memory of every method on three model sizes, for a GPU (prepared to run in one go).

    python benchmarks/gpu_step_time.py [--sizes minilm-l6,distilbert-base,bert-base] [--batch-sizes 32,128]
        [--methods full,bitfit,lora,learners,learners-filling,learners-cached,learners-all,learners-top3-cached,...] [--steps 20] [--warmup 5] [--precision bf16]
        [--compile] [--output bench-out/gpu/step_time]

One markdown table per size x batch (length 128), every method side by side with ratios vs `full`. Models
are random-init transformers configs (the step cost does not depend on the weights, and nothing is
downloaded). Each method runs in a fresh process through benchmarks/step_time_memory.py's worker, with the
training engine's optimizer step (learners.harness.train.make_optimizer, training_step), bf16 autocast by default,
and a CUDA sync after every step. Peak memory: torch.cuda.max_memory_allocated on CUDA, peak RSS on the CPU.

`learners` is the method with its default options (every block but the lowest, the frozen part and the learner
blocks' attention without dropout, docs/journal.md#skip-1-default): on a GPU without the frozen-prefix cache (the CLI's
default there since docs/journal.md#gpu-h200), on the CPU with it in a first epoch. `learners-filling` and `learners-cached` ask for
the cache: a first epoch, filling it (each example runs the frozen blocks alone), and a later one (every
example cached); on an H200 they were 2.1x and 0.76x of full on MiniLM-L6 at 32 x 128 (docs/journal.md#gpu-h200). `learners-all`
puts learners in every FFN block with dropout everywhere, the default until docs/journal.md#skip-1-default
(options passed to learners.harness.methods.build_method as they are). All select by magnitude:
priming needs a training loop, and which neurons are picked does not change the step cost. The table's
"learner layers" column shows how many blocks got learners, so an option that means something else later
shows up there. `learners-top3-cached` puts learners in the top three blocks with frozen dropout off and
times a later epoch: the timed steps reuse the warm-up batches, so the frozen-prefix cache holds every
example and the blocks below the learners do not run (learners.learner.prefix_cache). `learners-top4` and
`learners-top4-cached` are the top four blocks so, in a first epoch (every example runs the frozen blocks alone,
to fill the cache) and a later one: on the CPU the configuration that meets issue 8's step target (docs/journal.md#top-four-blocks); on a GPU the first epoch's per-example passes may cost more than they do there. `learners-top4-noad-cached`
and `learners-skip1-noad-cached` (every block but the lowest: top-5 of MiniLM-L6 and DistilBERT) also run the
learner blocks' attention without dropout (attention_dropout=False, docs/journal.md#attention-dropout): on the CPU that is the
fused attention kernel; on a GPU, flash attention has dropout built in, so the gain there is for this script to show.

`learners-upper-half` puts learners in the upper half of each size's blocks, without the cache: the issue's H100
measure (0.60x of full on MiniLM-L6 at 32 x 128, 0.40x on BERT-base at 128 x 128), the way to a GPU's step targets.

--profile-dir DIR profiles three more steps of each method after its timed ones (torch.profiler) and writes the
op table, the most self GPU time first (CPU time on the CPU), to DIR/SIZE_BATCH_METHOD.txt: where the step goes.

--compile adds, for every method, a row "METHOD +compile" with the model wrapped in torch.compile (the
first steps compile; the warm-up absorbs them), so one table says whether compiling helps. It is off by
default: compiling every method and size takes minutes.

On a CPU, `--sizes tiny --batch-sizes 4 --steps 3 --precision no` tries the whole script in seconds.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time_memory import ARCHS, run_worker  # noqa: E402 - the worker lives beside this script

# Table name -> (method for build_method, its options, timed steps reuse the warm-up batches). Learners select
# by magnitude (see the docstring).
CACHE = {"frozen_prefix_cache_mb": 2048}  # asked for by size: the CLI turns its default cache off on a GPU
VARIANTS = {
    "full": ("full", {}, False),
    "bitfit": ("bitfit", {}, False),
    "lora": ("lora", {}, False),
    # the CLI's default (every block but the lowest, no dropout in the frozen part and the learner blocks'
    # attention; on a GPU without the frozen-prefix cache, on the CPU with it, in a first epoch: every example misses)
    "learners": ("learners", {"selection": "magnitude"}, False),
    # the default without the cache anywhere (on a GPU the same as `learners`): what --compile runs
    "learners-nocache": ("learners", {"selection": "magnitude", "frozen_prefix_cache_mb": 0}, False),
    # the same with the cache asked for: a first epoch (filling it, each example alone) and a later one (all cached)
    "learners-filling": ("learners", {"selection": "magnitude", **CACHE}, False),
    "learners-cached": ("learners", {"selection": "magnitude", **CACHE}, True),
    # every block with dropout: the default until docs/journal.md#skip-1-default
    "learners-all": ("learners", {"selection": "magnitude", "layers": "all", "attention_dropout": True}, False),
    "learners-top3-cached": ("learners", {"selection": "magnitude", "layers": "top-3", "frozen_dropout": False, **CACHE},
                             True),
    "learners-top4": ("learners", {"selection": "magnitude", "layers": "top-4", "frozen_dropout": False, **CACHE}, False),
    "learners-top4-cached": ("learners", {"selection": "magnitude", "layers": "top-4", "frozen_dropout": False, **CACHE},
                             True),
    # the learner blocks' attention without dropout too (attention_dropout=False)
    "learners-top4-noad-cached": ("learners", {"selection": "magnitude", "layers": "top-4", "frozen_dropout": False,
                                               "attention_dropout": False, **CACHE}, True),
    "learners-skip1-noad-cached": ("learners", {"selection": "magnitude", "layers": "skip-1", "frozen_dropout": False,
                                                "attention_dropout": False, **CACHE}, True),
    # the upper half of the blocks (top-3 of MiniLM-L6 and DistilBERT, top-6 of BERT-base), no cache: the issue's
    # H100 measure (0.60x of full on MiniLM-L6 at 32 x 128, 0.40x on BERT-base at 128 x 128)
    "learners-upper-half": ("learners", {"selection": "magnitude", "layers": "upper-half", "frozen_dropout": False,
                                         "frozen_prefix_cache_mb": 0}, False),
}
LENGTH = 128
WORKER_TIMEOUT_S = 300  # one method on one size; a hung worker must not eat the whole run


def num_blocks(arch: str) -> int:
    """How many blocks a size has (its transformers config's default unless ARCHS sets it)."""
    from transformers import BertConfig, DistilBertConfig
    kind, overrides = ARCHS[arch]
    if kind == "bert":
        return overrides.get("num_hidden_layers", BertConfig().num_hidden_layers)
    return overrides.get("n_layers", DistilBertConfig().n_layers)


def options_for(options: dict, arch: str) -> dict:
    """layers="upper-half" becomes top-N for this size's N blocks (halved, at least one)."""
    if options.get("layers") != "upper-half":
        return options
    return {**options, "layers": f"top-{max(1, num_blocks(arch) // 2)}"}


def measure_block(args, arch: str, batch_size: int) -> list[dict]:
    """Every method (and its compiled twin with --compile) on one size x batch, each in a fresh process.

    A failed method becomes a row with its error, so one failure does not lose the rest of the run."""
    rows = []
    for name in args.methods:
        for compiled in ([True] if args.compiled_only else [False, True] if args.compile else [False]):
            method, options, repeat_batches = VARIANTS[name]
            label = name + (f" +compile{'' if args.compile_mode in (None, 'default') else ' ' + args.compile_mode}"
                            if compiled else "")
            try:
                profile = (f"{args.profile_dir}/{arch}_{batch_size}_{label.replace(' +', '-')}.txt"
                           if args.profile_dir else None)
                row = run_worker(method, batch_size, LENGTH, args.steps, args.warmup, arch=arch,
                                 precision=args.precision, compile=compiled, options=options_for(options, arch), label=label,
                                 timeout=WORKER_TIMEOUT_S, repeat_batches=repeat_batches, profile=profile,
                                 compile_mode=args.compile_mode if compiled else None)
            except RuntimeError as e:
                row = {"method": label, "error": str(e)}
                print(f"  {arch} batch {batch_size} {label}: FAILED: {e}", file=sys.stderr, flush=True)
            rows.append({"size": arch, "batch_size": batch_size, "length": LENGTH, **row})
            print(f"  {arch} batch {batch_size}: {json.dumps(rows[-1])}", flush=True)  # kept if a time limit stops the run
    return rows


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def format_block(rows: list[dict]) -> str:
    """One markdown table: a row per method, ratios vs the eager `full` row (or the first that ran)."""
    ok = [r for r in rows if "error" not in r]
    base = next((r for r in ok if r["method"] == "full"), ok[0] if ok else {})
    first = rows[0]
    lines = [f"### {first['size']}, batch {first['batch_size']} x {first['length']}", "",
             "| method | learner layers | trainable params | median step (ms) | vs full | operators | host reads "
             "| GPU syncs | peak memory (MB) | vs full | matmul GFLOPs (fwd+bwd) | vs full |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'][:120]} | | | | | | | | | | |")
            continue
        syncs, ops, reads = ("-" if r.get(k) is None else r[k] for k in ("cuda_syncs", "ops", "host_reads"))
        lines.append(f"| {r['method']} | {r['learner_layers'] or '-'} | {r['trainable']:,} "
                     f"({100 * r['trainable'] / r['total']:.2f}%) | {r['step_ms']:.1f} | "
                     f"{ratio(r['step_ms'], base.get('step_ms'))} | {ops} | {reads} | "
                     f"{syncs} | {r['peak_mb']:.0f} | "
                     f"{ratio(r['peak_mb'], base.get('peak_mb'))} | {r['gflops']:.1f} | "
                     f"{ratio(r['gflops'], base.get('gflops'))} |")
    return "\n".join(lines)


def footer(args, rows: list[dict], seconds: float) -> str:
    """What ran where: the device name and torch version are part of every result."""
    ok = [r for r in rows if "error" not in r]
    where = f"{ok[0]['device_name']} ({ok[0]['device']}), torch {ok[0]['torch']}" if ok else "no method ran"
    return (f"median of {args.steps} steps after {args.warmup} warm-up steps, precision {args.precision}, "
            f"random-init models, each method in a fresh process; {where}; whole run {seconds:.0f}s")


def write_output(path: str, markdown: str, rows: list[dict], args) -> None:
    """PATH.md (the tables) and PATH.json (every row and the settings)."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".md").write_text(markdown + "\n")
    settings = {k: getattr(args, k) for k in ("sizes", "batch_sizes", "methods", "steps", "warmup", "precision", "compile",
                                              "compiled_only", "compile_mode")}
    base.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    print(f"wrote {base.with_suffix('.md')} and {base.with_suffix('.json')}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="minilm-l6,distilbert-base,bert-base", help=f"from {', '.join(ARCHS)}")
    p.add_argument("--batch-sizes", default="32,128")
    p.add_argument("--methods", default=",".join(VARIANTS), help=f"from {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precision", choices=["bf16", "fp16", "no"], default="bf16", help="accelerate mixed_precision")
    p.add_argument("--compile", action="store_true", help="also time each method under torch.compile")
    p.add_argument("--compiled-only", action="store_true", help="time each method under torch.compile only")
    p.add_argument("--compile-mode", help="torch.compile's mode, e.g. reduce-overhead (CUDA graphs; static shapes)")
    p.add_argument("--output", help="also write the tables to OUTPUT.md and the rows to OUTPUT.json")
    p.add_argument("--profile-dir", help="after the timed steps, profile 3 more with torch.profiler and write each "
                                         "method's op table (most GPU time first) to DIR/SIZE_BATCH_METHOD.txt")
    args = p.parse_args(argv)
    args.sizes, args.methods = args.sizes.split(","), args.methods.split(",")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    unknown = [s for s in args.sizes if s not in ARCHS] + [m for m in args.methods if m not in VARIANTS]
    if unknown:
        p.error(f"unknown size or method: {', '.join(unknown)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    blocks, rows = [], []
    for arch in args.sizes:
        for batch_size in args.batch_sizes:
            block = measure_block(args, arch, batch_size)
            blocks.append(format_block(block))
            rows += block
            print(blocks[-1] + "\n", flush=True)
            markdown = "\n\n".join(blocks) + "\n\n" + footer(args, rows, time.perf_counter() - started)
            if args.output:  # after every table, so a run stopped at a time limit keeps the tables it finished
                write_output(args.output, markdown, rows, args)
    print(markdown.rsplit("\n", 1)[-1])
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

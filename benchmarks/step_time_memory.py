"""Median step time and peak memory per method, side by side in one run.

    python benchmarks/step_time_memory.py [--methods full,learners] [--batch-size 32] [--lengths 128] [--steps 20]

Each method runs in its own fresh process (peak RSS is per process), on the
default model (or --model), with the same optimizer step as `learners
finetune` (AdamW, grad clipping). Inputs are random token ids of a fixed
length, so every step does the same work. Learners are measured in their
training phase (selection by magnitude: the step cost does not depend on which
neurons were picked). Memory: peak RSS of the process on the CPU (and the part
of it above the RSS after the model was loaded), peak allocated on CUDA.

benchmarks/gpu_step_time.py reuses the worker (run_worker) with a random-init model of a named size
(--arch), mixed precision (--precision) and torch.compile (--compile).

Matmul GFLOPs of one forward + backward pass (torch.utils.flop_counter, which
counts matrix products only) put the step-time ratio in context: a method that
must back-propagate the input gradient through every layer cannot get much
below its FLOP ratio on hardware where matmuls dominate.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


# Random-init encoders by size (benchmarks/gpu_step_time.py): random weights cost the same per step as
# trained ones, and need no download. `tiny` runs on a CPU in seconds, for trying the scripts.
ARCHS = {
    "minilm-l6": ("bert", {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                           "intermediate_size": 1536, "vocab_size": 30522}),
    "distilbert-base": ("distilbert", {}),
    "bert-base": ("bert", {}),
    "tiny": ("bert", {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 256}),
    # MiniLM-L6's structure (6 blocks, 12 heads, FFN 4x wide) with the arithmetic made negligible: what a step costs
    # beside its matmuls, i.e. what the host dispatches, as on a GPU where a small model's step is launch-bound.
    "minilm-l6-narrow": ("bert", {"hidden_size": 48, "num_hidden_layers": 6, "num_attention_heads": 12,
                                  "intermediate_size": 192, "vocab_size": 1000}),
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_model(args, device):
    """The model to time: a random-init one of size --arch, built on `device` (fast), or the real --model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, BertConfig, DistilBertConfig

    token_labels = getattr(args, "token_labels", 0)  # --token-labels N: a token classification head with N tags
    labels = token_labels or 2
    if args.arch:
        kind, overrides = ARCHS[args.arch]
        # problem_type set now: the first forward would set it, and torch.compile would recompile for that
        config = (BertConfig if kind == "bert" else DistilBertConfig)(
            num_labels=labels, problem_type="single_label_classification", **overrides)
        auto = AutoModelForTokenClassification if token_labels else AutoModelForSequenceClassification
        with torch.device(device):
            return auto.from_config(config)
    from learners.harness.models import load_model_and_tokenizer
    model, _ = load_model_and_tokenizer(args.model, labels, [f"tag{i}" for i in range(labels)],
                                        token_classification=bool(token_labels))
    return model.to(device)


def method_options(args) -> dict:
    """--options (JSON) if given; else learners select by magnitude (priming needs a training loop, and the
    step cost does not depend on which neurons were picked)."""
    if args.options is not None:
        return json.loads(args.options)
    return {"selection": "magnitude"} if args.worker == "learners" else {}


def learner_layers(model) -> str:
    """How many FFN blocks hold learners, e.g. "6/6" ("" for other methods): shows what a layers option did."""
    from learners.learner.model import LearnerModel
    if not isinstance(model, LearnerModel):
        return ""
    config = model.base_model.config
    total = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None)
    return f"{len(model.ffn_blocks)}/{total}"


def device_name(device) -> str:
    """The GPU's name (torch.cuda.get_device_name), or the CPU's model name: timings mean nothing without it."""
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else "cpu"


class OpCounter:
    """Counts the operators a step dispatches (a TorchDispatchMode: every aten call that reaches a kernel) and the
    host reads among them (`_local_scalar_dense`: `.item()`, `bool(t)`, `int(t)`), which on a GPU make the host wait."""

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        class Mode(TorchDispatchMode):
            ops = host_reads = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                self.ops += 1
                self.host_reads += func.__name__.startswith("_local_scalar_dense")
                return func(*args, **(kwargs or {}))

        return Mode()


def cuda_syncs(step) -> int | None:
    """How many times one call of `step` made the host wait for the GPU (torch.cuda.set_sync_debug_mode's
    warnings); None off CUDA."""
    import warnings

    import torch
    if not torch.cuda.is_available():
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def worker(args) -> dict:
    """Time `args.worker`'s training step in this (fresh) process; returns one JSON-able row."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from learners.harness.methods import build_method
    from learners.harness.methods.learners import without_cache_when_compiled
    from learners.harness.precision import cast_frozen_linears, frozen_dtype
    from learners.harness.train import (TrainConfig, enable_gradient_checkpointing, make_accelerator, make_optimizer,
                                        peak_memory_mb, trainable_parameters, training_step)

    torch.manual_seed(0)
    accelerator = make_accelerator(TrainConfig(learning_rate=1.0, mixed_precision=args.precision))
    device = accelerator.device
    model = build_model(args, device)
    # "forward": the forward pass alone (train mode, dropout on, no graph): the floor of any method that runs
    # the whole forward pass every step, timed as full fine-tuning's model with nothing to update.
    forward_only = args.worker == "forward"
    options = method_options(args)
    checkpointing = isinstance(options, dict) and bool(options.pop("activation_checkpointing", False))  # ":ckpt"
    if args.worker == "learners" and isinstance(options, dict):  # as finetune does with --compile: no cache
        options = without_cache_when_compiled(options, args.compile)
    method = build_method("full" if forward_only else args.worker, options)
    vocab_size = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    seen, times = [], []  # --repeat-batches: the timed steps reuse the warm-up batches (a later epoch, for the cache)

    def batch():
        if args.repeat_batches and len(seen) >= max(args.warmup, 1):
            return seen[len(times) % len(seen)]
        ids = torch.randint(min(1000, vocab_size // 2), vocab_size, (args.batch_size, args.length), generator=gen)
        # no attention mask: nothing is padded, and a run's collator drops a mask that masks nothing
        token_labels = getattr(args, "token_labels", 0)  # a tag per token, or a label per sequence
        shape = (args.batch_size, args.length) if token_labels else (args.batch_size,)
        new = {"input_ids": ids.to(device), "labels": torch.randint(0, token_labels or 2, shape, generator=gen).to(device)}
        if args.repeat_batches:
            seen.append(new)
        return new

    model = method.prepare(model, iter([batch() for _ in range(2)]))
    if checkpointing:  # recompute each block's forward in backward instead of keeping its activations
        enable_gradient_checkpointing(model)
    seen.clear()
    layers = learner_layers(model)
    if frozen_dtype(args.precision) is not None:  # as a run in bf16 keeps them (learners.harness.precision)
        cast_frozen_linears(model, frozen_dtype(args.precision))
    cfg = TrainConfig(learning_rate=method.default_learning_rate)
    total = args.warmup + args.steps + 2  # two more: the operator count and the GPU's sync count
    optimizer, scheduler = make_optimizer(model, cfg, cfg.learning_rate, 0, total, 0)
    model, optimizer = accelerator.prepare(model, optimizer)
    params = trainable_parameters(optimizer)
    eager = model
    if args.compile:
        model = compile_model(model, args.compile_mode)
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    loaded_rss = rss_mb()

    def step(b):
        if forward_only:
            with torch.no_grad():
                model(**b)
        else:
            training_step(model, b, optimizer, scheduler, accelerator, cfg.max_grad_norm, params)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    cpu_times = []
    for i in range(args.warmup + args.steps):
        b = batch()
        t0, c0 = time.perf_counter(), time.process_time()
        step(b)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    peak_mb = peak_memory_mb(device)  # before the counts below, and the FLOP count, which runs one more pass
    counter = None
    if not args.compile:  # a compiled step's kernels are not dispatched one by one: nothing to count
        b = batch()
        with OpCounter() as counter:
            step(b)
    syncs = cuda_syncs(lambda: step(batch()))
    with FlopCounterMode(display=False) as flops:  # the eager module: the counter sees its matmuls
        if forward_only:
            with torch.no_grad():
                eager(**batch())
        else:
            accelerator.backward(eager(**batch()).loss)
    optimizer.zero_grad(set_to_none=True)
    if args.profile:
        profile_steps(args.profile, lambda: training_step(model, batch(), optimizer, scheduler, accelerator,
                                                          cfg.max_grad_norm, params), device)
    unwrapped = accelerator.unwrap_model(eager)
    counts = method.parameter_counts(unwrapped)
    cache = getattr(unwrapped, "frozen_prefix_cache", None)
    if forward_only:
        counts = {**counts, "trainable": 0}
    return {"method": args.label or args.worker, "step_ms": 1000 * statistics.median(times), "peak_mb": peak_mb,
            "cpu_ms": 1000 * statistics.median(cpu_times), "ops": counter and counter.ops,
            "host_reads": counter and counter.host_reads,
            "cuda_syncs": syncs,
            "gflops": flops.get_total_flops() / 1e9, "learner_layers": layers,
            "prefix_cache": None if cache is None else {"hits": cache.hits, "misses": cache.misses},
            "loaded_rss_mb": loaded_rss, "trainable": counts["trainable"], "total": counts["total"],
            "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "precision": args.precision, "compiled": bool(args.compile), "threads": torch.get_num_threads()}


def profile_steps(path: str, step, device, steps: int = 3) -> None:
    """torch.profiler over `steps` more training steps (after the timed ones); PATH gets the ops' table, the most
    self time first (the GPU's on CUDA), every op: where a step's time goes, kernel by kernel."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            step()
    table = prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=-1)  # every op: a few hundred rows
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(f"{steps} training steps, {torch.cuda.get_device_name(device) if cuda else 'CPU'}\n{table}\n")


def compile_model(model, mode: str | None = None):
    """torch.compile (`mode`: None/"default", or e.g. "reduce-overhead", CUDA graphs), failing with a message that
    says what to do (compilation itself runs at the first step)."""
    import torch
    try:
        return torch.compile(model, mode=None if mode in (None, "default") else mode)
    except Exception as e:  # noqa: BLE001 - any backend error: report it plainly
        raise SystemExit(f"torch.compile failed ({type(e).__name__}: {e}); run without --compile") from e


def add_worker_arguments(p: argparse.ArgumentParser) -> None:
    """The worker's own flags (hidden): shared by this script's main and run_worker."""
    for flag, kw in [("--worker", {}), ("--length", {"type": int}), ("--arch", {"choices": list(ARCHS)}),
                     ("--precision", {"choices": ["no", "bf16", "fp16"], "default": "no"}),
                     ("--compile", {"action": "store_true"}), ("--compile-mode", {}),
                     ("--repeat-batches", {"action": "store_true"}),
                     ("--options", {}), ("--label", {}), ("--profile", {})]:
        p.add_argument(flag, help=argparse.SUPPRESS, **kw)


def run_worker(method: str, batch_size: int, length: int, steps: int, warmup: int, model: str | None = None,
               arch: str | None = None, precision: str = "no", compile: bool = False, options: dict | None = None,
               label: str | None = None, timeout: float | None = None, repeat_batches: bool = False,
               profile: str | None = None, compile_mode: str | None = None, token_labels: int = 0) -> dict:
    """Run one worker in a fresh process (so peak memory is this method's alone) and return its row.

    Raises RuntimeError with the worker's last error line if it fails or times out."""
    cmd = [sys.executable, __file__, "--worker", method, "--batch-size", str(batch_size), "--length", str(length),
           "--steps", str(steps), "--warmup", str(warmup), "--precision", precision]
    for flag, value in [("--model", model), ("--arch", arch), ("--label", label), ("--profile", profile),
                        ("--compile-mode", compile_mode),
                        ("--options", None if options is None else json.dumps(options))]:
        if value is not None:
            cmd += [flag, value]
    if compile:
        cmd.append("--compile")
    if repeat_batches:
        cmd.append("--repeat-batches")
    if token_labels:
        cmd += ["--token-labels", str(token_labels)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f}s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(lines[-1].strip() if lines else f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def method_spec(spec: str) -> tuple[str, dict | None, bool]:
    """"learners" -> the CLI's default learners (selected by magnitude; a first epoch: the frozen-prefix cache misses).
    "learners:top-3" -> learners in those blocks with dropout everywhere (the frozen part and the learner blocks'
    attention too, unlike the CLI's default); "learners:top-3:nofd" also with
    frozen_dropout=False, whose frozen-prefix cache then misses every step (new batches: a first epoch); ":noad" runs
    the learner blocks' attention without dropout (attention_dropout=False), ":noapd" without it on the
    attention probabilities only (attention_probs_dropout=False);
    ":cached" times steps on batches seen before (a later epoch: every example cached); ":nocache" turns the
    cache off; ":ratio=R" sets the learner size (default: the CLI's, 1/8); ":nob2" and ":noln" leave each FFN's
    output bias and the block's output LayerNorm frozen (the CLI trains them by default; ":b2", ":ln" say so);
    ":ckpt" turns on activation checkpointing (finetune's --gradient-checkpointing: memory for a second forward).
    "priming:SCOPE" times a priming step (learners before selection) with that priming scope (all, ffn,
    learner-layers; default all). "learners:nocache" and "learners:cached" are the CLI's default without the
    frozen-prefix cache, and with it in a later epoch. Other names as they are.
    Returns (method, options, repeat batches)."""
    name, *parts = spec.split(":")
    if name == "priming":
        return "learners", {"selection": "priming", "priming_scope": parts[0] if parts else "all"}, False
    if not parts:
        return name, None, False
    if parts == ["nocache"]:
        return name, {"selection": "magnitude", "frozen_prefix_cache_mb": 0}, False
    if parts == ["cached"]:
        return name, {"selection": "magnitude"}, True
    layers = parts[0]
    options = {"selection": "magnitude", "layers": [int(i) for i in layers.split("+")] if "+" in layers else layers}
    for part, key in (("nofd", "frozen_dropout"), ("noad", "attention_dropout"), ("noapd", "attention_probs_dropout")):
        options[key] = part not in parts[1:]  # on unless named: what these specs meant before the CLI's default turned them off
    if "nocache" in parts[1:]:
        options["frozen_prefix_cache_mb"] = 0
    for part, key in (("b2", "train_ffn_output_bias"), ("ln", "train_layer_norm")):
        if part in parts[1:] or f"no{part}" in parts[1:]:
            options[key] = part in parts[1:]
    if "ckpt" in parts[1:]:
        options["activation_checkpointing"] = True
    for part in parts[1:]:
        if part.startswith("ratio="):
            options["ratio"] = float(part.removeprefix("ratio="))
    return name, options, "cached" in parts[1:]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="full,learners",
                   help="the first is the baseline of the ratios; forward times the forward pass alone (the floor of "
                        "every method that runs it); learners:LAYERS times learners in those blocks "
                        "(all, top-N, or blocks joined by +, e.g. 3+4+5; learners:top-3:nofd with --no-frozen-dropout, whose "
                        "frozen-prefix cache misses on new batches; :nofd:cached times a later epoch, every example "
                        "cached; :nocache turns the cache off; :ratio=R the learner size; :nob2 and :noln freeze the FFN output bias and the LayerNorm; :ckpt with activation checkpointing; priming:SCOPE times a priming step with that --priming-scope); "
                        "learners:nocache and learners:cached are the default without the cache and in a later epoch, "
                        "e.g. full,bitfit,learners:all,learners:top-3,priming:ffn")
    p.add_argument("--model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lengths", default="128", help="sequence lengths, one table block each, e.g. 128,64")
    p.add_argument("--precisions", default="no",
                   help="no (fp32) and/or bf16, e.g. no,bf16: every method in each, one table (bf16 keeps frozen "
                        "linear weights in bf16, as a run does)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--token-labels", type=int, default=0,
                   help="time a token classification head with this many tags (a tag per token, as "
                        "--task-type token-classification trains; e.g. 13 for WNUT 2017) instead of a sentence head")
    add_worker_arguments(p)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print_table(args)


def print_table(args) -> None:
    """Every method in every precision, side by side; ratios to the first method in the same precision and to the
    first row (the first method in the first precision)."""
    print("| batch x length | method | precision | trainable params | median step (ms) | vs first, same precision "
          "| vs first row | CPU time (ms) | operators | host reads | peak memory (MB) | vs first | matmul GFLOPs | vs first |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    precisions = args.precisions.split(",")
    for length in [int(x) for x in args.lengths.split(",")]:
        first_row = None
        for precision in precisions:
            base = None
            for spec in args.methods.split(","):
                name, options, repeat = method_spec(spec)
                r = run_worker(name, args.batch_size, length, args.steps, args.warmup, model=args.model, arch=args.arch,
                               precision=precision, options=options, label=spec, repeat_batches=repeat,
                               token_labels=args.token_labels)
                base, first_row = base or r, first_row or r
                print(f"| {args.batch_size} x {length} | {r['method']} | {precision} | {r['trainable']:,} "
                      f"({100 * r['trainable'] / r['total']:.2f}%) | {r['step_ms']:.1f} | {r['step_ms'] / base['step_ms']:.2f}x "
                      f"| {r['step_ms'] / first_row['step_ms']:.2f}x | {r['cpu_ms']:.1f} | {r['ops']} | {r['host_reads']} "
                      f"| {r['peak_mb']:.0f} | {r['peak_mb'] / base['peak_mb']:.2f}x | {r['gflops']:.2f} "
                      f"| {r['gflops'] / base['gflops']:.2f}x |", flush=True)
    print(f"\nmedian of {args.steps} steps after {args.warmup} warm-up steps; {first_row['device_name']} "
          f"({first_row['device']}), {first_row['threads']} threads, torch {first_row['torch']}; each method in a "
          f"fresh process; {args.arch or args.model or 'the default model'}; operators and host reads: one step, "
          "counted by a TorchDispatchMode")


if __name__ == "__main__":
    main()

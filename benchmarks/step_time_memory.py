"""Median step time and peak memory per method, side by side in one run.

    python benchmarks/step_time_memory.py [--methods full,learners] [--batch-size 32] [--lengths 128] [--steps 20]

Each method runs in its own fresh process (peak RSS is per process), on the
default model (or --model), with the same optimizer step as `learners
finetune` (AdamW, grad clipping). Inputs are random token ids of a fixed
length, so every step does the same work. Learners are measured in their
training phase (selection by magnitude: the step cost does not depend on which
neurons were picked). Memory: peak RSS of the process on the CPU (and the part
of it above the RSS after the model was loaded), peak allocated on CUDA.

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


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args) -> dict:
    import torch
    from accelerate import Accelerator
    from torch.utils.flop_counter import FlopCounterMode

    from learners.methods import build_method
    from learners.models import load_model_and_tokenizer
    from learners.train import TrainConfig, make_optimizer, peak_memory_mb, training_step

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(args.model, 2, ["a", "b"])
    options = {"selection": "magnitude"} if args.worker == "learners" else {}
    method = build_method(args.worker, options)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    model.to(device)
    gen = torch.Generator().manual_seed(0)

    def batch():
        ids = torch.randint(1000, tokenizer.vocab_size, (args.batch_size, args.length), generator=gen)
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                "labels": torch.randint(0, 2, (args.batch_size,), generator=gen).to(device)}

    model = method.prepare(model, iter([batch() for _ in range(2)]))
    cfg = TrainConfig(learning_rate=method.default_learning_rate)
    total = args.warmup + args.steps
    optimizer, scheduler = make_optimizer(model, cfg, cfg.learning_rate, 0, total, 0)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loaded_rss = rss_mb()
    times = []
    for i in range(total):
        b = batch()
        t0 = time.perf_counter()
        training_step(model, b, optimizer, scheduler, accelerator, cfg.max_grad_norm)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak_mb = peak_memory_mb(device)  # before the FLOP count below, which runs one more pass
    with FlopCounterMode(display=False) as flops:
        accelerator.backward(model(**batch()).loss)
    optimizer.zero_grad(set_to_none=True)
    counts = method.parameter_counts(accelerator.unwrap_model(model))
    return {"method": args.worker, "step_ms": 1000 * statistics.median(times), "peak_mb": peak_mb,
            "gflops": flops.get_total_flops() / 1e9,
            "loaded_rss_mb": loaded_rss, "trainable": counts["trainable"], "total": counts["total"],
            "device": str(device), "threads": torch.get_num_threads()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="full,learners", help="the first is the baseline of the ratios")
    p.add_argument("--model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lengths", default="128", help="sequence lengths, one table block each, e.g. 128,64")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print("| batch x length | method | trainable params | median step (ms) | vs first | peak memory (MB) | vs first "
          "| training memory above loaded model (MB) | vs first | matmul GFLOPs (fwd+bwd) | vs first |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for length in [int(x) for x in args.lengths.split(",")]:
        rows = []
        for method in args.methods.split(","):
            cmd = [sys.executable, __file__, "--worker", method, "--batch-size", str(args.batch_size), "--length",
                   str(length), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            if args.model:
                cmd += ["--model", args.model]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        base = rows[0]
        base_extra = base["peak_mb"] - base["loaded_rss_mb"]
        for r in rows:
            extra = r["peak_mb"] - r["loaded_rss_mb"]
            print(f"| {args.batch_size} x {length} | {r['method']} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f}%) "
                  f"| {r['step_ms']:.0f} | {r['step_ms'] / base['step_ms']:.2f}x | {r['peak_mb']:.0f} | "
                  f"{r['peak_mb'] / base['peak_mb']:.2f}x | {extra:.0f} | {extra / base_extra:.2f}x | {r['gflops']:.0f} | "
                  f"{r['gflops'] / base['gflops']:.2f}x |", flush=True)
    print(f"\nmedian of {args.steps} steps after {args.warmup} warm-up steps; device {base['device']}, "
          f"{base['threads']} threads; each method in a fresh process")


if __name__ == "__main__":
    main()

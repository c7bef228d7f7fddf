"""Serving several tasks: what switching tasks costs, and the memory each extra task adds.

    OMP_NUM_THREADS=1 python benchmarks/switch_learners.py [--tasks 4] [--switches 50] [--model M]

On the default model (or --model), with N tasks whose weights are random (switching cost does not depend
on training), side by side:

* learner sets on one backbone: `LearnerModel.load_learners` from disk, then `set_learners(name)`;
* merged models, one per task: loaded from disk at each switch (`from_pretrained`), or all N kept in memory
  (a switch is then free, each task costs a whole model);
* PEFT LoRA (r 8, query/value, the classifier as modules_to_save) on one backbone: `load_adapter`,
  `set_adapter`.

Extra memory per task is counted exactly (bytes of the tensors a task adds while it is not in use, shared
storage counted once), and as the process's resident memory (RSS) growth per loaded task after a forward
pass (so memory-mapped weights are touched), which also holds allocator slack. Times are medians: a
switch alone (`--switches`, each to the next task in turn; for learners it includes writing the slices
into the shared weights), the first forward pass after a switch and a forward pass without switching
(`--forwards`, one sequence of `--length` (128) tokens: unmerged LoRA pays its extra matmuls there). Switching back must
give the same outputs (checked).
"""

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch

PAGE = 4096


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE / 2**20


def tensor_mb(tensors) -> float:
    """Bytes of distinct storages among `tensors`, in MB."""
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values()) / 2**20


def default_model(name):
    from learners.harness.models import load_model_and_tokenizer, quiet_transformers
    with quiet_transformers():
        return load_model_and_tokenizer(name, 2, ["no", "yes"])[0].eval()


INPUT = {}  # one sequence of --length random token ids, set in main


def median_ms(step, n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        step(i)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


@torch.no_grad()
def measure(switch, model, args) -> dict:
    """Switch time alone; the first forward pass after a switch; a forward pass without switching. `switch(i)`
    goes to task i % N; `model()` is the model in use. Switching back must give the same outputs."""
    reference = model()(**INPUT).logits
    switch_ms = median_ms(lambda i: switch(i + 1), args.switches)
    first = []
    for i in range(args.forwards):
        switch(i + 1)
        t0 = time.perf_counter()
        model()(**INPUT)
        first.append(1000 * (time.perf_counter() - t0))
    switch(0)
    assert torch.equal(model()(**INPUT).logits, reference), "switching back changed the outputs"
    forward_ms = median_ms(lambda i: model()(**INPUT), args.forwards)
    return {"switch_ms": switch_ms, "first_forward_ms": statistics.median(first), "forward_ms": forward_ms}


@torch.no_grad()
def grown(load, n: int, first) -> tuple[float, float]:
    """Median ms of `load(i)` for i in 1..n-1 (each followed by a forward pass, so the weights are touched,
    as serving would), and the resident memory growth per load in MB. A forward pass of `first` (the model
    before these loads) comes first, so one-time buffers do not count."""
    first(**INPUT)
    gc.collect()
    rss0, loads = rss_mb(), []
    for i in range(1, n):
        t0 = time.perf_counter()
        model = load(i)
        loads.append(1000 * (time.perf_counter() - t0))
        model(**INPUT)
    return statistics.median(loads), (rss_mb() - rss0) / (n - 1)


def learner_sets(args, work: Path) -> dict:
    from learners import LearnerConfig, LearnerModel, get_learner_model

    for i in range(args.tasks):  # N tasks' learners (random values), saved as `learners finetune` does
        config = LearnerConfig(ratio=1 / 16, layers="all", train_ffn_output_bias=False, train_layer_norm=False, seed=i)
        lm = get_learner_model(default_model(args.model), config)
        with torch.no_grad():
            for name, t in lm.state_dict(keep_vars=True).items():
                if t.is_floating_point():
                    t.add_(0.01 * torch.randn_like(t))
        lm.save_pretrained(work / f"learners{i}")
    model = LearnerModel.from_pretrained(default_model(args.model), work / "learners0", name="t0")
    base = {t.untyped_storage().data_ptr() for t in model.base_model.state_dict(keep_vars=True).values()}

    def load(i):
        model.load_learners(work / f"learners{i}", f"t{i}")
        return model

    load_ms, rss = grown(load, args.tasks, model)
    extra = [tensor_mb(t for m in s.modules.values() for t in [*m.parameters(), *m.buffers()]
                       if t.untyped_storage().data_ptr() not in base) for name, s in model._sets.items() if name != "t0"]
    timing = measure(lambda i: model.set_learners(f"t{i % args.tasks}"), lambda: model, args)
    return {**timing, "load_ms": load_ms, "extra_mb": statistics.mean(extra), "rss_mb": rss}


def merged_models(args, work: Path) -> tuple[dict, dict]:
    from transformers import AutoModelForSequenceClassification

    from learners.harness.models import quiet_transformers

    for i in range(args.tasks):
        with quiet_transformers():
            default_model(args.model).save_pretrained(work / f"merged{i}")

    def load(i):
        return AutoModelForSequenceClassification.from_pretrained(work / f"merged{i % args.tasks}").eval()

    models = [load(0)]
    load_ms, rss = grown(lambda i: models.append(load(i)) or models[-1], args.tasks, models[0])
    in_memory = {**measure(lambda i: None, lambda: models[0], args), "switch_ms": 0.0, "load_ms": load_ms,
                 "extra_mb": tensor_mb(models[0].state_dict().values()), "rss_mb": rss}
    models.clear()
    gc.collect()
    current = {"model": load(0)}
    timing = measure(lambda i: current.update(model=load(i)), lambda: current["model"], args)
    from_disk = {**timing, "load_ms": timing["switch_ms"], "extra_mb": 0.0, "rss_mb": 0.0}
    return from_disk, in_memory


def lora_adapters(args, work: Path) -> dict:
    from peft import LoraConfig, PeftModel, get_peft_model

    for i in range(args.tasks):
        torch.manual_seed(i)
        peft_model = get_peft_model(default_model(args.model), LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16,
                                                                          target_modules=["query", "value"]))
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.01)  # nonzero, as after training
        peft_model.save_pretrained(work / f"lora{i}")
    model = PeftModel.from_pretrained(default_model(args.model), work / "lora0", adapter_name="t0").eval()

    def load(i):
        model.load_adapter(work / f"lora{i}", adapter_name=f"t{i}")
        return model

    load_ms, rss = grown(load, args.tasks, model)
    extra = tensor_mb(p for n, p in model.named_parameters() if ".t1." in n or n.endswith(".t1"))
    timing = measure(lambda i: model.set_adapter(f"t{i % args.tasks}"), lambda: model, args)
    return {**timing, "load_ms": load_ms, "extra_mb": extra, "rss_mb": rss}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--switches", type=int, default=50, help="switches timed (median)")
    parser.add_argument("--forwards", type=int, default=10, help="forward passes timed, after a switch and without")
    parser.add_argument("--length", type=int, default=128, help="tokens in the forward pass's one sequence")
    parser.add_argument("--model", help="a model directory or hub id (default: the embedded all-MiniLM-L6-v2)")
    args = parser.parse_args(argv)
    INPUT["input_ids"] = torch.randint(1000, 20000, (1, args.length), generator=torch.Generator().manual_seed(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows.append(("learner sets on one backbone (`load_learners`, `set_learners`)", learner_sets(args, work)))
        from_disk, in_memory = merged_models(args, work)
        rows.append(("merged model per task, loaded from disk at each switch (`from_pretrained`)", from_disk))
        rows.append((f"merged models, all {args.tasks} kept in memory", in_memory))
        rows.append(("PEFT LoRA r8 q/v on one backbone (`load_adapter`, `set_adapter`)", lora_adapters(args, work)))
    print(f"{args.tasks} tasks on {args.model or 'the default model (all-MiniLM-L6-v2)'}; forward: 1 x {args.length} tokens; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("| approach | switch (ms) | first forward after a switch (ms) | forward (ms) | load one more task (ms) "
          "| extra memory per task (MB, tensors) | RSS growth per task (MB) |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['switch_ms']:.2f} | {r['first_forward_ms']:.1f} | {r['forward_ms']:.1f} | "
              f"{r['load_ms']:.1f} | {r['extra_mb']:.2f} | {r['rss_mb']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bit-identity of two runs of the same command (before/after issue 33's refactor): weights and every metric."""
import hashlib, json, sys
from pathlib import Path

TIMING = ("second", "time", "_ms", "memory", "per_s", "examples_s", "tokens_s", "throughput")

def sha(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]

def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if not any(t in k for t in TIMING)}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x

for run in sys.argv[1:]:
    b, a = Path("before") / run, Path("after") / run
    rb, ra = json.loads((b / "results.json").read_text()), json.loads((a / "results.json").read_text())
    files = ["learners/learners_model.safetensors", "model/model.safetensors"]
    same_files = {f: sha(b / f) == sha(a / f) for f in files if (b / f).exists()}
    hist = strip(rb["history"]) == strip(ra["history"]) and strip(rb["log_history"]) == strip(ra["log_history"])
    print(f"{run}: best {rb['best_metric']:.6f} vs {ra['best_metric']:.6f}; files identical {same_files}; "
          f"every logged loss/metric identical: {hist}; learners sha256 {sha(b / files[0])}")

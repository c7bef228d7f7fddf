#!/usr/bin/env bash
# The CPU benchmark behind BENCHMARKS.md: two streams, one thread each, side by side on a 2-core machine.
# Resumable: re-run it to finish the grid (a run is skipped once its results.json exists).
# SEEDS=0,1,2 bash benchmarks/run_cpu_grid.sh   completes the 3-seed grid.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out/cpu}
GLUE=${GLUE:-../shared/glue}
METHODS=full,learners,lora,bitfit,far,adapter,head   # learners and its closest rivals first
SEEDS=${SEEDS:-0}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
bench() { learners bench --data-dir "$GLUE" --seeds "$SEEDS" "$@"; }
ablations() {  # the learner ablations on one task
  bench --tasks "$1" --methods learners --selection gradient --output-dir "$OUT/ablation-selection-gradient"
  bench --tasks "$1" --methods learners --selection magnitude --output-dir "$OUT/ablation-selection-magnitude"
  bench --tasks "$1" --methods learners --selection random --output-dir "$OUT/ablation-selection-random"
  bench --tasks "$1" --methods learners --reset-after-priming --output-dir "$OUT/ablation-reset-after-priming"
  for r in 0.015625 0.03125 0.125; do
    bench --tasks "$1" --methods learners --ratio "$r" --output-dir "$OUT/ablation-ratio-$r"
  done
}
(
  bench --tasks cola --methods "$METHODS" --output-dir "$OUT/main"
  ablations cola
  bench --tasks stsb --methods "$METHODS" --output-dir "$OUT/main"
  bench --tasks sst2 --methods "$METHODS" --max-train-samples 10000 --output-dir "$OUT/main-sst2-10k"
) >> "$OUT.stream1.log" 2>&1 &
(
  bench --tasks mrpc --methods "$METHODS" --output-dir "$OUT/main"
  ablations mrpc
  bench --tasks rte --methods "$METHODS" --output-dir "$OUT/main"
) >> "$OUT.stream2.log" 2>&1 &
wait
learners bench --report-only --output-dir "$OUT/main"

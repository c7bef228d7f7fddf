#!/usr/bin/env bash
# The CPU benchmark behind BENCHMARKS.md: two streams, one thread each, side by side on a 2-core machine.
# Stream 1: CoLA, then the CoLA learner ablations. Stream 2: MRPC, then STS-B.
# Resumable: re-run to finish whatever did not (each run is skipped once its results.json exists).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out/cpu}
GLUE=${GLUE:-../shared/glue}
METHODS=full,head,bitfit,lora,adapter,far,learners
SEEDS=${SEEDS:-0}
export OMP_NUM_THREADS=1
bench() { learners bench --data-dir "$GLUE" --seeds "$SEEDS" "$@"; }
(
  bench --tasks cola --methods "$METHODS" --output-dir "$OUT/main"
  bench --tasks cola --methods learners --selection gradient --output-dir "$OUT/ablation-selection-gradient"
  bench --tasks cola --methods learners --selection magnitude --output-dir "$OUT/ablation-selection-magnitude"
  bench --tasks cola --methods learners --selection random --output-dir "$OUT/ablation-selection-random"
  bench --tasks cola --methods learners --reset-after-priming --output-dir "$OUT/ablation-reset-after-priming"
  bench --tasks cola --methods learners --ratio 0.015625 --output-dir "$OUT/ablation-ratio-1-64"
  bench --tasks cola --methods learners --ratio 0.03125 --output-dir "$OUT/ablation-ratio-1-32"
  bench --tasks cola --methods learners --ratio 0.125 --output-dir "$OUT/ablation-ratio-1-8"
) > "$OUT.stream1.log" 2>&1 &
(
  bench --tasks mrpc --methods "$METHODS" --output-dir "$OUT/main"
  bench --tasks stsb --methods "$METHODS" --output-dir "$OUT/main"
  bench --tasks rte --methods "$METHODS" --output-dir "$OUT/main"
  bench --tasks sst2 --methods "$METHODS" --max-train-samples 10000 --output-dir "$OUT/main-sst2-10k"
) > "$OUT.stream2.log" 2>&1 &
wait
learners bench --report-only --output-dir "$OUT/main"

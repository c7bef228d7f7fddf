#!/usr/bin/env bash
# Issue 34's evidence: named-entity recognition on WNUT 2017 (../shared/ner/wnut17) with the default model, full
# fine-tuning, the default learners, LoRA and BitFit, seeds 0-2, 3 epochs at each method's default hyperparameters,
# evaluated every 8 steps (time to target needs a fine history). One `learners bench` per method (seed outermost
# inside it): OUT/bench/runs/custom/METHOD/seedN. Resumable: re-run it to finish (a run with results.json is
# skipped). The tables go beside the bench folder (OUT/step_time.md, OUT/ner_table.md), never into it: a bench
# refuses a folder holding files it did not write.
# Then the side-by-side step table (the same token head, batch 32 x 64 tokens: WNUT's batches pad to their
# longest sentence, 40-75 sub-tokens) and the table: best dev entity F1 per method, and time to target
# (95% of full's mean best) in steps priced by the step table (benchmarks/ner_table.py).
#   bash benchmarks/run_ner_grid.sh
#   OUT=/tmp/ner-try SEEDS=0 EXTRA="--max-steps 4 --eval-steps 2 --max-train-samples 64 --max-eval-samples 32" \
#     STEPS=3 bash benchmarks/run_ner_grid.sh      a try in a few minutes
set -eu
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out/ner-wnut17}
DATA=${DATA:-../shared/ner/wnut17}
SEEDS=${SEEDS:-0,1,2}
METHODS=${METHODS:-full learners lora bitfit}
EXTRA=${EXTRA:-}
STEPS=${STEPS:-20}   # timed steps per method in the step table
export PYTHONPATH=${PYTHONPATH:-$PWD/src}
mkdir -p "$OUT"

for method in $METHODS; do
  # shellcheck disable=SC2086
  python -m learners.cli bench --train-file "$DATA/train.conll" --validation-file "$DATA/dev.conll" \
    --task-type token-classification --methods "$method" --seeds "$SEEDS" --epochs 3 --eval-steps 8 \
    --no-progress --output-dir "$OUT/bench" $EXTRA || echo "some $method runs failed: see their log.txt under $OUT/bench/runs"
done

# side by side, fine-tunings done: the default learners in their first epoch (the frozen-prefix cache fills) and
# later (cached), as the runs trained them
python benchmarks/step_time_memory.py --methods full,learners,learners:cached,lora,bitfit --token-labels 13 \
  --batch-size 32 --lengths 64 --precisions "${PRECISION:-bf16}" --steps "$STEPS" --warmup 2 | tee "$OUT/step_time.md"
python benchmarks/ner_table.py "$OUT/bench" --step-table "$OUT/step_time.md" | tee "$OUT/ner_table.md"

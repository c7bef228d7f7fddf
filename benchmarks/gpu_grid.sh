#!/usr/bin/env bash
# The multi-seed GLUE grid on one GPU: small fine-tunings share the card (one H100 ran four MiniLM runs at
# once, about 40 s each), so PARALLEL jobs run at a time from a queue (xargs -P), one `learners bench` call
# per task x method x seed: each run lands in OUT/runs/TASK/METHOD/seedN (results.json, log.txt), the layout
# `learners bench` uses, and a finished run is skipped, so re-running the script finishes a stopped grid.
# At the end `learners bench --report-only` writes the combined report (OUT/bench.md, bench.csv, plots).
#   bash benchmarks/gpu_grid.sh --data-dir .gpu/glue                       on the GPU machine, after . .gpu/setup.sh
#   TASKS=cola SEEDS=0 PARALLEL=2 bash benchmarks/gpu_grid.sh --epochs 1   other flags go to every finetune
# SST-2 trains on its 10k subset (SST2_FLAGS, default --max-train-samples 10000, as the CPU grid does) and is
# queued first: it is the longest run.
# Settings (environment): TASKS (sst2,cola,mrpc,stsb,rte), METHODS (full,learners,lora,bitfit), SEEDS (0,1,2),
# PARALLEL (4), DATA_DIR (../shared/glue; --data-dir wins), MODEL (the embedded model; /tmp/minilm on the GPU
# machine if set, else the embedded one), OUT (bench-out/gpu), MIXED_PRECISION (bf16), EXTRA (more finetune
# flags, e.g. "--max-steps 2"), PYTHON (python3). Each job's output is appended to OUT/queue.log.
set -u
cd "$(dirname "$0")/.."
TASKS=${TASKS:-sst2,cola,mrpc,stsb,rte}
SST2_FLAGS=${SST2_FLAGS---max-train-samples 10000}
METHODS=${METHODS:-full,learners,lora,bitfit}
SEEDS=${SEEDS:-0,1,2}
PARALLEL=${PARALLEL:-4}
DATA_DIR=${DATA_DIR:-../shared/glue}
OUT=${OUT:-bench-out/gpu}
MIXED_PRECISION=${MIXED_PRECISION:-bf16}
EXTRA=${EXTRA:-}
PYTHON=${PYTHON:-python3}
if [ -z "${MODEL+x}" ] && [ -f /tmp/minilm/model.safetensors ]; then MODEL=/tmp/minilm; fi  # made by .gpu/setup.sh
MODEL=${MODEL:-}
while [ $# -gt 0 ]; do  # --data-dir DIR; anything else goes to every finetune
  case "$1" in
    --data-dir) DATA_DIR=$2; shift 2 ;;
    --data-dir=*) DATA_DIR=${1#*=}; shift ;;
    *) EXTRA="$EXTRA $1"; shift ;;
  esac
done
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# the CPU side (tokenising, the Python loop) of PARALLEL runs shares the cores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / PARALLEL > 0 ? $(nproc) / PARALLEL : 1 ))}
mkdir -p "$OUT"
FLAGS="--data-dir $DATA_DIR --mixed-precision $MIXED_PRECISION ${MODEL:+--model $MODEL} $EXTRA"
echo "grid: tasks $TASKS, methods $METHODS, seeds $SEEDS, $PARALLEL at a time; finetune flags: $FLAGS"
echo "output: $OUT/runs/TASK/METHOD/seedN; progress: $OUT/queue.log"

jobs() {  # one line per run not yet finished, "TASK METHOD SEED"; seed outermost, as `learners bench` orders
  for s in ${SEEDS//,/ }; do
    for t in ${TASKS//,/ }; do
      for m in ${METHODS//,/ }; do
        if [ -f "$OUT/runs/$t/$m/seed$s/results.json" ]; then echo "skip (done): $t $m seed$s" >&2
        else echo "$t $m $s"; fi
      done
    done
  done
}

# word splitting of $FLAGS is wanted: it holds several flags
# shellcheck disable=SC2086
jobs | xargs -P "$PARALLEL" -L 1 sh -c 'py=$0 out=$1 flags=$2 sst2=$3; t=$4 m=$5 s=$6
  [ "$t" = sst2 ] && flags="$flags $sst2"
  echo "start $t $m seed$s"
  $py -m learners.cli bench --tasks "$t" --methods "$m" --seeds "$s" --output-dir "$out" $flags >> "$out/queue.log" 2>&1
  status=$?
  [ $status -eq 0 ] && echo "done  $t $m seed$s" || echo "FAILED $t $m seed$s (exit $status): see $out/runs/$t/$m/seed$s/log.txt"
  exit $status' "$PYTHON" "$OUT" "$FLAGS" "$SST2_FLAGS"
status=$?
"$PYTHON" -m learners.cli bench --report-only --tasks "$TASKS" --methods "$METHODS" --seeds "$SEEDS" --output-dir "$OUT"
[ $status -eq 0 ] || echo "some runs failed (xargs exit $status); re-run this script to retry them" >&2
exit $status

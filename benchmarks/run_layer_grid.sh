#!/usr/bin/env bash
# Issue 8's grid: where learners go (layer choice), how big, how they are primed, against full fine-tuning,
# LoRA and BitFit, on CoLA, MRPC, STS-B and RTE (and SST-2 on a 10k subset), seeds 0,1,2.
# A job queue worked by two processes, one thread each (2-core machine), most useful jobs first; resumable
# (a run with a results.json is skipped). Each configuration is its own bench dir under $OUT, named as
# BENCHMARKS.md names it. At the end every finished run's results.json (and log) is copied into
# docs/benchmarks/cpu-layers/ (the models stay out of git), so a later session never repeats a run.
#   bash benchmarks/run_layer_grid.sh                 seed 0
#   SEEDS=0,1,2 bash benchmarks/run_layer_grid.sh     three seeds
#   ONLY="all top3" TASKS="stsb cola" BASELINES="" bash benchmarks/run_layer_grid.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out/cpu2}
KEEP=${KEEP:-docs/benchmarks/cpu-layers}
GLUE=${GLUE:-../shared/glue}
SEEDS=${SEEDS:-0}
TASKS=${TASKS:-stsb cola mrpc rte}
BASELINES=${BASELINES-full lora bitfit}   # BASELINES="" runs learner configurations only
export OMP_NUM_THREADS=1
mkdir -p "$OUT"

# name | learners flags (see README, "Where the learners go")
CONFIGS='all|--learner-layers all
top5|--learner-layers top-5
top4|--learner-layers top-4
top3|--learner-layers top-3
auto|--learner-layers auto
top3-nofd|--learner-layers top-3 --no-frozen-dropout
top5-nofd|--learner-layers top-5 --no-frozen-dropout
top5-nofd-r32|--learner-layers top-5 --no-frozen-dropout --ratio 0.03125
auto-ll|--learner-layers auto --priming-scope learner-layers
all-ffn-priming|--learner-layers all --priming-scope ffn
all-priming-0.1|--learner-layers all --priming-fraction 0.1
all-reset|--learner-layers all --reset-after-priming
all-random|--learner-layers all --selection random
all-gradient|--learner-layers all --selection gradient
all-magnitude|--learner-layers all --selection magnitude
all-ratio-1-32|--learner-layers all --ratio 0.03125'

jobs() {  # one line per job: the learners bench arguments
  for t in $TASKS; do
    for m in $BASELINES; do echo "--tasks $t --methods $m --output-dir $OUT/baselines"; done
  done
  echo "$CONFIGS" | while IFS='|' read -r name flags; do
    case " ${ONLY:-$name} " in *" $name "*) ;; *) continue ;; esac
    for t in $TASKS; do echo "--tasks $t --methods learners $flags --output-dir $OUT/$name"; done
  done
}

jobs | xargs -P 2 -L 1 sh -c 'log=$0 glue=$1 seeds=$2; shift 2
  python -m learners.cli bench --data-dir "$glue" --seeds "$seeds" "$@" >> "$log" 2>&1' "$OUT.queue.log" "$GLUE" "$SEEDS"
for dir in "$OUT"/*/; do
  [ -d "$dir/runs" ] || continue
  python -m learners.cli bench --report-only --output-dir "$dir"
  (cd "$dir" && find runs -name results.json -o -name log.txt) | while read -r f; do
    mkdir -p "$KEEP/$(basename "$dir")/$(dirname "$f")" && cp "$dir/$f" "$KEEP/$(basename "$dir")/$f"
  done
done

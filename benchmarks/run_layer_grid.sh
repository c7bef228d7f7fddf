#!/usr/bin/env bash
# Issue 8's grid: where learners go (layer choice), how big, how they are primed, against full fine-tuning,
# LoRA and BitFit, on CoLA, MRPC, STS-B and RTE (and SST-2 on a 10k subset), seeds 0,1,2.
# A job queue worked by two processes, one thread each (2-core machine), most useful jobs first; resumable
# (a run with a results.json is skipped). Each configuration is its own bench dir under $OUT, named as
# the journal (docs/journal.md) names it. At the end every finished run's results.json (and log) is copied into
# docs/benchmarks/cpu-layers/ (the models stay out of git). A run kept there, or kept as a bench.csv row in
# one of $ALSO_KEPT (older runs of the baselines and the default), is not queued again, so a fresh clone
# carries on the grid where the last session left it.
#   bash benchmarks/run_layer_grid.sh                 seed 0
#   SEEDS=0,1,2 bash benchmarks/run_layer_grid.sh     three seeds
#   ONLY="all top3" TASKS="stsb cola" BASELINES="" bash benchmarks/run_layer_grid.sh
#   DRY_RUN=1 SEEDS=0,1,2 bash benchmarks/run_layer_grid.sh   list the runs still missing, run nothing
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out/cpu2}
KEEP=${KEEP:-docs/benchmarks/cpu-layers}
GLUE=${GLUE:-../shared/glue}
SEEDS=${SEEDS:-0}
TASKS=${TASKS:-stsb cola mrpc rte}
BASELINES=${BASELINES-full lora bitfit}   # BASELINES="" runs learner configurations only
# bench.csv files whose rows count as kept runs of the baselines and of `all` (method learners)
ALSO_KEPT=${ALSO_KEPT-docs/benchmarks/cpu/all/bench.csv docs/benchmarks/cola-3seeds/bench.csv}
DRY_RUN=${DRY_RUN:-}
export OMP_NUM_THREADS=1

# name | learners flags (see docs/cli.md#where-the-learners-go---learner-layers). The configurations that prime name --selection priming:
# the default selection is random since docs/journal.md#random-default, and every kept run of them primed. (top3-nofd-cache:
# the frozen-prefix cache is on wherever the frozen blocks run without dropout; the older top3-nofd runs had none.)
# Every configuration names its --ratio: the default moved from 1/16 to 1/8 (docs/journal.md#learner-size) and the kept
# runs of the configurations without a size in their name were made at 1/16, so their missing seeds are too.
# Likewise each names whether b2 and the LayerNorm train: the default turned them on in docs/journal.md#bias-and-layernorm, and every run kept before
# (all but the -b2-ln configurations) was made without them. And each names whether the frozen part below the learners
# and the learner blocks' attention have dropout: the default turned both off in docs/journal.md#skip-1-default, and every run kept before had
# it wherever the name does not say nofd or noad.
# (Learning rate 2e-3 at ratio 1/8 is not queued: CoLA seed 0 collapsed, best MCC 0.109; docs/journal.md#learner-size.)
# The default in bf16 (-bf16) and in fp32 (-fp32-fused) were run with the code of docs/journal.md#bf16-cpu (fused AdamW,
# the learner neurons first in each FFN); every run before it had AdamW's for-loop.
CONFIGS='all|--learner-layers all --selection priming --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
top5|--learner-layers top-5 --selection priming --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
top4|--learner-layers top-4 --selection priming --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
top3|--learner-layers top-3 --selection priming --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
auto|--learner-layers auto --selection priming --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
top3-nofd-cache|--learner-layers top-3 --no-frozen-dropout --selection priming --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --attention-dropout
top4-nofd-cache|--learner-layers top-4 --no-frozen-dropout --selection priming --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --attention-dropout
top3-nofd-random|--learner-layers top-3 --no-frozen-dropout --selection random --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --attention-dropout
top5-nofd|--learner-layers top-5 --no-frozen-dropout --selection priming --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --attention-dropout
top5-nofd-r32|--learner-layers top-5 --no-frozen-dropout --ratio 0.03125 --selection priming --no-train-ffn-output-bias --no-train-layer-norm --attention-dropout
auto-ll|--learner-layers auto --priming-scope learner-layers --selection priming --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
all-ffn-priming|--learner-layers all --priming-scope ffn --selection priming --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
all-priming-0.1|--learner-layers all --priming-fraction 0.1 --selection priming --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
all-reset|--learner-layers all --reset-after-priming --selection priming --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
all-random|--learner-layers all --selection random --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
all-gradient|--learner-layers all --selection gradient --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
all-magnitude|--learner-layers all --selection magnitude --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
all-ratio-1-32|--learner-layers all --ratio 0.03125 --selection priming --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
all-random-ratio-1-32|--learner-layers all --ratio 0.03125 --selection random --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
all-random-ratio-1-8|--learner-layers all --ratio 0.125 --selection random --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
all-random-ratio-1-8-lr-5e-4|--learner-layers all --ratio 0.125 --selection random --learning-rate 5e-4 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
all-random-ratio-1-8-b2-ln|--learner-layers all --ratio 0.125 --selection random --train-ffn-output-bias --train-layer-norm --frozen-dropout --attention-dropout
all-random-ratio-1-8-epochs-5|--learner-layers all --ratio 0.125 --selection random --epochs 5 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout
all-random-ratio-1-8-b2-ln-epochs-5|--learner-layers all --ratio 0.125 --selection random --train-ffn-output-bias --train-layer-norm --epochs 5 --frozen-dropout --attention-dropout
top4-nofd-cache-random-1-8-b2-ln|--learner-layers top-4 --no-frozen-dropout --ratio 0.125 --selection random --train-ffn-output-bias --train-layer-norm --attention-dropout
top3-nofd-cache-random-1-8-b2-ln|--learner-layers top-3 --no-frozen-dropout --ratio 0.125 --selection random --train-ffn-output-bias --train-layer-norm --attention-dropout
top4-nofd-cache-random-1-4-b2-ln|--learner-layers top-4 --no-frozen-dropout --ratio 0.25 --selection random --train-ffn-output-bias --train-layer-norm --attention-dropout
top4-nofd-cache-gradient-1-8-b2-ln|--learner-layers top-4 --no-frozen-dropout --ratio 0.125 --selection gradient --train-ffn-output-bias --train-layer-norm --attention-dropout
top5-nofd-noad-cache-random-1-8-b2-ln|--learner-layers top-5 --no-frozen-dropout --no-attention-dropout --ratio 0.125 --selection random --train-ffn-output-bias --train-layer-norm
top4-nofd-noad-cache-random-1-8-b2-ln|--learner-layers top-4 --no-frozen-dropout --no-attention-dropout --ratio 0.125 --selection random --train-ffn-output-bias --train-layer-norm
top4-nofd-noad-cache-random-1-4-b2-ln|--learner-layers top-4 --no-frozen-dropout --no-attention-dropout --ratio 0.25 --selection random --train-ffn-output-bias --train-layer-norm
top4-nofd-noapd-cache-random-1-8-b2-ln|--learner-layers top-4 --no-frozen-dropout --no-attention-probs-dropout --ratio 0.125 --selection random --train-ffn-output-bias --train-layer-norm --attention-dropout
all-noad-random-1-8-b2-ln|--learner-layers all --no-attention-dropout --ratio 0.125 --selection random --train-ffn-output-bias --train-layer-norm --frozen-dropout
top4-nofd-nocache-random-1-8-b2-ln|--learner-layers top-4 --no-frozen-dropout --frozen-prefix-cache-mb 0 --ratio 0.125 --selection random --train-ffn-output-bias --train-layer-norm --attention-dropout
top5-nofd-noad-cache-random-1-32-b2-ln|--learner-layers top-5 --no-frozen-dropout --no-attention-dropout --ratio 0.03125 --selection random --train-ffn-output-bias --train-layer-norm
top5-nofd-noad-cache-random-1-8-b2-ln-bf16|--learner-layers top-5 --no-frozen-dropout --no-attention-dropout --ratio 0.125 --selection random --train-ffn-output-bias --train-layer-norm --mixed-precision bf16
top5-nofd-noad-cache-random-1-8-b2-ln-fp32-fused|--learner-layers top-5 --no-frozen-dropout --no-attention-dropout --ratio 0.125 --selection random --train-ffn-output-bias --train-layer-norm --mixed-precision no'

kept() {  # kept NAME TASK METHOD SEED: the run finished in $OUT or is kept in $KEEP, or (baselines and `all`) a csv row
  [ -f "$OUT/$1/runs/$2/$3/seed$4/results.json" ] || [ -f "$KEEP/$1/runs/$2/$3/seed$4/results.json" ] && return 0
  case "$1" in baselines|all) ;; *) return 1 ;; esac
  for csv in $ALSO_KEPT; do
    [ -f "$csv" ] && grep -q "^$2,$3,$4," "$csv" && return 0
  done
  return 1
}

jobs() {  # one line per run not yet kept (see kept): the learners bench arguments
  for s in ${SEEDS//,/ }; do
    for t in $TASKS; do
      for m in $BASELINES; do
        kept baselines "$t" "$m" "$s" || echo "--tasks $t --methods $m --seeds $s --output-dir $OUT/baselines"
      done
    done
    echo "$CONFIGS" | while IFS='|' read -r name flags; do
      case " ${ONLY:-$name} " in *" $name "*) ;; *) continue ;; esac
      for t in $TASKS; do
        kept "$name" "$t" learners "$s" || echo "--tasks $t --methods learners $flags --seeds $s --output-dir $OUT/$name"
      done
    done
  done
}

if [ -n "$DRY_RUN" ]; then jobs; exit 0; fi
mkdir -p "$OUT"
jobs | xargs -P 2 -L 1 sh -c 'log=$0 glue=$1; shift 1
  python -m learners.cli bench --data-dir "$glue" "$@" >> "$log" 2>&1' "$OUT.queue.log" "$GLUE"
for dir in "$OUT"/*/; do
  [ -d "$dir/runs" ] || continue
  python -m learners.cli bench --report-only --output-dir "$dir"
  (cd "$dir" && find runs -name results.json -o -name log.txt) | while read -r f; do
    mkdir -p "$KEEP/$(basename "$dir")/$(dirname "$f")" && cp "$dir/$f" "$KEEP/$(basename "$dir")/$f"
  done
done

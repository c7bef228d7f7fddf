#!/usr/bin/env bash
# The CPU benchmark behind the first tables of docs/journal.md (docs/journal.md#one-seed-five-tasks): a job queue worked by two processes, one thread each, on a
# 2-core machine. Jobs run in priority order (the main table's closest rivals first, then the learner
# ablations, then the rest), one `learners bench` call per task x method, so a stop at any point leaves
# the most useful part done. Resumable: re-run it to finish the grid (a run whose results.json exists
# is skipped).
#   bash benchmarks/run_cpu_grid.sh                  seed 0
#   SEEDS=0,1,2 bash benchmarks/run_cpu_grid.sh      the 3-seed grid
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out/cpu}
GLUE=${GLUE:-../shared/glue}
SEEDS=${SEEDS:-0}
SST2="--max-train-samples 10000"   # SST-2: a 10k training subset, the full dev set
export OMP_NUM_THREADS=1
mkdir -p "$OUT"

ablations() {  # the learner ablations on one task (docs/journal.md#ablations: against priming, the default until docs/journal.md#random-default)
  echo "--tasks $1 --methods learners --selection gradient --output-dir $OUT/ablation-selection-gradient"
  echo "--tasks $1 --methods learners --selection magnitude --output-dir $OUT/ablation-selection-magnitude"
  echo "--tasks $1 --methods learners --selection random --output-dir $OUT/ablation-selection-random"
  echo "--tasks $1 --methods learners --selection priming --reset-after-priming --output-dir $OUT/ablation-reset-after-priming"
  for r in 0.015625 0.03125 0.125; do
    echo "--tasks $1 --methods learners --selection priming --ratio $r --output-dir $OUT/ablation-ratio-$r"
  done
}
main_job() {  # one task x method of the main table; SST-2 has its own bench dir (10k training subset)
  if [ "$1" = sst2 ]; then echo "--tasks sst2 --methods $2 $SST2 --output-dir $OUT/main-sst2-10k"
  else echo "--tasks $1 --methods $2 --output-dir $OUT/main"; fi
}
jobs() {  # one line per job: the learners bench arguments
  for t in cola mrpc stsb rte sst2; do
    for m in full learners lora bitfit; do main_job "$t" "$m"; done
  done
  ablations cola
  for t in cola mrpc stsb rte sst2; do
    for m in far adapter head; do main_job "$t" "$m"; done
  done
  ablations mrpc
}

# every job appends to $OUT.queue.log; finished runs are skipped in a fraction of a second
jobs | xargs -P 2 -L 1 sh -c 'log=$0 glue=$1 seeds=$2; shift 2
  python -m learners.cli bench --data-dir "$glue" --seeds "$seeds" "$@" >> "$log" 2>&1' "$OUT.queue.log" "$GLUE" "$SEEDS"
for dir in "$OUT"/main "$OUT"/main-sst2-10k "$OUT"/ablation-*; do
  [ -d "$dir/runs" ] && python -m learners.cli bench --report-only --output-dir "$dir"
done
# one table over all five tasks (the SST-2 runs, on their 10k subset, live in their own bench dir)
mkdir -p "$OUT/all/runs"
for t in "$OUT"/main/runs/* "$OUT"/main-sst2-10k/runs/*; do
  [ -d "$t" ] && ln -sfn "$(realpath "$t")" "$OUT/all/runs/$(basename "$t")"
done
python -m learners.cli bench --report-only --output-dir "$OUT/all"

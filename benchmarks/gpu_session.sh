#!/usr/bin/env bash
# What issue 30 asks of a lent GPU, in two calls that each end inside the device tool's 10-minute limit:
#   1. a smoke fine-tune (the default learners, bf16, 20 steps): the script stops at once if the method fails on CUDA;
#   2. step time, operators, host reads and GPU syncs per step, peak memory: full, BitFit, LoRA, the default learners
#      and learners in the upper half of the blocks, eager, bf16, at MiniLM-L6 32 x 128, DistilBERT-base 32 x 128
#      and BERT-base 128 x 128;
#   3. the GLUE grid (benchmarks/gpu_grid.sh): seed 0 of full/learners/lora/bitfit on the five tasks; its report
#      (grid/bench.md) has time to target;
#   4. the same step tables compiled (torch.compile, COMPILE_MODE: default; reduce-overhead for CUDA graphs);
#   5. torch.profiler op tables on BERT-base 128 x 128 (full, BitFit, the default learners, upper half).
# Each phase has a time cap and the whole script a deadline (BUDGET_S), so what finished always comes back:
# everything lands in OUT (on the device machine the tool's $OUT; session.log and results.tgz: two files,
# inside the tool's 8-file limit). Every step-time row is printed as it finishes, so a capped table keeps its rows.
# Timing (H200, 2026-12-04, docs/journal.md#gpu-h200): a step-time worker takes about 17 s eager, the grid about 3 minutes
# at PARALLEL=10, a compiled worker a minute or more; so a 15-minute lease holds two calls:
#   . .gpu/setup.sh && PHASES="1 2 3" bash benchmarks/gpu_session.sh            (timeout_s 600)
#   . .gpu/setup.sh && PHASES="4 5" BUDGET_S=330 bash benchmarks/gpu_session.sh  (at once, while the machine is warm)
# On a machine kept between calls, finished tables and grid runs are skipped.
# On the GPU machine (after bash ../shared/gpu/prepare.sh here, carry [".gpu"]):
#   . .gpu/setup.sh && bash benchmarks/gpu_session.sh
# Try it on the CPU first: CPU_TRY=1 bash benchmarks/gpu_session.sh (tiny sizes, 2-step runs, a few minutes).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out/gpu-session}
BUDGET_S=${BUDGET_S:-540}
PHASES=${PHASES:-1 2 3 4 5}
PYTHON=${PYTHON:-python3}
DATA_DIR=${DATA_DIR:-.gpu/glue}
MODEL=${MODEL:-/tmp/minilm}
COMPILE_MODE=${COMPILE_MODE:-default}
METHODS=full,bitfit,lora,learners,learners-upper-half
if [ -n "${CPU_TRY:-}" ]; then  # the same phases at toy sizes, to catch a broken script before device time is spent
  SMOKE_CAP=400 PRECISION=no STEPS="--steps 2 --warmup 1" TARGET_BLOCKS="tiny:4 tiny:2" GRID_EXTRA="--max-steps 2"
  BUDGET_S=${BUDGET_S_CPU:-1800} COMPILE_CAP=600  # a busy 2-core CPU: slow workers, compiling most of all
  PROFILE_SIZE=tiny:4 COMPILE_BLOCKS=tiny:2 COMPILE_METHODS=full,learners  # compiling is slow on a CPU
  GRID_TASKS=rte,sst2 GRID_METHODS=full,learners DATA_DIR=${CPU_DATA_DIR:-../shared/glue} MODEL=
else
  PRECISION=bf16 STEPS="--steps 20 --warmup 5" GRID_EXTRA= GRID_TASKS=sst2,cola,mrpc,stsb,rte
  TARGET_BLOCKS="minilm-l6:32 distilbert-base:32 bert-base:128" COMPILE_BLOCKS= COMPILE_METHODS=$METHODS
  GRID_METHODS=full,learners,lora,bitfit PROFILE_SIZE=bert-base:128
fi
mkdir -p "$OUT"
started=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - started) )); }
cap() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo "$(( l > 0 ? l : 1 ))"; }  # min(phase cap, time left)
phase() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
say() { echo "[$(date +%T), $(( $(date +%s) - started ))s] $*"; }
step_block() {  # NAME SIZE:BATCH [more gpu_step_time flags]: one table, saved as NAME.{md,json}; done ones skipped
  local name=$1 size=${2%:*} batch=${2#*:}; shift 2
  [ -f "$OUT/$name.md" ] && { echo "$name: done before"; return; }
  timeout "$(cap "${CAP:-150}")" "$PYTHON" benchmarks/gpu_step_time.py --sizes "$size" --batch-sizes "$batch" \
    --precision "$PRECISION" $STEPS --output "$OUT/$name" "$@"
}
{
  say "device"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PYTHON" -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"

  if phase 1; then
    say "1. smoke: the default learners fine-tune, 20 steps"
    if ! timeout "$(cap "${SMOKE_CAP:-120}")" "$PYTHON" -m learners.cli finetune --task rte --max-steps 20 --mixed-precision "$PRECISION" \
        ${MODEL:+--model "$MODEL"} --data-dir "$DATA_DIR" --output-dir "$OUT/smoke" --no-progress > "$OUT/smoke.log" 2>&1; then
      tail -40 "$OUT/smoke.log"; say "smoke run failed: stopping"; exit 1  # leaves the { } below; the archive follows
    fi
    tail -3 "$OUT/smoke.log"
  fi
  if phase 2; then
    say "2. step time, operators and syncs at the target sizes, eager"
    for block in $TARGET_BLOCKS; do step_block "step_${block/:/_}" "$block" --methods "$METHODS"; done
  fi
  if phase 3; then
    say "3. GLUE grid, seed 0"
    TASKS=$GRID_TASKS METHODS=$GRID_METHODS SEEDS=0 PARALLEL=${PARALLEL:-10} OUT=$OUT/grid MIXED_PRECISION=$PRECISION \
      MODEL=$MODEL DATA_DIR=$DATA_DIR PYTHON=$PYTHON EXTRA="$GRID_EXTRA" timeout "$(cap 230)" bash benchmarks/gpu_grid.sh
    if [ $? -eq 124 ]; then  # stopped at its cap (with every run it started): the report of the runs that finished
      "$PYTHON" -m learners.cli bench --report-only --tasks "$GRID_TASKS" --methods "$GRID_METHODS" --seeds 0 --output-dir "$OUT/grid"
    fi
    cat "$OUT/grid/bench.md" 2>/dev/null
  fi
  if phase 4; then
    say "4. the same step tables compiled ($COMPILE_MODE)"
    for block in ${COMPILE_BLOCKS:-$TARGET_BLOCKS}; do
      CAP=${COMPILE_CAP:-240} step_block "compiled_${block/:/_}" "$block" --methods "$COMPILE_METHODS" --compiled-only \
        --compile-mode "$COMPILE_MODE"
    done
  fi
  if phase 5; then
    say "5. profiles"
    step_block profile "$PROFILE_SIZE" --methods full,bitfit,learners,learners-upper-half --profile-dir "$OUT/profiles"
    for f in "$OUT"/profiles/*.txt; do [ -f "$f" ] && { echo "== $f"; head -25 "$f"; }; done
  fi
  say "done"
} 2>&1 | tee -a "$OUT/session.log"
# the grid's runs hold one folder per task x method x seed (too deep and too many files to come back one by one)
# and saved models (too big): the archive takes the results, logs, tables and plots only
(cd "$OUT" && find . -type f \( -name '*.md' -o -name '*.json' -o -name '*.txt' -o -name '*.log' -o -name '*.csv' \
  -o -name '*.png' \) -not -path '*/model/*' | tar -czf /tmp/gpu-session-results.tgz -T -) \
  && mv /tmp/gpu-session-results.tgz "$OUT/results.tgz"
ls -la "$OUT"

#!/usr/bin/env bash
# Bit-identity check for issue 33: the same seeds with code at $1 (a checkout) into $2.
set -e
code=$1; out=$2
. /work/main/.venv/bin/activate
export PYTHONPATH=$code/src
cd $code
python -m learners.cli finetune --task mrpc --data-dir /work/shared/glue --max-steps 60 --eval-steps 30 --seed 0 --output-dir $out/mrpc-default --no-progress > $out/mrpc-default.log 2>&1
python -m learners.cli finetune --task stsb --data-dir /work/shared/glue --max-steps 60 --eval-steps 30 --seed 1 --output-dir $out/stsb-default --no-progress > $out/stsb-default.log 2>&1
python -m learners.cli finetune --task rte --data-dir /work/shared/glue --max-steps 60 --eval-steps 30 --seed 0 --selection priming --learner-layers all --frozen-dropout --attention-dropout --no-train-ffn-output-bias --no-train-layer-norm --ratio 0.0625 --output-dir $out/rte-primed --no-progress > $out/rte-primed.log 2>&1
echo done

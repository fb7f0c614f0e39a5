#!/usr/bin/env bash
# The runs behind docs/RESULTS.md, in the order they were made (one after another: this machine
# has 2 cores). Run from a directory for the outputs; GLUE at $GLUE_DIR.
# Usage: bash bench/results.sh STEP   (steps below; `all` runs them in order)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
G=${GLUE_DIR:-$REPO/../shared/data/glue}
export HF_HUB_OFFLINE=1
H="hskd"
step() {
  case "$1" in
    sst2-run)   $H run --task SST-2 --data-dir "$G" --num-train-epochs 1 --output-dir sst2 --quiet ;;
    mrpc-run)   $H run --task MRPC --data-dir "$G" --num-train-epochs 3 --output-dir mrpc --quiet ;;
    mrpc-kd)    $H distill --task MRPC --data-dir "$G" --teacher mrpc/teacher --recipe kd --num-train-epochs 3 \
                  --output-dir mrpc-kd --quiet ;;
    sst2-kd)    $H distill --task SST-2 --data-dir "$G" --teacher sst2/teacher --recipe kd --num-train-epochs 1 \
                  --output-dir sst2-kd --quiet ;;
    bench)      python "$REPO/bench/teacher_free.py" --data-dir "$G" --steps 40 | tee bench_teacher_free.md
                python "$REPO/bench/inference.py" --task SST-2 --data-dir "$G" sst2/teacher sst2/student-finetune \
                  sst2/student | tee bench_inference_sst2.md
                python "$REPO/bench/inference.py" --task MRPC --data-dir "$G" mrpc/teacher mrpc/student-finetune \
                  mrpc/student | tee bench_inference_mrpc.md ;;
    mrpc-mud)   # one cache with every layer and every token (ranked by [CLS] attention), then budgets by slicing
                $H cache --task MRPC --data-dir "$G" --teacher mrpc/teacher --knowledge 4l_128t --student-layers 3 \
                  --output-dir mrpc-cache --quiet | tee mrpc-cache.txt
                for k in 4l_128t 1l_10t_0.1h 4l_10t_0.1h; do
                  $H distill --task MRPC --data-dir "$G" --cache mrpc-cache --recipe mud --knowledge "$k" \
                    --hsk-epochs 3 --num-train-epochs 3 --output-dir "mrpc-mud-$k" --quiet
                done ;;
    mrpc-pkd)   for r in pkd-skip pkd-last; do
                  $H distill --task MRPC --data-dir "$G" --teacher mrpc/teacher --recipe $r --num-train-epochs 3 \
                    --output-dir "mrpc-$r" --quiet
                done ;;
    mrpc-ird)   for s in all progressive stacked; do
                  $H distill --task MRPC --data-dir "$G" --teacher mrpc/teacher --recipe ird --ird-schedule $s \
                    --stage-epochs 1 --num-train-epochs 3 --output-dir "mrpc-ird-$s" --quiet
                done ;;
    sst2-sweep) $H sweep --task SST-2 --data-dir "$G" --teacher sst2/teacher --output-dir sst2-sweep \
                  --max-train-samples 2000 --depth 1,4 --length 1,10,all --width 0.1,1 --hsk-epochs 1 \
                  --num-train-epochs 1 --quiet ;;
    sst2-cache) $H cache --task SST-2 --data-dir "$G" --teacher sst2/teacher --knowledge 1l_10t_0.1h \
                  --student-layers 3 --output-dir sst2-cache-1l_10t_0.1h --quiet | tee sst2-cache.txt ;;
    sst2-mud)   # teacher-free MUD on full SST-2: one cache (4 layers x 10 tokens x all dims), budgets by slicing
                $H cache --task SST-2 --data-dir "$G" --teacher sst2/teacher --knowledge 4l_10t --student-layers 3 \
                  --output-dir sst2-cache-4l_10t --quiet | tee sst2-cache-4l.txt
                for k in 1l_10t_0.1h 4l_10t_1h; do
                  $H distill --task SST-2 --data-dir "$G" --cache sst2-cache-4l_10t --recipe mud --knowledge "$k" \
                    --hsk-epochs 1 --num-train-epochs 1 --output-dir "sst2-mud-$k" --quiet
                done ;;
    sst2-mud1)  # teacher-free MUD at 1l_10t_0.1h from the sst2-cache step's cache
                $H distill --task SST-2 --data-dir "$G" --cache sst2-cache-1l_10t_0.1h --recipe mud \
                  --knowledge 1l_10t_0.1h --hsk-epochs 1 --num-train-epochs 1 --output-dir sst2-mud-1l_10t_0.1h --quiet ;;
    sst2-pkd-skip) $H distill --task SST-2 --data-dir "$G" --teacher sst2/teacher --recipe pkd-skip \
                  --num-train-epochs 1 --output-dir sst2-pkd-skip --quiet ;;
    mrpc-ird-all) $H distill --task MRPC --data-dir "$G" --teacher mrpc/teacher --recipe ird --ird-schedule all \
                  --stage-epochs 1 --num-train-epochs 3 --output-dir mrpc-ird-all --quiet ;;
    sst2-recipes) for r in pkd-skip pkd-last; do
                  $H distill --task SST-2 --data-dir "$G" --teacher sst2/teacher --recipe $r --num-train-epochs 1 \
                    --output-dir "sst2-$r" --quiet
                done
                $H distill --task SST-2 --data-dir "$G" --teacher sst2/teacher --recipe ird --ird-schedule all \
                  --stage-epochs 1 --num-train-epochs 1 --output-dir sst2-ird-all --quiet ;;
    cola)       $H run --task CoLA --data-dir "$G" --num-train-epochs 3 --output-dir cola --quiet
                for r in kd pkd-skip pkd-last; do
                  $H distill --task CoLA --data-dir "$G" --teacher cola/teacher --recipe $r --num-train-epochs 3 \
                    --output-dir "cola-$r" --quiet
                done
                $H distill --task CoLA --data-dir "$G" --teacher cola/teacher --recipe ird --ird-schedule all \
                  --stage-epochs 1 --num-train-epochs 3 --output-dir cola-ird-all --quiet
                $H distill --task CoLA --data-dir "$G" --teacher cola/teacher --recipe mud --knowledge 1l_10t_0.1h \
                  --hsk-epochs 3 --num-train-epochs 3 --output-dir cola-mud-1l_10t_0.1h --quiet ;;
    report)     for t in sst2 mrpc cola; do
                  ls -d $t $t-* 2>/dev/null | grep -v -e cache -e sweep | xargs $H report | tee "report-$t.md"
                done ;;
    *) echo "unknown step $1"; exit 2 ;;
  esac
}
if [ "${1:-}" = all ]; then
  for s in sst2-run mrpc-run mrpc-kd bench mrpc-mud mrpc-pkd sst2-sweep sst2-cache sst2-kd mrpc-ird sst2-mud \
           sst2-recipes cola report; do step $s; done
else
  step "$1"
fi

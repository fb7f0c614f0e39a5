#!/usr/bin/env bash
# The runs behind docs/RESULTS.md, in the order they were made (one after another: this machine
# has 2 cores). Run from a directory for the outputs; GLUE at $GLUE_DIR.
# Usage: bash bench/results.sh STEP   (steps below; `all` runs them in order). HSKD and PYTHON name
# the hskd command and the interpreter of the bench scripts (default: hskd and python on the PATH).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
G=${GLUE_DIR:-$REPO/../shared/data/glue}
export HF_HUB_OFFLINE=1
H=${HSKD:-hskd}  # e.g. HSKD="python -m hskd.cli"
PY=${PYTHON:-python}  # the bench scripts' interpreter, e.g. PYTHON=.venv/bin/python
# the train vs dev fit of saved models (bench/fit_gap.py), on this GLUE
fit_gap() { $PY "$REPO/bench/fit_gap.py" --data-dir "$G" "$@"; }
# PKD's table with hskd's defaults, 3 seeds: KD, PKD-Skip and PKD-Last, each into TEACHER's folder
# with SUFFIX. Usage: pkd_distill TEACHER EPOCHS SUFFIX --task T [options]
pkd_distill() {
  local teacher=$1 epochs=$2 suffix=$3; shift 3
  for r in kd pkd-skip pkd-last; do
    $H distill --data-dir "$G" "$@" --teacher "$teacher" --recipe $r --num-train-epochs "$epochs" \
      --seeds 42,43,44 --output-dir "${teacher%/teacher}/$r$suffix" --quiet
  done
}
# IRD's internal epochs a stage for an equal budget across schedules: 1 for `all`'s single stage,
# 0.34 for each of `progressive`'s and `stacked`'s three (3-layer students). Usage: stage_epochs SCHEDULE
stage_epochs() { if [ "$1" = all ]; then echo 1; else echo 0.34; fi; }
# The same table with its FT row first (lr 1e-4) into FT_DIR: pkd_table TEACHER EPOCHS FT_DIR SUFFIX --task T [options]
pkd_table() {
  local teacher=$1 epochs=$2 ft=$3 suffix=$4; shift 4
  $H finetune --data-dir "$G" "$@" --layers 3 --learning-rate 1e-4 --num-train-epochs "$epochs" \
    --seeds 42,43,44 --output-dir "$ft" --quiet
  pkd_distill "$teacher" "$epochs" "$suffix" "$@"
}
step() {
  case "$1" in
    sst2-run)   $H run --task SST-2 --data-dir "$G" --num-train-epochs 1 --output-dir sst2 --quiet ;;
    mrpc-run)   $H run --task MRPC --data-dir "$G" --num-train-epochs 3 --output-dir mrpc --quiet ;;
    mrpc-kd)    $H distill --task MRPC --data-dir "$G" --teacher mrpc/teacher --recipe kd --num-train-epochs 3 \
                  --output-dir mrpc-kd --quiet ;;
    sst2-kd)    $H distill --task SST-2 --data-dir "$G" --teacher sst2/teacher --recipe kd --num-train-epochs 1 \
                  --output-dir sst2-kd --quiet ;;
    bench)      $PY "$REPO/bench/teacher_free.py" --data-dir "$G" --steps 40 | tee bench_teacher_free.md
                $PY "$REPO/bench/inference.py" --task SST-2 --data-dir "$G" sst2/teacher sst2/student-finetune \
                  sst2/student | tee bench_inference_sst2.md
                $PY "$REPO/bench/inference.py" --task MRPC --data-dir "$G" mrpc/teacher mrpc/student-finetune \
                  mrpc/student | tee bench_inference_mrpc.md ;;
    mrpc12-teacher) $H finetune --task MRPC --data-dir "$G" --num-train-epochs 3 --output-dir mrpc12/teacher --quiet ;;
    mrpc12-caches) # 1 layer x 10 tokens x every dim: hskd's ranking, and MUD's (att_ttop12, pre-softmax scores)
                $H cache --task MRPC --data-dir "$G" --teacher mrpc12/teacher --knowledge 1l_10t --student-layers 3 \
                  --output-dir mrpc12/cache --quiet | tee mrpc12-cache.txt
                $H cache --task MRPC --data-dir "$G" --teacher mrpc12/teacher --knowledge 1l_10t --student-layers 3 \
                  --rank-layer full-depth --rank-by scores --output-dir mrpc12/cache-mud --quiet | tee -a mrpc12-cache.txt ;;
    mrpc12-seeds) # 3 seeds each, teacher-free, 1l_10t_0.1h, 3 + 3 epochs: hskd's defaults, then MUD's loss
                # details and selectors (--preset mud) at the same schedule (lr, epochs, one evaluation an epoch)
                $H distill --task MRPC --data-dir "$G" --cache mrpc12/cache --recipe mud --knowledge 1l_10t_0.1h \
                  --hsk-epochs 3 --num-train-epochs 3 --seeds 42,43,44 --output-dir mrpc12/mud-hskd --quiet
                $H distill --task MRPC --data-dir "$G" --cache mrpc12/cache-mud --preset mud --knowledge 1l_10t_0.1h \
                  --hsk-epochs 3 --num-train-epochs 3 --student-learning-rate 1e-4 --hsk-learning-rate 1e-4 \
                  --save-steps 115 --hsk-padding exclude --seeds 42,43,44 --output-dir mrpc12/mud-preset --quiet ;;
                # (--hsk-padding exclude: the preset gained padding later; these runs were made without it)
    mrpc12-finetune) $H finetune --task MRPC --data-dir "$G" --layers 3 --learning-rate 1e-4 --num-train-epochs 3 \
                  --seeds 42,43,44 --output-dir mrpc12/student-finetune --quiet ;;
    mrpc12-pkd) # PKD's table on MRPC, 3 seeds: KD, PKD-Skip, PKD-Last (FT: step mrpc12-finetune)
                pkd_distill mrpc12/teacher 3 "" --task MRPC ;;
    mrpc12-pkd-preset) # PKD-Skip and PKD-Last with --preset pkd (lr 1e-5, beta 500, 4 epochs), beside step
                # mrpc12-pkd's defaults
                for r in pkd-skip pkd-last; do
                  $H distill --task MRPC --data-dir "$G" --teacher mrpc12/teacher --preset pkd --recipe $r \
                    --seeds 42,43,44 --output-dir mrpc12/$r-preset --quiet
                done ;;
    cola12-methods) # PKD's table on CoLA, 3 seeds, 3 epochs (after cola12-teacher)
                pkd_table cola12/teacher 3 cola12/student-finetune "" --task CoLA ;;
    cola12-methods-2l) # PKD's table at a second student depth: 2 of the teacher's 6 layers (PKD: 3 of 12)
                $H finetune --task CoLA --data-dir "$G" --layers 2 --learning-rate 1e-4 --num-train-epochs 3 \
                  --seeds 42,43,44 --output-dir cola12/l2-finetune --quiet
                for r in kd pkd-skip pkd-last; do
                  $H distill --task CoLA --data-dir "$G" --teacher cola12/teacher --recipe $r --student-layers 2 \
                    --num-train-epochs 3 --seeds 42,43,44 --output-dir "cola12/l2-$r" --quiet
                done ;;
    cola12-ird) # Aguilar's three schedules on CoLA, 3 seeds, as step mrpc12-ird
                for s in all progressive stacked; do
                  $H distill --task CoLA --data-dir "$G" --teacher cola12/teacher --recipe ird --ird-schedule $s \
                    --stage-epochs "$(stage_epochs $s)" --num-train-epochs 2 --seeds 42,43,44 --output-dir "cola12/ird-$s" --quiet
                done  # the control: kd alone for IRD's 2 prediction epochs
                $H distill --task CoLA --data-dir "$G" --teacher cola12/teacher --recipe kd --num-train-epochs 2 \
                  --seeds 42,43,44 --output-dir cola12/kd-2ep --quiet ;;
    sst2-10k-methods) # PKD's table on SST-2's first 10,000 rows, 3 seeds, 1 epoch (after
                # sst2-10k-ird, which trains its teacher and its FT row)
                pkd_distill sst2-10k/teacher 1 "" --task SST-2 --max-train-samples 10000 ;;
    cola12-teacher) # the CoLA teacher as long as dev MCC improves (12 epochs at most, patience 2)
                $H finetune --task CoLA --data-dir "$G" --num-train-epochs 12 --early-stopping-patience 2 \
                  --output-dir cola12/teacher --quiet ;;
    mrpc12-budgets) # MUD's budget table on MRPC, teacher-free, 3 seeds, 1 HSK + 1 prediction epoch, every
                # budget sliced from one 4-layer x every-token cache of the mrpc12 teacher
                $H cache --task MRPC --data-dir "$G" --teacher mrpc12/teacher --knowledge 4l_128t --student-layers 3 \
                  --output-dir mrpc12/cache-full --quiet
                for k in 1l_10t_0.1h 4l_128t 4l_10t_0.1h 1l_128t 4l_10t 4l_128t_0.1h; do
                  $H distill --task MRPC --data-dir "$G" --cache mrpc12/cache-full --recipe mud --knowledge "$k" \
                    --hsk-epochs 1 --num-train-epochs 1 --seeds 42,43,44 --output-dir "mrpc12/mud-$k" --quiet
                done ;;
    mrpc12-ird) # Aguilar's three schedules on MRPC, 3 seeds: 1 internal epoch in all (every layer at once;
                # 3 x 0.34 epoch layer by layer), then 2 prediction epochs
                for s in all progressive stacked; do
                  $H distill --task MRPC --data-dir "$G" --teacher mrpc12/teacher --recipe ird --ird-schedule $s \
                    --stage-epochs "$(stage_epochs $s)" --num-train-epochs 2 --seeds 42,43,44 --output-dir "mrpc12/ird-$s" --quiet
                done ;;
    cola12-budgets) # MUD's budget table on CoLA, teacher-free, 3 seeds, 3 HSK + 3 prediction epochs
                $H cache --task CoLA --data-dir "$G" --teacher cola12/teacher --knowledge 4l_64t --student-layers 3 \
                  --output-dir cola12/cache-full --quiet
                for k in 4l_64t 1l_10t_0.1h 4l_10t_0.1h 1l_64t 4l_10t 4l_64t_0.1h; do
                  $H distill --task CoLA --data-dir "$G" --cache cola12/cache-full --recipe mud --knowledge "$k" \
                    --hsk-epochs 3 --num-train-epochs 3 --seeds 42,43,44 --output-dir "cola12/mud-$k" --quiet
                done ;;
    sst2-10k-preset) # --preset mud beside hskd's defaults at 1l_10t_0.1h, the same 1 + 1 epochs, lr and evaluations
                N="--max-train-samples 10000"
                $H cache --task SST-2 --data-dir "$G" $N --teacher sst2-10k/teacher --preset mud --knowledge 1l_10t \
                  --student-layers 3 --output-dir sst2-10k/cache-preset --quiet
                $H distill --task SST-2 --data-dir "$G" $N --cache sst2-10k/cache-preset --preset mud \
                  --knowledge 1l_10t_0.1h --hsk-epochs 1 --num-train-epochs 1 --student-learning-rate 1e-4 \
                  --hsk-learning-rate 1e-4 --save-steps 313 --seeds 42,43,44 --output-dir sst2-10k/mud-preset --quiet ;;
    sst2-10k-budgets) # MUD's budget table on SST-2's first 10,000 rows (after sst2-10k-ird), 1 + 1 epochs
                N="--max-train-samples 10000"
                $H cache --task SST-2 --data-dir "$G" $N --teacher sst2-10k/teacher --knowledge 4l_64t \
                  --student-layers 3 --output-dir sst2-10k/cache-full --quiet
                for k in 4l_64t 1l_10t_0.1h 4l_10t_0.1h 1l_64t 4l_10t 4l_64t_0.1h; do
                  $H distill --task SST-2 --data-dir "$G" $N --cache sst2-10k/cache-full --recipe mud --knowledge "$k" \
                    --hsk-epochs 1 --num-train-epochs 1 --seeds 42,43,44 --output-dir "sst2-10k/mud-$k" --quiet
                done ;;
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
    mrpc-ird)   # progressive and stacked: 3 internal stages of 0.34 epoch, the same total internal budget
                # (about 1 epoch) as `all` (mrpc-ird-all: every layer at once for 1 epoch)
                for s in progressive stacked; do
                  $H distill --task MRPC --data-dir "$G" --teacher mrpc/teacher --recipe ird --ird-schedule $s \
                    --stage-epochs 0.34 --num-train-epochs 3 --output-dir "mrpc-ird-$s" --quiet
                done ;;
    sst2-sweep) # the first 10,000 SST-2 training rows, one cache at 4 layers x all tokens x all dims
                $H sweep --task SST-2 --data-dir "$G" --teacher sst2/teacher --output-dir sst2-sweep-10k \
                  --max-train-samples 10000 --depth 1,2,4 --length 1,10,all --width 0.1,0.5,1 --hsk-epochs 1 \
                  --num-train-epochs 1 --quiet ;;
    sst2-sweep-mud1) # the issue-3 budget on the same 10,000 rows and schedule, sliced from the sweep's cache
                $H distill --task SST-2 --data-dir "$G" --cache sst2-sweep-10k/cache --recipe mud \
                  --knowledge 1l_10t_0.1h --max-train-samples 10000 --hsk-epochs 1 --num-train-epochs 1 \
                  --output-dir sst2-sweep-10k-mud-1l_10t_0.1h --quiet ;;
    sst2-sweep-2k) $H sweep --task SST-2 --data-dir "$G" --teacher sst2/teacher --output-dir sst2-sweep \
                  --max-train-samples 2000 --depth 1,4 --length 1,10,all --width 0.1,1 --hsk-epochs 1 \
                  --num-train-epochs 1 --quiet ;;
    sst2-cache) $H cache --task SST-2 --data-dir "$G" --teacher sst2/teacher --knowledge 1l_10t_0.1h \
                  --student-layers 3 --output-dir sst2-cache-1l_10t_0.1h --quiet | tee sst2-cache.txt ;;
    sst2-mud1)  # teacher-free MUD at 1l_10t_0.1h from the sst2-cache step's cache
                $H distill --task SST-2 --data-dir "$G" --cache sst2-cache-1l_10t_0.1h --recipe mud \
                  --knowledge 1l_10t_0.1h --hsk-epochs 1 --num-train-epochs 1 --output-dir sst2-mud-1l_10t_0.1h --quiet ;;
    sst2-pkd-skip) $H distill --task SST-2 --data-dir "$G" --teacher sst2/teacher --recipe pkd-skip \
                  --num-train-epochs 1 --output-dir sst2-pkd-skip --quiet ;;
    mrpc-ird-all) $H distill --task MRPC --data-dir "$G" --teacher mrpc/teacher --recipe ird --ird-schedule all \
                  --stage-epochs 1 --num-train-epochs 3 --output-dir mrpc-ird-all --quiet ;;
    sst2-pkd-last) $H distill --task SST-2 --data-dir "$G" --teacher sst2/teacher --recipe pkd-last \
                  --num-train-epochs 1 --output-dir sst2-pkd-last --quiet ;;
    sst2-ird-all|sst2-ird-progressive|sst2-ird-stacked) # one internal epoch in all (every layer at once for 1 epoch; 3 x 0.34 epoch layer by layer),
                # then 1 epoch of soft labels
                s=${1#sst2-ird-}
                $H distill --task SST-2 --data-dir "$G" --teacher sst2/teacher --recipe ird --ird-schedule "$s" \
                  --stage-epochs "$(stage_epochs $s)" --num-train-epochs 1 --output-dir "sst2-ird-$s" --quiet ;;
    cola)       $H run --task CoLA --data-dir "$G" --num-train-epochs 3 --output-dir cola --quiet
                for r in kd pkd-skip pkd-last; do
                  $H distill --task CoLA --data-dir "$G" --teacher cola/teacher --recipe $r --num-train-epochs 3 \
                    --output-dir "cola-$r" --quiet
                done
                for s in all progressive stacked; do
                  $H distill --task CoLA --data-dir "$G" --teacher cola/teacher --recipe ird --ird-schedule $s \
                    --stage-epochs "$(stage_epochs $s)" --num-train-epochs 3 --output-dir "cola-ird-$s" --quiet
                done
                $H distill --task CoLA --data-dir "$G" --teacher cola/teacher --recipe mud --knowledge 1l_10t_0.1h \
                  --hsk-epochs 3 --num-train-epochs 3 --output-dir cola-mud-1l_10t_0.1h --quiet ;;
    i15-storage) # issue 15: one 1l_10t_0.1h cache per storage and 3 seeds of mud from each (in ./i15:
                # its own teachers; MRPC and CoLA in full, SST-2's first 10,000 rows; 1 HSK + 1 prediction epoch)
                mkdir -p i15 && cd i15
                $H finetune --task MRPC --data-dir "$G" --num-train-epochs 3 --output-dir mrpc/teacher --quiet
                $H finetune --task CoLA --data-dir "$G" --num-train-epochs 5 --output-dir cola/teacher --quiet
                $H finetune --task SST-2 --data-dir "$G" --max-train-samples 10000 --num-train-epochs 2 \
                  --output-dir sst2/teacher --quiet
                for st in fp16 bf16 int8 int8-dim fp8; do  # the planner, for the full training sets
                  for t in MRPC CoLA SST-2; do d=$(echo $t | tr A-Z a-z | tr -d -)
                    $H cache --task $t --data-dir "$G" --teacher $d/teacher --knowledge 1l_10t_0.1h --student-layers 3 \
                      --storage $st --output-dir $d/cache-full-$st --quiet --dry-run > $d/plan-full-$st.txt
                  done
                done
                for st in fp16 int8 fp8; do
                  for t in MRPC CoLA SST-2; do d=$(echo $t | tr A-Z a-z | tr -d -); n=""
                    [ $t = SST-2 ] && n="--max-train-samples 10000"
                    $H cache --task $t --data-dir "$G" --teacher $d/teacher --knowledge 1l_10t_0.1h --student-layers 3 \
                      --storage $st $n --output-dir $d/cache-$st --quiet --dry-run > $d/plan-$st.txt
                    $H cache --task $t --data-dir "$G" --teacher $d/teacher --knowledge 1l_10t_0.1h --student-layers 3 \
                      --storage $st $n --output-dir $d/cache-$st --quiet
                    $H distill --task $t --data-dir "$G" --cache $d/cache-$st $n --recipe mud --knowledge 1l_10t_0.1h \
                      --hsk-epochs 1 --num-train-epochs 1 --seeds 42,43,44 --output-dir $d/mud-$st --quiet
                  done
                done ;;
    sst2-10k-ird) # issue 12: why IRD fell below fine-tuning (SST-2's first 10,000 rows, 3 seeds each)
                N="--max-train-samples 10000"
                $H finetune --task SST-2 --data-dir "$G" $N --num-train-epochs 2 --output-dir sst2-10k/teacher --quiet
                $H finetune --task SST-2 --data-dir "$G" $N --layers 3 --learning-rate 1e-4 --num-train-epochs 1 \
                  --seeds 42,43,44 --output-dir sst2-10k/ft --quiet
                for v in "ird 1" "ird-beta50 1 --beta 50" "ird-3ep 3"; do set -- $v
                  $H distill --task SST-2 --data-dir "$G" $N --teacher sst2-10k/teacher --recipe ird --ird-schedule all \
                    --stage-epochs $2 ${3:-} ${4:-} --num-train-epochs 1 --seeds 42,43,44 --output-dir "sst2-10k/$1" --quiet
                done ;;
    i15-search) # issue 15: the minimum-budget search on MRPC, 2 seeds a point (in ./i15, after i15-storage)
                cd i15
                $H search --task MRPC --data-dir "$G" --teacher mrpc/teacher --output-dir mrpc/search --seeds 42,43 \
                  --tolerance 0.5 --depth 1,2,4 --length 10,all --width 0.1,1 --hsk-epochs 1 --num-train-epochs 1 \
                  --quiet ;;
    tinybert12) # TinyBERT's recipe (hskd's defaults: one stage, online), 3 seeds, beside PKD's tables
                for t in CoLA MRPC; do d=$(echo $t | tr A-Z a-z)12
                  $H distill --task $t --data-dir "$G" --teacher $d/teacher --recipe tinybert --num-train-epochs 3 \
                    --seeds 42,43,44 --output-dir $d/tinybert --quiet
                done
                $H distill --task SST-2 --data-dir "$G" --max-train-samples 10000 --teacher sst2-10k/teacher \
                  --recipe tinybert --num-train-epochs 1 --seeds 42,43,44 --output-dir sst2-10k/tinybert --quiet ;;
    mrpc12-budgets-33) # MUD's budget table on MRPC at 3 HSK + 3 prediction epochs (after mrpc12-budgets,
                # whose cache it slices; the 1l_10t_0.1h row is step mrpc12-seeds)
                for k in 4l_128t 4l_10t_0.1h 4l_128t_0.1h 1l_128t 4l_10t; do
                  $H distill --task MRPC --data-dir "$G" --cache mrpc12/cache-full --recipe mud --knowledge "$k" \
                    --hsk-epochs 3 --num-train-epochs 3 --seeds 42,43,44 --output-dir "mrpc12/mud33-$k" --quiet
                done ;;
    cola12-ird-preset) # Aguilar's `all` schedule with --preset ird (the internal stage to convergence: 1 %
                # an epoch, 10 epochs at most), then 3 kd epochs, as the PKD table's kd row
                $H distill --task CoLA --data-dir "$G" --teacher cola12/teacher --preset ird --ird-schedule all \
                  --num-train-epochs 3 --seeds 42,43,44 --output-dir cola12/ird-preset --quiet ;;
    sst2-seeds) # full SST-2 at 3 seeds (issue 12): the sst2-run teacher, then student-finetune, kd and
                # tinybert as sst2-run and sst2-kd train them (seed 42 of kd and tinybert: those steps' runs)
                $H finetune --task SST-2 --data-dir "$G" --num-train-epochs 1 --output-dir sst2/teacher --quiet
                $H finetune --task SST-2 --data-dir "$G" --layers 3 --learning-rate 1e-4 --num-train-epochs 1 \
                  --seeds 42,43,44 --output-dir sst2/student-finetune --quiet
                for r in kd tinybert; do
                  $H distill --task SST-2 --data-dir "$G" --teacher sst2/teacher --recipe $r --num-train-epochs 1 \
                    --seeds 43,44 --output-dir sst2/$r --quiet
                done ;;
    sst2-mud-seeds) # teacher-free mud at 1l_10t_0.1h on full SST-2, seeds 43 and 44 beside sst2-mud1's 42,
                # from a cache made as sst2-cache made it for issue 3 (fp16 values; int8 is the default now)
                $H cache --task SST-2 --data-dir "$G" --teacher sst2/teacher --knowledge 1l_10t_0.1h \
                  --student-layers 3 --storage fp16 --output-dir sst2-cache-1l_10t_0.1h --quiet
                $H distill --task SST-2 --data-dir "$G" --cache sst2-cache-1l_10t_0.1h --recipe mud \
                  --knowledge 1l_10t_0.1h --hsk-epochs 1 --num-train-epochs 1 --seeds 43,44 \
                  --output-dir sst2-mud-1l_10t_0.1h-seeds --quiet ;;
    cola12-preset) # --preset mud beside hskd's defaults on CoLA (as sst2-10k-preset): 1l_10t_0.1h, the
                # defaults' 3 + 3 epochs, lr 1e-4 in both stages and one evaluation an epoch (268 steps)
                $H cache --task CoLA --data-dir "$G" --teacher cola12/teacher --preset mud --knowledge 1l_10t \
                  --student-layers 3 --output-dir cola12/cache-preset --quiet
                $H distill --task CoLA --data-dir "$G" --cache cola12/cache-preset --preset mud \
                  --knowledge 1l_10t_0.1h --hsk-epochs 3 --num-train-epochs 3 --student-learning-rate 1e-4 \
                  --hsk-learning-rate 1e-4 --save-steps 268 --seeds 42,43,44 --output-dir cola12/mud-preset --quiet ;;
    sst2-sweep-seeds) # the marginal-utility sweep of step sst2-sweep at 3 seeds a point (hskd sweep --seeds)
                $H sweep --task SST-2 --data-dir "$G" --teacher sst2/teacher --output-dir sst2-sweep-10k-seeds \
                  --max-train-samples 10000 --depth 1,2,4 --length 1,10,all --width 0.1,0.5,1 --hsk-epochs 1 \
                  --num-train-epochs 1 --seeds 42,43,44 --quiet ;;
    cola12-tinybert-2stage) # TinyBERT's two-stage form on CoLA, 3 seeds (after cola12-teacher): hskd's defaults
                # (3 intermediate + 3 prediction epochs), then --preset tinybert (10 + 3 epochs, TinyBERT's lr
                # and losses) with per-batch padding (--hsk-padding exclude: static padding to 64 tokens is
                # about 4x the cost a step on CoLA's short sentences)
                $H distill --task CoLA --data-dir "$G" --teacher cola12/teacher --recipe tinybert-2stage \
                  --hsk-epochs 3 --num-train-epochs 3 --seeds 42,43,44 --output-dir cola12/tinybert-2stage --quiet
                $H distill --task CoLA --data-dir "$G" --teacher cola12/teacher --preset tinybert \
                  --hsk-padding exclude --seeds 42,43,44 --output-dir cola12/tinybert-preset --quiet ;;
    cola12-ird-progressive-preset) # Aguilar's progressive schedule with --preset ird (each layer's stage to
                # convergence, 10 epochs at most), then 3 kd epochs, as step cola12-ird-preset
                $H distill --task CoLA --data-dir "$G" --teacher cola12/teacher --preset ird \
                  --ird-schedule progressive --num-train-epochs 3 --seeds 42,43,44 \
                  --output-dir cola12/ird-progressive-preset --quiet ;;
    cola12-ird-stacked-preset) # Aguilar's stacked schedule with --preset ird (stage k teaches student layers
                # 1..k, each stage to convergence, 10 epochs at most), then 3 kd epochs, as the two steps above
                $H distill --task CoLA --data-dir "$G" --teacher cola12/teacher --preset ird \
                  --ird-schedule stacked --num-train-epochs 3 --seeds 42,43,44 \
                  --output-dir cola12/ird-stacked-preset --quiet ;;
    mrpc12-tinybert-preset) # TinyBERT's two-stage form on MRPC with --preset tinybert (10 + 3 epochs, TinyBERT's
                # lr and losses), per-batch padding as step cola12-tinybert-2stage, 3 seeds (after mrpc12-teacher)
                $H distill --task MRPC --data-dir "$G" --teacher mrpc12/teacher --preset tinybert \
                  --hsk-padding exclude --seeds 42,43,44 --output-dir mrpc12/tinybert-preset --quiet ;;
    mrpc12-tinybert-2stage) # TinyBERT's two-stage form on MRPC with hskd's defaults (3 + 3 epochs), 3 seeds
                $H distill --task MRPC --data-dir "$G" --teacher mrpc12/teacher --recipe tinybert-2stage \
                  --hsk-epochs 3 --num-train-epochs 3 --seeds 42,43,44 --output-dir mrpc12/tinybert-2stage --quiet ;;
    mrpc12-ird-preset) # Aguilar's `all` schedule with --preset ird on MRPC (the internal stage to convergence),
                # then 3 kd epochs, as step cola12-ird-preset (after mrpc12-teacher)
                $H distill --task MRPC --data-dir "$G" --teacher mrpc12/teacher --preset ird --ird-schedule all \
                  --num-train-epochs 3 --seeds 42,43,44 --output-dir mrpc12/ird-preset --quiet ;;
    mrpc12-preset-lr) # the official lrs on trial (after mrpc12-tinybert-preset): TinyBERT's prediction stage
                # rerun from each seed's 10-epoch intermediate student at hskd's 1e-4, and for seed 42 at the
                # preset's 3e-5 (a check that the rerun reproduces the two-stage run); then --preset pkd's
                # PKD-Skip at lr 1e-4
                for n in 42 43 44; do
                  [ -d mrpc12/tbp-students/seed-$n ] || $PY "$REPO/bench/stage_student.py" \
                    mrpc12/tinybert-preset/seed-$n intermediate mrpc12/tbp-students/seed-$n
                done
                for run in 3e-5:42 1e-4:42 1e-4:43 1e-4:44; do lr=${run%:*} n=${run#*:}
                  $H distill --task MRPC --data-dir "$G" --teacher mrpc12/teacher --recipe kd --student-layers 3 \
                    --student-model mrpc12/tbp-students/seed-$n --alpha 1 --temperature 1 --kd-form soft_ce \
                    --kd-reduction mean --kd-temperature-scaling none --num-train-epochs 3 \
                    --student-learning-rate $lr --seed $n --output-dir mrpc12/tbp-pred-$lr/seed-$n --quiet
                done
                $H distill --task MRPC --data-dir "$G" --teacher mrpc12/teacher --preset pkd --recipe pkd-skip \
                  --student-learning-rate 1e-4 --seeds 42,43,44 --output-dir mrpc12/pkd-skip-preset-lr1e-4 --quiet ;;
    mrpc12-ird-diagnose) # why --preset ird falls below FT on MRPC (after mrpc12-ird-preset, mrpc12-tinybert-2stage,
                # mrpc12-preset-lr, cola12-ird-*-preset, cola12-tinybert-2stage): train vs dev fit, then the
                # [CLS] cosine switched off (--beta 0: the attention KL alone in the internal stage)
                for n in 42 43 44; do
                  [ -d mrpc12/ird-internal/seed-$n ] || $PY "$REPO/bench/stage_student.py" \
                    mrpc12/ird-preset/seed-$n internal mrpc12/ird-internal/seed-$n
                done
                [ -d mrpc12/kd/seed-42 ] || $H distill --task MRPC --data-dir "$G" --teacher mrpc12/teacher \
                  --recipe kd --num-train-epochs 3 --seed 42 --output-dir mrpc12/kd/seed-42 --quiet
                fit_gap --task MRPC --teacher mrpc12/teacher mrpc12/teacher \
                  mrpc12/ird-internal/seed-* mrpc12/ird-preset/seed-* mrpc12/kd/seed-42 mrpc12/tinybert-2stage/seed-* \
                  mrpc12/tinybert-preset/seed-42 mrpc12/tbp-pred-1e-4/seed-42 | tee fitgap-mrpc.md
                fit_gap --task CoLA --teacher cola12/teacher cola12/teacher \
                  cola12/ird-stacked-preset/seed-* cola12/ird-progressive-preset/seed-42 \
                  cola12/tinybert-preset/seed-42 cola12/tinybert-2stage/seed-42 | tee fitgap-cola.md
                $H distill --task MRPC --data-dir "$G" --teacher mrpc12/teacher --preset ird --ird-schedule all \
                  --beta 0 --num-train-epochs 3 --seeds 42,43,44 --output-dir mrpc12/ird-preset-beta0 --quiet ;;
    cola12-ird-preset-beta0) # the remedy of step mrpc12-ird-diagnose on CoLA: --preset ird with the [CLS]
                # cosine off (--beta 0), as step cola12-ird-preset
                $H distill --task CoLA --data-dir "$G" --teacher cola12/teacher --preset ird --ird-schedule all \
                  --beta 0 --num-train-epochs 3 --seeds 42,43,44 --output-dir cola12/ird-preset-beta0 --quiet ;;
    mrpc12-ird-progressive-preset) # Aguilar's progressive schedule with --preset ird on MRPC (each layer's
                # stage to convergence, 10 epochs at most), then 3 kd epochs, as step cola12-ird-progressive-preset,
                # and the students' train vs dev fit
                $H distill --task MRPC --data-dir "$G" --teacher mrpc12/teacher --preset ird \
                  --ird-schedule progressive --num-train-epochs 3 --seeds 42,43,44 \
                  --output-dir mrpc12/ird-progressive-preset --quiet
                fit_gap --task MRPC --teacher mrpc12/teacher \
                  mrpc12/ird-progressive-preset/seed-* | tee fitgap-mrpc-progressive.md ;;
    mrpc12-ird-stacked-preset) # Aguilar's stacked schedule with --preset ird on MRPC (stage k teaches student
                # layers 1..k, each stage to convergence, 10 epochs at most), then 3 kd epochs, as step
                # cola12-ird-stacked-preset, and the students' train vs dev fit
                $H distill --task MRPC --data-dir "$G" --teacher mrpc12/teacher --preset ird \
                  --ird-schedule stacked --num-train-epochs 3 --seeds 42,43,44 \
                  --output-dir mrpc12/ird-stacked-preset --quiet
                fit_gap --task MRPC --teacher mrpc12/teacher \
                  mrpc12/ird-stacked-preset/seed-* | tee fitgap-mrpc-stacked.md ;;
    mrpc12-ird-progressive-6ep) # the order or the length? Aguilar's progressive schedule with 2 epochs a stage and
                # no convergence test (6 internal epochs, as many as `all` took to converge under --preset ird on
                # MRPC; the preset sets only the convergence test and its cap), then 3 kd epochs, 3 seeds
                $H distill --task MRPC --data-dir "$G" --teacher mrpc12/teacher --recipe ird \
                  --ird-schedule progressive --stage-epochs 2 --num-train-epochs 3 \
                  --seeds 42,43,44 --output-dir mrpc12/ird-progressive-6ep --quiet ;;
    mrpc12-ird-all-6ep) # the same question from the other side: Aguilar's `all` schedule for a fixed 6 internal
                # epochs, no convergence test (its lr decays over the 6 epochs, as progressive's over its 2 a
                # stage; under --preset ird it was laid over the 10-epoch cap), then 3 kd epochs, 3 seeds
                $H distill --task MRPC --data-dir "$G" --teacher mrpc12/teacher --recipe ird \
                  --ird-schedule all --stage-epochs 6 --num-train-epochs 3 \
                  --seeds 42,43,44 --output-dir mrpc12/ird-all-6ep --quiet ;;
    sst2-10k-ird-schedules) # Aguilar's three schedules on SST-2's first 10,000 rows at one internal budget:
                # progressive and stacked at 1 epoch a stage (3 internal epochs, as step sst2-10k-ird's `all`
                # at 3 epochs), then 1 kd epoch, 3 seeds (after sst2-10k-ird)
                for s in progressive stacked; do
                  $H distill --task SST-2 --data-dir "$G" --max-train-samples 10000 --teacher sst2-10k/teacher \
                    --recipe ird --ird-schedule $s --stage-epochs 1 --num-train-epochs 1 --seeds 42,43,44 \
                    --output-dir "sst2-10k/ird-$s-3ep" --quiet
                done ;;
    sst2-10k-ird-progressive-preset) # Aguilar's progressive schedule with --preset ird on SST-2's first 10,000
                # rows (each layer's stage to convergence, 10 epochs at most), then 1 kd epoch, as step
                # sst2-10k-ird-preset, 3 seeds (after sst2-10k-ird)
                $H distill --task SST-2 --data-dir "$G" --max-train-samples 10000 --teacher sst2-10k/teacher \
                  --preset ird --ird-schedule progressive --num-train-epochs 1 --seeds 42,43,44 \
                  --output-dir sst2-10k/ird-progressive-preset --quiet ;;
    sst2-10k-ird-stacked-preset) # Aguilar's stacked schedule with --preset ird on SST-2's first 10,000 rows
                # (stage k teaches layers 1..k, each stage to convergence, 10 epochs at most), then 1 kd
                # epoch, as step sst2-10k-ird-progressive-preset, 3 seeds (after sst2-10k-ird)
                $H distill --task SST-2 --data-dir "$G" --max-train-samples 10000 --teacher sst2-10k/teacher \
                  --preset ird --ird-schedule stacked --num-train-epochs 1 --seeds 42,43,44 \
                  --output-dir sst2-10k/ird-stacked-preset --quiet ;;
    sst2-10k-tinybert-2stage) # TinyBERT's two-stage form on SST-2's first 10,000 rows with hskd's defaults
                # (1 intermediate + 1 prediction epoch, as the other 10k rows), 3 seeds (after sst2-10k-ird)
                $H distill --task SST-2 --data-dir "$G" --max-train-samples 10000 --teacher sst2-10k/teacher \
                  --recipe tinybert-2stage --hsk-epochs 1 --num-train-epochs 1 --seeds 42,43,44 \
                  --output-dir sst2-10k/tinybert-2stage --quiet ;;
    sst2-10k-tinybert-preset) # TinyBERT's two-stage form on SST-2's first 10,000 rows with --preset tinybert
                # (10 + 3 epochs, TinyBERT's lr and losses), per-batch padding as steps cola12-tinybert-2stage
                # and mrpc12-tinybert-preset, 3 seeds (after sst2-10k-ird)
                $H distill --task SST-2 --data-dir "$G" --max-train-samples 10000 --teacher sst2-10k/teacher \
                  --preset tinybert --hsk-padding exclude --seeds 42,43,44 \
                  --output-dir sst2-10k/tinybert-preset --quiet ;;
    sst2-10k-ird-preset) # Aguilar's `all` schedule with --preset ird on SST-2's first 10,000 rows (the internal
                # stage to convergence), then 1 kd epoch as the 10k rows' kd row, 3 seeds, and their train vs
                # dev fit (after sst2-10k-ird and sst2-10k-tinybert-2stage)
                $H distill --task SST-2 --data-dir "$G" --max-train-samples 10000 --teacher sst2-10k/teacher \
                  --preset ird --ird-schedule all --num-train-epochs 1 --seeds 42,43,44 \
                  --output-dir sst2-10k/ird-preset --quiet
                fit_gap --task SST-2 --max-train-samples 10000 \
                  --teacher sst2-10k/teacher sst2-10k/teacher sst2-10k/ird-preset/seed-* \
                  sst2-10k/tinybert-2stage/seed-42 | tee fitgap-sst2.md ;;
    cola12-pkd-preset) # PKD-Skip with --preset pkd (lr 1e-5, beta 500, 4 epochs) on CoLA, 3 seeds, beside
                # step cola12-methods' defaults (as mrpc12-pkd-preset)
                $H distill --task CoLA --data-dir "$G" --teacher cola12/teacher --preset pkd --recipe pkd-skip \
                  --seeds 42,43,44 --output-dir cola12/pkd-skip-preset --quiet ;;
    mrpc12-preset-full) # --preset mud at MUD's full MRPC schedule (after mrpc12-teacher), 3 seeds: its own
                # cache (static padding), HSK stage 20 epochs at constant lr 5e-5, prediction stage 5 epochs at
                # 2e-5, T = 1, soft CE, evaluated every 50 steps; nothing overridden
                $H cache --task MRPC --data-dir "$G" --teacher mrpc12/teacher --preset mud --knowledge 1l_10t \
                  --student-layers 3 --output-dir mrpc12/cache-preset --quiet
                $H distill --task MRPC --data-dir "$G" --cache mrpc12/cache-preset --preset mud \
                  --knowledge 1l_10t_0.1h --seeds 42,43,44 --output-dir mrpc12/mud-preset-full --quiet ;;
    sst2-10k-pkd-preset) # --preset pkd on SST-2's first 10,000 rows, 3 seeds (after sst2-10k-ird), beside step
                # sst2-10k-methods' defaults: PKD-Skip and PKD-Last as the preset sets them, PKD-Skip with only
                # the lr raised to hskd's 1e-4 (as mrpc12-preset-lr), and plain FT at the preset's lr and epochs
                N="--max-train-samples 10000"
                for r in pkd-skip pkd-last; do
                  $H distill --task SST-2 --data-dir "$G" $N --teacher sst2-10k/teacher --preset pkd --recipe $r \
                    --seeds 42,43,44 --output-dir sst2-10k/$r-preset --quiet
                done
                $H distill --task SST-2 --data-dir "$G" $N --teacher sst2-10k/teacher --preset pkd --recipe pkd-skip \
                  --student-learning-rate 1e-4 --seeds 42,43,44 --output-dir sst2-10k/pkd-skip-preset-lr1e-4 --quiet
                $H finetune --task SST-2 --data-dir "$G" $N --layers 3 --learning-rate 1e-5 --num-train-epochs 4 \
                  --seeds 42 --output-dir sst2-10k/ft-lr1e-5-4ep --quiet ;;
    sst2-10k-methods-4ep) # PKD's table on SST-2's first 10,000 rows at the preset's 4 epochs with hskd's
                # defaults, 3 seeds: FT, KD, PKD-Skip, PKD-Last (beside sst2-10k-pkd-preset; 1 epoch: sst2-10k-methods)
                pkd_table sst2-10k/teacher 4 sst2-10k/ft-4ep -4ep --task SST-2 --max-train-samples 10000 ;;
    cola12-pkd-preset-lr) # --preset pkd's PKD-Skip on CoLA with only the lr raised to hskd's 1e-4 (as step
                # mrpc12-preset-lr), 3 seeds (after cola12-teacher); then with hskd's beta 100, and with hskd's
                # 'batchmean' KL, to see which of the preset's other settings slows its students
                P="--teacher cola12/teacher --preset pkd --recipe pkd-skip --student-learning-rate 1e-4 --seeds 42,43,44"
                $H distill --task CoLA --data-dir "$G" $P --output-dir cola12/pkd-skip-preset-lr1e-4 --quiet
                $H distill --task CoLA --data-dir "$G" $P --beta 100 --output-dir cola12/pkd-skip-preset-lr1e-4-beta100 --quiet
                $H distill --task CoLA --data-dir "$G" $P --kd-reduction batchmean \
                  --output-dir cola12/pkd-skip-preset-lr1e-4-batchmean --quiet ;;
    sst2-pkd-seeds) # full SST-2 at 3 seeds (issue 12): PKD-Skip and PKD-Last against the sst2-seeds teacher,
                # 1 epoch as sst2-pkd-skip and sst2-pkd-last trained seed 42 for issue 4
                for r in pkd-skip pkd-last; do
                  $H distill --task SST-2 --data-dir "$G" --teacher sst2/teacher --recipe $r --num-train-epochs 1 \
                    --seeds 42,43,44 --output-dir sst2/$r --quiet
                done ;;
    sst2-ird-seeds) # full SST-2 at 3 seeds (issue 12): Aguilar's three schedules as sst2-ird-{all,progressive,stacked}
                # trained seed 42 for issue 4 (one internal epoch in all, then 1 kd epoch)
                for s in all progressive stacked; do
                  $H distill --task SST-2 --data-dir "$G" --teacher sst2/teacher --recipe ird --ird-schedule $s \
                    --stage-epochs "$(stage_epochs $s)" --num-train-epochs 1 --seeds 42,43,44 --output-dir sst2/ird-$s --quiet
                done ;;
    cola12-methods-4ep) # PKD's table on CoLA at the preset's 4 epochs with hskd's defaults, 3 seeds (beside
                # cola12-pkd-preset and cola12-pkd-preset-lr; 3 epochs: cola12-methods)
                pkd_table cola12/teacher 4 cola12/ft-4ep -4ep --task CoLA ;;
    mrpc12-methods-4ep) # PKD's table on MRPC at the preset's 4 epochs with hskd's defaults, 3 seeds (after
                # mrpc12-teacher; beside mrpc12-pkd-preset and mrpc12-preset-lr; 3 epochs: mrpc12-pkd)
                pkd_table mrpc12/teacher 4 mrpc12/ft-4ep -4ep --task MRPC ;;
    mrpc-deep-teacher) # PKD's 12-layer teacher, stood in for offline: the default backbone with each layer
                # repeated twice (bench/deepen.py), fine-tuned on MRPC like the mrpc12 teacher
                [ -d minilm-x2 ] || $PY "$REPO/bench/deepen.py" minilm-x2
                $H finetune --task MRPC --data-dir "$G" --model minilm-x2 --num-train-epochs 3 \
                  --output-dir mrpc-deep/teacher --quiet ;;
    mrpc-deep-methods) # PKD's table from that 12-layer teacher with 6-layer students (the default backbone
                # whole), 3 seeds, hskd's defaults, as PKD's 12 -> 6 (12 -> 3: step mrpc-deep-methods-l3)
                $H finetune --task MRPC --data-dir "$G" --layers 6 --learning-rate 1e-4 --num-train-epochs 3 \
                  --seeds 42,43,44 --output-dir mrpc-deep/ft-l6 --quiet
                pkd_distill mrpc-deep/teacher 3 -l6 --task MRPC --student-layers 6 ;;
    mrpc-deep-pkd-preset) # PKD-Skip with --preset pkd (lr 1e-5, beta 500, 4 epochs) on those 6-layer students:
                # the student depth PKD's lr was chosen for, where the 3-layer ones stayed on the majority class
                $H distill --task MRPC --data-dir "$G" --teacher mrpc-deep/teacher --preset pkd --recipe pkd-skip \
                  --student-layers 6 --seeds 42,43,44 --output-dir mrpc-deep/pkd-skip-preset-l6 --quiet ;;
    mrpc-deep-methods-l3) # the 12 -> 3 rows of that table: 3-layer students (the backbone's first 3 layers) of the
                # 12-layer stand-in, 3 seeds, hskd's defaults (FT-3: step mrpc12-finetune, the same students)
                pkd_distill mrpc-deep/teacher 3 -l3 --task MRPC --student-layers 3 ;;
    mrpc-deep-pkd-preset-lr) # --preset pkd's PKD-Skip at hskd's lr 1e-4 on the 6-layer students (as
                # cola12-pkd-preset-lr on 3-layer ones): is the preset's gap its lr of 1e-5?
                $H distill --task MRPC --data-dir "$G" --teacher mrpc-deep/teacher --preset pkd --recipe pkd-skip \
                  --student-layers 6 --student-learning-rate 1e-4 --seeds 42,43,44 \
                  --output-dir mrpc-deep/pkd-skip-preset-lr1e-4-l6 --quiet ;;
    report)     for t in sst2 mrpc cola; do
                  ls -d $t $t-* 2>/dev/null | grep -v -e cache -e sweep -e deep | xargs $H report | tee "report-$t.md"
                done ;;
    *) echo "unknown step $1"; exit 2 ;;
  esac
}
if [ "${1:-}" = all ]; then
  for s in sst2-run mrpc-run mrpc-kd bench mrpc-mud mrpc-pkd sst2-sweep sst2-cache sst2-kd mrpc-ird-all mrpc-ird sst2-mud1 \
           sst2-pkd-skip sst2-pkd-last sst2-sweep-mud1 cola sst2-ird-all sst2-ird-progressive sst2-ird-stacked \
           i15-storage i15-search mrpc12-teacher mrpc12-caches mrpc12-seeds mrpc12-finetune mrpc12-pkd \
           mrpc12-pkd-preset cola12-teacher mrpc12-budgets mrpc12-ird cola12-budgets sst2-10k-ird sst2-10k-budgets \
           sst2-10k-preset cola12-methods cola12-ird sst2-10k-methods cola12-methods-2l \
           tinybert12 mrpc12-budgets-33 cola12-ird-preset sst2-seeds sst2-mud-seeds cola12-preset \
           sst2-sweep-seeds cola12-tinybert-2stage cola12-ird-progressive-preset cola12-ird-stacked-preset \
           mrpc12-tinybert-preset mrpc12-tinybert-2stage mrpc12-ird-preset mrpc12-preset-lr \
           mrpc12-ird-diagnose cola12-ird-preset-beta0 mrpc12-ird-progressive-preset \
           sst2-10k-tinybert-2stage sst2-10k-ird-preset mrpc12-ird-stacked-preset mrpc12-ird-progressive-6ep \
           mrpc12-ird-all-6ep sst2-10k-ird-schedules sst2-10k-ird-progressive-preset sst2-10k-ird-stacked-preset \
           sst2-10k-tinybert-preset mrpc12-preset-full \
           cola12-pkd-preset sst2-10k-pkd-preset cola12-pkd-preset-lr sst2-10k-methods-4ep \
           sst2-pkd-seeds sst2-ird-seeds cola12-methods-4ep mrpc12-methods-4ep \
           mrpc-deep-teacher mrpc-deep-methods mrpc-deep-pkd-preset mrpc-deep-methods-l3 \
           mrpc-deep-pkd-preset-lr report; do step $s; done
else
  step "$1"
fi

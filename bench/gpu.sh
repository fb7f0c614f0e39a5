#!/usr/bin/env bash
# Every GPU measurement of the GPU-scale issue in one device call (prepared for a task that is
# lent a GPU; about 8 minutes on one H200 is the budget it was sized for). On the device machine:
#   source .device/setup.sh && bash bench/gpu.sh        (writes $OUT, default $OUT or ./gpu-results)
# 1. bench/teacher_free.py for fp32 and bf16 at batch 32 and 128, three setups;
# 2. the whole job on full SST-2, wall-clock per stage: `hskd run` with teacher-free `mud` and
#    with online `tinybert` (one epoch per stage, bf16); each run fine-tunes its own teacher.
set -euo pipefail
cd "$(dirname "$0")/.."
G=${GLUE_DIR:?source .device/setup.sh first}
R=${OUT:-gpu-results}; mkdir -p "$R"
BACKBONE=${HSKD_MINILM:-}
STEPS=${STEPS:-60}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$R/gpu.txt"
for precision in fp32 bf16; do
  for batch in 32 128; do
    python3 bench/teacher_free.py --device cuda --precision "$precision" --batch-size "$batch" --steps "$STEPS" \
      --repeats 5 --setups minilm,bert-base,bert-base-6l ${BACKBONE:+--backbone "$BACKBONE"} \
      | tee "$R/teacher_free_${precision}_b${batch}.md"
  done
done
common=(--task SST-2 --data-dir "$G" --device cuda --bf16 --num-train-epochs 1 --hsk-epochs 1 --batch-size 32
        --eval-batch-size 256 --quiet ${BACKBONE:+--model "$BACKBONE" --student-model "$BACKBONE"})
python3 -m hskd.cli run "${common[@]}" --recipe tinybert --output-dir "$R/sst2" | tee "$R/sst2_tinybert.md"
python3 -m hskd.cli run "${common[@]}" --recipe mud --output-dir "$R/sst2-mud" | tee "$R/sst2_mud.md"

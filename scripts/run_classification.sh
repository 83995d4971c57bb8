#!/usr/bin/env bash
# Fine-tune a Chinese text classifier: one GPU (or CPU) by default, several GPUs with torchrun or DeepSpeed.
#
#   bash scripts/run_classification.sh                                    # 1 process
#   NUM_GPUS=8 bash scripts/run_classification.sh                         # torchrun, 8 GPUs, 1 machine
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 NUM_GPUS=8 bash scripts/run_classification.sh   # on each machine
#   NUM_GPUS=8 DEEPSPEED=ds_configs/zero2.json bash scripts/run_classification.sh   # DeepSpeed ZeRO-2 (zero3.json: models too big for one GPU)
#   DRY_RUN=1 bash scripts/run_classification.sh                          # print the command, check the arguments, train nothing
#
# Extra arguments go to run_classification.py and win over the defaults below, e.g.
#   bash scripts/run_classification.sh --num_train_epochs 5 --label_delimiter '|'
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-bert-base-chinese}                 # hub id or local dir (hfl/chinese-roberta-wwm-ext, hfl/chinese-macbert-base...)
TRAIN_FILE=${TRAIN_FILE:-data/train.csv}          # file, glob or directory: csv/tsv/json/jsonl/parquet
VALIDATION_FILE=${VALIDATION_FILE:-data/dev.csv}
TEST_FILE=${TEST_FILE:-data/test.csv}             # labels optional; predictions.csv is written
TEXT_COLUMN=${TEXT_COLUMN:-text}
LABEL_COLUMN=${LABEL_COLUMN:-label}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/classification}
MAX_SEQ_LENGTH=${MAX_SEQ_LENGTH:-256}
EPOCHS=${EPOCHS:-3}
LR=${LR:-2e-5}
BATCH_SIZE=${BATCH_SIZE:-32}                      # per GPU; the global batch is BATCH_SIZE x NUM_GPUS x NNODES
PRECISION=${PRECISION:---bf16}                    # --bf16 (Ampere or newer), --fp16 (older GPUs) or --use_cpu

ARGS=(
  --model_name_or_path "$MODEL"
  --train_file "$TRAIN_FILE"
  --validation_file "$VALIDATION_FILE"
  --test_file "$TEST_FILE"
  --text_column "$TEXT_COLUMN"
  --label_column "$LABEL_COLUMN"
  --output_dir "$OUTPUT_DIR"
  --max_seq_length "$MAX_SEQ_LENGTH"
  --num_train_epochs "$EPOCHS"
  --learning_rate "$LR"
  --warmup_steps 0.1
  --per_device_train_batch_size "$BATCH_SIZE"
  --per_device_eval_batch_size "$((BATCH_SIZE * 2))"
  --eval_strategy epoch
  --save_strategy epoch
  --save_total_limit 2
  --logging_steps 50
  --do_train
  --do_eval
  --do_predict
  "$PRECISION"
)

# NUM_GPUS, NNODES, DEEPSPEED, DRY_RUN...: see scripts/_launch.sh
source scripts/_launch.sh
launch run_classification.py "${ARGS[@]}" "$@"

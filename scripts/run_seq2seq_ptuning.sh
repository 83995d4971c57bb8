#!/usr/bin/env bash
# Fine-tune a chat model on prompt -> response data (ChatGLM ptuning/ format): P-Tuning v2, LoRA or full.
# The equivalent of ChatGLM's ptuning/train.sh; one GPU by default, several with torchrun or DeepSpeed.
#
#   bash scripts/run_seq2seq_ptuning.sh                                   # P-Tuning v2, 1 process
#   FINETUNING_TYPE=lora LR=1e-4 bash scripts/run_seq2seq_ptuning.sh     # LoRA
#   NUM_GPUS=8 bash scripts/run_seq2seq_ptuning.sh                        # torchrun, 8 GPUs
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 NUM_GPUS=8 bash scripts/run_seq2seq_ptuning.sh   # on each machine
#   FINETUNING_TYPE=full LR=1e-5 NUM_GPUS=8 DEEPSPEED=ds_configs/zero3.json bash scripts/run_seq2seq_ptuning.sh
#                                                                         # full fine-tuning, DeepSpeed ZeRO-3
#   DRY_RUN=1 bash scripts/run_seq2seq_ptuning.sh                         # print the command, check the arguments, train nothing
#
# Extra arguments go to run_seq2seq_ptuning.py and win over the defaults below, e.g. --history_column history
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}       # hub id or local dir: Qwen2/3, Llama, GLM-4 (-hf), Bloom, T5...
TRAIN_FILE=${TRAIN_FILE:-AdvertiseGen/train.json}
VALIDATION_FILE=${VALIDATION_FILE:-AdvertiseGen/dev.json}
PROMPT_COLUMN=${PROMPT_COLUMN:-content}
RESPONSE_COLUMN=${RESPONSE_COLUMN:-summary}
FINETUNING_TYPE=${FINETUNING_TYPE:-ptuning}      # ptuning | lora | full
PRE_SEQ_LEN=${PRE_SEQ_LEN:-128}                  # P-Tuning v2 prefix length
LR=${LR:-2e-2}                                   # ChatGLM's P-Tuning rate; use ~1e-4 for LoRA, ~1e-5 for full
MAX_SOURCE_LENGTH=${MAX_SOURCE_LENGTH:-64}
MAX_TARGET_LENGTH=${MAX_TARGET_LENGTH:-128}
BATCH_SIZE=${BATCH_SIZE:-1}                      # per GPU
GRAD_ACCUM=${GRAD_ACCUM:-16}
MAX_STEPS=${MAX_STEPS:-3000}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/adgen-$FINETUNING_TYPE}
PRECISION=${PRECISION:---bf16}                   # --bf16, --fp16 or --use_cpu

ARGS=(
  --model_name_or_path "$MODEL"
  --train_file "$TRAIN_FILE"
  --validation_file "$VALIDATION_FILE"
  --prompt_column "$PROMPT_COLUMN"
  --response_column "$RESPONSE_COLUMN"
  --finetuning_type "$FINETUNING_TYPE"
  --pre_seq_len "$PRE_SEQ_LEN"
  --max_source_length "$MAX_SOURCE_LENGTH"
  --max_target_length "$MAX_TARGET_LENGTH"
  --output_dir "$OUTPUT_DIR"
  --per_device_train_batch_size "$BATCH_SIZE"
  --per_device_eval_batch_size 16
  --gradient_accumulation_steps "$GRAD_ACCUM"
  --max_steps "$MAX_STEPS"
  --learning_rate "$LR"
  --logging_steps 10
  --save_steps 1000
  --eval_strategy steps
  --eval_steps 1000
  --max_eval_samples 500
  --train_sampling_strategy group_by_length
  --predict_with_generate
  --do_train
  --do_eval
  "$PRECISION"
)

# NUM_GPUS, NNODES, DEEPSPEED, DRY_RUN...: see scripts/_launch.sh
source scripts/_launch.sh
launch run_seq2seq_ptuning.py "${ARGS[@]}" "$@"

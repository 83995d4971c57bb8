#!/usr/bin/env bash
# Causal-LM pre-training: GPT-2 from scratch on a Chinese BERT vocabulary (default), or continued
# pre-training of a checkpoint (MODEL=...). One GPU by default, torchrun or DeepSpeed for several.
#
#   bash scripts/run_clm.sh                                               # 1 process, GPT-2 from scratch
#   MODEL=Qwen/Qwen2.5-0.5B LR=2e-5 bash scripts/run_clm.sh               # continued pre-training
#   MODEL=Qwen/Qwen2.5-0.5B FINETUNING_TYPE=lora LR=2e-4 bash scripts/run_clm.sh
#   NUM_GPUS=8 bash scripts/run_clm.sh                                    # torchrun, 8 GPUs, 1 machine
#   NUM_GPUS=8 DEEPSPEED=ds_configs/zero2.json bash scripts/run_clm.sh    # DeepSpeed ZeRO-2 launcher
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 NUM_GPUS=8 bash scripts/run_clm.sh   # on each machine
#   DRY_RUN=1 bash scripts/run_clm.sh                                     # print the command, check the arguments, train nothing
#
# Extra arguments go to run_clm.py and win over the defaults below, e.g.
#   bash scripts/run_clm.sh --streaming --max_steps 100000
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-}                                  # empty: build MODEL_TYPE from scratch; else a hub id or local dir
MODEL_TYPE=${MODEL_TYPE:-gpt2}                    # from scratch: gpt2, llama, qwen2, bloom, ...
CONFIG_OVERRIDES=${CONFIG_OVERRIDES:-n_layer=12,n_head=12,n_embd=768,n_positions=1024}
TOKENIZER=${TOKENIZER:-bert-base-chinese}         # from scratch: bos/eos/pad are added to a BERT vocab
TRAIN_FILE=${TRAIN_FILE:-data/corpus/}            # file, glob or directory: txt (a document per line), csv/json/jsonl/parquet
TEXT_COLUMN=${TEXT_COLUMN:-}                      # empty: content, text or completion is found
OUTPUT_DIR=${OUTPUT_DIR:-outputs/clm}
BLOCK_SIZE=${BLOCK_SIZE:-512}
FINETUNING_TYPE=${FINETUNING_TYPE:-full}          # full or lora (continued pre-training only)
MAX_STEPS=${MAX_STEPS:-100000}
LR=${LR:-5e-4}                                    # from scratch; ~2e-5 for continued full, ~2e-4 for LoRA
BATCH_SIZE=${BATCH_SIZE:-16}                      # per GPU; global batch = BATCH_SIZE x GRAD_ACCUM x NUM_GPUS x NNODES
GRAD_ACCUM=${GRAD_ACCUM:-4}
WORKERS=${WORKERS:-8}                             # tokenizer processes (the result is cached for the next run)
PRECISION=${PRECISION:---bf16}                    # --bf16 (Ampere or newer), --fp16 (older GPUs) or --use_cpu

if [ -n "$MODEL" ]; then
  MODEL_ARGS=(--model_name_or_path "$MODEL" --finetuning_type "$FINETUNING_TYPE")
else
  MODEL_ARGS=(--model_type "$MODEL_TYPE" --config_overrides "$CONFIG_OVERRIDES" --tokenizer_name "$TOKENIZER")
fi
ARGS=(
  "${MODEL_ARGS[@]}"
  --train_file "$TRAIN_FILE"
  --validation_split_percentage 1
  --block_size "$BLOCK_SIZE"
  --preprocessing_num_workers "$WORKERS"
  --output_dir "$OUTPUT_DIR"
  --max_steps "$MAX_STEPS"
  --learning_rate "$LR"
  --lr_scheduler_type cosine
  --warmup_steps 0.01
  --weight_decay 0.1
  --per_device_train_batch_size "$BATCH_SIZE"
  --per_device_eval_batch_size "$((BATCH_SIZE * 2))"
  --gradient_accumulation_steps "$GRAD_ACCUM"
  --eval_strategy steps
  --eval_steps 5000
  --save_strategy steps
  --save_steps 5000
  --save_total_limit 3
  --logging_steps 100
  --do_train
  --do_eval
  "$PRECISION"
)
if [ -n "$TEXT_COLUMN" ]; then
  ARGS+=(--text_column "$TEXT_COLUMN")
fi

# NUM_GPUS, NNODES, DEEPSPEED, DRY_RUN...: see scripts/_launch.sh
source scripts/_launch.sh
launch run_clm.py "${ARGS[@]}" "$@"

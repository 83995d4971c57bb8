#!/usr/bin/env bash
# Evaluate and predict with a fine-tuned checkpoint (ChatGLM's ptuning/evaluate.sh): ROUGE / BLEU on the
# validation file, and generated_predictions.jsonl for the test file.
#
#   CHECKPOINT=outputs/adgen-ptuning bash scripts/evaluate_seq2seq.sh            # a P-Tuning or LoRA output dir
#   CHECKPOINT= MODEL=outputs/adgen-full bash scripts/evaluate_seq2seq.sh        # a full fine-tune: no checkpoint
#   NUM_GPUS=8 CHECKPOINT=... bash scripts/evaluate_seq2seq.sh                   # torchrun, 8 GPUs
#   CHECKPOINT= MODEL=outputs/adgen-full-zero3 NUM_GPUS=8 DEEPSPEED=ds_configs/zero3.json bash scripts/evaluate_seq2seq.sh
#                                                                                # ZeRO-3: weights sharded, generation synced
#   DRY_RUN=1 bash scripts/evaluate_seq2seq.sh                                   # print the command, check the arguments, train nothing
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}       # the base model the checkpoint was trained on
CHECKPOINT=${CHECKPOINT-outputs/adgen-ptuning}    # P-Tuning / LoRA output dir (or a checkpoint-N inside it)
VALIDATION_FILE=${VALIDATION_FILE:-AdvertiseGen/dev.json}
TEST_FILE=${TEST_FILE:-AdvertiseGen/dev.json}
PROMPT_COLUMN=${PROMPT_COLUMN:-content}
RESPONSE_COLUMN=${RESPONSE_COLUMN:-summary}
MAX_SOURCE_LENGTH=${MAX_SOURCE_LENGTH:-64}
MAX_TARGET_LENGTH=${MAX_TARGET_LENGTH:-128}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/adgen-eval}
PRECISION=${PRECISION:---bf16}

ARGS=(
  --model_name_or_path "$MODEL"
  --validation_file "$VALIDATION_FILE"
  --test_file "$TEST_FILE"
  --prompt_column "$PROMPT_COLUMN"
  --response_column "$RESPONSE_COLUMN"
  --max_source_length "$MAX_SOURCE_LENGTH"
  --max_target_length "$MAX_TARGET_LENGTH"
  --output_dir "$OUTPUT_DIR"
  --per_device_eval_batch_size 16
  --predict_with_generate
  --do_eval
  --do_predict
  "$PRECISION"
)
if [ -n "$CHECKPOINT" ]; then
  ARGS+=(--ptuning_checkpoint "$CHECKPOINT")
fi

# NUM_GPUS, NNODES, DEEPSPEED, DRY_RUN...: see scripts/_launch.sh
source scripts/_launch.sh
launch run_seq2seq_ptuning.py "${ARGS[@]}" "$@"

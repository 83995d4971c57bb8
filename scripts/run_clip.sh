#!/usr/bin/env bash
# Train a Chinese CLIP on text,image_path pairs: one GPU (or CPU) by default, several GPUs with torchrun.
#
#   bash scripts/run_clip.sh                                              # 1 process, fine-tune Chinese-CLIP
#   NUM_GPUS=8 bash scripts/run_clip.sh                                   # torchrun, 8 GPUs, negatives from all 8
#   TEXT_MODEL=hfl/chinese-roberta-wwm-ext VISION_MODEL=google/vit-base-patch16-224-in21k \
#       bash scripts/run_clip.sh --freeze_vision_model                    # build a dual encoder instead
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 NUM_GPUS=8 bash scripts/run_clip.sh   # on each machine
#   DRY_RUN=1 bash scripts/run_clip.sh                                    # print the command, check the arguments, train nothing
#
# Extra arguments go to run_clip.py and win over the defaults below, e.g.
#   bash scripts/run_clip.sh --num_train_epochs 5 --image_root /data/images
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-OFA-Sys/chinese-clip-vit-base-patch16}  # a Chinese-CLIP checkpoint (or any CLIP-style one)
TEXT_MODEL=${TEXT_MODEL:-}                        # set both TEXT_MODEL and VISION_MODEL to build a dual encoder
VISION_MODEL=${VISION_MODEL:-}
TRAIN_FILE=${TRAIN_FILE:-data/clip/train.csv}     # csv/json/jsonl with an image path and a caption per row
VALIDATION_FILE=${VALIDATION_FILE:-data/clip/valid.csv}
IMAGE_COLUMN=${IMAGE_COLUMN:-image_path}
CAPTION_COLUMN=${CAPTION_COLUMN:-text}
IMAGE_CACHE_DIR=${IMAGE_CACHE_DIR:-cache/clip_images}  # images stored at model resolution; '' to turn off
OUTPUT_DIR=${OUTPUT_DIR:-outputs/clip}
EPOCHS=${EPOCHS:-3}
LR=${LR:-3e-5}
BATCH_SIZE=${BATCH_SIZE:-128}                     # per GPU; with --gather_negatives each rank sees BATCH_SIZE x NUM_GPUS x NNODES negatives
WORKERS=${WORKERS:-8}                             # image-decoding processes per GPU
PRECISION=${PRECISION:---bf16}                    # --bf16 (Ampere or newer), --fp16 (older GPUs) or --use_cpu

if [ -n "$TEXT_MODEL" ] || [ -n "$VISION_MODEL" ]; then
  MODEL_ARGS=(--text_model_name_or_path "$TEXT_MODEL" --vision_model_name_or_path "$VISION_MODEL")
else
  MODEL_ARGS=(--model_name_or_path "$MODEL")
fi
ARGS=(
  "${MODEL_ARGS[@]}"
  --train_file "$TRAIN_FILE"
  --validation_file "$VALIDATION_FILE"
  --image_column "$IMAGE_COLUMN"
  --caption_column "$CAPTION_COLUMN"
  --output_dir "$OUTPUT_DIR"
  --num_train_epochs "$EPOCHS"
  --learning_rate "$LR"
  --warmup_steps 0.05
  --weight_decay 0.001
  --per_device_train_batch_size "$BATCH_SIZE"
  --per_device_eval_batch_size "$((BATCH_SIZE * 2))"
  --dataloader_num_workers "$WORKERS"
  --dataloader_persistent_workers
  --gather_negatives
  --eval_strategy epoch
  --save_strategy epoch
  --save_total_limit 2
  --metric_for_best_model mean_recall
  --logging_steps 50
  --do_train
  --do_eval
  "$PRECISION"
)
if [ -n "$IMAGE_CACHE_DIR" ]; then
  ARGS+=(--image_cache_dir "$IMAGE_CACHE_DIR")
fi

# NUM_GPUS, NNODES, DEEPSPEED, DRY_RUN...: see scripts/_launch.sh
source scripts/_launch.sh
launch run_clip.py "${ARGS[@]}" "$@"

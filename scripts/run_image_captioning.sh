#!/usr/bin/env bash
# Train an image -> Chinese caption model (ViT + Chinese GPT-2) on text,image_path pairs: one GPU (or CPU) by
# default, several GPUs with torchrun, DeepSpeed with DEEPSPEED=ds_configs/....json.
#
#   bash scripts/run_image_captioning.sh                                   # 1 process, build ViT + GPT-2
#   MODEL=yuanzhoulvpi/vit-gpt2-image-chinese-captioning bash scripts/run_image_captioning.sh   # fine-tune one
#   NUM_GPUS=8 bash scripts/run_image_captioning.sh                        # torchrun, 8 GPUs
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 NUM_GPUS=8 bash scripts/run_image_captioning.sh   # on each machine
#   NUM_GPUS=8 DEEPSPEED=ds_configs/zero2.json bash scripts/run_image_captioning.sh   # DeepSpeed ZeRO-2 (zero3.json: too big for one GPU)
#   DRY_RUN=1 bash scripts/run_image_captioning.sh                         # print the command, check the arguments, train nothing
#
# Extra arguments go to run_image_captioning.py and win over the defaults below, e.g.
#   bash scripts/run_image_captioning.sh --freeze_encoder --image_root /data/images
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-}                                           # a VisionEncoderDecoder checkpoint; '' builds one:
ENCODER=${ENCODER:-google/vit-base-patch16-224}            # the image encoder (ViT, DeiT, Swin...)
DECODER=${DECODER:-uer/gpt2-chinese-cluecorpussmall}       # a Chinese GPT-2 or BERT
TRAIN_FILE=${TRAIN_FILE:-data/captioning/train.csv}        # csv/json/jsonl with an image path and a caption per row
VALIDATION_FILE=${VALIDATION_FILE:-data/captioning/valid.csv}
IMAGE_COLUMN=${IMAGE_COLUMN:-image_path}
CAPTION_COLUMN=${CAPTION_COLUMN:-text}
IMAGE_CACHE_DIR=${IMAGE_CACHE_DIR:-cache/captioning_images}  # images stored at model resolution; '' to turn off
OUTPUT_DIR=${OUTPUT_DIR:-outputs/captioning}
EPOCHS=${EPOCHS:-3}
LR=${LR:-5e-5}
BATCH_SIZE=${BATCH_SIZE:-64}                               # per GPU
NUM_BEAMS=${NUM_BEAMS:-4}
WORKERS=${WORKERS:-8}                                      # image-decoding processes per GPU
PRECISION=${PRECISION:---bf16}                             # --bf16 (Ampere or newer), --fp16 (older GPUs) or --use_cpu

if [ -n "$MODEL" ]; then
  MODEL_ARGS=(--model_name_or_path "$MODEL")
else
  MODEL_ARGS=(--encoder_model_name_or_path "$ENCODER" --decoder_model_name_or_path "$DECODER")
fi
ARGS=(
  "${MODEL_ARGS[@]}"
  --train_file "$TRAIN_FILE"
  --validation_file "$VALIDATION_FILE"
  --image_column "$IMAGE_COLUMN"
  --caption_column "$CAPTION_COLUMN"
  --output_dir "$OUTPUT_DIR"
  --max_target_length 32
  --max_new_tokens 16
  --num_beams "$NUM_BEAMS"
  --num_train_epochs "$EPOCHS"
  --learning_rate "$LR"
  --warmup_steps 0.05
  --weight_decay 0.01
  --per_device_train_batch_size "$BATCH_SIZE"
  --per_device_eval_batch_size "$BATCH_SIZE"
  --max_eval_samples 2000
  --dataloader_num_workers "$WORKERS"
  --dataloader_persistent_workers
  --eval_strategy epoch
  --save_strategy epoch
  --save_total_limit 2
  --metric_for_best_model cider-d
  --logging_steps 50
  --predict_with_generate
  --do_train
  --do_eval
  "$PRECISION"
)
if [ -n "$IMAGE_CACHE_DIR" ]; then
  ARGS+=(--image_cache_dir "$IMAGE_CACHE_DIR")
fi

# NUM_GPUS, NNODES, DEEPSPEED, DRY_RUN...: see scripts/_launch.sh
source scripts/_launch.sh
launch run_image_captioning.py "${ARGS[@]}" "$@"

#!/usr/bin/env bash
# Train a Chinese captioner: a ViT encoder and a Chinese GPT-2 decoder joined by cross-attention.
# The settings are in examples/captioning_vit_gpt2_chinese.json; flags after the command win over them.
# NUM_GPUS, NNODES, DEEPSPEED, DRY_RUN...: see scripts/launch.sh, e.g.
#   NUM_GPUS=8 bash scripts/run_image_captioning.sh --output_dir outputs/mine
exec bash "$(dirname "$0")/launch.sh" run_image_captioning.py examples/captioning_vit_gpt2_chinese.json "$@"

#!/usr/bin/env bash
# Fine-tune Chinese-CLIP (ViT-B/16) on text,image_path pairs, negatives gathered from every GPU.
# The settings are in examples/clip_chinese_clip_vit_base.json; flags after the command win over them.
# NUM_GPUS, NNODES, DEEPSPEED, DRY_RUN...: see scripts/launch.sh, e.g.
#   NUM_GPUS=8 bash scripts/run_clip.sh --output_dir outputs/mine
exec bash "$(dirname "$0")/launch.sh" run_clip.py examples/clip_chinese_clip_vit_base.json "$@"

#!/usr/bin/env bash
# Fine-tune bert-base-chinese on ChnSentiCorp-style text,label files.
# The settings are in examples/classification_bert_base_chinese.json; flags after the command win over them.
# NUM_GPUS, NNODES, DEEPSPEED, DRY_RUN...: see scripts/launch.sh, e.g.
#   NUM_GPUS=8 bash scripts/run_classification.sh --output_dir outputs/mine
exec bash "$(dirname "$0")/launch.sh" run_classification.py examples/classification_bert_base_chinese.json "$@"

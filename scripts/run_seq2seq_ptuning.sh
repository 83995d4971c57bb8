#!/usr/bin/env bash
# P-Tuning v2 of Qwen2.5-1.5B-Instruct on ADGEN (ChatGLM's ptuning/train.sh); LoRA: examples/seq2seq_adgen_lora.json.
# The settings are in examples/seq2seq_adgen_ptuning.json; flags after the command win over them.
# NUM_GPUS, NNODES, DEEPSPEED, DRY_RUN...: see scripts/launch.sh, e.g.
#   NUM_GPUS=8 bash scripts/run_seq2seq_ptuning.sh --output_dir outputs/mine
exec bash "$(dirname "$0")/launch.sh" run_seq2seq_ptuning.py examples/seq2seq_adgen_ptuning.json "$@"

#!/usr/bin/env bash
# Pre-train a GPT-2 from scratch on a Chinese corpus (BERT vocabulary).
# The settings are in examples/clm_gpt2_from_scratch.json; flags after the command win over them.
# NUM_GPUS, NNODES, DEEPSPEED, DRY_RUN...: see scripts/launch.sh, e.g.
#   NUM_GPUS=8 bash scripts/run_clm.sh --output_dir outputs/mine
exec bash "$(dirname "$0")/launch.sh" run_clm.py examples/clm_gpt2_from_scratch.json "$@"

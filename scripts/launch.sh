#!/usr/bin/env bash
# Start a training script on its recipe (an examples/ argument file): one process, torchrun or DeepSpeed.
#
#   bash scripts/launch.sh SCRIPT RECIPE [--overrides ...]
#   bash scripts/launch.sh run_clip.py examples/clip_chinese_clip_vit_base.json --num_train_epochs 5
#   NUM_GPUS=8 bash scripts/launch.sh run_clm.py examples/clm_gpt2_from_scratch.json          # torchrun, 8 GPUs
#   NUM_GPUS=8 DEEPSPEED=ds_configs/zero2.json bash scripts/launch.sh run_seq2seq_ptuning.py examples/seq2seq_adgen_lora.json
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 NUM_GPUS=8 bash scripts/launch.sh ...            # on each machine
#   DRY_RUN=1 bash scripts/launch.sh ...           # print the command, check the arguments, train nothing
#
# The recipe holds the settings; flags after it win over the recipe's values. The script runs from the repository
# root, so relative paths (in the recipe and the flags) are read from there, as `python run_x.py examples/x.json`.
#
# Variables (defaults):
#   NUM_GPUS=1          processes per machine; more than 1 starts torchrun (or deepspeed, below)
#   NNODES=1 NODE_RANK=0 MASTER_ADDR=127.0.0.1   multi-node torchrun: run the launcher on every machine
#   MASTER_PORT=        default: a port that is free on this machine; set the same one on every machine
#   DEEPSPEED=          a ds_configs/*.json file: start with the deepspeed launcher and pass --deepspeed
#   HOSTFILE=           DeepSpeed multi-node: a hostfile ("host slots=8" per line), launched from the first host
#   PYTHON=python       the interpreter for single-process runs and for the dry run's check
#   DRY_RUN=            1: print the command, then check the arguments (the script parses and validates them,
#                       prints them, and exits before loading data); print: only print the command. Nothing trains
set -euo pipefail
CALLER=$PWD
cd "$(dirname "$0")/.."

usage="usage: bash scripts/launch.sh SCRIPT RECIPE [--overrides ...], e.g.
  bash scripts/launch.sh run_clip.py examples/clip_chinese_clip_vit_base.json --num_train_epochs 5"

# find FILE: FILE as written from the repository root, else from the folder the launcher was called in
find_file() {
  if [ -f "$1" ]; then
    echo "$1"
  elif [ -f "$CALLER/$1" ]; then
    echo "$CALLER/$1"
  fi
}

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "$usage" >&2
  exit 2
fi
SCRIPT=$(find_file "$1")
if [ -z "$SCRIPT" ] || [ "${SCRIPT%.py}" = "$SCRIPT" ]; then
  echo "SCRIPT '$1' is not a file (looked from $CALLER and from $PWD); the training scripts are: $(ls run_*.py | tr '\n' ' ')" >&2
  echo "$usage" >&2
  exit 2
fi
shift
ARGS=()
# the recipe may be left out (plain flags work too), but a second word that is no flag must be one
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  RECIPE=$(find_file "$1")
  case "$RECIPE" in
    *.json | *.yaml | *.yml) ARGS=("$RECIPE") ;;
    *)
      reason=$([ -n "$RECIPE" ] && echo "is not a .json / .yaml argument file" || echo "is not a file (looked from $CALLER and from $PWD)")
      echo "RECIPE '$1' $reason; the recipes are: $(cd examples && ls ./*.json ./*.yaml | sed 's|^\./|examples/|' | tr '\n' ' ')" >&2
      echo "$usage" >&2
      exit 2
      ;;
  esac
  shift
fi
ARGS+=("$@")

NUM_GPUS=${NUM_GPUS:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
DEEPSPEED=${DEEPSPEED:-}
HOSTFILE=${HOSTFILE:-}
PYTHON=${PYTHON:-python}

# A port nothing listens on now (the OS picks it), so two runs on one machine do not collide.
free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}
MASTER_PORT=${MASTER_PORT:-$(free_port)}

if [ -n "$DEEPSPEED" ]; then
  if [ ! -f "$DEEPSPEED" ]; then
    echo "DEEPSPEED=$DEEPSPEED is not a file; use one of: $(ls ds_configs/*.json | tr '\n' ' ')" >&2
    exit 1
  fi
  if [ "$NNODES" -gt 1 ] && [ -z "$HOSTFILE" ]; then
    echo "DeepSpeed on several machines needs HOSTFILE (one 'host slots=N' line per machine)." >&2
    exit 1
  fi
  LAUNCHER=(deepspeed --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT")
  if [ -n "$HOSTFILE" ]; then
    LAUNCHER+=(--hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR")
  fi
  ARGS+=(--deepspeed "$DEEPSPEED")
elif [ "$NUM_GPUS" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
  LAUNCHER=(torchrun --nproc_per_node "$NUM_GPUS" --nnodes "$NNODES" --node_rank "$NODE_RANK"
            --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
else
  LAUNCHER=("$PYTHON")
fi

COMMAND=("${LAUNCHER[@]}" "$SCRIPT" "${ARGS[@]}")
if [ -n "${DRY_RUN:-}" ]; then
  printf '%q ' "${COMMAND[@]}"
  echo
  if [ "$DRY_RUN" = print ]; then
    exit 0
  fi
  exec env DRY_RUN=1 "$PYTHON" "$SCRIPT" "${ARGS[@]}"
fi
exec "${COMMAND[@]}"

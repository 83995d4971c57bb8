#!/usr/bin/env bash
# Shared by the scripts/run_*.sh launchers (sourced, not run): how to start a training script.
#
# Variables (defaults):
#   NUM_GPUS=1          processes per machine; more than 1 starts torchrun (or deepspeed, below)
#   NNODES=1 NODE_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=<random free-ish port>   multi-node torchrun
#   DEEPSPEED=          a ds_configs/*.json file: start with the deepspeed launcher and pass --deepspeed
#   HOSTFILE=           DeepSpeed multi-node: a hostfile instead of NNODES/NODE_RANK
#   PYTHON=python       the interpreter for single-process runs
#   DRY_RUN=            non-empty: print the command and exit (tests use it)

NUM_GPUS=${NUM_GPUS:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-$((20000 + RANDOM % 20000))}
DEEPSPEED=${DEEPSPEED:-}
HOSTFILE=${HOSTFILE:-}
PYTHON=${PYTHON:-python}

# launch SCRIPT ARGS...: run SCRIPT with ARGS on one process, torchrun or deepspeed, as the variables say.
launch() {
  local script=$1
  shift
  local args=("$@") launcher
  if [ -n "$DEEPSPEED" ]; then
    launcher=(deepspeed --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT")
    if [ -n "$HOSTFILE" ]; then
      launcher+=(--hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR")
    fi
    args+=(--deepspeed "$DEEPSPEED")
  elif [ "$NUM_GPUS" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
    launcher=(torchrun --nproc_per_node "$NUM_GPUS" --nnodes "$NNODES" --node_rank "$NODE_RANK"
              --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
  else
    launcher=("$PYTHON")
  fi
  local command=("${launcher[@]}" "$script" "${args[@]}")
  if [ -n "${DRY_RUN:-}" ]; then
    printf '%q ' "${command[@]}"
    echo
    exit 0
  fi
  exec "${command[@]}"
}

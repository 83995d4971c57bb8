#!/usr/bin/env bash
# Shared by the scripts/run_*.sh launchers (sourced, not run): how to start a training script.
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

# launch SCRIPT ARGS...: run SCRIPT with ARGS on one process, torchrun or deepspeed, as the variables say.
launch() {
  local script=$1
  shift
  local args=("$@") launcher
  if [ -n "$DEEPSPEED" ]; then
    if [ ! -f "$DEEPSPEED" ]; then
      echo "DEEPSPEED=$DEEPSPEED is not a file; use one of: $(ls ds_configs/*.json | tr '\n' ' ')" >&2
      exit 1
    fi
    if [ "$NNODES" -gt 1 ] && [ -z "$HOSTFILE" ]; then
      echo "DeepSpeed on several machines needs HOSTFILE (one 'host slots=N' line per machine)." >&2
      exit 1
    fi
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
    if [ "$DRY_RUN" = print ]; then
      exit 0
    fi
    exec env DRY_RUN=1 "$PYTHON" "$script" "${args[@]}"
  fi
  exec "${command[@]}"
}

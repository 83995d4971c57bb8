#!/usr/bin/env bash
# Evaluate and predict with a fine-tuned run_seq2seq_ptuning.py output (ChatGLM's ptuning/evaluate.sh): ROUGE / BLEU
# on the recipe's validation file and generated_predictions.jsonl for its test file, written to OUTPUT_DIR/eval.
#
#   bash scripts/evaluate_seq2seq.sh                        # what scripts/run_seq2seq_ptuning.sh trained (P-Tuning)
#   bash scripts/evaluate_seq2seq.sh outputs/adgen-lora     # P-Tuning / LoRA: onto the base model
#   bash scripts/evaluate_seq2seq.sh outputs/adgen-full     # a full fine-tune
#   bash scripts/evaluate_seq2seq.sh DIR --model_name_or_path Qwen/Qwen2.5-7B-Instruct --test_file data/test.json
#   NUM_GPUS=8 DEEPSPEED=ds_configs/zero3.json bash scripts/evaluate_seq2seq.sh DIR     # see scripts/launch.sh
#
# The settings are those of examples/seq2seq_adgen_ptuning.json; flags after OUTPUT_DIR win over them (every file
# the recipe names must exist, its train_file too). Paths are read from the repository root, as scripts/launch.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
# default: the output_dir of the recipe, where scripts/run_seq2seq_ptuning.sh trains
output_dir=outputs/adgen-qwen2.5-1.5b-pt-128-2e-2
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  output_dir=$1
  shift
fi
if [ -f "$output_dir/adapter_config.json" ]; then  # adapters: the base model is the recipe's (or --model_name_or_path)
  model=(--adapter_name_or_path "$output_dir")
else
  model=(--model_name_or_path "$output_dir")
fi
# --finetuning_type full: nothing new is trained; an adapter's own config says what it holds
exec bash scripts/launch.sh run_seq2seq_ptuning.py examples/seq2seq_adgen_ptuning.json --do_train false \
  --finetuning_type full "${model[@]}" --output_dir "$output_dir/eval" "$@"

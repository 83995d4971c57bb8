"""Multi-GPU support: the DeepSpeed configs, and real 2-process DDP / ZeRO runs on CPU (gloo).

The single-process checks of zhtrain/launch.py are in test_launch.py.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zhtrain.launch import free_port

ROOT = Path(__file__).resolve().parent.parent
DS_CONFIGS = sorted((ROOT / "ds_configs").glob("*.json"))
# what TrainingArguments own: DeepSpeed must take them from the command line, never from the file
TRAINER_OWNED = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "bf16.enabled",
    "fp16.enabled",
    "zero_optimization.reduce_bucket_size",
)
ZERO3_OWNED = ("zero_optimization.stage3_prefetch_bucket_size", "zero_optimization.stage3_param_persistence_threshold")


def value_at(config: dict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


def test_there_are_four_deepspeed_configs():
    assert [p.name for p in DS_CONFIGS] == ["zero2.json", "zero2_offload.json", "zero3.json", "zero3_offload.json"]


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_deepspeed_config_leaves_trainer_settings_to_the_trainer(path):
    config = json.loads(path.read_text(encoding="utf-8"))
    zero3 = config["zero_optimization"]["stage"] == 3
    for key in TRAINER_OWNED + (ZERO3_OWNED if zero3 else ()):
        assert value_at(config, key) == "auto", key
    # the optimizer and schedule come from --optim / --learning_rate / --lr_scheduler_type
    assert "optimizer" not in config and "scheduler" not in config
    if zero3:  # one consolidated checkpoint that from_pretrained reads
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    if "offload" in path.name:
        assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
        assert config["zero_force_ds_cpu_optimizer"] is False  # torch AdamW on the offloaded states


# Real multi-process runs: 2 processes on CPU over gloo, as CI runs them.


@pytest.fixture(scope="session")
def torch_extensions_dir(tmp_path_factory) -> Path:
    """DeepSpeed JIT-compiles a communication op on first use (~1 min): once per session, inside the temp dir."""
    return tmp_path_factory.mktemp("torch_extensions")


def launch(kind: str, script: str, args: list[str], cwd: Path, extensions: Path) -> str:
    """Run `script` with 2 processes through torchrun or deepspeed; returns the output, fails with its tail."""
    if kind == "torchrun":
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:
        port = str(free_port())
        launcher = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", port]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", TORCH_EXTENSIONS_DIR=str(extensions))
    env.pop("DRY_RUN", None)
    done = subprocess.run(
        [*launcher, str(ROOT / script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=420
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    return output


def results(output_dir: Path) -> tuple[dict, dict]:
    state = json.loads((output_dir / "trainer_state.json").read_text(encoding="utf-8"))
    return json.loads((output_dir / "all_results.json").read_text(encoding="utf-8")), state


@pytest.mark.multiprocess
def test_torchrun_ddp_run_clm_splits_the_data_over_two_ranks(demo_dir, tmp_path, torch_extensions_dir):
    """No --use_cpu on purpose: it is added for a CPU-only torchrun, else each rank would train alone."""
    lines = (demo_dir / "data" / "clm" / "train.txt").read_text(encoding="utf-8").splitlines()
    train = tmp_path / "train.txt"
    train.write_text("\n".join(lines[:120]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = [
        "--model_type", "gpt2", "--config_overrides", "n_layer=1,n_head=2,n_embd=32,n_positions=64",
        "--tokenizer_name", str(demo_dir / "tokenizer-clm"), "--train_file", str(train), "--block_size", "32",
        "--do_train", "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--learning_rate", "3e-3",
        "--output_dir", str(out), "--save_strategy", "no", "--report_to", "none", "--sample_prompts", "北京",
        "--sample_max_new_tokens", "4", "--logging_steps", "1",
    ]  # fmt: skip
    output = launch("torchrun", "run_clm.py", args, tmp_path, torch_extensions_dir)
    assert "adding --use_cpu" in output
    assert "Process rank 1" in output and "distributed True" in output
    metrics, state = results(out)
    blocks = metrics["train_samples"]
    assert blocks > 16
    # 2 ranks x 4 blocks per step: each rank got half of the blocks (alone, a rank would take ceil(blocks / 4))
    assert state["global_step"] == math.ceil(blocks / 8)
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in output


SEQ2SEQ_ARGS = [
    "--prompt_column", "content", "--response_column", "summary", "--max_source_length", "48",
    "--max_target_length", "24", "--finetuning_type", "full", "--do_train", "--do_eval", "--predict_with_generate",
    "--max_train_samples", "64", "--max_eval_samples", "8", "--num_train_epochs", "2",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4", "--learning_rate", "3e-3",
    "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--seed", "7", "--logging_steps", "1",
    "--dataloader_num_workers", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def seq2seq_ddp(demo_dir, tmp_path_factory, torch_extensions_dir) -> Path:
    """A torchrun DDP fine-tune + generation eval of run_seq2seq_ptuning.py: the reference for the ZeRO runs."""
    tmp = tmp_path_factory.mktemp("seq2seq_ddp")
    data = demo_dir / "data" / "adgen"
    args = ["--model_name_or_path", str(demo_dir / "models" / "llama-tiny-sft-zh"), *SEQ2SEQ_ARGS]
    args += ["--train_file", str(data / "train.jsonl"), "--validation_file", str(data / "validation.jsonl")]
    # 7 test rows over 2 ranks x 4: the sampler repeats one row to fill the last batch, which must not reach the file
    args += ["--do_predict", "--test_file", str(data / "test.jsonl"), "--max_predict_samples", "7"]
    launch("torchrun", "run_seq2seq_ptuning.py", [*args, "--output_dir", str(tmp / "out")], tmp, torch_extensions_dir)
    return tmp / "out"


@pytest.mark.multiprocess
def test_torchrun_ddp_seq2seq_trains_on_two_ranks_and_evaluates_by_generation(seq2seq_ddp):
    metrics, state = results(seq2seq_ddp)
    assert metrics["train_samples"] == 64
    assert state["global_step"] == 2 * 64 // (2 * 8)  # 2 epochs of 64 rows in global batches of 2 x 8
    assert metrics["eval_samples"] == 8 and "eval_rouge-l" in metrics and "eval_bleu-4" in metrics
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses[-1] < losses[0]
    lines = (seq2seq_ddp / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert metrics["predict_samples"] == 7 and len(lines) == 7


@pytest.mark.multiprocess
def test_torchrun_ddp_token_budget_batches_are_shared_out_over_the_ranks(demo_dir, tmp_path, torch_extensions_dir):
    data = demo_dir / "data" / "adgen"
    args = ["--model_name_or_path", str(demo_dir / "models" / "llama-tiny-sft-zh"), *SEQ2SEQ_ARGS]
    args += ["--train_file", str(data / "train.jsonl"), "--validation_file", str(data / "validation.jsonl")]
    args += ["--output_dir", str(tmp_path / "out"), "--padding_free", "--max_tokens_per_batch", "256"]
    output = launch("torchrun", "run_seq2seq_ptuning.py", args, tmp_path, torch_extensions_dir)
    batches = int(re.search(r"(\d+) training batches of up to 256 tokens per epoch .* shared by 2 process", output)[1])
    metrics, state = results(tmp_path / "out")
    assert batches > 4 and metrics["train_samples"] == 64
    # each rank trains every other batch (the same order on both): half the steps of one process, per epoch
    assert state["global_step"] == 2 * math.ceil(batches / 2)
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses[-1] < losses[0] and "eval_rouge-l" in metrics


@pytest.mark.multiprocess
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_zero_matches_ddp_including_generation_eval(
    stage, seq2seq_ddp, demo_dir, tmp_path, torch_extensions_dir
):
    from safetensors.torch import load_file

    data = demo_dir / "data" / "adgen"
    args = ["--model_name_or_path", str(demo_dir / "models" / "llama-tiny-sft-zh"), *SEQ2SEQ_ARGS]
    args += ["--train_file", str(data / "train.jsonl"), "--validation_file", str(data / "validation.jsonl")]
    args += ["--output_dir", str(tmp_path / "out"), "--deepspeed", str(ROOT / "ds_configs" / f"{stage}.json")]
    launch("deepspeed", "run_seq2seq_ptuning.py", args, tmp_path, torch_extensions_dir)
    metrics, state = results(tmp_path / "out")
    reference, reference_state = results(seq2seq_ddp)
    assert state["global_step"] == reference_state["global_step"]
    assert metrics["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-3)
    for key in ("eval_rouge-1", "eval_rouge-2", "eval_rouge-l", "eval_bleu-4"):
        assert metrics[key] == pytest.approx(reference[key], abs=0.5), key

    if stage == "zero3":  # consolidated weights: the standard loader reads them, and they equal DDP's
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
        ddp_weights = load_file(str(seq2seq_ddp / "model.safetensors"))
        for name, tensor in model.state_dict().items():
            if name in ddp_weights:
                torch.testing.assert_close(tensor, ddp_weights[name], rtol=1e-3, atol=1e-4, msg=name)
        assert len(ddp_weights) > 0 and set(ddp_weights) <= set(model.state_dict())

"""Unit tests for zhtrain/launch.py in one process: the flags a launch needs, the DataParallel refusal, the dry run,
and the DeepSpeed sizes filled in for models without one hidden_size. The real multi-process runs are in
test_multigpu.py.
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from zhtrain import training
from zhtrain.launch import fill_deepspeed_hidden_size, launch_flags, refuse_data_parallel

ROOT = Path(__file__).resolve().parent.parent


def resolved_zero3(model_config, fill: bool) -> dict:
    """zero3.json as deepspeed_init completes it for a model with this config (no process group needed)."""
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = TrainingArguments(output_dir="unused", use_cpu=True, per_device_train_batch_size=4, report_to="none")
    ds_config = HfTrainerDeepSpeedConfig(str(ROOT / "ds_configs" / "zero3.json"))
    try:
        ds_config.trainer_config_process(args)
        model = SimpleNamespace(config=model_config)
        if fill:
            plugin = SimpleNamespace(hf_ds_config=ds_config)
            fill_deepspeed_hidden_size(
                SimpleNamespace(
                    accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin)), model=model
                )
            )
        ds_config.trainer_config_finalize(args, model, num_training_steps=10)
        return ds_config.config
    finally:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # HfTrainerDeepSpeedConfig registers itself process-wide


def test_zero3_auto_sizes_resolve_for_encoder_decoder_and_dual_encoder():
    from transformers import BertConfig, GPT2Config, VisionEncoderDecoderConfig, VisionTextDualEncoderConfig, ViTConfig

    vit = ViTConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    captioner = VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit, GPT2Config(n_embd=96, n_layer=1))
    with pytest.raises(ValueError, match="hidden_size"):  # what transformers alone does with this config
        resolved_zero3(captioner, fill=False)
    zero = resolved_zero3(captioner, fill=True)["zero_optimization"]
    assert zero["reduce_bucket_size"] == 96 * 96  # the larger of the two towers
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 96 * 96)
    assert zero["stage3_param_persistence_threshold"] == 960

    bert = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    # run_clip.py builds this one (DeepSpeed itself then refuses its 0-dim logit_scale: test_clip.py)
    dual = VisionTextDualEncoderConfig.from_vision_text_configs(vit, bert, projection_dim=16)
    zero = resolved_zero3(dual, fill=True)["zero_optimization"]
    assert "auto" not in json.dumps(zero) and zero["reduce_bucket_size"] in (32 * 32, 48 * 48)


def test_torchrun_on_a_cpu_machine_gets_use_cpu():
    two_ranks = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    assert launch_flags(False, None, two_ranks, has_accelerator=False) == ["--use_cpu"]
    assert launch_flags(False, "ds_configs/zero2.json", {}, has_accelerator=False) == ["--use_cpu"]
    assert launch_flags(True, None, two_ranks, has_accelerator=False) == []  # already there
    assert launch_flags(False, None, two_ranks, has_accelerator=True) == []  # GPUs: NCCL as usual
    assert launch_flags(False, None, {}, has_accelerator=False) == []  # one plain process: nothing to join


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for name in ("WORLD_SIZE", "LOCAL_RANK", "DRY_RUN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", ["run_clm.py", "examples/clm_demo.json", "--max_steps", "10"])


def test_one_process_on_several_gpus_is_refused_with_the_torchrun_command(four_gpus):
    args = SimpleNamespace(use_cpu=False, deepspeed=None)
    with pytest.raises(
        ValueError, match="torchrun --nproc_per_node 4 run_clm.py examples/clm_demo.json --max_steps 10"
    ):
        training.setup_run([args])  # the check every script gets, before any data is read
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES=0 python run_clm.py"):
        refuse_data_parallel(args)


def test_several_gpus_are_fine_with_a_launcher_model_parallel_or_deepspeed(four_gpus, monkeypatch):
    args = SimpleNamespace(use_cpu=False, deepspeed=None)
    refuse_data_parallel(args, model_parallel=True)  # run_seq2seq_ptuning.py --model_parallel_mode
    refuse_data_parallel(SimpleNamespace(use_cpu=False, deepspeed="ds_configs/zero2.json"))
    refuse_data_parallel(SimpleNamespace(use_cpu=True, deepspeed=None))
    monkeypatch.setenv("WORLD_SIZE", "4")
    refuse_data_parallel(args)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("WORLD_SIZE")
    refuse_data_parallel(args)


def test_dry_run_validates_prints_and_stops_before_the_data(demo_dir, tmp_path, monkeypatch, capsys):
    import run_classification

    monkeypatch.setenv("DRY_RUN", "1")
    argv = [
        "--model_name_or_path", str(demo_dir / "models" / "bert-tiny-zh"),
        "--train_file", str(demo_dir / "data" / "sentiment" / "train.csv"),
        "--output_dir", str(tmp_path / "out"), "--do_train", "--learning_rate", "3e-4",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run_classification.main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert '"learning_rate": 0.0003' in out and "DRY_RUN: the arguments are valid" in out
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="--train_file"):
        run_classification.main([*argv[:2], "--train_file", str(tmp_path / "missing.csv"), *argv[4:]])

"""Small helpers shared by the tests: the arguments of a short run of each task, argv from a dict, the real models in
../shared, tiny ChatGLM checkpoints, a run killed while it saves a checkpoint."""

import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import torch
from safetensors.torch import save_file

# the real tokenizers, templates and configs of the chat models users train (absent in a user's fresh clone)
MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"


def to_argv(args: dict) -> list[str]:
    """{"do_train": True, "learning_rate": 1e-3, "test_file": None} -> ["--do_train", "--learning_rate", "0.001"].

    A list gives one flag with several values: {"sample_prompts": ["a", "b"]} -> ["--sample_prompts", "a", "b"].
    """
    argv = []
    for key, value in args.items():
        if value is True:
            argv.append(f"--{key}")
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def tiny_run_settings(task: str, demo_dir: Path, output_dir: Path) -> dict:
    """The base settings of a short run of `task` (a name in scripts/tasks.py) on the demo data and tiny models.

    Small enough to train in seconds on one CPU thread; each test adds the flags it is about (the steps, the
    do_* flags, the files) as overrides.
    """
    data, models = demo_dir / "data", demo_dir / "models"
    common = {"save_strategy": "no", "report_to": "none", "seed": 42}
    settings = {
        "classification": {
            "model_name_or_path": models / "bert-tiny-zh",
            "train_file": data / "sentiment" / "train.csv",
            "validation_file": data / "sentiment" / "validation.csv",
            "max_seq_length": 64,
            "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 64,
            "learning_rate": 1e-3,
            "num_train_epochs": 3,
            "logging_steps": 10,
        },
        "clm": {  # GPT-2 from scratch on the demo corpus
            "model_type": "gpt2",
            "config_overrides": "n_layer=2,n_head=2,n_embd=64,n_positions=128",
            "tokenizer_name": demo_dir / "tokenizer-clm",
            "train_file": data / "clm" / "train.txt",
            "validation_file": data / "clm" / "validation.txt",
            "tokenized_cache_dir": output_dir / "cache",
            "block_size": 64,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 32,
            "learning_rate": 3e-3,
            "max_steps": 2,
            "logging_steps": 10,
            "sample_max_new_tokens": 24,
        },
        "seq2seq": {  # the demo's ADGEN ad copy on the tiny Llama
            "model_name_or_path": models / "llama-tiny-sft-zh",
            "train_file": data / "adgen" / "train.jsonl",
            "validation_file": data / "adgen" / "validation.jsonl",
            "max_source_length": 64,
            "max_target_length": 48,
            "max_train_samples": 400,
            "max_eval_samples": 24,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 24,
            "learning_rate": 3e-3,
            "num_train_epochs": 4,
            "logging_steps": 5,
        },
        "clip": {
            "model_name_or_path": models / "chinese-clip-tiny",
            "train_file": data / "shapes" / "train.csv",
            "validation_file": data / "shapes" / "validation.jsonl",
            "max_seq_length": 32,
            "per_device_train_batch_size": 64,
            "per_device_eval_batch_size": 128,
            "learning_rate": 2e-3,
            "warmup_steps": 0.1,
            "num_train_epochs": 4,
            "max_train_samples": 1000,  # 500 images with 2 captions each: 64 steps in all
            "logging_steps": 10,
            "dataloader_num_workers": 0,
        },
        "captioning": {  # a ViT encoder and a GPT-2 decoder built from the tiny models
            "encoder_model_name_or_path": models / "vit-tiny",
            "decoder_model_name_or_path": models / "gpt2-tiny-zh",
            "train_file": data / "shapes" / "train.csv",
            "validation_file": data / "shapes" / "validation.jsonl",
            "test_file": data / "shapes" / "test.csv",
            "max_target_length": 24,
            "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 100,
            "learning_rate": 3e-3,
            "warmup_steps": 0.1,
            "weight_decay": 0.01,
            "logging_steps": 10,
        },
    }
    if task not in settings:
        raise ValueError(f"no tiny run for task {task!r}; tasks: {', '.join(settings)}")
    return {**settings[task], "output_dir": output_dir, **common}


def tiny_run(task: str, demo_dir: Path, output_dir: Path, **overrides) -> list[str]:
    """argv of a short run of `task` writing to `output_dir`: its base settings, then `overrides` (None removes one).

    >>> argv = tiny_run("clm", Path("demo"), Path("out"), max_steps=5, validation_file=None, do_train=True)
    >>> argv[argv.index("--max_steps") + 1], "--validation_file" in argv, argv[-1]
    ('5', False, '--do_train')
    """
    return to_argv({**tiny_run_settings(task, demo_dir, output_dir), **overrides})


def chatglm_weights(config: dict, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random tensors with ChatGLM2/3's names and shapes for `config` (what THUDM's save_pretrained writes)."""
    generator = torch.Generator().manual_seed(seed)
    hidden, heads, head_dim = config["hidden_size"], config["num_attention_heads"], config["kv_channels"]
    groups = config["multi_query_group_num"] if config["multi_query_attention"] else heads
    shapes = {"transformer.embedding.word_embeddings.weight": (config["padded_vocab_size"], hidden)}
    for n in range(config["num_layers"]):
        prefix = f"transformer.encoder.layers.{n}."
        shapes |= {
            prefix + "input_layernorm.weight": (hidden,),
            prefix + "self_attention.query_key_value.weight": ((heads + 2 * groups) * head_dim, hidden),
            prefix + "self_attention.query_key_value.bias": ((heads + 2 * groups) * head_dim,),
            prefix + "self_attention.dense.weight": (hidden, heads * head_dim),
            prefix + "post_attention_layernorm.weight": (hidden,),
            prefix + "mlp.dense_h_to_4h.weight": (2 * config["ffn_hidden_size"], hidden),
            prefix + "mlp.dense_4h_to_h.weight": (hidden, config["ffn_hidden_size"]),
        }
    shapes["transformer.encoder.final_layernorm.weight"] = (hidden,)
    shapes["transformer.output_layer.weight"] = (config["padded_vocab_size"], hidden)
    weights = {name: (torch.randn(shape, generator=generator) * 0.1).to(dtype) for name, shape in shapes.items()}
    weights["transformer.rotary_pos_emb.inv_freq"] = 1.0 / 10000 ** (
        torch.arange(0, head_dim // 2, 2) / (head_dim // 2)
    )
    return weights


def make_checkpoint(
    path: Path, family: str, layout: str = "safetensors", changes: dict | None = None, dtype=torch.float32, extra=None
) -> dict[str, torch.Tensor]:
    """A ChatGLM checkpoint folder: THUDM's tokenizer files and tiny config, random weights; returns the weights.

    layout: "safetensors" (one file) or "bin-index" (three pytorch_model-*.bin shards and their index json).
    """
    path.mkdir(parents=True)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(MODELS / family / name, path / name)
    # THUDM's remote tokenizer code is not kept in ../shared (third-party code): a stand-in holding what the converter
    # reads from it, ChatGLM3's role tokens (ChatGLM2's code has none)
    roles = '["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]' if family == "chatglm3" else "[]"
    (path / "tokenization_chatglm.py").write_text(f"# stand-in for {family}'s tokenizer code\nROLE_TOKENS = {roles}\n")
    config = json.loads((MODELS / family / "config_tiny.json").read_text(encoding="utf-8")) | (changes or {})
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    weights = chatglm_weights(config, dtype=dtype) | (extra or {})
    if layout == "safetensors":
        save_file(weights, str(path / "model.safetensors"))
        return weights
    names = list(weights)
    shards = [names[:1], names[1:-2], names[-2:]]
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        filename = f"pytorch_model-{i:05d}-of-00003.bin"
        torch.save({k: weights[k] for k in shard}, path / filename)
        weight_map |= dict.fromkeys(shard, filename)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (path / "pytorch_model.bin.index.json").write_text(json.dumps(index), encoding="utf-8")
    return weights


def kill_while_saving(main, argv: list[str], step: int) -> int:
    """Run `main(argv)` in a forked child that SIGKILLs itself halfway through writing checkpoint-{step}.

    The kill lands after the weights and optimizer are written and before the RNG and trainer state: what a kill
    during a save leaves behind. Forked, the child starts with every module already imported. Returns its exit
    code (-9 when the kill happened).
    """
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_train_until_killed, args=(main, argv, step))
    child.start()
    child.join(timeout=600)
    return child.exitcode


def _train_until_killed(main, argv: list[str], step: int) -> None:
    from transformers import Trainer

    save_rng_state = Trainer._save_rng_state

    def killed_at_step(trainer, output_dir):
        if trainer.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return save_rng_state(trainer, output_dir)

    Trainer._save_rng_state = killed_at_step
    main(argv)


def count_training_steps(monkeypatch) -> list:
    """Patch the Trainer to count its training steps (batches) into the returned list."""
    from transformers import Trainer

    steps, training_step = [], Trainer.training_step

    def counted(trainer, *args, **kwargs):
        steps.append(trainer.state.global_step)
        return training_step(trainer, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", counted)
    return steps

"""Small helpers shared by the tests: argv from a dict, the real models in ../shared, tiny ChatGLM checkpoints, a run
killed while it saves a checkpoint."""

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
    """{"do_train": True, "learning_rate": 1e-3, "test_file": None} -> ["--do_train", "--learning_rate", "0.001"]."""
    argv = []
    for key, value in args.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv


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

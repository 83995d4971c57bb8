"""Tier 2: every script's --help, every example config and every launcher command parses."""

import importlib
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from zhtrain.parsing import parse_args

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.stem for p in ROOT.glob("run_*.py"))
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".json", ".yaml", ".yml"))
LAUNCHERS = sorted(p for p in (ROOT / "scripts").glob("*.sh") if not p.name.startswith("_"))
# examples/<prefix>_*.json belongs to run_<script>.py
SCRIPT_OF_PREFIX = {
    "classification": "run_classification",
    "clm": "run_clm",
    "captioning": "run_image_captioning",
    "clip": "run_clip",
    "seq2seq": "run_seq2seq_ptuning",
}


def script_for(config: Path) -> str:
    prefix = config.stem.split("_")[0]
    assert prefix in SCRIPT_OF_PREFIX, f"{config.name}: name it <task>_*.json for one of {sorted(SCRIPT_OF_PREFIX)}"
    return SCRIPT_OF_PREFIX[prefix]


def test_there_is_something_to_check():
    assert SCRIPTS and EXAMPLES and LAUNCHERS


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, capsys):
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--model_name_or_path" in out and "--output_dir" in out


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda p: p.name)
def test_example_config_parses(config, request):
    module = importlib.import_module(script_for(config))
    if "deepspeed" in config.read_text(encoding="utf-8"):
        request.getfixturevalue("one_process_world")
    # --use_cpu: this machine has no GPU, and TrainingArguments refuses --bf16 without one
    parsed = parse_args(module.ARGUMENT_CLASSES, [str(config), "--use_cpu"])
    training_args = parsed[-1]
    assert training_args.output_dir.startswith("outputs/")
    assert training_args.do_train or training_args.do_eval or training_args.do_predict
    if training_args.deepspeed:
        assert (ROOT / training_args.deepspeed).is_file()


def test_parsing_deepspeed_examples_left_no_process_group_behind():
    """Runs after test_example_config_parses: later in-process tests must not train inside a process group."""
    import torch.distributed as dist
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    assert any("deepspeed" in p.read_text(encoding="utf-8") for p in EXAMPLES)
    assert not dist.is_initialized() and not is_deepspeed_zero3_enabled()


@pytest.mark.parametrize("launcher", sorted((ROOT / "scripts").glob("*.sh")), ids=lambda p: p.name)
def test_launcher_is_valid_bash(launcher):
    subprocess.run(["bash", "-n", str(launcher)], check=True)


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=lambda p: p.name)
@pytest.mark.parametrize("num_gpus", ["1", "2"])
def test_launcher_command_parses(launcher, num_gpus):
    env = dict(os.environ, DRY_RUN="print", NUM_GPUS=num_gpus)
    printed = subprocess.run(["bash", str(launcher)], env=env, capture_output=True, text=True, check=True).stdout
    command = shlex.split(printed)
    assert command[0] == ("torchrun" if num_gpus == "2" else "python")
    position = next(i for i, token in enumerate(command) if token.endswith(".py"))
    module = importlib.import_module(Path(command[position]).stem)
    argv = [a for a in command[position + 1 :] if a not in ("--bf16", "--fp16")]
    training_args = parse_args(module.ARGUMENT_CLASSES, argv)[-1]
    assert training_args.do_train or training_args.do_eval or training_args.do_predict


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_switches_to_deepspeed(launcher):
    env = dict(os.environ, DRY_RUN="print", NUM_GPUS="4", DEEPSPEED="ds_configs/zero2.json")
    printed = subprocess.run(["bash", str(launcher)], env=env, capture_output=True, text=True, check=True).stdout
    command = shlex.split(printed)
    assert command[:3] == ["deepspeed", "--num_gpus", "4"]
    assert command[command.index("--deepspeed") + 1] == "ds_configs/zero2.json"


def launcher_env(launcher: str, demo_dir: Path, tmp_path: Path, **extra) -> dict:
    """The launcher's variables pointed at the demo data and models, on CPU."""
    data, models = demo_dir / "data", demo_dir / "models"
    variables = {
        "run_classification.sh": {
            "MODEL": models / "bert-tiny-zh",
            "TRAIN_FILE": data / "sentiment" / "train.csv",
            "VALIDATION_FILE": data / "sentiment" / "validation.csv",
            "TEST_FILE": data / "sentiment" / "test.csv",
        },
        "run_clm.sh": {"TOKENIZER": demo_dir / "tokenizer-clm", "TRAIN_FILE": data / "clm" / "train.txt"},
        "run_clip.sh": {
            "MODEL": models / "chinese-clip-tiny",
            "TRAIN_FILE": data / "shapes" / "train.csv",
            "VALIDATION_FILE": data / "shapes" / "test.csv",
            "IMAGE_CACHE_DIR": tmp_path / "image_cache",
        },
        "run_image_captioning.sh": {
            "MODEL": "",
            "ENCODER": models / "vit-tiny",
            "DECODER": models / "gpt2-tiny-zh",
            "TRAIN_FILE": data / "shapes" / "train.csv",
            "VALIDATION_FILE": data / "shapes" / "validation.jsonl",
            "IMAGE_CACHE_DIR": tmp_path / "image_cache",
        },
        "run_seq2seq_ptuning.sh": {
            "MODEL": models / "llama-tiny-sft-zh",
            "TRAIN_FILE": data / "adgen" / "train.jsonl",
            "VALIDATION_FILE": data / "adgen" / "validation.jsonl",
        },
        "evaluate_seq2seq.sh": {
            "MODEL": models / "llama-tiny-sft-zh",
            "CHECKPOINT": "",
            "VALIDATION_FILE": data / "adgen" / "validation.jsonl",
            "TEST_FILE": data / "adgen" / "test.jsonl",
        },
    }
    assert launcher in variables, f"add {launcher}'s data and model variables to launcher_env"
    settings = {**variables[launcher], "OUTPUT_DIR": tmp_path / "out", "PRECISION": "--use_cpu", **extra}
    return dict(os.environ, PYTHON=sys.executable, **{k: str(v) for k, v in settings.items()})


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_dry_run_validates_the_arguments(launcher, demo_dir, tmp_path):
    """DRY_RUN=1 prints the command, then the script parses and validates it (here under DeepSpeed)."""
    # ZeRO-3, except for run_clip.py, which DeepSpeed cannot run (test_multigpu.py): torchrun there
    config = "" if launcher.name == "run_clip.sh" else "ds_configs/zero3.json"
    env = launcher_env(launcher.name, demo_dir, tmp_path, DRY_RUN="1", NUM_GPUS="2", DEEPSPEED=config)
    done = subprocess.run(["bash", str(launcher)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    command = shlex.split(done.stdout.splitlines()[0])
    assert command[:3] == (["deepspeed", "--num_gpus", "2"] if config else ["torchrun", "--nproc_per_node", "2"])
    assert "DRY_RUN: the arguments are valid" in done.stdout
    assert not config or f'"deepspeed": "{config}"' in done.stdout
    assert not (tmp_path / "out").exists()  # nothing was trained or written


@pytest.mark.slow
def test_launcher_dry_run_fails_on_bad_arguments(demo_dir, tmp_path):
    env = launcher_env("run_seq2seq_ptuning.sh", demo_dir, tmp_path, DRY_RUN="1", TRAIN_FILE="no/such.jsonl")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run_seq2seq_ptuning.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "`--train_file` file 'no/such.jsonl' does not exist" in done.stderr


def test_launcher_picks_a_free_master_port():
    env = dict(os.environ, DRY_RUN="print", NUM_GPUS="2", PYTHON=sys.executable)
    env.pop("MASTER_PORT", None)
    launcher = str(ROOT / "scripts" / "run_clm.sh")
    command = shlex.split(subprocess.run(["bash", launcher], env=env, capture_output=True, text=True).stdout)
    port = int(command[command.index("--master_port") + 1])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # nothing listens on it
    printed = subprocess.run(["bash", launcher], env=dict(env, MASTER_PORT="29501"), capture_output=True, text=True)
    assert "--master_port 29501" in printed.stdout  # multi-node: the same port on every machine


def test_serve_help(capsys):
    import serve

    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "output_dir" in out and "--api_key" in out and "--chat" in out and "127.0.0.1" in out

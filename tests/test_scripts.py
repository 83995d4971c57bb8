"""Tier 2: every script's --help, every example config and every launcher command parses."""

import importlib
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from arguments import parse_args

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
def test_example_config_parses(config):
    module = importlib.import_module(script_for(config))
    # --use_cpu: this machine has no GPU, and TrainingArguments refuses --bf16 without one
    parsed = parse_args(module.ARGUMENT_CLASSES, [str(config), "--use_cpu"])
    training_args = parsed[-1]
    assert training_args.output_dir.startswith("outputs/")
    assert training_args.do_train or training_args.do_eval or training_args.do_predict


@pytest.mark.parametrize("launcher", sorted((ROOT / "scripts").glob("*.sh")), ids=lambda p: p.name)
def test_launcher_is_valid_bash(launcher):
    subprocess.run(["bash", "-n", str(launcher)], check=True)


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=lambda p: p.name)
@pytest.mark.parametrize("num_gpus", ["1", "2"])
def test_launcher_command_parses(launcher, num_gpus):
    env = dict(os.environ, DRY_RUN="1", NUM_GPUS=num_gpus)
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
    env = dict(os.environ, DRY_RUN="1", NUM_GPUS="4", DEEPSPEED="ds_configs/zero2.json")
    printed = subprocess.run(["bash", str(launcher)], env=env, capture_output=True, text=True, check=True).stdout
    command = shlex.split(printed)
    assert command[:3] == ["deepspeed", "--num_gpus", "4"]
    assert command[command.index("--deepspeed") + 1] == "ds_configs/zero2.json"

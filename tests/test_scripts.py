"""Tier 2: every script's --help, every example config and every launcher command parses."""

import importlib
import os
import re
import shlex
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import tasks
from helpers import to_argv
from tasks import script_of_recipe
from zhtrain.parsing import parse_args

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.stem for p in ROOT.glob("run_*.py"))
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".json", ".yaml", ".yml"))
LAUNCH = ROOT / "scripts" / "launch.sh"
# the per-task wrappers: each passes its recipe to launch.sh
LAUNCHERS = sorted(p for p in (ROOT / "scripts").glob("*.sh") if p != LAUNCH)


def test_there_is_something_to_check():
    assert SCRIPTS and EXAMPLES and LAUNCHERS


def test_every_script_has_a_task_with_a_demo_recipe():
    assert [f"{script}.py" for script in SCRIPTS] == tasks.SCRIPTS
    assert all((ROOT / task.demo_recipe).is_file() for task in tasks.TASKS.values())


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
    module = importlib.import_module(Path(script_of_recipe(config)).stem)  # examples/<task>_*.json
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
    # --use_cpu: this machine has no GPU, and TrainingArguments refuses the recipes' bf16 without one
    argv = [*command[position + 1 :], "--use_cpu"]
    training_args = parse_args(module.ARGUMENT_CLASSES, argv)[-1]
    assert training_args.do_train or training_args.do_eval or training_args.do_predict


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_switches_to_deepspeed(launcher):
    env = dict(os.environ, DRY_RUN="print", NUM_GPUS="4", DEEPSPEED="ds_configs/zero2.json")
    printed = subprocess.run(["bash", str(launcher)], env=env, capture_output=True, text=True, check=True).stdout
    command = shlex.split(printed)
    assert command[:3] == ["deepspeed", "--num_gpus", "4"]
    assert command[command.index("--deepspeed") + 1] == "ds_configs/zero2.json"


def launcher_overrides(launcher: str, demo_dir: Path, tmp_path: Path) -> list[str]:
    """Flags that point the launcher's recipe at the demo data and models, on CPU."""
    data, models = demo_dir / "data", demo_dir / "models"
    overrides = {
        "run_classification.sh": {
            "model_name_or_path": models / "bert-tiny-zh",
            "train_file": data / "sentiment" / "train.csv",
            "validation_file": data / "sentiment" / "validation.csv",
            "test_file": data / "sentiment" / "test.csv",
            "text_column": "text",
        },
        "run_clm.sh": {
            "tokenizer_name": demo_dir / "tokenizer-clm",
            "train_file": data / "clm" / "train.txt",
            "text_column": "text",
        },
        "run_clip.sh": {
            "model_name_or_path": models / "chinese-clip-tiny",
            "train_file": data / "shapes" / "train.csv",
            "validation_file": data / "shapes" / "test.csv",
            "test_file": data / "shapes" / "test.csv",
            "image_cache_dir": tmp_path / "image_cache",
        },
        "run_image_captioning.sh": {
            "encoder_model_name_or_path": models / "vit-tiny",
            "decoder_model_name_or_path": models / "gpt2-tiny-zh",
            "train_file": data / "shapes" / "train.csv",
            "validation_file": data / "shapes" / "validation.jsonl",
            "test_file": data / "shapes" / "test.csv",
            "image_cache_dir": tmp_path / "image_cache",
        },
        "run_seq2seq_ptuning.sh": {
            "model_name_or_path": models / "llama-tiny-sft-zh",
            "train_file": data / "adgen" / "train.jsonl",
            "validation_file": data / "adgen" / "validation.jsonl",
            "test_file": data / "adgen" / "test.jsonl",
        },
        "evaluate_seq2seq.sh": {  # the recipe's train_file is checked too, though not read
            "train_file": data / "adgen" / "train.jsonl",
            "validation_file": data / "adgen" / "validation.jsonl",
            "test_file": data / "adgen" / "test.jsonl",
        },
    }
    assert launcher in overrides, f"add {launcher}'s data and model flags to launcher_overrides"
    # evaluate_seq2seq.sh takes the model to evaluate first
    first = [str(models / "llama-tiny-sft-zh")] if launcher == "evaluate_seq2seq.sh" else []
    return [*first, *to_argv({**overrides[launcher], "output_dir": tmp_path / "out", "use_cpu": True})]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_dry_run_validates_the_arguments(launcher, demo_dir, tmp_path):
    """DRY_RUN=1 prints the command, then the script parses and validates it (here under DeepSpeed)."""
    # ZeRO-3, except for run_clip.py, which DeepSpeed cannot run (test_multigpu.py): torchrun there
    config = "" if launcher.name == "run_clip.sh" else "ds_configs/zero3.json"
    env = dict(os.environ, PYTHON=sys.executable, DRY_RUN="1", NUM_GPUS="2", DEEPSPEED=config)
    argv = ["bash", str(launcher), *launcher_overrides(launcher.name, demo_dir, tmp_path)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    command = shlex.split(done.stdout.splitlines()[0])
    assert command[:3] == (["deepspeed", "--num_gpus", "2"] if config else ["torchrun", "--nproc_per_node", "2"])
    assert "DRY_RUN: the arguments are valid" in done.stdout
    assert not config or f'"deepspeed": "{config}"' in done.stdout
    assert not (tmp_path / "out").exists()  # nothing was trained or written


@pytest.mark.slow
def test_launcher_dry_run_fails_on_bad_arguments(demo_dir, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, DRY_RUN="1")
    overrides = [*launcher_overrides("run_seq2seq_ptuning.sh", demo_dir, tmp_path), "--train_file", "no/such.jsonl"]
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run_seq2seq_ptuning.sh"), *overrides], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "`--train_file` file 'no/such.jsonl' does not exist" in done.stderr


def launch_sh(*argv: str, cwd=ROOT, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(LAUNCH), *argv], env=env, capture_output=True, text=True, cwd=cwd)


def test_launch_sh_passes_the_recipe_then_the_overrides(tmp_path):
    recipe = "examples/clip_chinese_clip_vit_base.json"
    done = launch_sh("run_clip.py", recipe, "--num_train_epochs", "5", DRY_RUN="print", PYTHON="python")
    assert shlex.split(done.stdout) == ["python", "run_clip.py", recipe, "--num_train_epochs", "5"]
    # from another folder: files are found from there, else from the repository root (where the script runs)
    (tmp_path / "mine.yaml").write_text("do_train: true\n", encoding="utf-8")
    done = launch_sh("run_clip.py", "mine.yaml", cwd=tmp_path, DRY_RUN="print", NUM_GPUS="2")
    command = shlex.split(done.stdout)
    assert command[0] == "torchrun" and command[-2:] == ["run_clip.py", str(tmp_path / "mine.yaml")]


def test_launch_sh_names_a_missing_script_or_recipe_and_lists_the_choices():
    done = launch_sh("run_clips.py", "examples/clip_demo.json", DRY_RUN="print")
    assert done.returncode == 2 and not done.stdout
    assert "SCRIPT 'run_clips.py' is not a file" in done.stderr and "run_clip.py run_clm.py" in done.stderr
    done = launch_sh("run_clip.py", "examples/clip.json", DRY_RUN="print")
    assert done.returncode == 2 and "RECIPE 'examples/clip.json' is not a file" in done.stderr
    assert "examples/clip_demo.json" in done.stderr
    done = launch_sh("run_clip.py", "README.md", DRY_RUN="print")
    assert done.returncode == 2 and "RECIPE 'README.md' is not a .json / .yaml argument file" in done.stderr
    assert "usage: bash scripts/launch.sh SCRIPT RECIPE" in launch_sh().stderr


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


def test_demo_table_rows_and_order(monkeypatch, capsys):
    """`make demo` prints one row per task and metric, in this order: the README shows the table."""
    import run_demo

    calls = []

    def run_task(task, script, config, extra=(), passed=()):
        calls.append((script, config, list(extra)))
        return defaultdict(lambda: 0.5), 1.0, ROOT / "outputs" / "x"

    monkeypatch.setattr(run_demo, "run_task", run_task)
    run_demo.main([])
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("task  "))
    rows = [re.split(r"\s{2,}", line) for line in lines[header + 2 :] if "0.5000" in line]
    shown = [(task, metric) for task, metric, *_ in rows]
    assert shown == [
        ("classification", "eval_accuracy"),
        ("classification", "eval_macro_f1"),
        ("classification-multilabel", "eval_micro_f1"),
        ("classification-multilabel", "eval_macro_f1"),
        ("seq2seq (full fine-tuning)", "eval_rouge-l (untrained)"),
        ("seq2seq (full fine-tuning)", "eval_bleu-4 (untrained)"),
        ("seq2seq (full fine-tuning)", "eval_rouge-l"),
        ("seq2seq (full fine-tuning)", "eval_bleu-4"),
        ("clm", "eval_perplexity_before"),
        ("clm", "eval_perplexity"),
        ("clm", "eval_token_accuracy"),
        ("clip", "eval_i2t_R@5"),
        ("clip", "eval_t2i_R@5"),
        ("clip", "eval_mean_recall"),
        ("captioning", "eval_bleu-4 (untrained)"),
        ("captioning", "eval_rouge-l (untrained)"),
        ("captioning", "eval_cider-d (untrained)"),
        ("captioning", "predict_color_accuracy (untrained)"),
        ("captioning", "eval_bleu-4"),
        ("captioning", "eval_rouge-l"),
        ("captioning", "eval_cider-d"),
        ("captioning", "predict_color_accuracy"),
    ]
    # every recipe exists and belongs to its script; the untrained evaluations come first, with their flags
    assert all((ROOT / config).is_file() and script_of_recipe(config) == script for script, config, _ in calls)
    assert [extra for *_, extra in calls if extra] == [
        ["--do_train", "false", "--do_predict", "false"],
        ["--do_train", "false"],
    ]

"""zhtrain/errors.py: the one way out of a script (message, exit status, --debug / DEBUG=1), and two real processes."""

import subprocess
import sys
from pathlib import Path

import pytest

from zhtrain.errors import ArgumentError, UserError, error_block, run_main

ROOT = Path(__file__).resolve().parent.parent


def failing(exc):
    def main(argv):
        raise exc

    return main


def test_a_user_error_is_one_block_on_stderr_and_status_1(capsys, monkeypatch):
    monkeypatch.delenv("DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_main(failing(UserError("`--train_file` file 'a.csv' is empty (0 bytes).")), [])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith(": error: `--train_file` file 'a.csv' is empty (0 bytes).")
    assert err[1:] == ["(exit status 1; add --debug or set DEBUG=1 to see the traceback)"]


def test_an_argument_error_exits_with_2(capsys, monkeypatch):
    monkeypatch.delenv("DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_main(failing(ArgumentError("Invalid arguments:\n  - --do_train needs --train_file.")), ["--do_train"])
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_debug_shows_the_traceback_and_keeps_the_status(how, capsys, monkeypatch):
    monkeypatch.setenv("DEBUG", "1" if how == "variable" else "")
    seen = []
    main = failing(ArgumentError("bad value"))
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda argv: seen.append(argv) or main(argv), ["--debug", "--do_train"] if how == "flag" else [])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "errors.ArgumentError: bad value" in err
    assert "--debug" not in seen[0]  # the flag is ours: the script never sees it


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_main(failing(ZeroDivisionError("division by zero")), [])


def test_the_trainers_own_debug_option_is_left_alone():
    seen = []
    run_main(seen.append, ["--debug", "underflow_overflow"])
    assert seen == [["--debug", "underflow_overflow"]]


def test_an_error_raised_in_a_dataloader_worker_shows_only_its_message(monkeypatch):
    # torch re-raises a worker's exception as the same type with the worker's traceback as its message
    message = (
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        "  File \"packing.py\", line 230, in documents\nerrors.UserError: `--train_file` file 'c.jsonl' line 31 is bad"
    )
    monkeypatch.delenv("RANK", raising=False)
    block = error_block(UserError(message), "run_clm.py").splitlines()
    assert block[0] == "run_clm.py: error: `--train_file` file 'c.jsonl' line 31 is bad"


def test_every_rank_says_which_it_is(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert error_block(UserError("x"), "run_clm.py").startswith("[rank 3] run_clm.py: error: x")


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_clm.py"), *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.slow
def test_a_real_process_argument_error_exit_2_no_traceback(tmp_path):
    done = run_script(
        ["--model_type", "gpt2", "--tokenizer_name", "t", "--train_file", "nope.txt", "--do_train"], tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "run_clm.py: error: Invalid arguments:",
        "  - `--train_file` file 'nope.txt' does not exist.",
        "(exit status 2; add --debug or set DEBUG=1 to see the traceback)",
    ]


@pytest.mark.slow
def test_a_real_process_bad_line_while_streaming_exit_1_no_traceback(demo_dir, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "今天天气很好。"}\n' * 40 + '{"text": "坏的一行\n', encoding="utf-8")
    args = [
        "--model_type", "gpt2", "--config_overrides", "n_layer=1,n_head=2,n_embd=32,n_positions=64",
        "--tokenizer_name", str(demo_dir / "tokenizer-clm"), "--train_file", str(corpus), "--streaming",
        "--block_size", "16", "--max_steps", "50", "--output_dir", str(tmp_path / "out"), "--do_train",
        "--report_to", "none", "--use_cpu",
    ]  # fmt: skip
    done = run_script(args, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-2:] == [
        f"run_clm.py: error: `--train_file` file '{corpus}' line 41 is not valid JSON (Unterminated string starting "
        'at column 10): {"text": "坏的一行',
        "(exit status 1; add --debug or set DEBUG=1 to see the traceback)",
    ]


@pytest.mark.parametrize("where", ["a folder without a model", "a hub id that is not there"])
def test_a_model_that_cannot_be_loaded_is_a_message(where, tmp_path, capsys, monkeypatch):
    from transformers import AutoConfig

    monkeypatch.delenv("DEBUG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    path = str(tmp_path) if where.startswith("a folder") else "no-such-org/no-such-model"
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda argv: AutoConfig.from_pretrained(path), [])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Check --model_name_or_path" in err
    assert (path if where.startswith("a folder") else "couldn't find them in the cached files") in err


def test_an_os_error_of_our_own_code_keeps_its_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_main(lambda argv: (tmp_path / "nope.txt").read_text(), [])

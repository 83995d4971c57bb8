"""Bad input as a new user gives it, per script: one short message naming the flag, file or row; exit 1 or 2; no traceback.

Each case runs the script's `main` in this process through `zhtrain.errors.run_main`, exactly what
`python run_x.py ...` does, and reads stderr; every case stops before training, so the tables are unit tests.
test_errors.py runs two of them as real processes.
"""

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

import run_classification
import run_clip
import run_clm
import run_image_captioning
import run_seq2seq_ptuning
from helpers import to_argv
from zhtrain.errors import run_main

ROWS = [("服务很好，推荐", "正面"), ("太差了，失望", "负面")] * 10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bad(tmp_path_factory, demo_dir) -> SimpleNamespace:
    """Every broken file of the tables, in one folder."""
    root = tmp_path_factory.mktemp("bad_input")
    texts = {
        "good.csv": "text,label\n" + "".join(f"{t},{label}\n" for t, label in ROWS),
        "empty.csv": "",
        "empty.txt": "",
        "header_only.csv": "text,label\n",
        "open_quote.csv": 'text,label\n"服务很好,正面\n太差了,负面\n',
        "extra_field.csv": "text,label\n服务很好,正面\n太差了,真的,负面\n",
        "one_class.csv": "text,label\n" + "".join(f"{t},正面\n" for t, _ in ROWS),
        "comment.csv": "comment,label\n" + "".join(f"{t},{label}\n" for t, label in ROWS),
        "bad_line.jsonl": '{"text": "好", "label": "正面"}\n{"text": "坏", "label": "负面"\n',
        "cut.json": '[{"text": "服务很好", "label": "正面"}, {"text": "太差了", "lab',
        "type_change.jsonl": '{"text": "好", "label": "正面"}\n{"text": ["坏"], "label": "负面"}\n',
        "tabs.yaml": "model_name_or_path: m\noutput_dir: out\n\tdo_train: true\n",
        "trailing_comma.json": '{\n  "do_train": true,\n}\n',
        "clm_cut.json": '[{"text": "今天天气很好"}, {"text": "明天',
        "clm_bad_line.jsonl": "".join(f'{{"text": "第{i}篇文档，今天天气很好。"}}\n' for i in range(30))
        + '{"text": "坏的一行"\n',
        "chat_bad_line.jsonl": '{"content": "类型#裙", "summary": "好看"}\n{"content": "类型#裤" "summary": "x"}\n',
        "chat_not_a_list.jsonl": '{"messages": "你好"}\n{"messages": "在吗"}\n',
        "urls.csv": "text,image_path\n红色的圆,https://example.com/a.jpg\n蓝色的方,https://example.com/b.jpg\n",
        "missing_images.csv": "text,image_path\n红色的圆,nope/a.jpg\n蓝色的方,nope/b.jpg\n",
        "numbers.jsonl": '{"text": "红色的圆", "image_path": 17}\n',
        "no_image_column.csv": "text,picture\n红色的圆,images/train_0000.jpg\n",
        "afile": "not a folder",
        "broken.parquet": "PAR1 not really parquet",
        "sheet.xlsx": "not a csv",
    }
    for name, text in texts.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "gbk.csv").write_bytes("text,label\n服务很好,正面\n".encode("gbk"))
    (root / "no_data").mkdir()
    (root / "no_data" / "README.md").write_text("说明", encoding="utf-8")
    shapes = demo_dir / "data" / "shapes"
    for name in ("urls.csv", "missing_images.csv", "numbers.jsonl", "no_image_column.csv"):
        (shapes / f"bad_{name}").write_text((root / name).read_text(encoding="utf-8"), encoding="utf-8")
    (root / "lr.yaml").write_text(
        f"model_name_or_path: {demo_dir / 'models' / 'bert-tiny-zh'}\ntrain_file: {root / 'good.csv'}\n"
        f"output_dir: {root / 'out'}\ndo_train: true\nlearning_rate: abc\n",
        encoding="utf-8",
    )
    bigger = AutoTokenizer.from_pretrained(demo_dir / "tokenizer")
    bigger.add_tokens([f"新词{i}" for i in range(20)])  # more ids than chinese-clip-tiny has embeddings
    bigger.save_pretrained(root / "tokenizer-bigger")
    (root / "checkpoint-4").mkdir()
    (root / "checkpoint-4" / "model.safetensors").write_bytes(b"half written")
    return SimpleNamespace(root=root, demo=demo_dir, models=demo_dir / "models", shapes=shapes)


@dataclass
class Case:
    """One bad input: overrides of the script's good arguments (a function of the `bad` files), the outcome."""

    name: str
    overrides: object  # bad -> dict of flags (None removes one), or a list: argv before the flags
    status: int
    message: str  # a regex the message must match


def run_case(module, argv: list[str], capsys) -> tuple[int, str]:
    """`python run_x.py argv` in this process: (exit status, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(module.main, argv)
    return exit_info.value.code, capsys.readouterr().err


def check(module, base: dict, case: Case, bad, capsys) -> None:
    change = case.overrides(bad)
    head, change = (change, {}) if isinstance(change, list) else ([], change)
    argv = head + to_argv({k: v for k, v in {**base, **change}.items() if v is not None})
    status, err = run_case(module, argv, capsys)
    assert "Traceback" not in err, err[-3000:]
    block = err[err.rindex(": error: ") :].splitlines()  # the message block closes stderr
    assert block[-1].endswith("add --debug or set DEBUG=1 to see the traceback)"), err[-2000:]
    message = " ".join(block[:-1])
    assert status == case.status, message
    assert re.search(case.message, message), message


# ---- run_classification.py ------------------------------------------------------------------------------------------


def classification_base(bad) -> dict:
    return {
        "model_name_or_path": bad.models / "bert-tiny-zh",
        "train_file": bad.root / "good.csv",
        "output_dir": bad.root / "out_classification",
        "max_seq_length": 32,
        "max_steps": 1,
        "report_to": "none",
        "do_train": True,
    }


def no_deepspeed(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a)
    )


CLASSIFICATION = [
    Case("missing file", lambda b: {"train_file": b.root / "nope.csv"}, 2, r"`--train_file` file '.*nope\.csv' does not exist"),
    Case("empty file", lambda b: {"train_file": b.root / "empty.csv"}, 1, r"file '.*empty\.csv' is empty \(0 bytes\)"),
    Case("header only", lambda b: {"train_file": b.root / "header_only.csv"}, 1,
         r"header_only\.csv' has a header row \(text, label\) and no data rows"),
    Case("unclosed quote", lambda b: {"train_file": b.root / "open_quote.csv"}, 1,
         r"open_quote\.csv' has a quote \(\"\) opened at line 2 that is never closed.*\.tsv"),
    Case("more fields than the header", lambda b: {"train_file": b.root / "extra_field.csv"}, 1,
         r"extra_field\.csv' line 3 has 3 fields but the header has 2 \(text, label\)"),
    Case("bad JSONL line", lambda b: {"train_file": b.root / "bad_line.jsonl"}, 1,
         r"bad_line\.jsonl' line 2 is not valid JSON \(Expecting ',' delimiter"),
    Case("truncated JSON array", lambda b: {"train_file": b.root / "cut.json"}, 1,
         r"cut\.json' is not valid JSON: Unterminated string starting at line 1, column 51\. .*cut off \(truncated\)"),
    Case("a type change", lambda b: {"train_file": b.root / "type_change.jsonl"}, 1,
         r"`--text_column` column 'text' of the train data holds a list in row 1 \(\[\"坏\"\]\) but a string in row 0"),
    Case("a GBK file", lambda b: {"train_file": b.root / "gbk.csv"}, 1, r"gbk\.csv' is not valid utf-8.*--file_encoding gbk"),
    Case("an Excel file", lambda b: {"train_file": b.root / "sheet.xlsx"}, 2,
         r"`--train_file` has files of unsupported type \.xlsx; use one of \.csv, \.tsv"),
    Case("a broken parquet file", lambda b: {"train_file": b.root / "broken.parquet"}, 1,
         r"Could not read `--train_file` \(.*broken\.parquet\): .*well-formed \.parquet"),
    Case("a model folder that does not exist", lambda b: {"model_name_or_path": "./models/no-such-bert"}, 2,
         r"--model_name_or_path '\./models/no-such-bert' does not exist"),
    Case("a folder that holds no model", lambda b: {"model_name_or_path": b.root / "no_data"}, 1,
         r"Unrecognized model in .*no_data.*Check --model_name_or_path"),
    Case("hold out everything", lambda b: {"do_eval": True, "validation_split_percentage": 100}, 2,
         r"--validation_split_percentage must be in \[0, 100\), got 100"),
    Case("a folder without data files", lambda b: {"train_file": b.root / "no_data"}, 2,
         r"`--train_file` directory '.*no_data' holds no data file \(\.csv, \.tsv"),
    Case("missing column", lambda b: {"train_file": b.root / "comment.csv"}, 1,
         r"column for `--text_column`.*columns are: comment, label\. Pass --text_column"),
    Case("misspelt column", lambda b: {"label_column": "lable"}, 1, r"`--label_column` 'lable' is not a column of the train data"),
    Case("one class", lambda b: {"train_file": b.root / "one_class.csv"}, 1, r"has only one distinct label \(\['正面'\]\)"),
    Case("argument file with tabs", lambda b: [str(b.root / "tabs.yaml")], 2,
         r"tabs\.yaml' is not valid YAML at line 3, column 1: found character '\\t'.*never tabs"),
    Case("argument file value", lambda b: [str(b.root / "lr.yaml")], 2,
         r"`learning_rate` \(in .*lr\.yaml\): invalid float value: 'abc'\. Fix the value in .*lr\.yaml"),
    Case("JSON argument file with a trailing comma", lambda b: [str(b.root / "trailing_comma.json")], 2,
         r"trailing_comma\.json' is not valid JSON at line 3, column 1: .*no comma after the last item"),
    Case("missing argument file", lambda b: [str(b.root / "nope.yaml")], 2, r"Argument file '.*nope\.yaml' does not exist"),
    Case("command-line value", lambda b: {"learning_rate": "abc"}, 2, r"argument --learning_rate.*invalid float value: 'abc'"),
    Case("unknown argument", lambda b: {"lable_column": "x"}, 2, r"Unknown arguments: `--lable_column` \(did you mean `label_column`\?\)"),
    Case("impossible combination", lambda b: {"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "epoch"},
         2, r"Invalid arguments: .*load_best_model_at_end"),
    Case("output_dir is a file", lambda b: {"output_dir": b.root / "afile"}, 2, r"--output_dir '.*afile' is a file, not a folder"),
    Case("output_dir under a file", lambda b: {"output_dir": b.root / "afile" / "run1"}, 2,
         r"--output_dir '.*afile/run1' cannot be created: '.*afile' is a file"),
    Case("output_dir cannot be written", lambda b: {"output_dir": "/proc/self/run1"}, 2,
         r"--output_dir '/proc/self/run1' cannot be created in '/proc/self'"),
    Case("deepspeed config missing", lambda b: {"deepspeed": "ds_configs/zero5.json"}, 2,
         r"--deepspeed 'ds_configs/zero5\.json' is not a file.*zero2\.json"),
    Case("resume without checkpoint", lambda b: {"resume_from_checkpoint": "True", "output_dir": b.root / "no_run"}, 2,
         r"--resume_from_checkpoint True, but output_dir '.*no_run' has no complete checkpoint"),
    Case("resume from a half-written checkpoint", lambda b: {"resume_from_checkpoint": b.root / "checkpoint-4"}, 2,
         r"checkpoint-4' is incomplete \(it lacks trainer_state\.json\)"),
    Case("tokenizer of another model", lambda b: {"model_name_or_path": b.models / "gpt2-tiny-zh", "tokenizer_name": b.demo / "tokenizer"},
         1, r"The tokenizer \(.*tokenizer\) has 21156 tokens, but the model \(.*gpt2-tiny-zh\) has embeddings for only 197"),
]  # fmt: skip


@pytest.mark.parametrize("case", CLASSIFICATION, ids=lambda c: c.name)
def test_classification(case, bad, capsys):
    if case.name == "output_dir cannot be written" and not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    check(run_classification, classification_base(bad), case, bad, capsys)


def test_deepspeed_not_installed_gives_the_install_command(bad, capsys, monkeypatch):
    no_deepspeed(monkeypatch)
    case = Case("no deepspeed", lambda b: {"deepspeed": "ds_configs/zero2.json"}, 2,
                r"--deepspeed needs DeepSpeed, which is not installed.*pip install --no-build-isolation deepspeed")  # fmt: skip
    check(run_classification, classification_base(bad), case, bad, capsys)


def test_deepspeed_from_an_argument_file_names_it(bad, capsys, tmp_path):
    args = {k: str(v) for k, v in classification_base(bad).items()} | {"deepspeed": "zero9.json", "do_train": True}
    (tmp_path / "args.json").write_text(json.dumps(args), encoding="utf-8")
    case = Case("deepspeed in file", lambda b: [str(tmp_path / "args.json")], 2,
                r"--deepspeed 'zero9\.json' is not a file.*\(`deepspeed` is set in .*args\.json\)")  # fmt: skip
    check(run_classification, {}, case, bad, capsys)


def test_a_problem_with_a_value_from_the_argument_file_names_the_file(bad, capsys, tmp_path):
    args = {k: str(v) for k, v in classification_base(bad).items()} | {"max_seq_length": 0, "do_train": True}
    (tmp_path / "args.json").write_text(json.dumps(args), encoding="utf-8")
    case = Case("file value", lambda b: [str(tmp_path / "args.json")], 2,
                r"--max_seq_length must be at least 1, got 0\. \(set in .*args\.json: max_seq_length\)")  # fmt: skip
    check(run_classification, {}, case, bad, capsys)


# ---- run_clm.py ---------------------------------------------------------------------------------------------------


def clm_base(bad) -> dict:
    return {
        "model_type": "gpt2",
        "config_overrides": "n_layer=1,n_head=2,n_embd=32,n_positions=64",
        "tokenizer_name": bad.demo / "tokenizer-clm",
        "train_file": bad.demo / "data" / "clm" / "train.txt",
        "tokenized_cache_dir": bad.root / "clm_cache",
        "output_dir": bad.root / "out_clm",
        "block_size": 16,
        "max_steps": 1,
        "report_to": "none",
        "do_train": True,
    }


CLM = [
    Case("empty text file", lambda b: {"train_file": b.root / "empty.txt"}, 1, r"empty\.txt' is empty \(0 bytes\)"),
    Case("header only", lambda b: {"train_file": b.root / "header_only.csv"}, 1, r"header_only\.csv' has a header row"),
    Case("truncated JSON array", lambda b: {"train_file": b.root / "clm_cut.json"}, 1, r"clm_cut\.json' is not valid JSON.*truncated"),
    Case("bad JSONL line, streaming", lambda b: {"train_file": b.root / "clm_bad_line.jsonl", "streaming": True}, 1,
         r"`--train_file` file '.*clm_bad_line\.jsonl' line 31 is not valid JSON"),
    Case("bad JSONL line, streaming, held-out documents", lambda b: {"train_file": b.root / "clm_bad_line.jsonl",
                                                                     "streaming": True, "do_eval": True}, 1,
         r"clm_bad_line\.jsonl' line 31 is not valid JSON"),
    Case("unclosed quote", lambda b: {"train_file": b.root / "open_quote.csv", "text_column": "text"}, 1,
         r"open_quote\.csv' has a quote \(\"\) opened at line 2"),
    Case("streaming without max_steps", lambda b: {"streaming": True, "max_steps": None}, 2, r"--streaming .* pass --max_steps N"),
    Case("unknown architecture", lambda b: {"model_type": "gtp2"}, 2, r"--model_type 'gtp2' is not a causal-LM architecture; did you mean gpt2"),
    Case("Qwen2 with a BERT tokenizer", lambda b: {"model_type": None, "config_overrides": None,
                                                    "model_name_or_path": b.models / "qwen2-tiny-zh",
                                                    "tokenizer_name": b.demo / "tokenizer"}, 1,
         r"The tokenizer \(.*tokenizer\) has 21156 tokens, but the model \(.*qwen2-tiny-zh\) has embeddings for only 800"),
    Case("output_dir is a file", lambda b: {"output_dir": b.root / "afile"}, 2, r"--output_dir '.*afile' is a file"),
]  # fmt: skip


@pytest.mark.parametrize("case", CLM, ids=lambda c: c.name)
def test_clm(case, bad, capsys):
    check(run_clm, clm_base(bad), case, bad, capsys)


# ---- run_seq2seq_ptuning.py ---------------------------------------------------------------------------------------


def seq2seq_base(bad) -> dict:
    return {
        "model_name_or_path": bad.models / "llama-tiny-sft-zh",
        "train_file": bad.demo / "data" / "adgen" / "train.jsonl",
        "output_dir": bad.root / "out_seq2seq",
        "max_source_length": 32,
        "max_target_length": 32,
        "max_steps": 1,
        "report_to": "none",
        "do_train": True,
    }


SEQ2SEQ = [
    Case("bad JSONL line", lambda b: {"train_file": b.root / "chat_bad_line.jsonl"}, 1,
         r"chat_bad_line\.jsonl' line 2 is not valid JSON \(Expecting ',' delimiter at column 20\)"),
    Case("messages that are not a list", lambda b: {"train_file": b.root / "chat_not_a_list.jsonl"}, 1,
         r"No usable row left in the train data.*row 0"),
    Case("empty file", lambda b: {"train_file": b.root / "empty.csv"}, 1, r"empty\.csv' is empty \(0 bytes\)"),
    Case("missing chat template file", lambda b: {"chat_template": b.root / "nope.jinja"}, 2,
         r"--chat_template '.*nope\.jinja' is not a file"),
    Case("tokenizer of another model", lambda b: {"model_name_or_path": b.models / "qwen2-tiny-zh",
                                                   "tokenizer_name": b.demo / "tokenizer"}, 1,
         r"has 21156 tokens, but the model \(.*qwen2-tiny-zh\) has embeddings for only 800"),
    Case("P-Tuning with gradient checkpointing", lambda b: {"finetuning_type": "ptuning", "gradient_checkpointing": True}, 2,
         r"--finetuning_type ptuning cannot be combined with --gradient_checkpointing"),
]  # fmt: skip


@pytest.mark.parametrize("case", SEQ2SEQ, ids=lambda c: c.name)
def test_seq2seq(case, bad, capsys):
    check(run_seq2seq_ptuning, seq2seq_base(bad), case, bad, capsys)


# ---- run_clip.py and run_image_captioning.py ----------------------------------------------------------------------


def clip_base(bad) -> dict:
    return {
        "model_name_or_path": bad.models / "chinese-clip-tiny",
        "train_file": bad.shapes / "train.csv",
        "output_dir": bad.root / "out_clip",
        "max_steps": 1,
        "max_train_samples": 8,
        "report_to": "none",
        "do_train": True,
    }


IMAGES = [
    Case("URLs in the image column", lambda b: {"train_file": b.shapes / "bad_urls.csv"}, 1,
         r"No usable row left in the train data.*row 0.*the image path is a URL: download the images"),
    Case("every image missing", lambda b: {"train_file": b.shapes / "bad_missing_images.csv"}, 1,
         r"No usable image in the train data: all 2 rows point at missing or broken images.*--image_root"),
    Case("numbers in the image column", lambda b: {"train_file": b.shapes / "bad_numbers.jsonl"}, 1,
         r"`--image_column` 'image_path' of the train data must hold image file paths, but a row holds int: 17"),
    Case("no image column", lambda b: {"train_file": b.shapes / "bad_no_image_column.csv"}, 1,
         r"`--image_column` 'image_path' is not a column of the train data; columns are: text, picture"),
    Case("header only", lambda b: {"train_file": b.root / "header_only.csv"}, 1, r"header_only\.csv' has a header row"),
    Case("missing image root", lambda b: {"image_root": b.root / "no_images"}, 2, r"--image_root '.*no_images' is not a directory"),
    Case("output_dir is a file", lambda b: {"output_dir": b.root / "afile"}, 2, r"--output_dir '.*afile' is a file"),
]  # fmt: skip


@pytest.mark.parametrize("case", IMAGES, ids=lambda c: c.name)
def test_clip(case, bad, capsys):
    check(run_clip, clip_base(bad), case, bad, capsys)


def test_clip_tokenizer_of_another_model(bad, capsys):
    case = Case("tokenizer", lambda b: {"tokenizer_name": b.root / "tokenizer-bigger"}, 1,
                r"has 21176 tokens, but the model \(.*chinese-clip-tiny\) has embeddings for only 21156")  # fmt: skip
    check(run_clip, clip_base(bad), case, bad, capsys)


def test_clip_refuses_deepspeed(bad, capsys, one_process_world, monkeypatch):
    monkeypatch.delenv("DRY_RUN")
    case = Case(
        "deepspeed", lambda b: {"deepspeed": "ds_configs/zero2.json"}, 2, r"DeepSpeed \(0\.19\) cannot start on a CLIP"
    )
    check(run_clip, clip_base(bad), case, bad, capsys)


def captioning_base(bad) -> dict:
    base = {k: v for k, v in clip_base(bad).items() if k != "model_name_or_path"}
    return base | {
        "encoder_model_name_or_path": bad.models / "vit-tiny",
        "decoder_model_name_or_path": bad.models / "gpt2-tiny-zh",
        "output_dir": bad.root / "out_captioning",
    }


CAPTIONING = [
    *IMAGES,
    Case("not a captioning model", lambda b: {"encoder_model_name_or_path": None, "decoder_model_name_or_path": None,
                                              "model_name_or_path": b.models / "gpt2-tiny-zh"}, 1,
         r"--model_name_or_path '.*gpt2-tiny-zh' is a gpt2 model, not a VisionEncoderDecoderModel"),
    Case("truncated validation file", lambda b: {"validation_file": b.root / "cut.json", "do_eval": True}, 1,
         r"`--validation_file` file '.*cut\.json' is not valid JSON.*truncated"),
    Case("tokenizer of another model", lambda b: {"tokenizer_name": b.demo / "tokenizer"}, 1,
         r"has 21156 tokens, but the model \(.*gpt2-tiny-zh\) has embeddings for only 197"),
]  # fmt: skip


@pytest.mark.parametrize("case", CAPTIONING, ids=lambda c: c.name)
def test_captioning(case, bad, capsys):
    check(run_image_captioning, captioning_base(bad), case, bad, capsys)

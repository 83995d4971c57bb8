"""Unit tests for zhtrain/parsing.py: parse_args from the command line, an argument file or a dict; renamed keys."""

import json
import logging
from dataclasses import dataclass, field

import pytest
from transformers import TrainingArguments

from arguments import DataTrainingArguments, ModelArguments
from zhtrain.errors import ArgumentError
from zhtrain.parsing import DEFAULT_DDP_TIMEOUT, parse_args, read_argument_file

SHARED = [ModelArguments, DataTrainingArguments, TrainingArguments]


@dataclass
class LocalArguments:
    """A script-specific dataclass: a list field, an int field with an alias, a near-miss target."""

    label_column: str | None = field(default=None)
    label_names_zh: list[str] | None = field(default=None)
    lora_rank: int = field(default=8, metadata={"aliases": ["--lora_r"]})


WITH_LOCAL = [ModelArguments, DataTrainingArguments, LocalArguments, TrainingArguments]


def write_json(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2), encoding="utf-8")
    return str(path)


def warnings_of(caplog) -> str:
    return "\n".join(
        r.getMessage() for r in caplog.records if r.name == "zhtrain.parsing" and r.levelno >= logging.WARNING
    )


# --------------------------------------------------------------------------------------------- sources


def test_cli_flags(tmp_path):
    model_args, data_args, training_args = parse_args(
        SHARED,
        [
            "--model_name_or_path",
            "bert-base-chinese",
            "--train_file",
            "训练集.csv",
            "验证集.csv",
            "--output_dir",
            str(tmp_path),
            "--learning_rate",
            "3e-5",
            "--per_device_train_batch_size",
            "16",
            "--do_train",
            "--file_encoding",
            "gbk",
        ],
    )
    assert model_args.model_name_or_path == "bert-base-chinese"
    assert data_args.train_file == ["训练集.csv", "验证集.csv"]
    assert data_args.file_encoding == "gbk"
    assert training_args.learning_rate == 3e-5
    assert training_args.per_device_train_batch_size == 16
    assert training_args.do_train is True
    assert training_args.do_eval is False
    assert training_args.output_dir == str(tmp_path)


def test_json_file(tmp_path):
    path = write_json(
        tmp_path / "args.json",
        {
            "model_name_or_path": "bert-base-chinese",
            "train_file": ["新闻/训练.csv"],
            "text_column": "正文",
            "output_dir": str(tmp_path / "out"),
            "learning_rate": 2e-5,
            "num_train_epochs": 3,
            "do_train": True,
            "validation_split_percentage": 10,
        },
    )
    model_args, data_args, training_args = parse_args(SHARED, [path])
    assert model_args.model_name_or_path == "bert-base-chinese"
    assert data_args.train_file == ["新闻/训练.csv"]
    assert data_args.text_column == "正文"
    assert data_args.validation_split_percentage == 10
    assert training_args.learning_rate == 2e-5
    assert training_args.num_train_epochs == 3.0
    assert training_args.do_train is True
    assert training_args.output_dir == str(tmp_path / "out")


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_file_converts_strings_like_the_command_line(tmp_path, suffix):
    path = tmp_path / f"args{suffix}"
    path.write_text(
        "model_name_or_path: bert-base-chinese\n"
        "train_file:\n"
        "  - 评论/训练.csv\n"
        "  - 评论/补充.csv\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "learning_rate: 2e-5\n"  # PyYAML reads this as the *string* '2e-5'
        "do_train: true\n"
        "per_device_train_batch_size: '16'\n"
        "validation_split_percentage: '20'\n",
        encoding="utf-8",
    )
    assert read_argument_file(str(path))["learning_rate"] == "2e-5"  # the premise of the conversion
    _, data_args, training_args = parse_args(SHARED, [str(path)])
    assert isinstance(training_args.learning_rate, float)
    assert training_args.learning_rate == 2e-5
    assert training_args.do_train is True
    assert training_args.per_device_train_batch_size == 16
    assert data_args.validation_split_percentage == 20
    assert data_args.train_file == ["评论/训练.csv", "评论/补充.csv"]


def test_yaml_file_with_a_utf8_bom(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_bytes("\ufefftext_column: 内容\nlearning_rate: 1e-4\n".encode())
    _, data_args, training_args = parse_args(SHARED, [str(path)])
    assert data_args.text_column == "内容"
    assert training_args.learning_rate == 1e-4


def test_file_then_cli_overrides_win(tmp_path):
    path = write_json(
        tmp_path / "args.json",
        {"train_file": "旧.csv", "learning_rate": 2e-5, "output_dir": str(tmp_path / "a"), "do_train": True},
    )
    _, data_args, training_args = parse_args(
        SHARED, [path, "--learning_rate", "5e-5", "--train_file", "新.csv", "--output_dir", str(tmp_path / "b")]
    )
    assert training_args.learning_rate == 5e-5
    assert data_args.train_file == ["新.csv"]
    assert training_args.output_dir == str(tmp_path / "b")
    assert training_args.do_train is True  # from the file, not overridden


@pytest.mark.parametrize("launcher", [["--local_rank=0"], ["--local-rank", "0"]])
def test_argument_file_after_the_deepspeed_launchers_local_rank(tmp_path, launcher):
    # `deepspeed run_x.py args.json` runs `run_x.py --local_rank=0 args.json` (seen on a GPU machine)
    path = write_json(tmp_path / "args.json", {"train_file": "a.csv", "output_dir": str(tmp_path / "a")})
    _, data_args, training_args = parse_args(SHARED, [*launcher, path, "--learning_rate", "5e-5"])
    assert data_args.train_file == ["a.csv"]
    assert training_args.learning_rate == 5e-5


def test_cli_override_can_switch_a_file_bool_off(tmp_path):
    path = write_json(tmp_path / "args.json", {"do_train": True, "do_eval": True})
    _, _, training_args = parse_args(SHARED, [path, "--do_eval", "false"])
    assert training_args.do_train is True
    assert training_args.do_eval is False


def test_dict_with_string_values(tmp_path):
    model_args, data_args, training_args = parse_args(
        SHARED,
        {
            "model_name_or_path": "hfl/chinese-roberta-wwm-ext",
            "output_dir": str(tmp_path),
            "learning_rate": "1e-4",
            "do_train": "true",
            "do_eval": "false",
            "seed": "7",
            "max_train_samples": "100",
        },
    )
    assert model_args.model_name_or_path == "hfl/chinese-roberta-wwm-ext"
    assert training_args.learning_rate == 1e-4
    assert training_args.do_train is True
    assert training_args.do_eval is False
    assert training_args.seed == 7
    assert isinstance(training_args.seed, int)
    assert data_args.max_train_samples == 100


def test_defaults_from_an_empty_dict():
    model_args, data_args, training_args = parse_args(SHARED, {})
    assert model_args.model_name_or_path is None
    assert model_args.dtype == "auto"
    assert data_args.validation_split_percentage == 5
    assert data_args.file_encoding == "utf-8"
    assert training_args.do_train is False


def test_alias_list_and_int_fields_from_a_file(tmp_path):
    path = write_json(tmp_path / "args.json", {"lora_r": "16", "label_names_zh": ["体育", "财经"]})
    _, _, local, _ = parse_args(WITH_LOCAL, [path])
    assert local.lora_rank == 16
    assert isinstance(local.lora_rank, int)
    assert local.label_names_zh == ["体育", "财经"]


def test_alias_and_hyphenated_spelling(tmp_path):
    _, _, local, _ = parse_args(WITH_LOCAL, ["--lora_r", "4", "--label_names_zh", "正面", "负面"])
    assert local.lora_rank == 4
    assert local.label_names_zh == ["正面", "负面"]
    _, _, local, _ = parse_args(WITH_LOCAL, {"lora-rank": 32})
    assert local.lora_rank == 32


def test_field_whose_name_starts_with_no_is_accepted_from_a_file():
    @dataclass
    class GenerationArguments:
        no_repeat_ngram_size: int = 0

    (generation,) = parse_args([GenerationArguments], {"no_repeat_ngram_size": 3})
    assert generation.no_repeat_ngram_size == 3


def test_file_value_outside_choices_is_refused():
    with pytest.raises(
        ValueError, match=r"`dtype` \(in the argument dict\) is 'float64'; choose one of: auto, float32"
    ):
        parse_args(SHARED, {"dtype": "float64"})


def test_cli_value_outside_choices_is_refused():
    with pytest.raises(ArgumentError, match=r"argument --dtype: invalid choice: 'float64' \(choose from 'auto'"):
        parse_args(SHARED, ["--dtype", "float64"])


# --------------------------------------------------------------------------------------------- file problems


def test_duplicated_json_key_last_wins_with_warning(tmp_path, caplog):
    path = tmp_path / "ptuning.json"
    path.write_text(
        '{"output_dir": "output/第一次", "learning_rate": 2e-2, "output_dir": "output/adgen-chatglm-6b-pt"}',
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="zhtrain.parsing"):
        _, _, training_args = parse_args(SHARED, [str(path)])
    assert training_args.output_dir == "output/adgen-chatglm-6b-pt"
    assert training_args.learning_rate == 2e-2
    messages = warnings_of(caplog)
    assert "`output_dir` appears twice" in messages
    assert "adgen-chatglm-6b-pt" in messages
    assert "learning_rate" not in messages


def test_missing_argument_file(tmp_path):
    missing = str(tmp_path / "没有这个文件.json")
    with pytest.raises(ValueError, match=r"Argument file '.*没有这个文件\.json' does not exist"):
        parse_args(SHARED, [missing])


def test_invalid_json(tmp_path):
    path = tmp_path / "args.json"
    path.write_text('{"learning_rate": 2e-5,}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"args\.json' is not valid JSON"):
        parse_args(SHARED, [str(path)])


def test_invalid_yaml(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text("learning_rate: [2e-5\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"args\.yaml' is not valid YAML"):
        parse_args(SHARED, [str(path)])


def test_argument_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "args.json"
    path.write_text('["--learning_rate", "2e-5"]', encoding="utf-8")
    with pytest.raises(ValueError, match="must hold one mapping"):
        parse_args(SHARED, [str(path)])


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text("# 空的配置\n", encoding="utf-8")
    _, data_args, _ = parse_args(SHARED, [str(path)])
    assert data_args.validation_split_percentage == 5


# --------------------------------------------------------------------------------------------- unknown keys


def test_all_unknown_keys_in_one_error_with_hints(tmp_path):
    path = write_json(tmp_path / "args.json", {"lable_column": "类别", "leraning_rate": 1e-5, "output_dir": "o"})
    with pytest.raises(ValueError) as excinfo:
        parse_args(WITH_LOCAL, [path, "--num_train_epoch", "3", "--xyzzy_flag"])
    message = str(excinfo.value)
    assert message.count("Unknown arguments:") == 1
    assert f"`lable_column` (in {path}) (did you mean `label_column`?)" in message
    assert f"`leraning_rate` (in {path}) (did you mean `learning_rate`?)" in message
    assert "`--num_train_epoch` (did you mean `num_train_epochs`?)" in message
    assert "`--xyzzy_flag`" in message
    assert "`output_dir`" not in message


def test_unknown_key_in_a_dict_names_the_source():
    with pytest.raises(
        ValueError, match=r"`leraning_rate` \(in the argument dict\) \(did you mean `learning_rate`\?\)"
    ):
        parse_args(SHARED, {"leraning_rate": 0.1})


def test_prefix_abbreviation_is_not_accepted():
    with pytest.raises(ValueError, match="Unknown arguments: `--learning`") as excinfo:
        parse_args(SHARED, ["--learning", "0.1"])
    assert "did you mean `learning_rate`" in str(excinfo.value)


def test_prefix_abbreviation_is_not_accepted_in_a_file(tmp_path):
    path = write_json(tmp_path / "args.json", {"learning": 0.1})
    with pytest.raises(ValueError, match=r"Unknown arguments: `learning` \(in "):
        parse_args(SHARED, [path])


def test_value_after_an_inline_flag_is_not_silently_dropped():
    # as in argparse, `--key=value` holds one value: a second one is an unknown argument, never silently lost
    with pytest.raises(ValueError, match=r"^Unknown arguments: `训练2\.csv`\."):
        parse_args(SHARED, ["--train_file=训练1.csv", "训练2.csv"])
    _, data_args, _ = parse_args(SHARED, ["--train_file", "训练1.csv", "训练2.csv"])
    assert data_args.train_file == ["训练1.csv", "训练2.csv"]


# --------------------------------------------------------------------------------------------- transformers-4 keys

V4_FILE = {
    "evaluation_strategy": "steps",
    "warmup_ratio": 0.1,
    "overwrite_output_dir": True,
    "no_cuda": True,
    "group_by_length": True,
    "use_auth_token": True,
    "torch_dtype": "bfloat16",
    "per_gpu_train_batch_size": 4,
}


def check_v4_result(model_args, training_args):
    assert training_args.eval_strategy == "steps"
    assert training_args.warmup_steps == 0.1
    assert training_args.use_cpu is True
    assert training_args.train_sampling_strategy == "group_by_length"
    assert training_args.per_device_train_batch_size == 4
    assert model_args.token is None  # `use_auth_token: true` is dropped, not passed on as the string "True"
    assert model_args.dtype == "bfloat16"


def check_v4_warnings(caplog, prefix):
    """One warning per old key, each naming the key and what happens to it now."""
    messages = {}
    for record in caplog.records:
        if record.name == "zhtrain.parsing" and record.levelno == logging.WARNING:
            key = record.getMessage().split("`")[1]
            messages[key] = record.getMessage()
    assert "renamed to `eval_strategy`" in messages[f"{prefix}evaluation_strategy"]
    assert "renamed to `use_cpu`" in messages[f"{prefix}no_cuda"]
    assert "renamed to `dtype`" in messages[f"{prefix}torch_dtype"]
    assert "passed as `warmup_steps`" in messages[f"{prefix}warmup_ratio"]
    assert "train_sampling_strategy: group_by_length" in messages[f"{prefix}group_by_length"]
    assert "renamed to `per_device_train_batch_size`" in messages[f"{prefix}per_gpu_train_batch_size"]
    assert "no longer needed" in messages[f"{prefix}use_auth_token"]
    overwrite = messages[f"{prefix}overwrite_output_dir"]
    assert "was removed in transformers 5 and is ignored" in overwrite
    assert "--resume_from_checkpoint True" in overwrite
    return messages


def test_v4_keys_in_a_file(tmp_path, caplog):
    path = write_json(tmp_path / "old.json", dict(V4_FILE, output_dir=str(tmp_path)))
    with caplog.at_level(logging.WARNING, logger="zhtrain.parsing"):
        model_args, _, training_args = parse_args(SHARED, [path])
    check_v4_result(model_args, training_args)
    messages = check_v4_warnings(caplog, "")
    assert f"(in {path})" in messages["evaluation_strategy"]


def test_v4_flags_on_the_command_line(tmp_path, caplog):
    argv = [
        "--output_dir",
        str(tmp_path),
        "--evaluation_strategy",
        "steps",
        "--warmup_ratio=0.1",
        "--overwrite_output_dir",
        "--no_cuda",
        "--group_by_length",
        "--use_auth_token",
        "--torch_dtype",
        "bfloat16",
        "--per_gpu_train_batch_size",
        "4",
    ]
    with caplog.at_level(logging.WARNING, logger="zhtrain.parsing"):
        model_args, _, training_args = parse_args(SHARED, argv)
    check_v4_result(model_args, training_args)
    check_v4_warnings(caplog, "--")


def test_v4_false_values_are_dropped():
    model_args, _, training_args = parse_args(
        SHARED, {"group_by_length": False, "use_auth_token": False, "include_inputs_for_metrics": False}
    )
    assert training_args.train_sampling_strategy == "random"
    assert model_args.token is None
    assert training_args.include_for_metrics == []


def test_v4_use_auth_token_with_a_real_token_is_kept():
    model_args, _, _ = parse_args(SHARED, {"use_auth_token": "hf_中文令牌"})
    assert model_args.token == "hf_中文令牌"


def test_v4_include_inputs_for_metrics():
    _, _, training_args = parse_args(SHARED, ["--include_inputs_for_metrics", "true"])
    assert training_args.include_for_metrics == ["inputs"]


def test_v4_key_and_its_replacement_in_one_file(tmp_path):
    path = write_json(tmp_path / "args.json", {"evaluation_strategy": "steps", "eval_strategy": "epoch"})
    with pytest.raises(ValueError, match="sets both `evaluation_strategy` and its replacement `eval_strategy`"):
        parse_args(SHARED, [path])


def test_v4_flag_and_its_replacement_on_the_command_line():
    with pytest.raises(
        ValueError, match="Both `--evaluation_strategy` and its replacement `--eval_strategy` were given"
    ):
        parse_args(SHARED, ["--evaluation_strategy", "steps", "--eval_strategy", "epoch"])


def test_v4_conflict_and_unknown_key_reported_together():
    with pytest.raises(ValueError) as excinfo:
        parse_args(SHARED, {"evaluation_strategy": "steps", "eval_strategy": "epoch", "lerning_rate": 1})
    message = str(excinfo.value)
    assert "sets both `evaluation_strategy`" in message
    assert "`lerning_rate`" in message


def test_ddp_timeout_defaults_to_three_hours():
    import run_clm

    base = {"model_type": "gpt2", "tokenizer_name": "t", "train_file": "x.txt", "do_train": True, "output_dir": "o"}
    assert parse_args(run_clm.ARGUMENT_CLASSES, base)[-1].ddp_timeout == DEFAULT_DDP_TIMEOUT == 10800
    assert parse_args(run_clm.ARGUMENT_CLASSES, {**base, "ddp_timeout": 600})[-1].ddp_timeout == 600
    assert parse_args(run_clm.ARGUMENT_CLASSES, ["--ddp_timeout", "60", *["--output_dir", "o"]])[-1].ddp_timeout == 60


# --------------------------------------------------------------------------------------------- project renames


@dataclass
class AdapterArguments:
    adapter_name_or_path: str | None = field(default=None)


@pytest.mark.parametrize("source", ["cli", "file"])
def test_ptuning_checkpoint_still_loads_an_adapter_and_warns_with_the_new_name(tmp_path, caplog, source):
    classes = [ModelArguments, AdapterArguments, TrainingArguments]
    if source == "cli":
        argv = ["--ptuning_checkpoint", "out/adgen", "--output_dir", str(tmp_path)]
    else:
        argv = [write_json(tmp_path / "old.json", {"ptuning_checkpoint": "out/adgen", "output_dir": str(tmp_path)})]
    with caplog.at_level(logging.WARNING):
        _, adapter_args, _ = parse_args(classes, argv)
    assert adapter_args.adapter_name_or_path == "out/adgen"
    assert "ptuning_checkpoint" in warnings_of(caplog) and "`adapter_name_or_path`" in warnings_of(caplog)


def test_ptuning_checkpoint_and_adapter_name_or_path_together_is_an_error(tmp_path):
    argv = ["--ptuning_checkpoint", "a", "--adapter_name_or_path", "b", "--output_dir", str(tmp_path)]
    with pytest.raises(ArgumentError, match="keep only `--adapter_name_or_path`"):
        parse_args([ModelArguments, AdapterArguments, TrainingArguments], argv)


def test_the_seq2seq_script_takes_the_old_adapter_flag(tmp_path, caplog):
    import run_seq2seq_ptuning

    with caplog.at_level(logging.WARNING):
        parsed = parse_args(run_seq2seq_ptuning.ARGUMENT_CLASSES, ["--ptuning_checkpoint", "out", "--output_dir", "o"])
    assert parsed[2].adapter_name_or_path == "out"
    assert "`adapter_name_or_path`" in warnings_of(caplog)

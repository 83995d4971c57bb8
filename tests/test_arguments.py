"""Unit tests for arguments.py: the checks of the shared arguments (common_problems, image_data_problems)."""

import pytest
from transformers import TrainingArguments

from arguments import (
    DataTrainingArguments,
    ImageDataArguments,
    ModelArguments,
    common_problems,
    image_data_problems,
    raise_if_problems,
)
from zhtrain.checkpoints import newest_complete_checkpoint
from zhtrain.parsing import parse_args

SHARED = [ModelArguments, DataTrainingArguments, TrainingArguments]


# --------------------------------------------------------------------------------------------- common_problems


def problems_of(tmp_path, **values) -> list[str]:
    values.setdefault("output_dir", str(tmp_path / "out"))
    return common_problems(*parse_args(SHARED, values))


@pytest.fixture
def train_csv(tmp_path):
    path = tmp_path / "训练.csv"
    path.write_text("text,label\n这部电影很好看,正面\n", encoding="utf-8")
    return str(path)


def test_valid_arguments_have_no_problem(tmp_path, train_csv):
    assert problems_of(tmp_path, do_train=True, do_eval=True, train_file=train_csv) == []
    raise_if_problems([])  # nothing raised


def test_several_problems_in_one_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    problems = problems_of(tmp_path, do_train=True, file_encoding="gbk2312", model_name_or_path="./nope")
    assert problems == [
        "--do_train needs --train_file.",
        "--file_encoding 'gbk2312' is not a known encoding (try utf-8, gbk).",
        "--model_name_or_path './nope' does not exist.",
    ]
    with pytest.raises(ValueError) as excinfo:
        raise_if_problems(problems)
    assert str(excinfo.value) == (
        "Invalid arguments:\n"
        "  - --do_train needs --train_file.\n"
        "  - --file_encoding 'gbk2312' is not a known encoding (try utf-8, gbk).\n"
        "  - --model_name_or_path './nope' does not exist."
    )


def test_hub_model_id_is_not_checked_on_disk(tmp_path, train_csv):
    assert problems_of(tmp_path, do_train=True, train_file=train_csv, model_name_or_path="bert-base-chinese") == []


def test_nothing_to_do(tmp_path):
    assert problems_of(tmp_path) == ["Nothing to do: pass at least one of --do_train, --do_eval, --do_predict."]


def test_eval_and_predict_without_files(tmp_path):
    assert problems_of(tmp_path, do_eval=True, do_predict=True) == [
        "--do_eval needs --validation_file (or --train_file to hold part of it out).",
        "--do_predict needs --test_file.",
    ]


def test_eval_carved_from_train_needs_a_percentage(tmp_path, train_csv):
    problems = problems_of(tmp_path, do_eval=True, train_file=train_csv, validation_split_percentage=0)
    assert problems == ["--do_eval without --validation_file needs --validation_split_percentage > 0 (got 0)."]


@pytest.mark.parametrize("percentage", [-1, 100, 150])
def test_validation_split_percentage_out_of_range(tmp_path, train_csv, percentage):
    problems = problems_of(tmp_path, do_train=True, train_file=train_csv, validation_split_percentage=percentage)
    assert f"--validation_split_percentage must be in [0, 100), got {percentage}." in problems


def test_sample_limits_below_one(tmp_path, train_csv):
    problems = problems_of(tmp_path, do_train=True, train_file=train_csv, max_train_samples=0, max_eval_samples=-3)
    assert problems == [
        "--max_train_samples must be at least 1, got 0.",
        "--max_eval_samples must be at least 1, got -3.",
    ]


def test_train_glob_matching_nothing(tmp_path):
    pattern = str(tmp_path / "数据" / "*.csv")
    assert problems_of(tmp_path, do_train=True, train_file=pattern) == [
        f"`--train_file` pattern '{pattern}' matches no file."
    ]


def write_checkpoint(folder, step: int, complete: bool = True):
    """A checkpoint folder as the Trainer leaves it; incomplete: killed before trainer_state.json was written."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    if complete:
        (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}', encoding="utf-8")
    return folder


def test_resume_true_without_checkpoint(tmp_path, train_csv):
    (tmp_path / "out").mkdir()
    problems = problems_of(tmp_path, do_train=True, train_file=train_csv, resume_from_checkpoint="True")
    assert len(problems) == 1
    assert problems[0].startswith(
        f"--resume_from_checkpoint True, but output_dir '{tmp_path / 'out'}' has no complete checkpoint-*"
    )


def test_resume_true_with_missing_output_dir(tmp_path, train_csv):
    problems = problems_of(tmp_path, do_train=True, train_file=train_csv, resume_from_checkpoint="true")
    assert len(problems) == 1
    assert "has no complete checkpoint-* folder to resume from" in problems[0]


def test_resume_true_with_a_checkpoint(tmp_path, train_csv):
    write_checkpoint(tmp_path / "out" / "checkpoint-500", 500)
    assert problems_of(tmp_path, do_train=True, train_file=train_csv, resume_from_checkpoint="True") == []


def test_resume_true_with_only_an_incomplete_checkpoint(tmp_path, train_csv):
    write_checkpoint(tmp_path / "out" / "checkpoint-500", 500, complete=False)
    problems = problems_of(tmp_path, do_train=True, train_file=train_csv, resume_from_checkpoint="True")
    assert "has no complete checkpoint-* folder to resume from" in problems[0]


def test_newest_complete_checkpoint_skips_incomplete_ones_with_a_warning(tmp_path, caplog):
    write_checkpoint(tmp_path / "checkpoint-6", 6)
    write_checkpoint(tmp_path / "checkpoint-12", 12, complete=False)
    (tmp_path / "checkpoint-9").mkdir()  # nothing written yet
    write_checkpoint(tmp_path / "tmp-checkpoint-15" / "checkpoint-15", 15)  # a save still being staged
    with caplog.at_level("WARNING"):
        assert newest_complete_checkpoint(tmp_path, warn=True) == str(tmp_path / "checkpoint-6")
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 2 and "checkpoint-12: it is incomplete (it lacks trainer_state.json)" in skipped[0]
    assert "checkpoint-9: it is incomplete (it lacks trainer_state.json and the model weights" in skipped[1]


def test_resume_false_is_no_problem(tmp_path, train_csv):
    assert problems_of(tmp_path, do_train=True, train_file=train_csv, resume_from_checkpoint="False") == []


def test_resume_path_that_does_not_exist(tmp_path, train_csv):
    missing = str(tmp_path / "out" / "checkpoint-12")
    problems = problems_of(tmp_path, do_train=True, train_file=train_csv, resume_from_checkpoint=missing)
    assert problems == [f"--resume_from_checkpoint '{missing}' is not a directory."]


def test_resume_path_that_exists(tmp_path, train_csv):
    checkpoint = write_checkpoint(tmp_path / "旧运行" / "checkpoint-12", 12)
    assert problems_of(tmp_path, do_train=True, train_file=train_csv, resume_from_checkpoint=str(checkpoint)) == []


def test_resume_path_that_is_incomplete_says_what_is_missing(tmp_path, train_csv):
    checkpoint = write_checkpoint(tmp_path / "checkpoint-12", 12, complete=False)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 1', encoding="utf-8")  # cut off mid-write
    problems = problems_of(tmp_path, do_train=True, train_file=train_csv, resume_from_checkpoint=str(checkpoint))
    assert problems == [
        f"--resume_from_checkpoint '{checkpoint}' is incomplete (it lacks a readable trainer_state.json (this one "
        "is cut off)): the run that wrote it was probably stopped while saving. Pass an older checkpoint, or "
        "--resume_from_checkpoint True for the newest complete one."
    ]


def test_image_data_problems_name_the_flag(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("caption,image_path\n好图,images/good.jpg\n", encoding="utf-8")
    problems = image_data_problems(ImageDataArguments(image_root=str(tmp_path / "nope"), image_cache_dir=str(train)))
    assert problems == [
        f"--image_root '{tmp_path / 'nope'}' is not a directory.",
        f"--image_cache_dir '{train}' exists and is not a directory.",
    ]


def test_unconverted_chatglm_checkpoints_are_refused_with_the_converter_command(tmp_path, train_csv):
    folder = tmp_path / "chatglm3-6b"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "chatglm", "num_layers": 28}', encoding="utf-8")
    [problem] = problems_of(tmp_path, do_train=True, train_file=train_csv, model_name_or_path=str(folder))
    assert "THUDM's remote code, which does not run on transformers 5" in problem
    assert problem.endswith(f"python scripts/convert_chatglm.py {folder} chatglm3-6b-native")
    # hub ids of the remote-code repositories: download first, then convert; the native -hf ones pass
    [problem] = problems_of(tmp_path, do_train=True, train_file=train_csv, model_name_or_path="THUDM/chatglm2-6b")
    assert "hf download THUDM/chatglm2-6b --local-dir chatglm2-6b && python scripts/convert_chatglm.py" in problem
    assert (
        problems_of(tmp_path, do_train=True, train_file=train_csv, model_name_or_path="THUDM/glm-4-9b-chat-hf") == []
    )
    tokenizer_only = tmp_path / "tok"
    tokenizer_only.mkdir()
    (tokenizer_only / "tokenizer_config.json").write_text('{"tokenizer_class": "ChatGLMTokenizer"}', encoding="utf-8")
    [problem] = problems_of(tmp_path, do_train=True, train_file=train_csv, tokenizer_name=str(tokenizer_only))
    assert problem.startswith(f"--tokenizer_name '{tokenizer_only}' is a ChatGLM checkpoint")

"""Unit tests for zhtrain/data/files.py: finding data files, reading every format and encoding, splits, row cleaning."""

import json
import logging
import math
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset
from transformers import TrainingArguments

from arguments import DataTrainingArguments
from zhtrain.data import files as data
from zhtrain.data.files import (
    carve_validation_split,
    drop_invalid_rows,
    find_column,
    is_blank,
    load_data_files,
    load_raw_datasets,
    resolve_data_files,
    take_first,
)
from zhtrain.errors import UserError

TEXTS = ["这家餐厅的菜很好吃", "物流太慢了，等了一个星期", "客服态度非常好"]
LABELS = ["正面", "负面", "正面"]


def write_csv(path: Path, rows: list[tuple], header=("text", "label"), encoding="utf-8") -> str:
    pd.DataFrame(rows, columns=list(header)).to_csv(path, index=False, encoding=encoding)
    return str(path)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("text\n你好\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- resolve_data_files


def test_resolve_single_file(tmp_path):
    path = touch(tmp_path / "训练.csv")
    assert resolve_data_files(str(path), "train_file") == [str(path)]


def test_resolve_several_files_keep_the_given_order(tmp_path):
    b, a = touch(tmp_path / "b.csv"), touch(tmp_path / "a.csv")
    assert resolve_data_files([str(b), str(a)], "train_file") == [str(b), str(a)]


def test_resolve_glob_is_sorted(tmp_path):
    for name in ("第2部分.jsonl", "第1部分.jsonl", "第3部分.jsonl"):
        touch(tmp_path / name)
    touch(tmp_path / "other.csv")
    assert resolve_data_files(str(tmp_path / "第*部分.jsonl"), "train_file") == [
        str(tmp_path / "第1部分.jsonl"),
        str(tmp_path / "第2部分.jsonl"),
        str(tmp_path / "第3部分.jsonl"),
    ]


def test_resolve_directory_supported_suffixes_sorted_hidden_skipped(tmp_path):
    data = tmp_path / "数据"
    for name in ("b.csv", "a.csv", "子目录/c.csv", ".隐藏.csv", "说明.md", "表格.xlsx"):
        touch(data / name)
    assert resolve_data_files(str(data), "train_file") == [
        str(data / "a.csv"),
        str(data / "b.csv"),
        str(data / "子目录" / "c.csv"),
    ]


def test_resolve_directory_skips_hidden_folders(tmp_path):
    data = tmp_path / "数据"
    touch(data / "train.csv")
    touch(data / ".ipynb_checkpoints" / "train-checkpoint.csv")
    assert resolve_data_files(str(data), "train_file") == [str(data / "train.csv")]


def test_resolve_directory_without_data_files(tmp_path):
    (tmp_path / "空目录").mkdir()
    touch(tmp_path / "空目录" / "表格.xlsx")
    with pytest.raises(ValueError, match=r"`--validation_file` directory '.*空目录' holds no data file \(.csv, .tsv"):
        resolve_data_files(str(tmp_path / "空目录"), "validation_file")


def test_resolve_missing_file_names_arg_file_and_lists_the_folder(tmp_path):
    touch(tmp_path / "train.csv")
    touch(tmp_path / "dev.csv")
    missing = str(tmp_path / "trian.csv")
    with pytest.raises(ValueError) as excinfo:
        resolve_data_files(missing, "train_file")
    assert str(excinfo.value) == (
        f"`--train_file` file '{missing}' does not exist. Files in '{tmp_path}': dev.csv, train.csv."
    )


def test_resolve_missing_file_in_a_missing_folder_has_no_listing(tmp_path):
    missing = str(tmp_path / "没有" / "train.csv")
    with pytest.raises(ValueError) as excinfo:
        resolve_data_files(missing, "test_file")
    assert str(excinfo.value) == f"`--test_file` file '{missing}' does not exist."


def test_resolve_glob_matching_nothing(tmp_path):
    touch(tmp_path / "a.csv")
    pattern = str(tmp_path / "*.jsonl")
    with pytest.raises(ValueError, match=r"`--train_file` pattern '.*\*\.jsonl' matches no file\."):
        resolve_data_files(pattern, "train_file")


def test_resolve_unsupported_suffix(tmp_path):
    path = touch(tmp_path / "标注.xlsx")
    with pytest.raises(ValueError, match=r"`--train_file` has files of unsupported type \.xlsx; use one of \.csv"):
        resolve_data_files(str(path), "train_file")


def test_resolve_mixed_csv_and_json_in_one_split(tmp_path):
    files = [str(touch(tmp_path / "a.csv")), str(touch(tmp_path / "b.json"))]
    with pytest.raises(ValueError, match=r"`--train_file` mixes file types \(\.csv, \.json\)"):
        resolve_data_files(files, "train_file")


def test_resolve_mixed_csv_and_tsv_in_one_split(tmp_path):
    files = [str(touch(tmp_path / "a.csv")), str(touch(tmp_path / "b.tsv"))]
    with pytest.raises(ValueError, match=r"mixes file types \(\.csv, \.tsv\)"):
        resolve_data_files(files, "train_file")


def test_resolve_json_and_jsonl_together_is_allowed(tmp_path):
    files = [str(touch(tmp_path / "a.json")), str(touch(tmp_path / "b.jsonl"))]
    assert resolve_data_files(files, "train_file") == files


# --------------------------------------------------------------------------------------------- load_data_files


def test_load_csv(tmp_path):
    path = write_csv(tmp_path / "train.csv", list(zip(TEXTS, LABELS)))
    ds = load_data_files([path], "train_file")
    assert ds.column_names == ["text", "label"]
    assert list(ds["text"]) == TEXTS
    assert list(ds["label"]) == LABELS


def test_load_several_csv_files_concatenated(tmp_path):
    a = write_csv(tmp_path / "a.csv", [(TEXTS[0], LABELS[0])])
    b = write_csv(tmp_path / "b.csv", [(TEXTS[1], LABELS[1]), (TEXTS[2], LABELS[2])])
    assert list(load_data_files([a, b], "train_file")["text"]) == TEXTS


def test_load_tsv_keeps_quote_characters(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('text\tlabel\n他说"你好"然后走了\t1\n"开头的引号\t0\n结尾的引号"\t1\n', encoding="utf-8")
    ds = load_data_files([str(path)], "train_file")
    assert list(ds["text"]) == ['他说"你好"然后走了', '"开头的引号', '结尾的引号"']
    assert list(ds["label"]) == [1, 0, 1]


def test_load_json_array(tmp_path):
    path = tmp_path / "train.json"
    rows = [{"text": t, "label": lab} for t, lab in zip(TEXTS, LABELS)]
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    ds = load_data_files([str(path)], "train_file")
    assert list(ds["text"]) == TEXTS
    assert list(ds["label"]) == LABELS


def test_load_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [json.dumps({"text": t, "labels": [lab, "其他"]}, ensure_ascii=False) for t, lab in zip(TEXTS, LABELS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = load_data_files([str(path)], "train_file")
    assert list(ds["text"]) == TEXTS
    assert list(ds["labels"]) == [[lab, "其他"] for lab in LABELS]


def test_load_txt_one_row_per_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("床前明月光\n疑是地上霜\n举头望明月\n", encoding="utf-8")
    ds = load_data_files([str(path)], "train_file")
    assert ds.column_names == ["text"]
    assert list(ds["text"]) == ["床前明月光", "疑是地上霜", "举头望明月"]


def test_load_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"text": TEXTS, "label": [1, 0, 1]}).to_parquet(path)
    ds = load_data_files([str(path)], "train_file")
    assert list(ds["text"]) == TEXTS
    assert list(ds["label"]) == [1, 0, 1]


def test_load_csv_with_bom(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,label\n今天天气很好,正面\n".encode())
    ds = load_data_files([str(path)], "train_file")
    assert ds.column_names == ["text", "label"]
    assert list(ds["text"]) == ["今天天气很好"]


def test_load_jsonl_with_bom(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(('\ufeff{"text": "第一行"}\n{"text": "第二行"}\n').encode())
    ds = load_data_files([str(path)], "train_file")
    assert ds.column_names == ["text"]
    assert list(ds["text"]) == ["第一行", "第二行"]


def test_load_txt_with_bom(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes("\ufeff白日依山尽\n黄河入海流\n".encode())
    ds = load_data_files([str(path)], "train_file")
    assert list(ds["text"]) == ["白日依山尽", "黄河入海流"]
    assert not ds["text"][0].startswith("\ufeff")


def test_load_gbk_csv_with_default_encoding_suggests_gbk(tmp_path):
    path = tmp_path / "gbk.csv"
    path.write_bytes("text,label\n今天天气很好,正面\n".encode("gbk"))
    with pytest.raises(ValueError) as excinfo:
        load_data_files([str(path)], "train_file")
    message = str(excinfo.value)
    # "text,label\n" is 11 bytes; 今 is 0xBD 0xF1 in GBK
    assert message.startswith(f"`--train_file` file '{path}' is not valid utf-8 (byte 0xbd at position 11).")
    assert "pass --file_encoding gbk" in message


def test_load_gbk_csv_with_gbk_encoding(tmp_path):
    path = write_csv(tmp_path / "gbk.csv", list(zip(TEXTS, LABELS)), encoding="gbk")
    ds = load_data_files([path], "train_file", encoding="gbk")
    assert list(ds["text"]) == TEXTS
    assert list(ds["label"]) == LABELS


def test_wrong_non_utf8_encoding_has_no_gbk_suggestion(tmp_path):
    path = tmp_path / "utf8.csv"
    path.write_text("text\n今天天气很好\n", encoding="utf-8")
    with pytest.raises(ValueError) as excinfo:
        load_data_files([str(path)], "validation_file", encoding="ascii")
    message = str(excinfo.value)
    assert f"`--validation_file` file '{path}' is not valid ascii" in message
    assert "Pass the right --file_encoding" in message
    assert "--file_encoding gbk" not in message


def test_decode_error_after_the_checked_sample_is_still_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "ENCODING_SAMPLE_BYTES", 16)  # the sample check sees only ASCII
    path = tmp_path / "late_gbk.csv"
    path.write_bytes(("text,label\n" + "abc,1\n" * 10 + "今天天气很好,1\n").encode("gbk"))
    with pytest.raises(ValueError, match=r"late_gbk\.csv' is not valid utf-8 .*pass --file_encoding gbk"):
        load_data_files([str(path)], "train_file")


def test_jsonl_with_a_bom_is_read_with_its_first_column_name(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes('\ufeff{"text": "好", "label": "正面"}\n{"text": "坏", "label": "负面"}\n'.encode("utf-8"))
    dataset = load_data_files([str(path)], "train_file")
    assert dataset.column_names == ["text", "label"] and dataset["text"] == ["好", "坏"]


def test_malformed_file_names_split_and_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "好"}\n{不是json}\n', encoding="utf-8")
    with pytest.raises(
        UserError, match=r"`--train_file` file '.*bad\.jsonl' line 2 is not valid JSON .*: \{不是json\}"
    ):
        load_data_files([str(path)], "train_file")


# --------------------------------------------------------------------------------------------- load_raw_datasets


@pytest.fixture
def hundred_rows(tmp_path) -> str:
    rows = [(i, f"第{i}条评论：质量不错", "正面" if i % 2 else "负面") for i in range(100)]
    return write_csv(tmp_path / "train.csv", rows, header=("id", "text", "label"))


def test_validation_carved_from_train(tmp_path, hundred_rows):
    data_args = DataTrainingArguments(train_file=[hundred_rows], validation_split_percentage=10)
    training_args = TrainingArguments(output_dir=str(tmp_path / "out"), do_train=True, do_eval=True)
    raw = load_raw_datasets(data_args, training_args)
    assert set(raw) == {"train", "validation"}
    assert (len(raw["train"]), len(raw["validation"])) == (90, 10)
    train_ids, validation_ids = set(raw["train"]["id"]), set(raw["validation"]["id"])
    assert train_ids.isdisjoint(validation_ids)
    assert train_ids | validation_ids == set(range(100))
    # the same seed gives the same split
    again = load_raw_datasets(data_args, training_args)
    assert list(again["validation"]["id"]) == list(raw["validation"]["id"])


def test_eval_strategy_alone_also_carves(tmp_path, hundred_rows):
    data_args = DataTrainingArguments(train_file=[hundred_rows], validation_split_percentage=25)
    training_args = TrainingArguments(output_dir=str(tmp_path / "out"), eval_strategy="epoch")
    raw = load_raw_datasets(data_args, training_args)
    assert (len(raw["train"]), len(raw["validation"])) == (75, 25)


def test_no_carving_without_eval(tmp_path, hundred_rows):
    data_args = DataTrainingArguments(train_file=[hundred_rows], validation_split_percentage=10)
    training_args = TrainingArguments(output_dir=str(tmp_path / "out"), do_train=True, do_eval=False)
    raw = load_raw_datasets(data_args, training_args)
    assert set(raw) == {"train"}
    assert len(raw["train"]) == 100


def test_no_carving_with_zero_percentage(tmp_path, hundred_rows):
    data_args = DataTrainingArguments(train_file=[hundred_rows], validation_split_percentage=0)
    training_args = TrainingArguments(output_dir=str(tmp_path / "out"), do_eval=True)
    assert set(load_raw_datasets(data_args, training_args)) == {"train"}


def test_validation_file_is_used_instead_of_carving(tmp_path, hundred_rows):
    dev = write_csv(tmp_path / "dev.csv", [(1000, "验证集的句子", "正面")], header=("id", "text", "label"))
    test = write_csv(tmp_path / "test.csv", [(2000, "测试集的句子", "负面")], header=("id", "text", "label"))
    data_args = DataTrainingArguments(train_file=[hundred_rows], validation_file=[dev], test_file=[test])
    training_args = TrainingArguments(output_dir=str(tmp_path / "out"), do_train=True, do_eval=True)
    raw = load_raw_datasets(data_args, training_args)
    assert len(raw["train"]) == 100
    assert list(raw["validation"]["text"]) == ["验证集的句子"]
    assert list(raw["test"]["id"]) == [2000]


def test_load_raw_datasets_uses_the_file_encoding(tmp_path):
    path = write_csv(tmp_path / "gbk.csv", list(zip(TEXTS, LABELS)), encoding="gbk")
    data_args = DataTrainingArguments(test_file=path, file_encoding="gbk")
    raw = load_raw_datasets(data_args, TrainingArguments(output_dir=str(tmp_path / "out"), do_predict=True))
    assert list(raw["test"]["text"]) == TEXTS


def test_carve_three_rows_keeps_at_least_one_for_validation():
    ds = Dataset.from_dict({"id": [0, 1, 2], "text": TEXTS})
    train, validation = carve_validation_split(ds, 10, seed=42)  # round(0.3) = 0 -> at least 1
    assert (len(train), len(validation)) == (2, 1)
    assert set(train["id"]) | set(validation["id"]) == {0, 1, 2}


def test_carve_one_row_is_an_error():
    ds = Dataset.from_dict({"text": ["只有一行"]})
    with pytest.raises(ValueError, match="Cannot hold out 10% of 1 training row"):
        carve_validation_split(ds, 10, seed=42)


# --------------------------------------------------------------------------------------------- find_column


@pytest.fixture
def review_dataset() -> Dataset:
    return Dataset.from_dict({"content": TEXTS, "label": LABELS})


def test_find_named_column(review_dataset):
    assert find_column(review_dataset, "label", "label_column", ("class",), "train") == "label"


def test_find_first_candidate_present(review_dataset):
    assert find_column(review_dataset, None, "text_column", ("text", "sentence", "content", "label"), "train") == (
        "content"
    )


def test_find_named_column_missing_lists_columns(review_dataset):
    with pytest.raises(
        ValueError,
        match=r"`--text_column` '正文' is not a column of the validation data; columns are: content, label\.",
    ):
        find_column(review_dataset, "正文", "text_column", ("text",), "validation")


def test_find_no_candidate_lists_columns(review_dataset):
    with pytest.raises(ValueError) as excinfo:
        find_column(review_dataset, None, "text_column", ("text", "sentence"), "train")
    assert str(excinfo.value) == (
        "Could not find the train data's column for `--text_column` (looked for text, sentence); "
        "columns are: content, label. Pass --text_column <column>."
    )


# --------------------------------------------------------------------------------------------- drop_invalid_rows


def text_reason(row: dict) -> str | None:
    return "empty or missing text" if is_blank(row["text"]) else None


@pytest.mark.parametrize(
    ("value", "blank"),
    [
        (None, True),
        ("", True),
        ("  \t\n", True),
        ("\u3000", True),
        (math.nan, True),
        ("好", False),
        (0, False),
        (0.0, False),
    ],
)
def test_is_blank(value, blank):
    assert is_blank(value) is blank


def test_drop_invalid_rows_keeps_good_rows_in_order(caplog):
    ds = Dataset.from_dict({"text": ["第一条", None, "", "第四条", "   ", "第六条"], "id": [0, 1, 2, 3, 4, 5]})
    with caplog.at_level(logging.WARNING, logger="zhtrain.data.files"):
        kept = drop_invalid_rows(ds, "train", ["text"], text_reason)
    assert list(kept["text"]) == ["第一条", "第四条", "第六条"]
    assert list(kept["id"]) == [0, 3, 5]
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "zhtrain.data.files" and r.levelno == logging.WARNING
    ]
    assert warnings == ["Dropped 3 of 6 train rows: empty or missing text (row numbers from 0: 1, 2, 4)."]


def test_drop_invalid_rows_nan_values():
    ds = Dataset.from_dict({"text": ["好评", "差评", "一般"], "score": [4.5, math.nan, 3.0]})
    kept = drop_invalid_rows(
        ds, "train", ["text", "score"], lambda row: "no score" if is_blank(row["score"]) else None
    )
    assert list(kept["text"]) == ["好评", "一般"]


def test_drop_invalid_rows_counts_each_reason_and_truncates_examples(caplog):
    texts = [None] * 7 + ["正常"] * 2
    labels = ["正面"] * 8 + [None]
    ds = Dataset.from_dict({"text": texts, "label": labels})

    def reason(row):
        if is_blank(row["text"]):
            return "empty or missing text"
        return "missing label" if is_blank(row["label"]) else None

    with caplog.at_level(logging.WARNING, logger="zhtrain.data.files"):
        kept = drop_invalid_rows(ds, "validation", ["text", "label"], reason)
    assert list(kept["text"]) == ["正常"]
    warnings = sorted(r.getMessage() for r in caplog.records if r.name == "zhtrain.data.files")
    assert warnings == [
        "Dropped 1 of 9 validation rows: missing label (row numbers from 0: 8).",
        "Dropped 7 of 9 validation rows: empty or missing text (row numbers from 0: 0, 1, 2, 3, 4 ...).",
    ]


def test_drop_invalid_rows_nothing_to_drop_returns_the_dataset(caplog):
    ds = Dataset.from_dict({"text": TEXTS})
    with caplog.at_level(logging.WARNING, logger="zhtrain.data.files"):
        assert drop_invalid_rows(ds, "train", ["text"], text_reason) is ds
    assert not [r for r in caplog.records if r.name == "zhtrain.data.files"]


def test_drop_invalid_rows_all_invalid():
    ds = Dataset.from_dict({"text": [None, "", "  "]})
    with pytest.raises(ValueError, match=r"No usable row left in the test data: every row was dropped"):
        drop_invalid_rows(ds, "test", ["text"], text_reason)


# --------------------------------------------------------------------------------------------- take_first


def test_take_first():
    ds = Dataset.from_dict({"text": TEXTS})
    assert take_first(ds, None) is ds
    assert list(take_first(ds, 2)["text"]) == TEXTS[:2]
    assert list(take_first(ds, 10)["text"]) == TEXTS

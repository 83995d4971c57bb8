"""End to end: run_classification.main on generated Chinese data with a tiny from-scratch BERT."""

import csv
import itertools
import json
import logging

import pandas as pd
import pytest

import run_classification
from helpers import tiny_run


@pytest.fixture(scope="module")
def sentiment_run(demo_dir, tmp_path_factory):
    """One full training run shared by the tests below (about 15 s on 2 cores)."""
    output_dir = tmp_path_factory.mktemp("sentiment")
    argv = tiny_run(
        "classification",
        demo_dir,
        output_dir,
        test_file=demo_dir / "data" / "sentiment" / "test.csv",
        eval_strategy="epoch",
        # transformers 5 also length-groups evaluation; predictions.csv must still follow the file
        train_sampling_strategy="group_by_length",
        do_train=True,
        do_eval=True,
        do_predict=True,
    )
    return run_classification.main(argv), output_dir


@pytest.mark.slow
def test_tiny_model_learns_sentiment(sentiment_run):
    results, output_dir = sentiment_run
    # 3% of the labels are flipped on purpose, so ~0.97 is the ceiling; chance is 0.5
    assert results["eval_accuracy"] >= 0.9
    assert results["predict_accuracy"] >= 0.9
    assert results["eval_macro_f1"] >= 0.9
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert losses[-1] < losses[0] * 0.6
    saved = json.loads((output_dir / "all_results.json").read_text())
    assert saved["eval_accuracy"] == results["eval_accuracy"]
    assert (output_dir / "training_loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_outputs_reload_through_pipeline_with_label_names(sentiment_run):
    from transformers import pipeline

    _, output_dir = sentiment_run
    predictions = pd.read_csv(output_dir / "predictions.csv")
    assert list(predictions.columns) == ["text", "label", "prediction", "score", "scores"]
    assert len(predictions) == 300
    assert set(predictions["prediction"]) <= {"正面", "负面"}
    scores = json.loads(predictions["scores"][0])
    assert set(scores) == {"正面", "负面"} and abs(sum(scores.values()) - 1) < 1e-3

    classifier = pipeline("text-classification", model=str(output_dir))
    texts = predictions["text"][:20].tolist()
    answers = classifier(texts)
    # the reloaded model answers with label names, and agrees with the predictions file
    assert [a["label"] for a in answers] == predictions["prediction"][:20].tolist()
    assert [round(a["score"], 3) for a in answers] == pytest.approx(
        predictions["score"][:20].round(3).tolist(), abs=2e-3
    )


@pytest.mark.slow
def test_report_and_confusion_matrix(sentiment_run):
    _, output_dir = sentiment_run
    report = json.loads((output_dir / "eval_report.json").read_text(encoding="utf-8"))
    assert report["labels"] == ["正面", "负面"]
    matrix = report["confusion_matrix"]
    assert sum(map(sum, matrix)) == 300
    assert report["per_class"]["正面"]["support"] == sum(matrix[0])
    assert (output_dir / "eval_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_eval_only_and_predict_without_labels(sentiment_run, demo_dir, tmp_path):
    results, model_dir = sentiment_run
    data = demo_dir / "data" / "sentiment"
    argv = tiny_run(
        "classification",
        demo_dir,
        tmp_path,
        model_name_or_path=model_dir,
        train_file=None,
        test_file=data / "test_unlabeled.csv",
        do_eval=True,
        do_predict=True,
    )
    again = run_classification.main(argv)
    # label names come from the saved model; the score is the trained model's
    assert again["eval_accuracy"] == pytest.approx(results["eval_accuracy"])
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert list(predictions.columns) == ["text", "prediction", "score", "scores"]
    assert len(predictions) == 300
    assert "predict_accuracy" not in again


@pytest.mark.slow
def test_multi_label_from_json_lists(demo_dir, tmp_path):
    data = demo_dir / "data" / "multilabel"
    argv = tiny_run(
        "classification",
        demo_dir,
        tmp_path,
        train_file=data / "train.jsonl",
        validation_file=data / "validation.jsonl",
        test_file=data / "test.jsonl",
        num_train_epochs=10,
        learning_rate=2e-3,
        do_train=True,
        do_eval=True,
        do_predict=True,
    )
    results = run_classification.main(argv)
    assert results["eval_micro_f1"] >= 0.85
    assert results["eval_macro_f1"] >= 0.85
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert config["problem_type"] == "multi_label_classification"
    assert set(config["label2id"]) == {"价格", "质量", "物流", "服务", "外观"}
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    first = json.loads((data / "test.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert set(predictions["label"][0].split("|")) == set(first["labels"])
    # the file's rows line up with the test file: their exact-match rate is the reported accuracy
    agree = (predictions["label"] == predictions["prediction"]).mean()
    assert agree == pytest.approx(results["predict_accuracy"], abs=1e-3)
    report = json.loads((tmp_path / "eval_report.json").read_text(encoding="utf-8"))
    counts = report["per_label_confusion"]["物流"]
    assert counts["tp"] + counts["fn"] == report["per_class"]["物流"]["support"]


def best_constant_micro_f1(label_sets: list[set]) -> float:
    """The micro-F1 of the best single label set predicted for every row; predicting no label scores 0."""
    names = sorted(set().union(*label_sets))
    total, best = sum(len(labels) for labels in label_sets), 0.0
    for size in range(1, len(names) + 1):
        for predicted in map(set, itertools.combinations(names, size)):
            true_positives = sum(len(labels & predicted) for labels in label_sets)
            false_positives = len(label_sets) * size - true_positives
            best = max(best, 2 * true_positives / (true_positives + false_positives + total))
    return best


@pytest.mark.slow
def test_multi_label_from_delimited_strings(demo_dir, tmp_path):
    data = demo_dir / "data" / "multilabel"
    argv = tiny_run(
        "classification",
        demo_dir,
        tmp_path,
        train_file=data / "train.csv",
        validation_file=data / "validation.csv",
        label_column="labels",
        label_delimiter="|",
        max_steps=300,
        learning_rate=3e-3,
        do_train=True,
        do_eval=True,
    )
    results = run_classification.main(argv)
    # the labels were read from the "a|b" cells: the model learned them (micro-F1 0.91 in 300 steps), far beyond
    # any one label set predicted for every row (all five labels: 0.55; none, each label's majority: 0)
    validation = pd.read_csv(data / "validation.csv")["labels"].str.split("|").map(set).tolist()
    assert results["eval_micro_f1"] > best_constant_micro_f1(validation) + 0.2
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert config["problem_type"] == "multi_label_classification"
    assert sorted(config["label2id"]) == sorted(["价格", "质量", "物流", "服务", "外观"])


# ---- bad input: clear errors, or rows dropped with a logged count --------------------------------------------


def write_csv(path, rows, header=("text", "label"), encoding="utf-8"):
    with open(path, "w", encoding=encoding, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


SMALL_TRAIN = [("服务很好，推荐", "正面"), ("太差了，失望", "负面")] * 10


def test_missing_column_lists_the_columns(demo_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", SMALL_TRAIN, header=("comment", "label"))
    argv = tiny_run(
        "classification", demo_dir, tmp_path / "out", train_file=train, validation_file=None, do_train=True
    )
    with pytest.raises(ValueError, match=r"columns are: comment, label"):
        run_classification.main(argv)
    with pytest.raises(ValueError, match=r"`--label_column` 'lable' is not a column of the train data"):
        run_classification.main([*argv, "--text_column", "comment", "--label_column", "lable"])


def test_unseen_eval_label_names_value_and_row(demo_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", SMALL_TRAIN)
    dev = write_csv(tmp_path / "dev.csv", [("还行吧", "正面"), ("一般般", "中性")])
    argv = tiny_run(
        "classification",
        demo_dir,
        tmp_path / "out",
        train_file=train,
        validation_file=dev,
        do_train=True,
        do_eval=True,
    )
    with pytest.raises(ValueError, match=r"validation data has 1 label.*row 1: '中性'.*Known labels: 正面, 负面"):
        run_classification.main(argv)


@pytest.mark.slow
def test_dirty_rows_are_dropped_and_counted(demo_dir, tmp_path, caplog):
    rows = [*SMALL_TRAIN, ("", "正面"), ("   ", "负面"), ("没有标签的一行", ""), ("好评", "正面")]
    train = write_csv(tmp_path / "train.csv", rows)
    dev = write_csv(tmp_path / "dev.csv", SMALL_TRAIN[:4])
    argv = tiny_run(
        "classification",
        demo_dir,
        tmp_path / "out",
        train_file=train,
        validation_file=dev,
        max_steps=1,
        do_train=True,
        do_eval=True,
    )
    with caplog.at_level(logging.WARNING):
        results = run_classification.main(argv)
    assert results["train_samples"] == len(SMALL_TRAIN) + 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("Dropped 2 of 24 train rows: empty or missing text" in m for m in messages)
    assert any("Dropped 1 of 24 train rows: missing label" in m for m in messages)
    # the dev texts all occur in train: the leak check says so
    assert any("Leak: 4 of 4 validation texts also occur in the training data" in m for m in messages)


@pytest.mark.slow
def test_gbk_file_error_and_file_encoding(demo_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", SMALL_TRAIN, encoding="gbk")
    argv = tiny_run(
        "classification",
        demo_dir,
        tmp_path / "out",
        train_file=train,
        validation_file=None,
        max_steps=1,
        do_train=True,
    )
    with pytest.raises(ValueError, match=r"train.csv' is not valid utf-8.*--file_encoding gbk"):
        run_classification.main(argv)
    results = run_classification.main([*argv, "--file_encoding", "gbk"])
    assert results["train_samples"] == len(SMALL_TRAIN)


def test_argument_errors_are_collected(demo_dir, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown arguments: `--lable_column` \(did you mean `label_column`\?\)"):
        run_classification.main(["--lable_column", "x", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError) as info:
        run_classification.main(["--do_train", "--max_seq_length", "0", "--output_dir", str(tmp_path)])
    message = str(info.value)
    assert "--do_train needs --train_file" in message
    assert "--model_name_or_path is required" in message
    assert "--max_seq_length must be at least 1" in message


def test_label_column_named_labels_gives_integer_label_ids(demo_dir, tmp_path):
    """A file column called `labels` once crashed the collator: datasets kept its string type for the output."""
    import datasets
    from transformers import AutoTokenizer, DataCollatorWithPadding

    path = tmp_path / "labels.csv"
    path.write_text("text,labels\n好评,正面\n差评,负面\n", encoding="utf-8")
    raw = datasets.load_dataset("csv", data_files=str(path), split="train")
    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "models" / "bert-tiny-zh")
    columns = run_classification.Columns({"train": "text"}, {}, {"train": "labels"})
    encoded = raw.map(
        run_classification.encode_batch, batched=True, remove_columns=raw.column_names,
        fn_kwargs={"split": "train", "tokenizer": tokenizer, "columns": columns, "label_names": ["正面", "负面"],
                   "multi_label": False, "delimiter": None, "max_length": 16},
    )  # fmt: skip
    batch = DataCollatorWithPadding(tokenizer)(encoded.to_list())
    assert batch["labels"].tolist() == [0, 1]


def test_joined_single_labels_warn_and_name_label_delimiter(caplog):
    import datasets

    labels = ["价格|物流"] * 5 + ["价格"] * 40 + ["物流|服务"] * 3
    dataset = datasets.Dataset.from_dict({"labels": labels})
    with caplog.at_level(logging.WARNING):
        run_classification.warn_about_delimiters(dataset, "labels")
    assert caplog.records[0].getMessage() == (
        "8 of 48 training labels in `--label_column` labels contain '|' (e.g. '价格|物流'): as a single-label task each "
        "combination is one class (3 classes). If a row has several labels, pass --label_delimiter '|' to train "
        "multi-label."
    )
    caplog.clear()
    run_classification.warn_about_delimiters(datasets.Dataset.from_dict({"labels": ["正面", "负面", "A/B"]}), "labels")
    assert not caplog.records  # one such label is not a pattern


# ---- label names in plots: drawn with a font that has them, or as ids with a note --------------------------------


def build_font(path, family: str, characters: str) -> str:
    """A TrueType font with a square glyph for each character (what matters here is which characters it has)."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    names = [".notdef", *(f"uni{ord(c):04X}" for c in characters)]
    pen = TTGlyphPen(None)
    for x, y in ((100, 0), (100, 700), (800, 700), (800, 0)):
        (pen.lineTo if x != 100 or y != 0 else pen.moveTo)((x, y))
    pen.closePath()
    square = pen.glyph()
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(names)
    builder.setupCharacterMap({ord(c): f"uni{ord(c):04X}" for c in characters})
    builder.setupGlyf(dict.fromkeys(names, square))
    builder.setupHorizontalMetrics(dict.fromkeys(names, (900, 100)))
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": family, "styleName": "Regular"})
    builder.setupOS2()
    builder.setupPost()
    builder.save(str(path))
    return str(path)


def drawn_labels(fig) -> list[tuple[str, str]]:
    """(text, font file matplotlib draws it with) of every tick label, after rendering the figure."""
    from matplotlib import font_manager

    fig.canvas.draw()
    labels = [t for ax in fig.axes for t in (*ax.get_xticklabels(), *ax.get_yticklabels()) if t.get_text()]
    return [(t.get_text(), font_manager.findfont(t.get_fontproperties(), fallback_to_default=False)) for t in labels]


REPORT = {"labels": ["正面", "负面"], "confusion_matrix": [[3, 1], [0, 4]]}


def test_label_names_are_drawn_with_a_font_that_has_their_characters(tmp_path, monkeypatch):
    from matplotlib import font_manager

    font = build_font(tmp_path / "tiny-cjk.ttf", "Tiny CJK Test", "正负面")
    monkeypatch.setattr(run_classification, "installed_font_files", lambda: [font])
    monkeypatch.setattr(font_manager.fontManager, "ttflist", list(font_manager.fontManager.ttflist))
    fig = run_classification.draw_report(REPORT)
    drawn = drawn_labels(fig)
    assert [text for text, _ in drawn] == ["正面", "负面", "正面", "负面"]
    for text, file in drawn:  # the font that draws each label has a glyph for every character of it
        assert {ord(c) for c in text} <= run_classification.font_characters(file), (text, file)
    assert not fig.texts  # no note: the names are there
    run_classification.plot_report(REPORT, tmp_path / "matrix.png")
    assert (tmp_path / "matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_without_such_a_font_ids_are_drawn_and_the_plot_says_why(tmp_path, monkeypatch):
    from matplotlib import font_manager

    dejavu = font_manager.findfont("DejaVu Sans")
    monkeypatch.setattr(run_classification, "installed_font_files", lambda: [dejavu])
    fig = run_classification.draw_report(REPORT)
    drawn = drawn_labels(fig)
    assert [text for text, _ in drawn] == ["#0", "#1", "#0", "#1"]
    note = fig.texts[0].get_text()
    assert "eval_report.json maps each id to its name" in note and "apt-get install fonts-noto-cjk" in note
    for text, file in [*drawn, (note, font_manager.findfont(fig.texts[0].get_fontproperties()))]:
        assert {ord(c) for c in text if not c.isspace()} <= run_classification.font_characters(file)


def test_matplotlibs_last_resort_font_does_not_count(monkeypatch):
    from matplotlib import font_manager

    last_resort = next(f.fname for f in font_manager.fontManager.ttflist if "LastResort" in f.fname)
    assert ord("正") in run_classification.font_characters(last_resort)  # it has a box for every character
    monkeypatch.setattr(run_classification, "installed_font_files", lambda: [last_resort])
    assert run_classification.label_font(["正面"]) is None

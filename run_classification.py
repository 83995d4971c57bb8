"""Fine-tune a Chinese text classifier (single-label or multi-label) on CSV / TSV / JSON files.

    python run_classification.py examples/classification_demo.json
    python run_classification.py --model_name_or_path bert-base-chinese --train_file train.csv \
        --validation_file dev.csv --text_column text --label_column label --output_dir outputs/cls \
        --do_train --do_eval
    torchrun --nproc_per_node 8 run_classification.py examples/classification_bert_base_chinese.json

Labels may be ints or strings; their names are stored in the model config, so
`pipeline("text-classification", model=output_dir)` answers with them. Multi-label data has a list
of labels per row, or one string split on --label_delimiter.
"""

import functools
import json
import logging
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from arguments import DataTrainingArguments, ModelArguments, common_problems, raise_if_problems
from zhtrain.checkpoints import ResumableCheckpoints
from zhtrain.data.files import drop_invalid_rows, find_column, is_blank, limit_samples, load_raw_datasets
from zhtrain.errors import UserError, run_main
from zhtrain.launch import prepare_launch
from zhtrain.metrics import classification_metrics, classification_report, predict_labels, sigmoid, softmax
from zhtrain.modeling import check_vocabulary_fits, fit_to_context, log_trainable_parameters, repair_special_tokens
from zhtrain.parsing import parse_args
from zhtrain.training import FileOrderEvaluation, setup_run, train_evaluate_predict, write_json

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence", "content", "review", "text_a", "sentence1", "query")
LABEL_COLUMNS = ("label", "labels", "class", "category")
LIKELY_DELIMITERS = ("|", ",", ";", "/", "，", "、", "；", "｜")  # what joins several labels in one cell


@dataclass
class ClassificationArguments:
    """Arguments only text classification needs."""

    label_column: str | None = field(
        default=None, metadata={"help": "Column holding the label(s); found among label, labels, class if unset."}
    )
    text_pair_column: str | None = field(
        default=None, metadata={"help": "Optional second text column, for sentence-pair tasks (e.g. matching)."}
    )
    label_delimiter: str | None = field(
        default=None,
        metadata={"help": "Makes the task multi-label: label strings are split on it, e.g. '|' for '价格|物流'."},
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Longest input in tokens; longer texts are truncated. Batches pad dynamically."}
    )
    threshold: float = field(
        default=0.5, metadata={"help": "Multi-label only: a label is predicted when its probability reaches this."}
    )


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, ClassificationArguments, TrainingArguments)


def normalize_label(value, multi_label: bool, delimiter: str | None):
    """A label as its name (str), or a list of names for multi-label rows; None when missing.

    CSV columns with a missing value are read as floats, so 1.0 must count as the label '1'.
    """
    if multi_label:
        if isinstance(value, list):
            items = value
        elif is_blank(value):
            return None
        else:
            items = str(value).split(delimiter) if delimiter else [value]
        return [normalize_label(v, False, None) for v in items if not is_blank(v)]
    if is_blank(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def sort_label_names(names) -> list[str]:
    """Numeric labels in numeric order (so 0..K-1 keep their ids), others alphabetically."""
    names = set(names)
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def is_list_feature(feature) -> bool:
    return isinstance(feature, (datasets.Sequence, datasets.LargeList, getattr(datasets, "List", datasets.Sequence)))


def check_known_labels(dataset, split, label_column, label2id, multi_label, delimiter, source) -> None:
    """Fail on eval/test labels the model cannot predict, naming the value and the row."""
    unknown = []
    for row, value in enumerate(dataset[label_column]):
        label = normalize_label(value, multi_label, delimiter)
        for name in (label or []) if multi_label else ([label] if label is not None else []):
            if name not in label2id:
                unknown.append((row, name))
    if unknown:
        shown = "; ".join(f"row {row}: '{name}'" for row, name in unknown[:5])
        raise UserError(
            f"The {split} data has {len(unknown)} label(s) that never occur in {source} (rows counted from 0): "
            f"{shown}{' ...' if len(unknown) > 5 else ''}. Known labels: {', '.join(label2id)}. "
            "Fix or remove those rows, or add examples of the label to the training data."
        )


def warn_about_delimiters(dataset, label_column: str) -> None:
    """Warn when single-label values look like several labels joined (`价格|物流`): each join becomes a class."""
    labels = [str(v).strip() for v in dataset[label_column] if not is_blank(v)]
    for delimiter in LIKELY_DELIMITERS:
        joined = [label for label in labels if delimiter in label.strip(delimiter)]
        if len(joined) >= max(3, len(labels) // 100):
            logger.warning(
                "%d of %d training labels in `--label_column` %s contain '%s' (e.g. '%s'): as a single-label task "
                "each combination is one class (%d classes). If a row has several labels, pass --label_delimiter "
                "'%s' to train multi-label.",
                len(joined), len(labels), label_column, delimiter, joined[0], len(set(labels)), delimiter,
            )  # fmt: skip
            return


def warn_about_leaks(raw: datasets.DatasetDict, text_columns: dict) -> None:
    """Warn when evaluation or test texts also occur in train: scores on them overstate the model."""
    if "train" not in raw:
        return
    seen = {str(t).strip() for t in raw["train"][text_columns["train"]] if not is_blank(t)}
    for split in ("validation", "test"):
        if split not in raw:
            continue
        texts = [str(t).strip() for t in raw[split][text_columns[split]] if not is_blank(t)]
        shared = [t for t in texts if t in seen]
        if shared:
            logger.warning(
                "Leak: %d of %d %s texts also occur in the training data (e.g. '%s'); metrics on them overstate "
                "how well the model generalises. De-duplicate the splits.",
                len(shared),
                len(texts),
                split,
                shared[0][:50],
            )


class ClassificationTrainer(FileOrderEvaluation, ResumableCheckpoints, Trainer):
    """The stock Trainer, with predictions.csv rows in the test file's order even under group_by_length, and
    checkpoints that a kill cannot leave half written."""


class ClassificationMetrics:
    """compute_metrics for the Trainer; keeps the last predictions so the final report can be written from them."""

    def __init__(self, multi_label: bool, threshold: float):
        self.multi_label, self.threshold = multi_label, threshold
        self.last = None

    def __call__(self, eval_pred) -> dict:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        predictions = predict_labels(logits, self.multi_label, self.threshold)
        self.last = (predictions, eval_pred.label_ids)
        return classification_metrics(predictions, eval_pred.label_ids, self.multi_label)


PREFERRED_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "SimHei",
                   "Microsoft YaHei", "PingFang SC")  # fmt: skip
NO_FONT_NOTE = (
    "No installed font has the characters of the label names, so they are drawn as #ids; eval_report.json maps "
    "each id to its name.\nInstall a CJK font to see the names: apt-get install fonts-noto-cjk"
)


@functools.cache
def font_characters(path: str) -> frozenset[int]:
    """The code points a font file has glyphs for."""
    from matplotlib import ft2font

    try:
        return frozenset(ft2font.FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def installed_font_files() -> list[str]:
    """The font files matplotlib knows, the preferred CJK families first, then any other on the system."""
    from matplotlib import font_manager

    known = sorted(font_manager.fontManager.ttflist, key=lambda f: f.name not in PREFERRED_FONTS)
    files = [f.fname for f in known if f.weight in (400, "normal", "regular")]
    # fonts installed after matplotlib built its font cache are not in it (apt-get install fonts-noto-cjk):
    # Chinese-looking file names first, regular weights before bold ones
    system = sorted(
        font_manager.findSystemFonts(),
        key=lambda p: (not re.search(r"cjk|sc|hei|song|kai|ming|wqy|han", Path(p).name, re.I),
                       bool(re.search(r"bold|black|heavy|light|thin|medium", Path(p).name, re.I)), p),
    )  # fmt: skip
    return list(dict.fromkeys(files + system))


def label_font(names: list[str]) -> str | None:
    """A font family with a glyph for every character of the label names, or None (matplotlib would draw boxes).

    The default font first (it has Latin, Greek, Cyrillic); never matplotlib's Last Resort font, which has a box
    for every character.
    """
    from matplotlib import font_manager, rcParams

    wanted = {ord(c) for c in "".join(names) if not c.isspace()}
    default = font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"]))
    for path in [default, *installed_font_files()]:
        if wanted <= font_characters(path) and "LastResort" not in Path(path).name:
            if path not in {f.fname for f in font_manager.fontManager.ttflist}:
                font_manager.fontManager.addfont(path)
            return font_manager.FontProperties(fname=path).get_name()
    return None


def draw_report(report: dict):
    """The confusion matrix (single-label) or per-label precision/recall/F1 bars (multi-label) as a figure.

    Label names are drawn in a font that has their characters; when none is installed, as #ids with a note.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, font = report["labels"], label_font(report["labels"])
    if font is None:
        names = [f"#{i}" for i in range(len(names))]
    size = max(4.0, 0.5 * len(names) + 2)
    # family names, not the generic sans-serif: the texts keep them, so they are drawn the same after this block
    with plt.rc_context({"font.family": [font or "DejaVu Sans", "DejaVu Sans"]}):
        fig, ax = plt.subplots(figsize=(size + 1, size + (0.6 if font is None else 0)))
        if "confusion_matrix" in report:
            draw_confusion_matrix(ax, np.array(report["confusion_matrix"]), names)
        else:
            x = np.arange(len(names))
            for k, metric in enumerate(("precision", "recall", "f1")):
                values = [report["per_class"][n][metric] for n in report["labels"]]
                ax.bar(x + (k - 1) * 0.27, values, width=0.27, label=metric)
            ax.set_xticks(x, names, rotation=45, ha="right")
            ax.set_ylim(0, 1.05)
            ax.legend()
            ax.set_title("per-label scores")
        if font is None:
            fig.text(0.01, 0.01, NO_FONT_NOTE, fontsize=7, va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.08 if font is None else 0, 1, 1))
    return fig


def draw_confusion_matrix(ax, matrix: np.ndarray, names: list[str]) -> None:
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")


def plot_report(report: dict, path: Path) -> None:
    """draw_report's figure as a PNG."""
    import matplotlib.pyplot as plt

    fig = draw_report(report)
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class Columns:
    """Which column holds what in each split; a test split may have no label column (predict only)."""

    text: dict[str, str]
    pair: dict[str, str]
    label: dict[str, str]

    def roles(self, split: str) -> dict[str, str]:
        """{role: column} of one split, roles text / pair / label."""
        roles = {"text": self.text[split], "pair": self.pair.get(split), "label": self.label.get(split)}
        return {role: column for role, column in roles.items() if column}


def argument_problems(model_args, data_args, task_args, training_args) -> list[str]:
    """Every problem with the arguments, found before anything is loaded."""
    problems = common_problems(model_args, data_args, training_args)
    if not model_args.model_name_or_path:
        problems.append("--model_name_or_path is required (a hub id such as bert-base-chinese, or a local dir).")
    if task_args.max_seq_length < 1:
        problems.append(f"--max_seq_length must be at least 1, got {task_args.max_seq_length}.")
    if not 0 < task_args.threshold < 1:
        problems.append(f"--threshold must be between 0 and 1, got {task_args.threshold}.")
    return problems


def find_columns(raw: datasets.DatasetDict, data_args, task_args) -> Columns:
    """The text, text-pair and label columns of every split, named by the flags or found by their usual names."""
    text = {
        split: find_column(ds, data_args.text_column, "text_column", TEXT_COLUMNS, split) for split, ds in raw.items()
    }
    label = {}
    for split, ds in raw.items():
        if split == "test" and task_args.label_column not in ds.column_names:
            present = [c for c in LABEL_COLUMNS if c in ds.column_names]
            if task_args.label_column is not None or not present:
                continue  # a test file without labels: predict only
        label[split] = find_column(ds, task_args.label_column, "label_column", LABEL_COLUMNS, split)
    pair = {}
    if task_args.text_pair_column:
        pair = {
            split: find_column(ds, task_args.text_pair_column, "text_pair_column", (), split)
            for split, ds in raw.items()
        }
    return Columns(text, pair, label)


def is_multi_label(raw: datasets.DatasetDict, columns: Columns, task_args) -> bool:
    """Multi-label with --label_delimiter, or when the labels are lists (JSON)."""
    first_labelled = next(iter(columns.label), None)
    return task_args.label_delimiter is not None or (
        first_labelled is not None and is_list_feature(raw[first_labelled].features[columns.label[first_labelled]])
    )


def row_problem(values: dict, roles: dict[str, str], multi_label: bool, delimiter: str | None) -> str | None:
    """Why a row cannot be used, or None; `roles` maps text / pair / label to the row's columns."""
    row = {role: values[column] for role, column in roles.items()}
    if is_blank(row.get("text")):
        return "empty or missing text"
    if "pair" in row and is_blank(row["pair"]):
        return "empty or missing text pair"
    if "label" in row and normalize_label(row["label"], multi_label, delimiter) is None:
        return "missing label"
    return None


def load_classification_data(data_args, task_args, training_args, cache_dir) -> tuple:
    """The raw splits without dirty rows, their columns, and whether the task is multi-label."""
    with training_args.main_process_first(desc="loading data"):
        raw = load_raw_datasets(data_args, training_args, cache_dir=cache_dir)
    columns = find_columns(raw, data_args, task_args)
    multi_label = is_multi_label(raw, columns, task_args)
    for split in list(raw):
        roles = columns.roles(split)
        problem = partial(row_problem, roles=roles, multi_label=multi_label, delimiter=task_args.label_delimiter)
        raw[split] = drop_invalid_rows(raw[split], split, list(roles.values()), problem)
    warn_about_leaks(raw, columns.text)
    if "train" in columns.label and not multi_label:
        warn_about_delimiters(raw["train"], columns.label["train"])
    return raw, columns, multi_label


def decide_label_names(raw, columns: Columns, config, multi_label: bool, task_args, model_name: str) -> list[str]:
    """The label names in head order: from the training data (keeping a fine-tuned checkpoint's order), or the model's.

    Evaluation and test labels the model cannot predict are an error naming the value and the row.
    """
    model_label2id = {str(k): int(v) for k, v in (config.label2id or {}).items()}
    model_has_labels = model_label2id and set(model_label2id) != {f"LABEL_{i}" for i in range(len(model_label2id))}
    if "train" in raw:
        names = set()
        for value in raw["train"][columns.label["train"]]:
            label = normalize_label(value, multi_label, task_args.label_delimiter)
            names.update(label if multi_label else [label])
        label_names = sort_label_names(names)
        if model_has_labels and set(model_label2id) == set(label_names):
            label_names = sorted(label_names, key=model_label2id.get)  # keep the checkpoint's head order
        elif model_has_labels:
            logger.warning(
                "The checkpoint was trained on labels %s; this data has %s. The classification head is re-learned.",
                sorted(model_label2id),
                label_names,
            )
        if len(label_names) < 2 and not multi_label:
            raise UserError(
                f"`--label_column` '{columns.label['train']}' has only one distinct label ({label_names}) in the "
                "training data; classification needs at least two."
            )
        source = "the training data"
    elif model_has_labels:
        label_names = sorted(model_label2id, key=model_label2id.get)
        source = f"the model's labels ({model_name})"
    else:
        raise UserError(
            f"Without --do_train the label names come from the model, but '{model_name}' has "
            "none (its config has only LABEL_0, LABEL_1, ...). Evaluate a model fine-tuned by this script."
        )
    label2id = {name: i for i, name in enumerate(label_names)}
    for split in ("validation", "test"):
        if split in columns.label:
            check_known_labels(
                raw[split], split, columns.label[split], label2id, multi_label, task_args.label_delimiter, source
            )
    logger.info(
        "%s task with %d labels: %s", "Multi-label" if multi_label else "Single-label", len(label_names), label_names
    )
    return label_names


def load_tokenizer_and_config(model_args) -> tuple:
    """The tokenizer (with a pad token) and the model config (the labels of a fine-tuned checkpoint)."""
    hub = model_args.hub_kwargs()
    config = AutoConfig.from_pretrained(model_args.config_name or model_args.model_name_or_path, **hub)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, **hub)
    # decoder-only checkpoints (GPT-2, Qwen) used as classifiers have no pad; the attention mask hides it anyway
    repair_special_tokens(tokenizer, pad_from_eos=True)
    return tokenizer, config


def configure_training_args(training_args) -> None:
    """Classification trains with the training arguments as given: the stock collator and Trainer need nothing
    changed (the other scripts adjust theirs here, and log each change)."""


def encode_batch(batch, split, tokenizer, columns: Columns, label_names, multi_label, delimiter, max_length):
    """Token ids of a batch of rows, and their labels: class ids, or one 0/1 float per label (multi-label)."""
    texts = [str(t) for t in batch[columns.text[split]]]
    pairs = [str(t) for t in batch[columns.pair[split]]] if split in columns.pair else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    if split in columns.label:
        labels = [normalize_label(v, multi_label, delimiter) for v in batch[columns.label[split]]]
        label2id = {name: i for i, name in enumerate(label_names)}
        # `label_ids`, not `labels`: datasets keeps the type of a file's own `labels` column (strings) for an
        # output column of that name; DataCollatorWithPadding renames `label_ids` to `labels`
        if multi_label:
            encoded["label_ids"] = [[1.0 if name in row else 0.0 for name in label_names] for row in labels]
        else:
            encoded["label_ids"] = [label2id[name] for name in labels]
    return encoded


def tokenize_splits(
    raw, columns, tokenizer, label_names, multi_label, max_length, data_args, task_args, training_args
):
    """Every split tokenized (main process first; cached by `datasets`)."""
    processed = {}
    with training_args.main_process_first(desc="tokenizing"):
        for split, ds in raw.items():
            processed[split] = ds.map(
                encode_batch,
                batched=True,
                fn_kwargs={
                    "split": split, "tokenizer": tokenizer, "columns": columns, "label_names": label_names,
                    "multi_label": multi_label, "delimiter": task_args.label_delimiter, "max_length": max_length,
                },
                remove_columns=ds.column_names,
                num_proc=data_args.preprocessing_num_workers,
                load_from_cache_file=not data_args.overwrite_cache,
                desc=f"Tokenizing {split}",
            )  # fmt: skip
    return processed


def load_model(model_args, config, tokenizer, label_names: list[str], multi_label: bool):
    """The checkpoint with a classification head for these labels; their names are saved in the config."""
    config.num_labels = len(label_names)
    config.label2id, config.id2label = {n: i for i, n in enumerate(label_names)}, dict(enumerate(label_names))
    config.problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        **model_args.hub_kwargs(),
        dtype=model_args.dtype,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
    check_vocabulary_fits(
        len(tokenizer), model.get_input_embeddings(), tokenizer_source, model_args.model_name_or_path
    )
    log_trainable_parameters(model)
    return model


def write_eval_report(trainer, compute_metrics, label_names, multi_label, output_dir: Path) -> None:
    """eval_report.json (per-class scores, confusion) and its PNG, from the last evaluation's predictions."""
    if compute_metrics.last is None or not trainer.is_world_process_zero():
        return
    report = classification_report(*compute_metrics.last, label_names, multi_label)
    write_json(output_dir / "eval_report.json", report)
    plot_report(report, output_dir / "eval_confusion_matrix.png")
    logger.info("Per-class report and confusion matrix written to %s", output_dir)


def write_predictions(output, test, columns: Columns, label_names, multi_label, task_args, output_dir: Path) -> None:
    """predictions.csv: the text(s), the true label(s) when the test file has them, the prediction and scores."""
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    probabilities = sigmoid(logits) if multi_label else softmax(logits)
    predicted = predict_labels(logits, multi_label, task_args.threshold)
    table = {"text": test[columns.text["test"]]}
    if "test" in columns.pair:
        table["text_pair"] = test[columns.pair["test"]]
    delimiter = task_args.label_delimiter or "|"
    if "test" in columns.label:
        table["label"] = test[columns.label["test"]]
        if multi_label:
            # in label order, like the predictions, so equal label sets read the same
            true_sets = [set(normalize_label(v, True, task_args.label_delimiter) or []) for v in table["label"]]
            table["label"] = [delimiter.join(n for n in label_names if n in labels) for labels in true_sets]
    if multi_label:
        table["prediction"] = [delimiter.join(n for n, on in zip(label_names, row) if on) for row in predicted]
    else:
        table["prediction"] = [label_names[i] for i in predicted]
        table["score"] = [round(float(p[i]), 4) for p, i in zip(probabilities, predicted)]
    table["scores"] = [
        json.dumps({n: round(float(v), 4) for n, v in zip(label_names, p)}, ensure_ascii=False) for p in probabilities
    ]
    pd.DataFrame(table).to_csv(output_dir / "predictions.csv", index=False, encoding="utf-8")
    logger.info("Predictions for %d rows written to %s", len(test), output_dir / "predictions.csv")


def main(argv=None) -> dict:
    # validate
    args = parse_args(ARGUMENT_CLASSES, prepare_launch(argv))
    model_args, data_args, task_args, training_args = args
    raise_if_problems(argument_problems(*args), args)

    # set up the run
    setup_run(args)
    configure_training_args(training_args)

    # load raw data: find the columns, drop dirty rows
    raw, columns, multi_label = load_classification_data(data_args, task_args, training_args, model_args.cache_dir)

    # tokenizer (and the config: the labels of a fine-tuned checkpoint, the longest input)
    tokenizer, config = load_tokenizer_and_config(model_args)
    max_length = fit_to_context(task_args.max_seq_length, config, "max_seq_length")

    # preprocess: the label set, then token ids and label ids
    label_names = decide_label_names(raw, columns, config, multi_label, task_args, model_args.model_name_or_path)
    limit_samples(raw, data_args)
    processed = tokenize_splits(
        raw, columns, tokenizer, label_names, multi_label, max_length, data_args, task_args, training_args
    )

    # model
    model = load_model(model_args, config, tokenizer, label_names, multi_label)

    # trainer
    pad_multiple = 8 if training_args.fp16 or training_args.bf16 else None
    compute_metrics = ClassificationMetrics(multi_label, task_args.threshold)
    trainer = ClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=processed.get("train"),
        eval_dataset=processed.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple),
        compute_metrics=compute_metrics,
    )

    # train, evaluate, predict
    output_dir = Path(training_args.output_dir)
    return train_evaluate_predict(
        trainer,
        training_args,
        train_dataset=processed.get("train"),
        eval_dataset=processed.get("validation"),
        predict_dataset=processed.get("test"),
        after_eval=lambda _: write_eval_report(trainer, compute_metrics, label_names, multi_label, output_dir),
        after_predict=lambda output: write_predictions(
            output, raw["test"], columns, label_names, multi_label, task_args, output_dir
        ),
    )


if __name__ == "__main__":
    run_main(main)

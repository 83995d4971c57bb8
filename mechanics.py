"""The mechanics every script shares: data files in, logging, the train/evaluate/predict tail out.

Task logic (prompt building, label maps, image transforms) stays in the scripts; this module only
holds what would otherwise be copied into all five of them.
"""

import codecs
import glob
import json
import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import datasets
import torch
import transformers
from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)

# file suffix -> the `datasets` packaged builder that reads it
DATA_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".txt": "text",
    ".parquet": "parquet",
}
ENCODING_SAMPLE_BYTES = 1 << 20  # check the first MiB of each file before handing it to `datasets`


def setup_run(training_args) -> None:
    """Logging (INFO on the main process, WARNING elsewhere, one format for all libraries) and the seed."""
    transformers.set_seed(training_args.seed)
    if training_args.dataloader_pin_memory and not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False  # pinning needs an accelerator; torch warns every epoch
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%m/%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.getLogger().setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logging.getLogger("jieba").setLevel(logging.WARNING)  # it logs its dictionary loading at DEBUG/INFO
    logger.warning(
        "Process rank %s, device %s, n_gpu %s, distributed %s, bf16 %s, fp16 %s",
        training_args.process_index,
        training_args.device,
        training_args.n_gpu,
        training_args.parallel_mode.value == "distributed",
        training_args.bf16,
        training_args.fp16,
    )


def resolve_data_files(spec: str | Sequence[str], arg_name: str, formats: dict = DATA_FORMATS) -> list[str]:
    """Expand files, globs and directories into a sorted list of data files of one supported format."""
    entries = [spec] if isinstance(spec, str) else list(spec)
    files = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            # hidden files and folders (.ipynb_checkpoints, .git) hold copies, not data
            found = sorted(
                str(p)
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in formats
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise ValueError(f"`--{arg_name}` directory '{entry}' holds no data file ({', '.join(formats)}).")
            files += found
        elif any(ch in entry for ch in "*?["):
            found = sorted(p for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not found:
                raise ValueError(f"`--{arg_name}` pattern '{entry}' matches no file.")
            files += found
        elif path.is_file():
            files.append(str(path))
        else:
            parent = path.parent if str(path.parent) else Path(".")
            listing = sorted(p.name for p in parent.iterdir())[:20] if parent.is_dir() else []
            hint = f" Files in '{parent}': {', '.join(listing)}." if listing else ""
            raise ValueError(f"`--{arg_name}` file '{entry}' does not exist.{hint}")
    suffixes = {Path(f).suffix.lower() for f in files}
    unsupported = sorted(suffixes - set(formats))
    if unsupported:
        raise ValueError(
            f"`--{arg_name}` has files of unsupported type {', '.join(unsupported)}; use one of {', '.join(formats)}."
        )
    if len({".json" if s == ".jsonl" else s for s in suffixes}) > 1:
        raise ValueError(
            f"`--{arg_name}` mixes file types ({', '.join(sorted(suffixes))}); give each split files of one type."
        )
    return files


def check_encoding(files: list[str], encoding: str, arg_name: str) -> None:
    """Fail with the fix when a file does not decode, instead of a traceback deep inside `datasets`."""
    for file in files:
        if Path(file).suffix.lower() == ".parquet":
            continue
        with open(file, "rb") as f:
            sample = f.read(ENCODING_SAMPLE_BYTES)
        try:
            # final=False: a sample cut inside a multi-byte character is not an error
            codecs.getincrementaldecoder(encoding)().decode(sample, final=len(sample) < ENCODING_SAMPLE_BYTES)
        except UnicodeDecodeError as exc:
            raise ValueError(encoding_error_message(file, encoding, arg_name, exc)) from None


def encoding_error_message(file: str, encoding: str, arg_name: str, exc: UnicodeDecodeError) -> str:
    """The message for a file that is not in the expected encoding."""
    if encoding.lower().replace("-", "") == "utf8sig":
        encoding = "utf-8"  # what the user asked for; -sig is only how we read it
    suggestion = "--file_encoding gbk" if encoding.lower().replace("-", "") == "utf8" else ""
    fix = (
        f"If it is GBK/GB18030 (common for files saved by Excel or Windows tools in China), pass {suggestion}, "
        "or convert it: iconv -f gbk -t utf-8 in.csv > out.csv."
        if suggestion
        else "Pass the right --file_encoding, or convert the file to UTF-8."
    )
    return (
        f"`--{arg_name}` file '{file}' is not valid {encoding} "
        f"(byte 0x{exc.object[exc.start]:02x} at position {exc.start}). {fix}"
    )


def load_data_files(files: list[str], arg_name: str, encoding: str = "utf-8", cache_dir: str | None = None) -> Dataset:
    """Read files of one format into a Dataset; UTF-8 with or without a BOM, or the given encoding."""
    # utf-8-sig decodes plain UTF-8 too, and strips the BOM Windows tools put in front of the first column name
    encoding = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    check_encoding(files, encoding, arg_name)
    suffix = Path(files[0]).suffix.lower()
    builder = DATA_FORMATS[suffix]
    kwargs = {} if builder == "parquet" else {"encoding": encoding}
    if suffix == ".tsv":
        # plain TSV has no quoting: a quote character inside a text is just a character
        kwargs.update(sep="\t", quoting=3)
    try:
        return datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir, **kwargs)
    except Exception as exc:  # datasets wraps the real cause a few levels down
        cause = exc
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, UnicodeDecodeError):
            raise ValueError(encoding_error_message(files[0], encoding, arg_name, cause)) from None
        raise ValueError(
            f"Could not read `--{arg_name}` ({', '.join(files[:5])}{' ...' if len(files) > 5 else ''}): "
            f"{type(cause).__name__}: {cause}. Check that every file of this split is well-formed {suffix} with "
            "the same columns."
        ) from exc


def load_raw_datasets(data_args, training_args, cache_dir: str | None = None) -> DatasetDict:
    """Load the train / validation / test files that were given, carving validation from train if needed."""
    raw = DatasetDict()
    for split, arg_name in (("train", "train_file"), ("validation", "validation_file"), ("test", "test_file")):
        spec = getattr(data_args, arg_name)
        if spec:
            files = resolve_data_files(spec, arg_name)
            raw[split] = load_data_files(files, arg_name, data_args.file_encoding, cache_dir)
            logger.info("Loaded %d %s rows from %d file(s): %s", len(raw[split]), split, len(files), files[:3])
    wants_eval = training_args.do_eval or str(training_args.eval_strategy) not in ("no", "IntervalStrategy.NO")
    if wants_eval and "validation" not in raw and "train" in raw and data_args.validation_split_percentage > 0:
        raw["train"], raw["validation"] = carve_validation_split(
            raw["train"], data_args.validation_split_percentage, training_args.seed
        )
    return raw


def carve_validation_split(train: Dataset, percentage: int, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out `percentage`% of the training rows for evaluation; the two parts never share a row."""
    n_validation = max(1, round(len(train) * percentage / 100))
    if n_validation >= len(train):
        raise ValueError(
            f"Cannot hold out {percentage}% of {len(train)} training row(s) for evaluation and still train: "
            "pass --validation_file or a smaller --validation_split_percentage."
        )
    parts = train.train_test_split(test_size=n_validation, seed=seed, shuffle=True)
    logger.info(
        "No --validation_file: holding out %d of %d training rows (%d%%) for evaluation.",
        n_validation,
        len(train),
        percentage,
    )
    return parts["train"], parts["test"]


def find_column(dataset: Dataset, wanted: str | None, arg_name: str, candidates: Sequence[str], split: str) -> str:
    """Return the column the user named, or the first of `candidates` present; a clear error otherwise."""
    columns = dataset.column_names
    if wanted is not None:
        if wanted in columns:
            return wanted
        raise ValueError(
            f"`--{arg_name}` '{wanted}' is not a column of the {split} data; columns are: {', '.join(columns)}."
        )
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(
        f"Could not find the {split} data's column for `--{arg_name}` (looked for {', '.join(candidates)}); "
        f"columns are: {', '.join(columns)}. Pass --{arg_name} <column>."
    )


def is_blank(value) -> bool:
    """Missing or empty, as read from csv (None / NaN) or json (null / '')."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return not value.strip()
    return False


def drop_invalid_rows(
    dataset: Dataset, split: str, columns: Sequence[str], reason_of: Callable[[dict], str | None]
) -> Dataset:
    """Drop rows for which `reason_of(row)` names a problem; log how many were dropped for each reason."""
    keep, reasons, examples = [], Counter(), {}
    index = 0
    for batch in dataset.select_columns(list(columns)).iter(batch_size=10_000):
        for values in zip(*(batch[c] for c in columns)):
            reason = reason_of(dict(zip(columns, values)))
            if reason is None:
                keep.append(index)
            else:
                reasons[reason] += 1
                examples.setdefault(reason, []).append(index)
            index += 1
    for reason, count in reasons.items():
        rows = ", ".join(str(i) for i in examples[reason][:5])
        logger.warning(
            "Dropped %d of %d %s rows: %s (row numbers from 0: %s%s).",
            count,
            len(dataset),
            split,
            reason,
            rows,
            " ..." if count > 5 else "",
        )
    if not keep:
        raise ValueError(f"No usable row left in the {split} data: every row was dropped ({dict(reasons)}).")
    return dataset.select(keep) if reasons else dataset


def take_first(dataset: Dataset, max_samples: int | None) -> Dataset:
    """The first `max_samples` rows (all of them when None)."""
    return dataset if max_samples is None else dataset.select(range(min(max_samples, len(dataset))))


def resume_checkpoint(training_args) -> str | bool | None:
    """--resume_from_checkpoint as Trainer.train wants it: a path, True (newest in output_dir) or None."""
    from transformers.trainer_utils import get_last_checkpoint

    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() == "false":
        if training_args.do_train and os.path.isdir(training_args.output_dir):
            last = get_last_checkpoint(training_args.output_dir)
            if last is not None:
                logger.warning(
                    "output_dir already holds %s; training starts afresh and overwrites it. "
                    "Pass --resume_from_checkpoint True to continue from it instead.",
                    last,
                )
        return None
    return True if str(value).lower() == "true" else str(value)


def train_evaluate_predict(
    trainer,
    training_args,
    train_dataset: Dataset | None = None,
    eval_dataset: Dataset | None = None,
    predict_dataset: Dataset | None = None,
    after_eval: Callable[[dict], None] | None = None,
    after_predict: Callable[[object], None] | None = None,
) -> dict:
    """The stages after setup, in the same order in every script; returns all metrics (also in all_results.json).

    `after_eval(metrics)` may add task metrics (e.g. perplexity) or write reports; `after_predict(output)` writes
    the task's predictions file from `trainer.predict`'s output.
    """
    results = {}
    if training_args.do_train:
        outcome = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
        trainer.save_model()
        metrics = dict(outcome.metrics)
        if hasattr(train_dataset, "__len__"):  # a streamed (iterable) dataset has no length
            metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        if trainer.is_world_process_zero():
            plot_loss_curve(trainer.state.log_history, Path(training_args.output_dir) / "training_loss.png")
        results.update(metrics)
    if training_args.do_eval and eval_dataset is not None:
        metrics = trainer.evaluate(eval_dataset=eval_dataset)
        metrics["eval_samples"] = len(eval_dataset)
        if after_eval is not None:
            after_eval(metrics)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(metrics)
    if training_args.do_predict and predict_dataset is not None:
        output = trainer.predict(predict_dataset, metric_key_prefix="predict")
        metrics = dict(output.metrics, predict_samples=len(predict_dataset))
        if after_predict is not None and trainer.is_world_process_zero():
            after_predict(output)
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
        results.update(metrics)
    return results


def plot_loss_curve(log_history: list[dict], path: Path) -> None:
    """Train and eval loss against the global step, as a PNG next to the checkpoints."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training servers
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    if not train and not evals:
        logger.info("No loss was logged (raise the run length or lower --logging_steps); no loss plot written.")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    logger.info("Loss curve written to %s", path)


def write_json(path: str | Path, obj) -> None:
    """UTF-8 JSON that keeps Chinese readable."""
    Path(path).write_text(json.dumps(obj, ensure_ascii=False, indent=2), encoding="utf-8")


def apply_lora(model, finetuning_args, task_type: str):
    """Wrap `model` with LoRA adapters (peft); only the adapters train. task_type: CAUSAL_LM or SEQ_2_SEQ_LM."""
    from peft import LoraConfig, get_peft_model

    targets = finetuning_args.lora_target
    if targets == ["all"]:
        targets = "all-linear"  # every linear layer except the output head
    elif targets == ["default"]:
        targets = None  # peft's per-architecture default (e.g. q_proj, v_proj)
    else:
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in targets if t not in names]
        if missing:
            linear = sorted(
                {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ in ("Linear", "Conv1D")}
            )
            raise ValueError(
                f"`--lora_target` {', '.join(missing)} is not a module of this model; its linear layers are: "
                f"{', '.join(linear)} (or use 'all')."
            )
    config = LoraConfig(
        task_type=task_type,
        r=finetuning_args.lora_rank,
        lora_alpha=finetuning_args.lora_alpha,
        lora_dropout=finetuning_args.lora_dropout,
        target_modules=targets,
    )
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA: training %d of %d parameters (%.2f%%)", trainable, total, 100 * trainable / total)
    return model


class FileOrderEvaluation:
    """Trainer mixin: evaluation and prediction batches follow the data file's row order.

    transformers 5 applies `train_sampling_strategy=group_by_length` to evaluation as well, which reorders the
    predictions; a predictions file must line up with the rows it was made from.
    """

    def _get_eval_sampler(self, eval_dataset):
        if eval_dataset is None or not hasattr(eval_dataset, "__len__"):
            return None
        return torch.utils.data.SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

"""The mechanics every script shares: data files in, logging, the train/evaluate/predict tail out.

Task logic (prompt building, label maps, image transforms) stays in the scripts; this module only
holds what would otherwise be copied into all five of them.
"""

import codecs
import glob
import hashlib
import json
import logging
import math
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
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


def setup_run(training_args, model_parallel: bool = False) -> None:
    """Logging (INFO on the main process, WARNING elsewhere, one format for all libraries) and the seed.

    Called right after the arguments are validated: it also refuses a single process on several GPUs
    (DataParallel) unless `model_parallel`, and ends a dry run (DRY_RUN=1) here, before any data is read.
    """
    refuse_data_parallel(training_args, model_parallel)
    end_dry_run()
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


def limit_samples(raw: DatasetDict, data_args) -> None:
    """Apply --max_train_samples / --max_eval_samples / --max_predict_samples to the splits present."""
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_predict_samples,
    }
    for split, limit in limits.items():
        if split in raw:
            raw[split] = take_first(raw[split], limit)


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
    fill_deepspeed_hidden_size(trainer)
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


# ---------------------------------------------------------------------------------------------------------------
# Images: image-text data files, the check before training, fast loading.
# Shared by run_clip.py and run_image_captioning.py (same --image_column / --caption_column / --image_root).
# ---------------------------------------------------------------------------------------------------------------

IMAGE_CHECK_CHUNK = 2000  # images per progress line and per cache save, so an interrupted check keeps its work
SKIPPED_IMAGES_FILE = "skipped_images.txt"


def to_rgb(image):
    """Any PIL image as 8-bit RGB: grayscale, CMYK, palette, 16-bit and transparent ones (composited on white)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        # 16/32-bit grayscale (PNG, TIFF): convert("RGB") would clip everything above 255 to white
        array = np.asarray(image, dtype=np.float64)
        scale = 1 / 257 if image.mode.startswith("I") and array.max() > 255 else (255 if array.max() <= 1 else 1)
        array = np.clip(array * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # dropping alpha leaves whatever colour the transparent pixels happen to store (often black)
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        background.alpha_composite(image.convert("RGBA"))
        return background.convert("RGB")
    return image.convert("RGB")


def open_image(path: str | Path, target_size: int | None = None):
    """Decode an image file completely into RGB.

    With `target_size`, JPEGs are decoded straight at the smallest 1/2, 1/4 or 1/8 scale that keeps both sides
    at least `target_size` pixels (libjpeg DCT scaling): several times faster on photos much larger than the
    model's input, and still a full read of the file, so a truncated JPEG fails here as it should.
    """
    from PIL import Image

    # our own file handle: Image.close() (or a `with Image.open`) would free the decoded pixels as well
    with open(path, "rb") as f:
        image = Image.open(f)
        if target_size:
            image.draft("RGB", (target_size, target_size))
        image.load()
    return to_rgb(image)


def image_target_size(image_processor) -> int | None:
    """The largest side (pixels) the image processor resizes or crops to; None when it does not resize."""
    sizes = []
    for attribute in ("size", "crop_size"):
        value = getattr(image_processor, attribute, None)
        if value is None:
            continue
        if isinstance(value, int):
            sizes.append(value)
            continue
        for key in ("shortest_edge", "height", "width", "longest_edge"):
            side = value.get(key) if hasattr(value, "get") else getattr(value, key, None)
            if side:
                sizes.append(int(side))
    return max(sizes) if sizes else None


def image_problem(path: str | Path, target_size: int | None = None) -> str | None:
    """Why the image at `path` cannot be used (missing, empty, truncated, corrupt...), or None when it decodes."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not path.is_file():
        return "not a file"
    if stat.st_size == 0:
        return "empty file (0 bytes)"
    try:
        open_image(path, target_size)
    except UnidentifiedImageError:
        return "not an image (unknown format or corrupt header)"
    except Image.DecompressionBombError as exc:
        return f"too large ({exc})"
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error... for broken files
        message = str(exc)
        return "truncated" if "truncat" in message.lower() else f"corrupt ({type(exc).__name__}: {message[:120]})"
    return None


def resized_cache_file(image_cache_dir: str | Path, path: str | Path, stat: os.stat_result, target_size: int) -> Path:
    """Where the pre-resized copy of `path` lives; its name changes when the original file changes."""
    key = hashlib.sha1(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    return Path(image_cache_dir) / f"{target_size}px" / key[:2] / f"{key}.jpg"


def write_resized(path: str | Path, target: Path, target_size: int) -> None:
    """Save `path` as a JPEG whose shorter side is `target_size` (never enlarged), atomically."""
    from PIL import Image

    image = open_image(path, target_size)
    scale = target_size / min(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    image.save(partial, format="JPEG", quality=95)
    os.replace(partial, target)


def _check_one(path: str, target_size: int | None, image_cache_dir: str | None) -> tuple[str | None, str]:
    """(problem or None, file to load) for one image; writes its pre-resized copy when a cache dir is given."""
    problem = image_problem(path, target_size)
    if problem is not None or not image_cache_dir or not target_size:
        return problem, path
    target = resized_cache_file(image_cache_dir, path, os.stat(path), target_size)
    if not target.exists():
        write_resized(path, target, target_size)
    return None, str(target)


class ImageCheckCache:
    """Check results of earlier runs, one small JSON file per image directory.

    An entry is reused while the image's size and modification time are unchanged, so a second run (or the
    other ranks of a distributed run) only stats the files instead of decoding them again.
    """

    def __init__(self, root: Path):
        self.root = root
        self.entries: dict[str, dict] = {}  # directory -> {file name: [size, mtime_ns, problem]}
        self.dirty: set[str] = set()

    def _file_of(self, directory: str) -> Path:
        return self.root / f"{hashlib.sha1(directory.encode()).hexdigest()[:20]}.json"

    def _directory(self, directory: str) -> dict:
        if directory not in self.entries:
            cache_file = self._file_of(directory)
            try:
                self.entries[directory] = json.loads(cache_file.read_text(encoding="utf-8"))["files"]
            except (OSError, ValueError, KeyError):
                self.entries[directory] = {}
        return self.entries[directory]

    def get(self, path: str, stat: os.stat_result) -> tuple[bool, str | None]:
        directory, name = os.path.split(path)
        entry = self._directory(directory).get(name)
        if entry is not None and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return True, entry[2]
        return False, None

    def put(self, path: str, stat: os.stat_result, problem: str | None) -> None:
        directory, name = os.path.split(path)
        self._directory(directory)[name] = [stat.st_size, stat.st_mtime_ns, problem]
        self.dirty.add(directory)

    def save(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for directory in self.dirty:
                cache_file = self._file_of(directory)
                partial = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.part")
                partial.write_text(json.dumps({"directory": directory, "files": self.entries[directory]}), "utf-8")
                os.replace(partial, cache_file)
        except OSError as exc:  # a read-only cache location must not stop training
            logger.warning("Could not save the image check cache in %s: %s", self.root, exc)
        self.dirty.clear()


def check_images(
    paths: Sequence[str],
    target_size: int | None = None,
    image_cache_dir: str | None = None,
    check_cache_dir: str | Path | None = None,
    num_workers: int | None = None,
) -> dict[str, tuple[str | None, str]]:
    """Decode every image once, in parallel, and return {path: (problem or None, file to load)}.

    Threads are enough for parallelism: PIL releases the GIL while it decodes. With `image_cache_dir` every good
    image is also stored at `target_size` (shorter side) and the file to load is that small copy. Results are
    cached in `check_cache_dir` (default: `image_cache_dir`/checks, else the datasets cache) for later runs.
    """
    if check_cache_dir is None:
        check_cache_dir = (
            Path(image_cache_dir) / "checks"
            if image_cache_dir
            else Path(datasets.config.HF_DATASETS_CACHE) / "image_checks"
        )
    cache = ImageCheckCache(Path(check_cache_dir))
    results: dict[str, tuple[str | None, str]] = {}
    todo = []
    for path in dict.fromkeys(paths):
        try:
            stat = os.stat(path)
        except OSError:
            results[path] = (image_problem(path), path)  # missing or unreadable: nothing to cache
            continue
        known, problem = cache.get(path, stat)
        if known and problem is None and image_cache_dir and target_size:
            resized = resized_cache_file(image_cache_dir, path, stat, target_size)
            if resized.exists():
                results[path] = (None, str(resized))
                continue
        elif known:
            results[path] = (problem, path)
            continue
        todo.append((path, stat))
    if not todo:
        logger.info("Image check: all %d images known from the cache in %s", len(results), cache.root)
        return results

    workers = max(1, num_workers or min(32, os.cpu_count() or 1))
    logger.info(
        "Image check: decoding %d images with %d threads (%d known from earlier runs)%s",
        len(todo),
        workers,
        len(results),
        f"; writing {target_size}px copies to {image_cache_dir}" if image_cache_dir and target_size else "",
    )
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for begin in range(0, len(todo), IMAGE_CHECK_CHUNK):
            chunk = todo[begin : begin + IMAGE_CHECK_CHUNK]
            checked = pool.map(lambda item: _check_one(item[0], target_size, image_cache_dir), chunk)
            for (path, stat), (problem, file) in zip(chunk, checked):
                results[path] = (problem, file)
                cache.put(path, stat, problem)
            cache.save()
            done = begin + len(chunk)
            if len(todo) > IMAGE_CHECK_CHUNK:
                rate = done / max(time.perf_counter() - start, 1e-9)
                logger.info("Image check: %d / %d images (%.0f images/s)", done, len(todo), rate)
    return results


def resolve_image_file(value: str, bases: Sequence[Path]) -> str:
    """An image path from the data as a file path: absolute as is, relative under the first base that has it."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    for base in bases:
        if (base / path).exists():
            return str(base / path)
    return str(bases[0] / path)


def captions_of(value) -> list[str]:
    """The non-empty captions in a caption cell: one string, or a list of them (several captions per image)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [str(v).strip() for v in values if not is_blank(v)]


def load_image_text_datasets(
    data_args,
    image_args,
    training_args,
    target_size: int | None,
    cache_dir: str | None = None,
    captions_optional: Sequence[str] = (),
) -> DatasetDict:
    """Load image-caption files, check every image, and return one row per (image, caption) pair.

    Each split gets the columns `image_path` (as written in the data), `image_file` (the file to load: the image,
    or its pre-resized copy), `caption` (None in `captions_optional` splits without a caption column) and
    `image_index` (the same number for every caption of one image, counted per split). Several captions per
    image come as several rows, or as a list in one cell. Relative image paths are resolved against
    --image_root, or else the folder of the data file. Rows without an image path or caption and rows whose
    image is missing or broken are dropped, counted in the log; broken images are listed in
    output_dir/skipped_images.txt. Without --validation_file, a --validation_split_percentage share of the
    training *images* (with all their captions) is held out, so no image is in both splits.
    """
    pairs: dict[str, dict[str, list]] = {}
    for split, arg_name in (("train", "train_file"), ("validation", "validation_file"), ("test", "test_file")):
        spec = getattr(data_args, arg_name)
        if not spec:
            continue
        files = resolve_data_files(spec, arg_name)
        raw = load_data_files(files, arg_name, data_args.file_encoding, cache_dir)
        logger.info("Loaded %d %s rows from %d file(s): %s", len(raw), split, len(files), files[:3])
        if image_args.image_root:
            bases = [Path(image_args.image_root).expanduser()]
        else:
            bases = list(dict.fromkeys(Path(f).resolve().parent for f in files))
        image_column = find_column(raw, image_args.image_column, "image_column", (), split)
        caption_column = image_args.caption_column
        if caption_column not in raw.column_names and split in captions_optional:
            caption_column = None
        elif caption_column not in raw.column_names:
            find_column(raw, caption_column, "caption_column", (), split)  # raises, listing the columns
        columns = [image_column] + ([caption_column] if caption_column else [])

        def drop_reason(row, image_column=image_column, caption_column=caption_column, split=split):
            value = row[image_column]
            if is_blank(value):
                return f"empty or missing image path (--image_column {image_column})"
            if not isinstance(value, str):
                raise ValueError(
                    f"`--image_column` '{image_column}' of the {split} data must hold image file paths, but a row "
                    f"holds {type(value).__name__}: {str(value)[:80]}. Export the images to files and write their "
                    "paths in this column."
                )
            if caption_column and not captions_of(row[caption_column]):
                return f"empty or missing caption (--caption_column {caption_column})"
            return None

        raw = drop_invalid_rows(raw, split, columns, drop_reason)
        table = {"image_path": [], "image_file": [], "caption": []}
        images = raw[image_column]
        captions = raw[caption_column] if caption_column else [None] * len(images)
        for image, caption in zip(images, captions):
            file = resolve_image_file(image.strip(), bases)
            for text in captions_of(caption) if caption_column else [None]:
                table["image_path"].append(image.strip())
                table["image_file"].append(file)
                table["caption"].append(text)
        pairs[split] = table

    wants_eval = training_args.do_eval or str(training_args.eval_strategy) not in ("no", "IntervalStrategy.NO")
    if wants_eval and "validation" not in pairs and "train" in pairs and data_args.validation_split_percentage > 0:
        pairs["train"], pairs["validation"] = _hold_out_images(
            pairs["train"], data_args.validation_split_percentage, training_args.seed
        )
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    limits["test"] = data_args.max_predict_samples
    for split, table in pairs.items():
        if limits[split] is not None:
            pairs[split] = {k: v[: limits[split]] for k, v in table.items()}

    all_files = [f for table in pairs.values() for f in table["image_file"]]
    checks = check_images(
        all_files,
        target_size=target_size,
        image_cache_dir=image_args.image_cache_dir,
        check_cache_dir=Path(cache_dir) / "image_checks" if cache_dir and not image_args.image_cache_dir else None,
        num_workers=data_args.preprocessing_num_workers,
    )
    result, skipped = DatasetDict(), []
    for split, table in pairs.items():
        keep, dropped_rows = [], Counter()
        for row, file in enumerate(table["image_file"]):
            problem = checks[file][0]
            if problem is None:
                keep.append(row)
            else:
                dropped_rows[(table["image_path"][row], file, problem)] += 1
        for (image_path, file, problem), rows in dropped_rows.items():
            skipped.append((split, image_path, file, problem, rows))
        if dropped_rows:
            kinds = Counter(problem.split(" (")[0] for (_, _, problem) in dropped_rows)
            logger.warning(
                "Skipped %d of %d %s images (%d rows): %s. They are listed in %s.",
                len(dropped_rows),
                len(set(table["image_file"])),
                split,
                sum(dropped_rows.values()),
                ", ".join(f"{count} {kind}" for kind, count in kinds.most_common()),
                Path(training_args.output_dir) / SKIPPED_IMAGES_FILE,
            )
        if not keep:
            raise ValueError(
                f"No usable image in the {split} data: all {len(table['image_file'])} rows point at missing or "
                f"broken images (first: '{table['image_file'][0] if table['image_file'] else ''}'). Check "
                "--image_root (relative paths are resolved against it, or else the data file's folder)."
            )
        index_of: dict[str, int] = {}
        columns = {
            "image_path": [table["image_path"][r] for r in keep],
            "image_file": [checks[table["image_file"][r]][1] for r in keep],
            "caption": [table["caption"][r] for r in keep],
        }
        columns["image_index"] = [index_of.setdefault(f, len(index_of)) for f in columns["image_file"]]
        result[split] = Dataset.from_dict(columns)
        logger.info("%s: %d image-caption rows, %d images", split, len(keep), len(index_of))
    write_skipped_images(skipped, training_args)
    return result


def _hold_out_images(table: dict, percentage: int, seed: int) -> tuple[dict, dict]:
    """Split rows into train / validation by image, so all captions of an image land on the same side."""
    images = list(dict.fromkeys(table["image_file"]))
    if len(images) < 2:
        raise ValueError(
            "The training data has only one image: cannot hold out a validation split. Pass --validation_file."
        )
    n_validation = max(1, round(len(images) * percentage / 100))
    held_out = set(random.Random(seed).sample(images, n_validation))
    logger.info(
        "No --validation_file: holding out %d of %d training images (%d%%, with all their captions) for evaluation.",
        n_validation,
        len(images),
        percentage,
    )
    split = ({k: [] for k in table}, {k: [] for k in table})
    for row, file in enumerate(table["image_file"]):
        side = split[1] if file in held_out else split[0]
        for key in table:
            side[key].append(table[key][row])
    return split


def write_skipped_images(skipped: list[tuple], training_args) -> None:
    """List every skipped image in output_dir/skipped_images.txt (tab-separated), or remove a stale list."""
    if not training_args.should_save:
        return
    report = Path(training_args.output_dir) / SKIPPED_IMAGES_FILE
    if not skipped:
        report.unlink(missing_ok=True)
        return
    report.parent.mkdir(parents=True, exist_ok=True)
    lines = ["split\timage_path\tfile\tproblem\trows"]
    lines += ["\t".join(str(v) for v in entry) for entry in skipped]
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")


def refuse_data_parallel(training_args, model_parallel: bool = False) -> None:
    """Refuse a plain `python run_x.py` that sees several GPUs, and print the torchrun command instead.

    The Trainer would wrap the model in torch DataParallel: slower than DDP, every batch gathered on GPU 0
    (a common OOM). `model_parallel` (run_seq2seq_ptuning.py --model_parallel_mode) is the one intended
    single-process use of several GPUs.
    """
    gpus = torch.cuda.device_count()
    launched = any(name in os.environ for name in ("WORLD_SIZE", "LOCAL_RANK"))
    if gpus < 2 or launched or model_parallel or training_args.use_cpu or training_args.deepspeed:
        return
    import shlex

    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "run_x.py"
    torchrun = shlex.join(["torchrun", "--nproc_per_node", str(gpus), script, *sys.argv[1:]])
    raise ValueError(
        f"{gpus} GPUs are visible to this single process, which would train them with DataParallel (slow, and "
        f"GPU 0 runs out of memory first). Start one process per GPU:\n  {torchrun}\n"
        f"or train on one GPU: CUDA_VISIBLE_DEVICES=0 python {shlex.join([script, *sys.argv[1:]])}\n"
        "(run_seq2seq_ptuning.py can also spread one large model over the GPUs: --model_parallel_mode)."
    )


def end_dry_run() -> None:
    """DRY_RUN=1: the arguments were parsed (and printed by parse_args) and validated; stop before any data."""
    from arguments import dry_run_requested

    if dry_run_requested():
        print("DRY_RUN: the arguments are valid; exiting before loading data or models.")
        raise SystemExit(0)


def fill_deepspeed_hidden_size(trainer) -> None:
    """Fill DeepSpeed's hidden-size based "auto" values for models whose config has no top-level hidden_size.

    transformers sizes ZeRO buckets from `config.hidden_size` (or text_config's) and raises for a
    vision-encoder-decoder (encoder / decoder sub-configs); this uses the largest sub-config hidden size,
    with transformers' own formulas, before `deepspeed_init` asks.
    """
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    hf_config = getattr(plugin, "hf_ds_config", None)
    config = getattr(trainer.model, "config", None)
    if hf_config is None or config is None or hasattr(config, "hidden_size") or hasattr(config, "hidden_sizes"):
        return
    sizes = []
    for name in ("text_config", "vision_config", "encoder", "decoder"):
        sub = getattr(config, name, None)
        size = getattr(sub, "hidden_size", None) or max(getattr(sub, "hidden_sizes", None) or [0])
        if size:
            sizes.append(size)
    if not sizes:
        return  # transformers raises its own error naming the keys to set
    hidden = max(sizes)
    hf_config.fill_only("zero_optimization.reduce_bucket_size", hidden * hidden)
    if hf_config.is_zero3():
        hf_config.fill_only("zero_optimization.stage3_prefetch_bucket_size", int(0.9 * hidden * hidden))
        hf_config.fill_only("zero_optimization.stage3_param_persistence_threshold", 10 * hidden)


def load_image_processor(path: str, arg_name: str, hub_kwargs: dict):
    """The image processor saved with a vision model; a clear error when the checkpoint has none."""
    try:
        # the PIL backend: the one that works without torchvision, and the same pixels on every machine
        return transformers.AutoImageProcessor.from_pretrained(path, backend="pil", **hub_kwargs)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"--{arg_name} '{path}' has no image processor (preprocessor_config.json) to turn images into pixel "
            f"values: {exc}. Use a vision checkpoint that ships one (every ViT / CLIP on the hub does), or save "
            "one next to the weights with ViTImageProcessor(...).save_pretrained(dir)."
        ) from None

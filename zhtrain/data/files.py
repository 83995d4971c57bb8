"""Data files in: formats, globs and directories, encodings, streaming, splits, columns, dirty rows, sample limits.

Every script reads its --train_file / --validation_file / --test_file through this module, so a new file
format or a new check on rows is added here once. Nothing here knows about a task: a script says which
columns it needs and why a row is unusable.
"""

from __future__ import annotations  # the `datasets` types in signatures are imported only for type checkers

import codecs
import csv
import glob
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zhtrain.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict, IterableDataset

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
DIAGNOSE_BYTES = 1 << 30  # after a reading error, files are scanned for its line up to here
SPLIT_ARGUMENTS = (("train", "train_file"), ("validation", "validation_file"), ("test", "test_file"))


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
                raise UserError(f"`--{arg_name}` directory '{entry}' holds no data file ({', '.join(formats)}).")
            files += found
        elif any(ch in entry for ch in "*?["):
            found = sorted(p for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not found:
                raise UserError(f"`--{arg_name}` pattern '{entry}' matches no file.")
            files += found
        elif path.is_file():
            files.append(str(path))
        else:
            parent = path.parent if str(path.parent) else Path(".")
            listing = sorted(p.name for p in parent.iterdir())[:20] if parent.is_dir() else []
            hint = f" Files in '{parent}': {', '.join(listing)}." if listing else ""
            raise UserError(f"`--{arg_name}` file '{entry}' does not exist.{hint}")
    suffixes = {Path(f).suffix.lower() for f in files}
    unsupported = sorted(suffixes - set(formats))
    if unsupported:
        raise UserError(
            f"`--{arg_name}` has files of unsupported type {', '.join(unsupported)}; use one of {', '.join(formats)}."
        )
    if len({".json" if s == ".jsonl" else s for s in suffixes}) > 1:
        raise UserError(
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
            raise UserError(encoding_error_message(file, encoding, arg_name, exc)) from None


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


def reader_settings(files: list[str], encoding: str) -> tuple[str, dict]:
    """The `datasets` builder for these files and its keyword arguments (encoding, TSV without quoting)."""
    suffix = Path(files[0]).suffix.lower()
    builder = DATA_FORMATS[suffix]
    kwargs = {} if builder == "parquet" else {"encoding": encoding}
    if suffix == ".tsv":
        # plain TSV has no quoting: a quote character inside a text is just a character
        kwargs.update(sep="\t", quoting=3)
    return builder, kwargs


def reading_encoding(encoding: str) -> str:
    """utf-8-sig for UTF-8: it decodes plain UTF-8 too, and strips the BOM Windows tools put before the header."""
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


def read_error(exc: Exception, files: list[str], arg_name: str, encoding: str) -> UserError:
    """A UserError naming the file (and line or row) and the fix, for a failure of `datasets` while reading files.

    The library's messages rarely say which file or line ("Trailing data", "row 20" of some block), so the files
    are read again here to find the first problem; the library's message is the fallback.
    """
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:  # datasets wraps the real cause
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, UnicodeDecodeError):
        return UserError(encoding_error_message(files[0], encoding, arg_name, cause))
    return UserError(files_problem(files, arg_name, encoding) or library_read_error(cause, files, arg_name))


def library_read_error(cause: Exception, files: list[str], arg_name: str) -> str:
    shown = ", ".join(files[:5]) + (" ..." if len(files) > 5 else "")
    return (
        f"Could not read `--{arg_name}` ({shown}): {type(cause).__name__}: {str(cause).rstrip('.')}. Check that every file of this "
        f"split is well-formed {Path(files[0]).suffix.lower()} with the same columns."
    )


def files_problem(files: list[str], arg_name: str, encoding: str) -> str | None:
    """The first problem in a split's files (see `file_problem`), or files whose columns differ; None if none found."""
    first_columns = None
    for file in files:
        problem, columns = file_problem(file, reading_encoding(encoding))
        if problem:
            return f"`--{arg_name}` file '{file}' {problem}"
        if first_columns is None:
            first_columns = (file, columns)
        elif columns is not None and first_columns[1] is not None and set(columns) != set(first_columns[1]):
            return (
                f"`--{arg_name}` file '{file}' has the columns {', '.join(columns)}, but '{first_columns[0]}' has "
                f"{', '.join(first_columns[1])}: every file of a split needs the same columns."
            )
    return None


def file_problem(file: str, encoding: str) -> tuple[str | None, list[str] | None]:
    """(what is wrong with one data file, with its line or row and the fix, or None; its column names if known)."""
    if os.path.getsize(file) == 0:
        return "is empty (0 bytes). Remove it, or write rows into it.", None
    suffix = Path(file).suffix.lower()
    if suffix not in (".csv", ".tsv", ".json", ".jsonl"):
        return None, None
    with open(file, encoding=encoding, newline="" if suffix in (".csv", ".tsv") else None) as f:
        if suffix in (".csv", ".tsv"):
            return csv_problem(f, suffix == ".tsv")
        return json_problem(f)


def csv_problem(f, tsv: bool) -> tuple[str | None, list[str] | None]:
    """An unclosed quote, a row with more fields than the header, or a header without rows (line numbers from 1)."""
    scanned = {"chars": 0}
    lines = lines_up_to(f, DIAGNOSE_BYTES, scanned)
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(lines, strict=True)
    header, rows, start = None, 0, 1
    try:
        for row in reader:
            if header is None:
                header = row
            elif any(cell.strip() for cell in row):
                rows += 1
                if len(row) > len(header):
                    return (
                        f"line {start} has {len(row)} fields but the header has {len(header)} "
                        f"({', '.join(header)}). "
                        + (
                            "A tab inside a text splits it: replace it with a space."
                            if tsv
                            else 'A comma inside a text must be in quotes: "a, b".'
                        ),
                        header,
                    )
            start = reader.line_num + 1
    except csv.Error:
        if scanned["chars"] > DIAGNOSE_BYTES:  # the scan stopped inside a quoted text, not the file
            return None, header
        return (
            f'has a quote (") opened at line {start} that is never closed. Close it; write a quote inside a '
            'quoted text twice (""); or, if quotes are plain characters in your texts, save the file as .tsv '
            "(read without quoting).",
            header,
        )
    if header is not None and rows == 0:
        return f"has a header row ({', '.join(header)}) and no data rows. Add rows below the header.", header
    return None, header


def lines_up_to(f, limit: int, scanned: dict):
    """The lines of `f` until `limit` characters were read; `scanned["chars"]` counts them."""
    for line in f:
        scanned["chars"] += len(line)
        if scanned["chars"] > limit:
            return
        yield line


def json_problem(f) -> tuple[str | None, list[str] | None]:
    """Bad JSON (with its line), a cut-off file, a row that is no object, or a column whose type changes."""
    text = f.read(DIAGNOSE_BYTES)
    stripped = text.lstrip()
    if not stripped:
        return "holds only blank lines. Write one JSON object per line.", None
    if stripped[0] in "[{":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if stripped[0] == "[":
                cut = exc.msg.startswith("Unterminated") or exc.pos >= len(text.rstrip()) - 1
                return (
                    f"is not valid JSON: {exc.msg.removesuffix(' at')} at line {exc.lineno}, column {exc.colno}."
                    + (" The file ends in the middle of a row: it looks cut off (truncated)." if cut else ""),
                    None,
                )
        else:
            if isinstance(value, dict) and "\n" in text.strip():
                return (
                    "holds one JSON object. Give a JSON array of rows ([{...}, {...}]) or JSON lines (one object "
                    "per line).",
                    list(value),
                )
            if isinstance(value, dict):  # one JSON line
                return rows_problem([value], ["line 1"])
            return rows_problem(value, [f"row {i} (counted from 0)" for i in range(len(value))])
    rows, places = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            return (
                f"line {number} is not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno}): {line[:80]}",
                None,
            )
        places.append(f"line {number}")
    return rows_problem(rows, places)


def rows_problem(rows: list, places: list[str]) -> tuple[str | None, list[str] | None]:
    """A row that is not an object, or a column holding a string in one row and a number (list...) in another."""
    kinds, columns = {}, None
    for row, place in zip(rows, places):
        if not isinstance(row, dict):
            return f"{place} is a JSON {type(row).__name__}, not an object with column names: {str(row)[:80]}", None
        columns = columns or list(row)
        for key, value in row.items():
            kind = json_kind(value)
            if kind is None:
                continue
            first = kinds.setdefault(key, (kind, place))
            if first[0] != kind:
                return (
                    f"{place}: `{key}` is a {kind} ({json.dumps(value, ensure_ascii=False)[:40]}), but a {first[0]} "
                    f"on {first[1]}. Give a column one type in every row (quote numbers meant as text).",
                    columns,
                )
    return None, columns


def json_kind(value) -> str | None:
    """The JSON type of a value as a word (None for null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}[type(value)]


def load_data_files(files: list[str], arg_name: str, encoding: str = "utf-8", cache_dir: str | None = None) -> Dataset:
    """Read files of one format into a Dataset; UTF-8 with or without a BOM, or the given encoding."""
    import datasets  # here, not at the top: serve.py uses this module's small helpers and never reads files

    encoding = reading_encoding(encoding)
    check_encoding(files, encoding, arg_name)
    builder, kwargs = reader_settings(files, encoding)
    try:
        return datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir, **kwargs)
    except Exception as exc:
        raise read_error(exc, files, arg_name, encoding) from exc


def open_data_stream(files: list[str], arg_name: str, encoding: str = "utf-8") -> IterableDataset:
    """The rows of the files as a lazily read stream (nothing is converted or copied to disk).

    Reading errors surface while iterating: wrap the loop in `except Exception` and raise `read_error`.
    """
    import datasets

    encoding = reading_encoding(encoding)
    check_encoding(files, encoding, arg_name)
    builder, kwargs = reader_settings(files, encoding)
    return datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **kwargs)


def stream_columns(files: list[str], arg_name: str, encoding: str = "utf-8") -> list[str]:
    """The column names of the files, from their first row (streamed txt files have no schema until one is read)."""
    try:
        first = next(iter(open_data_stream(files, arg_name, encoding).take(1)), None)
    except UserError:
        raise
    except Exception as exc:  # datasets / pyarrow parse errors
        raise read_error(exc, files, arg_name, encoding) from exc
    if first is None:
        problem = files_problem(files, arg_name, encoding)
        raise UserError(problem or f"`--{arg_name}` ({', '.join(files[:3])}) holds no rows.")
    return list(first)


def wants_evaluation(training_args) -> bool:
    """--do_eval, or an evaluation strategy that evaluates while training."""
    return training_args.do_eval or str(training_args.eval_strategy) not in ("no", "IntervalStrategy.NO")


def needs_validation_split(splits, data_args, training_args) -> bool:
    """Evaluation is wanted, there is training data but no --validation_file: part of train is held out."""
    wanted = wants_evaluation(training_args) and data_args.validation_split_percentage > 0
    return wanted and "validation" not in splits and "train" in splits


def load_raw_datasets(data_args, training_args, cache_dir: str | None = None) -> DatasetDict:
    """Load the train / validation / test files that were given, carving validation from train if needed."""
    from datasets import DatasetDict

    raw = DatasetDict()
    for split, arg_name in SPLIT_ARGUMENTS:
        spec = getattr(data_args, arg_name)
        if spec:
            files = resolve_data_files(spec, arg_name)
            raw[split] = load_data_files(files, arg_name, data_args.file_encoding, cache_dir)
            logger.info("Loaded %d %s rows from %d file(s): %s", len(raw[split]), split, len(files), files[:3])
    if needs_validation_split(raw, data_args, training_args):
        raw["train"], raw["validation"] = carve_validation_split(
            raw["train"], data_args.validation_split_percentage, training_args.seed
        )
    return raw


def carve_validation_split(train: Dataset, percentage: int, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out `percentage`% of the training rows for evaluation; the two parts never share a row."""
    n_validation = max(1, round(len(train) * percentage / 100))
    if n_validation >= len(train):
        raise UserError(
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
            return check_one_type(dataset, wanted, arg_name, split)
        raise UserError(
            f"`--{arg_name}` '{wanted}' is not a column of the {split} data; columns are: {', '.join(columns)}."
        )
    for name in candidates:
        if name in columns:
            return check_one_type(dataset, name, arg_name, split)
    raise UserError(
        f"Could not find the {split} data's column for `--{arg_name}` (looked for {', '.join(candidates)}); "
        f"columns are: {', '.join(columns)}. Pass --{arg_name} <column>."
    )


def check_one_type(dataset, column: str, arg_name: str, split: str) -> str:
    """The column, when its values have one JSON type; datasets reads mixed ones (`"好"`, `["坏"]`) as Json values."""
    feature = getattr(dataset, "features", {}).get(column)
    if type(feature).__name__ != "Json":
        return column
    first = None
    for row, value in enumerate(dataset[column]):
        kind = json_kind(value)
        if kind is not None and first is None:
            first = (kind, row)
        elif kind is not None and kind != first[0]:
            raise UserError(
                f"`--{arg_name}` column '{column}' of the {split} data holds a {kind} in row {row} "
                f"({json.dumps(value, ensure_ascii=False)[:40]}) but a {first[0]} in row {first[1]} (rows counted "
                "from 0). Give the column one type in every row (quote numbers meant as text)."
            )
    return column


def is_blank(value) -> bool:
    """Missing or empty, as read from csv (None / NaN) or json (null / '').

    >>> [is_blank(v) for v in (None, float("nan"), "  ", "文本", 0)]
    [True, True, True, False, False]
    """
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
        first = min(examples.values(), key=lambda rows: rows[0])[0]
        reason = next(r for r, rows in examples.items() if rows[0] == first)
        raise UserError(
            f"No usable row left in the {split} data: every row was dropped ({dict(reasons)}). The first, row "
            f"{first} (counted from 0), has: {reason}."
        )
    return dataset.select(keep) if reasons else dataset


def take_first(dataset: Dataset, max_samples: int | None) -> Dataset:
    """The first `max_samples` rows (all of them when None)."""
    return dataset if max_samples is None else dataset.select(range(min(max_samples, len(dataset))))


def sample_limits(data_args) -> dict[str, int | None]:
    """--max_train_samples / --max_eval_samples / --max_predict_samples by split."""
    return {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_predict_samples,
    }


def limit_samples(raw: DatasetDict, data_args) -> None:
    """Apply --max_train_samples / --max_eval_samples / --max_predict_samples to the splits present."""
    for split, limit in sample_limits(data_args).items():
        if split in raw:
            raw[split] = take_first(raw[split], limit)

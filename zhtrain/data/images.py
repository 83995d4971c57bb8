"""Images in: decoding to RGB, the check of every image before training and its cache, image-text data rows.

Shared by run_clip.py and run_image_captioning.py (same --image_column / --caption_column / --image_root).
Every image is decoded once before training, in parallel threads; broken ones are skipped, counted and listed
in output_dir/skipped_images.txt, and the results are cached so the next run (or the other ranks) only stat the
files. With --image_cache_dir the check also writes copies resized to the model's resolution.
"""

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import datasets
import transformers
from datasets import Dataset, DatasetDict
from PIL import Image, UnidentifiedImageError

from zhtrain.data.files import (
    SPLIT_ARGUMENTS,
    drop_invalid_rows,
    find_column,
    is_blank,
    load_data_files,
    needs_validation_split,
    resolve_data_files,
    sample_limits,
)
from zhtrain.data.pixels import to_rgb
from zhtrain.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_CHECK_CHUNK = 2000  # images per progress line and per cache save, so an interrupted check keeps its work
SKIPPED_IMAGES_FILE = "skipped_images.txt"
URL_PREFIXES = ("http://", "https://", "ftp://", "s3://", "gs://", "oss://", "hdfs://")


def open_image(path: str | Path, target_size: int | None = None):
    """Decode an image file completely into RGB.

    With `target_size`, JPEGs are decoded straight at the smallest 1/2, 1/4 or 1/8 scale that keeps both sides
    at least `target_size` pixels (libjpeg DCT scaling): several times faster on photos much larger than the
    model's input, and still a full read of the file, so a truncated JPEG fails here as it should.
    """
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
    default_dir = Path(image_cache_dir or datasets.config.HF_DATASETS_CACHE) / (
        "checks" if image_cache_dir else "image_checks"
    )
    cache = ImageCheckCache(Path(check_cache_dir or default_dir))
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
    copies = f"; writing {target_size}px copies to {image_cache_dir}" if image_cache_dir and target_size else ""
    logger.info(
        "Image check: decoding %d images with %d threads (%d known)%s", len(todo), workers, len(results), copies
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


def load_image_text_rows(
    data_args, image_args, training_args, cache_dir: str | None = None, captions_optional: Sequence[str] = ()
) -> dict[str, dict[str, list]]:
    """Read image-caption files into one row per (image, caption) pair, per split; images are not opened yet.

    A split is a table with the columns `image_path` (as written in the data), `image_file` (the file to load)
    and `caption` (None in `captions_optional` splits without a caption column). Several captions per image come
    as several rows, or as a list in one cell. Relative image paths are resolved against --image_root, or else
    the folder of the data file. Rows without an image path or caption are dropped, counted in the log. Without
    --validation_file, a --validation_split_percentage share of the training *images* (with all their
    captions) is held out, so no image is in both splits. The --max_*_samples limits apply to pairs.
    """
    pairs: dict[str, dict[str, list]] = {}
    for split, arg_name in SPLIT_ARGUMENTS:
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
        pairs[split] = image_caption_pairs(raw, split, image_args, bases, split in captions_optional)

    if needs_validation_split(pairs, data_args, training_args):
        pairs["train"], pairs["validation"] = _hold_out_images(
            pairs["train"], data_args.validation_split_percentage, training_args.seed
        )
    for split, limit in sample_limits(data_args).items():
        if split in pairs and limit is not None:
            pairs[split] = {k: v[:limit] for k, v in pairs[split].items()}
    return pairs


def image_caption_pairs(raw: Dataset, split: str, image_args, bases: list[Path], captions_optional: bool) -> dict:
    """The (image path, file, caption) table of one split's rows, after dropping rows without path or caption."""
    image_column = find_column(raw, image_args.image_column, "image_column", (), split)
    caption_column = image_args.caption_column
    if caption_column not in raw.column_names and captions_optional:
        caption_column = None
    elif caption_column not in raw.column_names:
        find_column(raw, caption_column, "caption_column", (), split)  # raises, listing the columns
    columns = [image_column] + ([caption_column] if caption_column else [])

    raw = drop_invalid_rows(
        raw,
        split,
        columns,
        partial(image_row_problem, split=split, image_column=image_column, caption_column=caption_column),
    )
    table = {"image_path": [], "image_file": [], "caption": []}
    images = raw[image_column]
    captions = raw[caption_column] if caption_column else [None] * len(images)
    for image, caption in zip(images, captions):
        file = resolve_image_file(image.strip(), bases)
        for text in captions_of(caption) if caption_column else [None]:
            table["image_path"].append(image.strip())
            table["image_file"].append(file)
            table["caption"].append(text)
    return table


def image_row_problem(row: dict, split: str, image_column: str, caption_column: str | None) -> str | None:
    """Why an image-text row cannot be used (no image path, no caption), or None; a non-path value is an error."""
    value = row[image_column]
    if is_blank(value):
        return f"empty or missing image path (--image_column {image_column})"
    if isinstance(value, str) and value.strip().lower().startswith(URL_PREFIXES):
        return "the image path is a URL: download the images and write their local paths"
    if not isinstance(value, str):
        raise UserError(
            f"`--image_column` '{image_column}' of the {split} data must hold image file paths, but a row "
            f"holds {type(value).__name__}: {str(value)[:80]}. Export the images to files and write their "
            "paths in this column."
        )
    if caption_column and not captions_of(row[caption_column]):
        return f"empty or missing caption (--caption_column {caption_column})"
    return None


def check_image_rows(
    pairs: dict[str, dict[str, list]],
    image_args,
    training_args,
    target_size: int | None,
    cache_dir: str | None = None,
    num_workers: int | None = None,
) -> DatasetDict:
    """Decode every image of the rows once; keep the rows whose image is good, one Dataset per split.

    Each split gets the columns `image_path`, `image_file` (the image, or its pre-resized copy), `caption` and
    `image_index` (the same number for every caption of one image, counted per split). Rows whose image is
    missing or broken are dropped, counted in the log, and listed in output_dir/skipped_images.txt.
    """
    all_files = [f for table in pairs.values() for f in table["image_file"]]
    checks = check_images(
        all_files,
        target_size=target_size,
        image_cache_dir=image_args.image_cache_dir,
        check_cache_dir=Path(cache_dir) / "image_checks" if cache_dir and not image_args.image_cache_dir else None,
        num_workers=num_workers,
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
            log_skipped_images(split, table, dropped_rows, training_args)
        if not keep:
            raise UserError(
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


def log_skipped_images(split: str, table: dict, dropped_rows: Counter, training_args) -> None:
    """One warning per split: how many images (and rows) were skipped, by kind of problem."""
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


def _hold_out_images(table: dict, percentage: int, seed: int) -> tuple[dict, dict]:
    """Split rows into train / validation by image, so all captions of an image land on the same side."""
    images = list(dict.fromkeys(table["image_file"]))
    if len(images) < 2:
        raise UserError(
            "The training data has only one image: cannot hold out a validation split. Pass --validation_file."
        )
    n_validation = max(1, round(len(images) * percentage / 100))
    held_out = set(random.Random(seed).sample(images, n_validation))
    logger.info(
        "No --validation_file: holding out %d of %d training images (%d%%, with all their captions) for evaluation.",
        n_validation, len(images), percentage,
    )  # fmt: skip
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


def decode_batch_images(rows: list[dict], target_size: int | None) -> tuple[list, list[dict]]:
    """Decode each row's `image_file`; return the images and the rows they came from.

    An image that no longer decodes (the file changed after the check before training) is left out with a
    warning; a batch where none decodes stops training with a clear error.
    """
    images, kept = [], []
    for row in rows:
        try:
            images.append(open_image(row["image_file"], target_size))
            kept.append(row)
        except Exception as exc:  # any decoding failure
            logger.warning("Leaving out image %s from this batch: %s: %s", row["image_file"], type(exc).__name__, exc)
    if not kept:
        raise UserError(
            f"No image of this batch could be decoded (first: {rows[0]['image_file']}); the image files changed "
            "after the check before training. Re-run to check them again."
        )
    return images, kept


def load_image_processor(path: str, arg_name: str, hub_kwargs: dict):
    """The image processor saved with a vision model; a clear error when the checkpoint has none."""
    try:
        # the PIL backend: the one that works without torchvision, and the same pixels on every machine
        return transformers.AutoImageProcessor.from_pretrained(path, backend="pil", **hub_kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"--{arg_name} '{path}' has no image processor (preprocessor_config.json) to turn images into pixel "
            f"values: {exc}. Use a vision checkpoint that ships one (every ViT / CLIP on the hub does), or save "
            "one next to the weights with ViTImageProcessor(...).save_pretrained(dir)."
        ) from None

"""Pre-train a causal language model on Chinese text: from scratch (e.g. GPT-2 on a BERT vocabulary) or continued.

    python run_clm.py examples/clm_demo.json
    python run_clm.py --model_type gpt2 --config_overrides "n_layer=12,n_head=12,n_embd=768" \
        --tokenizer_name bert-base-chinese --train_file "data/*.csv" --text_column content --block_size 512 \
        --output_dir outputs/gpt2-zh --do_train --do_eval --max_steps 100000 --bf16
    python run_clm.py --model_name_or_path Qwen/Qwen2.5-0.5B --train_file corpus/ --finetuning_type lora \
        --output_dir outputs/qwen-domain --do_train --do_eval --bf16
    torchrun --nproc_per_node 8 run_clm.py examples/clm_gpt2_from_scratch.json

Every document gets an eos, then the documents are concatenated and cut into --block_size blocks
(only the last partial block of a split is dropped). Tokenized blocks are cached as Arrow files keyed
by the data files (path, size, mtime), the tokenizer and the block size: the next run with the same
inputs memory-maps them and starts training at once. --streaming tokenizes on the fly instead, for
corpora larger than the disk or RAM can hold twice.
"""

import hashlib
import json
import logging
import multiprocessing
import os
import random
import shutil
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pyarrow as pa
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from arguments import (
    DataTrainingArguments,
    FinetuningArguments,
    ModelArguments,
    common_problems,
    finetuning_problems,
    parse_args,
    raise_if_problems,
)
from mechanics import (
    DATA_FORMATS,
    apply_lora,
    check_encoding,
    encoding_error_message,
    find_column,
    is_blank,
    resolve_data_files,
    setup_run,
    take_first,
    train_evaluate_predict,
)
from metrics import next_token_accuracy, perplexity, strip_tokenizer_spaces

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("content", "text", "completion")
DEFAULT_PROMPTS = ["今天天气很好，", "中国的首都是", "人工智能"]
CACHE_VERSION = 1  # bump when the cached block format changes, so old caches are not reused
DOCUMENTS_PER_BATCH = 1000  # documents per tokenizer call
TOKENS_PER_WRITE = 1 << 22  # blocks are buffered up to this many tokens per Arrow record batch


@dataclass
class CLMArguments:
    """Arguments only causal-LM pre-training needs."""

    model_type: str | None = field(
        default=None,
        metadata={
            "help": "Architecture to build from scratch (gpt2, llama, qwen2, bloom, ...) when there is no "
            "--model_name_or_path. Needs --tokenizer_name."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "From scratch: comma-separated config values, e.g. 'n_layer=6,n_head=8,n_embd=512'."},
    )
    block_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per training block; default: the model's maximum positions, at most 1024."},
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read and tokenize the training files on the fly (corpora larger than RAM). Needs --max_steps."
        },
    )
    streaming_validation_documents: int = field(
        default=1000,
        metadata={
            "help": "With --streaming and no --validation_file: the first N documents of the training files are "
            "held out for evaluation (and never trained on)."
        },
    )
    shuffle_buffer_size: int = field(
        default=10000,
        metadata={"help": "With --streaming: documents are shuffled within a buffer of this many (0: file order)."},
    )
    tokenized_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where tokenized blocks are cached as Arrow files; default: <datasets cache>/run_clm."},
    )
    sample_prompts: list[str] = field(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        metadata={"help": "Prompts continued after training into generated_samples.txt (greedy decoding)."},
    )
    sample_max_new_tokens: int = field(
        default=64, metadata={"help": "Longest generated continuation per sample prompt, in tokens (0: no samples)."}
    )


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, FinetuningArguments, CLMArguments, TrainingArguments)


# ---- documents -> tokens -> blocks ------------------------------------------------------------------------------


class DocumentEncoder:
    """Tokenize a batch of documents into one flat int32 array: [bos] tokens eos, for each document.

    bos is prepended only for tokenizers that add it themselves (Llama); GPT-2-style models see
    `doc eos doc eos ...`, so eos both ends a document and marks the start of the next one.
    """

    def __init__(self, tokenizer, bos_id: int | None, eos_id: int):
        self.tokenizer, self.bos_id, self.eos_id = tokenizer, bos_id, eos_id
        self.use_backend = None  # decided on the first batch

    def token_lists(self, texts: list[str]) -> list[list[int]]:
        if self.use_backend is None:
            # The Rust backend skips the Python-side bookkeeping of __call__ (about 1.5x faster); use it only
            # when it gives exactly the same ids for this tokenizer.
            self.use_backend = False
            if getattr(self.tokenizer, "is_fast", False) and texts:
                sample = texts[:16]
                reference = self.tokenizer(sample, add_special_tokens=False, verbose=False)["input_ids"]
                self.use_backend = reference == self._backend_ids(sample)
        if self.use_backend:
            return self._backend_ids(texts)
        return self.tokenizer(
            texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
        )["input_ids"]

    def _backend_ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty(0, dtype=np.int32)
        ids = self.token_lists(texts)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((t for doc in ids for t in doc), dtype=np.int32, count=int(lengths.sum()))
        ends = np.cumsum(lengths)
        tokens = np.insert(flat, ends, self.eos_id)
        if self.bos_id is not None:
            starts = ends - lengths + np.arange(len(ids))  # each earlier document gained one eos
            tokens = np.insert(tokens, starts, self.bos_id)
        return tokens


class BlockPacker:
    """Cut a stream of token arrays into rows of exactly `block_size`, carrying the remainder to the next call.

    >>> packer = BlockPacker(4)
    >>> packer.add(np.arange(6)).tolist(), packer.add(np.arange(6, 9)).tolist(), packer.tail
    ([[0, 1, 2, 3]], [[4, 5, 6, 7]], 1)
    """

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.carry = np.empty(0, dtype=np.int32)

    @property
    def tail(self) -> int:
        """Tokens waiting for the next call; what is left at the end (< block_size) is dropped."""
        return len(self.carry)

    def add(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.concatenate([self.carry, tokens.astype(np.int32, copy=False)])
        n_full = len(tokens) // self.block_size * self.block_size
        self.carry = tokens[n_full:].copy()
        return tokens[:n_full].reshape(-1, self.block_size)


def token_dtype(vocab_size: int):
    """uint16 halves the cache for vocabularies up to 65,535 ids (BERT-Chinese has 21,128); int32 otherwise."""
    return (np.uint16, pa.uint16()) if vocab_size <= np.iinfo(np.uint16).max else (np.int32, pa.int32())


class BlockWriter:
    """Append blocks to an Arrow stream file that `datasets.Dataset.from_file` memory-maps."""

    def __init__(self, path: Path, block_size: int, vocab_size: int):
        self.np_type, arrow_type = token_dtype(vocab_size)
        self.block_size, self.path = block_size, path
        self.sink = pa.OSFile(str(path), "wb")
        self.writer = pa.ipc.new_stream(self.sink, pa.schema([("input_ids", pa.list_(arrow_type, block_size))]))
        self.pending, self.pending_rows, self.n_blocks = [], 0, 0

    def write(self, blocks: np.ndarray) -> None:
        if len(blocks):
            self.pending.append(blocks.astype(self.np_type))
            self.pending_rows += len(blocks)
            if self.pending_rows * self.block_size >= TOKENS_PER_WRITE:
                self.flush()

    def flush(self) -> None:
        if self.pending:
            flat = np.concatenate(self.pending).reshape(-1)
            column = pa.FixedSizeListArray.from_arrays(pa.array(flat), self.block_size)
            self.writer.write_batch(pa.record_batch([column], names=["input_ids"]))
            self.n_blocks += self.pending_rows
            self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.sink.close()


# ---- reading files ------------------------------------------------------------------------------------------------


def open_document_stream(files: list[str], encoding: str, arg_name: str) -> datasets.IterableDataset:
    """The rows of the files as a lazily read stream (nothing is converted or copied to disk)."""
    encoding = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    check_encoding(files, encoding, arg_name)
    suffix = Path(files[0]).suffix.lower()
    kwargs = {} if suffix == ".parquet" else {"encoding": encoding}
    if suffix == ".tsv":
        kwargs.update(sep="\t", quoting=3)  # plain TSV: a quote is just a character, as in mechanics
    return datasets.load_dataset(DATA_FORMATS[suffix], data_files=files, split="train", streaming=True, **kwargs)


def read_error(exc: Exception, files: list[str], arg_name: str, encoding: str) -> ValueError:
    """A ValueError naming the files and the fix, for a failure while reading them."""
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, UnicodeDecodeError):
        return ValueError(encoding_error_message(files[0], encoding, arg_name, cause))
    shown = ", ".join(files[:5]) + (" ..." if len(files) > 5 else "")
    return ValueError(
        f"Could not read `--{arg_name}` ({shown}): {type(cause).__name__}: {cause}. Check that every file is "
        "well-formed and has the same columns."
    )


def find_text_column(stream: datasets.IterableDataset, wanted: str | None, arg_name: str, files: list[str]) -> str:
    """The text column, from the first row (streamed txt files have no schema until read)."""
    first = next(iter(stream.take(1)), None)
    if first is None:
        raise ValueError(f"`--{arg_name}` ({', '.join(files[:3])}) holds no rows.")
    split = arg_name.replace("_file", "")
    return find_column(SimpleNamespace(column_names=list(first)), wanted, "text_column", TEXT_COLUMNS, split)


def as_document(value) -> str | None:
    """The text of a row, or None for an empty or missing value (csv NaN, json null, blank line)."""
    return None if is_blank(value) else str(value)


# ---- the tokenized-block cache ----------------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides the token ids: the full tokenizer definition and its special tokens."""
    if getattr(tokenizer, "is_fast", False):
        state = tokenizer.backend_tokenizer.to_str()
    else:
        state = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    extra = json.dumps([type(tokenizer).__name__, tokenizer.special_tokens_map], sort_keys=True, default=str)
    return hashlib.sha256((state + extra).encode("utf-8")).hexdigest()


def file_signature(files: list[str]) -> list[list]:
    """(absolute path, size, mtime) per file: editing, replacing or adding a file changes the cache key."""
    signature = []
    for file in files:
        stat = os.stat(file)
        signature.append([os.path.abspath(file), stat.st_size, stat.st_mtime_ns])
    return signature


def cache_key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:20]


def ordered_parallel(function, items, workers: int):
    """`map(function, items)` over `workers` processes, in order, with a bounded number of batches in flight.

    Pool.imap would read the whole input ahead (all of a 100 GB corpus); this keeps 2 batches per worker.
    """
    if workers <= 1:
        yield from map(function, items)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(workers, initializer=_set_worker_function, initargs=(function,)) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.apply_async(_call_worker_function, (item,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


_worker_function = None


def _set_worker_function(function) -> None:
    global _worker_function
    _worker_function = function


def _call_worker_function(item):
    return _worker_function(item)


class SplitEncoder:
    """Encode a (kept documents, held-out documents) pair of lists; picklable for worker processes."""

    def __init__(self, encoder: DocumentEncoder):
        self.encoder = encoder

    def __call__(self, pair: tuple[list[str], list[str]]) -> tuple[np.ndarray, np.ndarray]:
        return self.encoder(pair[0]), self.encoder(pair[1])


def build_blocks(
    files: list[str],
    arg_name: str,
    text_column: str,
    encoding: str,
    encoder: DocumentEncoder,
    block_size: int,
    vocab_size: int,
    out_dir: Path,
    holdout_percentage: float = 0,
    seed: int = 0,
    workers: int = 1,
) -> dict:
    """Tokenize and pack the files into out_dir/main.arrow (and out_dir/heldout.arrow); return the counts.

    A held-out document is chosen by a seeded draw per document, so the split never overlaps and does not
    depend on the number of workers. Documents keep their file order, so the result is deterministic.
    """
    rng = random.Random(seed)
    stats = {
        "documents": 0,
        "empty_documents": 0,
        "heldout_documents": 0,
        "bytes": sum(os.path.getsize(f) for f in files),
    }
    writers = {"main": BlockWriter(out_dir / "main.arrow", block_size, vocab_size)}
    if holdout_percentage > 0:
        writers["heldout"] = BlockWriter(out_dir / "heldout.arrow", block_size, vocab_size)
    packers = {name: BlockPacker(block_size) for name in writers}
    tokens = dict.fromkeys(writers, 0)

    def batches():
        stream = open_document_stream(files, encoding, arg_name).select_columns([text_column])
        try:
            for batch in stream.iter(batch_size=DOCUMENTS_PER_BATCH):
                kept, heldout = [], []
                for value in batch[text_column]:
                    document = as_document(value)
                    if document is None:
                        stats["empty_documents"] += 1
                    elif holdout_percentage > 0 and rng.random() * 100 < holdout_percentage:
                        heldout.append(document)
                    else:
                        kept.append(document)
                stats["documents"] += len(kept) + len(heldout)
                stats["heldout_documents"] += len(heldout)
                yield kept, heldout
        except ValueError:
            raise
        except Exception as exc:
            raise read_error(exc, files, arg_name, encoding) from exc

    for encoded in ordered_parallel(SplitEncoder(encoder), batches(), workers):
        for name, array in zip(("main", "heldout"), encoded):
            if name in writers:
                tokens[name] += len(array)
                writers[name].write(packers[name].add(array))
    for name, writer in writers.items():
        writer.close()
        stats[f"{name}_tokens"] = tokens[name]
        stats[f"{name}_blocks"] = writer.n_blocks
        stats[f"{name}_dropped_tail_tokens"] = packers[name].tail
    return stats


def too_small_error(what: str, tokens: int, documents: int, block_size: int, fix: str) -> ValueError:
    return ValueError(
        f"{what} has only {tokens} tokens ({documents} documents) after tokenization: fewer than one "
        f"--block_size block of {block_size} tokens. {fix}"
    )


def load_or_build_blocks(
    files: list[str],
    arg_name: str,
    text_column: str,
    encoding: str,
    encoder: DocumentEncoder,
    block_size: int,
    vocab_size: int,
    cache_root: Path,
    holdout_percentage: float = 0,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
) -> dict[str, datasets.Dataset]:
    """The packed blocks of the files ("main", plus "heldout" when holding out), from the cache when possible."""
    recipe = {
        "version": CACHE_VERSION,
        "files": file_signature(files),
        "text_column": text_column,
        "encoding": encoding,
        "tokenizer": tokenizer_fingerprint(encoder.tokenizer),
        "document_tokens": [encoder.bos_id, encoder.eos_id],
        "block_size": block_size,
        "holdout_percentage": holdout_percentage,
        "holdout_seed": seed if holdout_percentage > 0 else None,
    }
    target = cache_root / cache_key(recipe)
    if (target / "info.json").is_file() and not overwrite:
        info = json.loads((target / "info.json").read_text(encoding="utf-8"))
        logger.info(
            "Reusing the tokenized blocks of --%s from %s (%s); tokenization skipped.",
            arg_name,
            target,
            ", ".join(f"{k}: {v}" for k, v in info["stats"].items() if k.endswith("_blocks")),
        )
    else:
        # Build in a private folder and rename it into place: a killed run never leaves a half-written
        # cache behind, and two processes building at once both end up with one complete copy.
        building = cache_root / f"{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        building.mkdir(parents=True)
        try:
            start = time.perf_counter()
            stats = build_blocks(
                files, arg_name, text_column, encoding, encoder, block_size, vocab_size, building,
                holdout_percentage, seed, workers,
            )  # fmt: skip
            stats["seconds"] = round(time.perf_counter() - start, 3)
            kept = stats["documents"] - stats["heldout_documents"]
            if stats["main_blocks"] == 0:
                raise too_small_error(
                    f"`--{arg_name}` ({', '.join(files[:3])})", stats["main_tokens"], kept, block_size,
                    "Add text, or lower --block_size.",
                )  # fmt: skip
            if holdout_percentage > 0 and stats["heldout_blocks"] == 0:
                raise too_small_error(
                    f"The evaluation part held out of `--{arg_name}` (--validation_split_percentage "
                    f"{holdout_percentage})", stats["heldout_tokens"], stats["heldout_documents"], block_size,
                    "Raise --validation_split_percentage, pass --validation_file, or lower --block_size.",
                )  # fmt: skip
            info = {"recipe": recipe, "stats": stats}
            (building / "info.json").write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")
            if overwrite and target.exists():
                shutil.rmtree(target)
            try:
                os.rename(building, target)
            except OSError:  # another process finished the same cache first: use theirs
                shutil.rmtree(building, ignore_errors=True)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        log_build(arg_name, stats, block_size, target)
    return {
        part: datasets.Dataset.from_file(str(target / f"{part}.arrow"))
        for part in ("main", "heldout")
        if (target / f"{part}.arrow").is_file()
    }


def log_build(arg_name: str, stats: dict, block_size: int, target: Path) -> None:
    seconds = max(stats["seconds"], 1e-9)
    tokens = stats["main_tokens"] + stats.get("heldout_tokens", 0)
    logger.info(
        "Tokenized --%s: %d documents, %d tokens in %.1f s (%.1f MB/s, %.0f tokens/s) -> %d blocks of %d%s; "
        "cached in %s",
        arg_name,
        stats["documents"],
        tokens,
        seconds,
        stats["bytes"] / 1e6 / seconds,
        tokens / seconds,
        stats["main_blocks"],
        block_size,
        f" (+ {stats['heldout_blocks']} held-out blocks for evaluation)" if "heldout_blocks" in stats else "",
        target,
    )
    if stats["empty_documents"]:
        logger.warning("Skipped %d empty or missing documents of --%s.", stats["empty_documents"], arg_name)
    for part in ("main", "heldout"):
        if stats.get(f"{part}_dropped_tail_tokens"):
            logger.info(
                "Dropped the last %d tokens of the %s data of --%s: less than one block.",
                stats[f"{part}_dropped_tail_tokens"],
                "training" if part == "main" and arg_name == "train_file" else "evaluation",
                arg_name,
            )


class StreamedBlocks(torch.utils.data.IterableDataset):
    """Training blocks for --streaming: documents read in file order, shuffled in a buffer, packed on the fly.

    Memory holds one buffer of documents and one tokenizer batch, however large the corpus. The first
    `skip_documents` non-empty documents are skipped (they are the held-out evaluation set). DataLoader
    workers take every n-th document each, so none is read twice.
    """

    def __init__(self, files, arg_name, text_column, encoding, encoder, block_size, skip_documents=0,
                 shuffle_buffer_size=0, seed=0, max_blocks=None):  # fmt: skip
        super().__init__()
        self.files, self.arg_name, self.text_column, self.encoding = files, arg_name, text_column, encoding
        self.encoder, self.block_size, self.skip_documents = encoder, block_size, skip_documents
        self.shuffle_buffer_size, self.seed, self.max_blocks, self.epoch = shuffle_buffer_size, seed, max_blocks, 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer: a new shuffle order per pass
        self.epoch = epoch

    def documents(self):
        worker = torch.utils.data.get_worker_info()
        share, n_shares = (worker.id, worker.num_workers) if worker else (0, 1)
        reader = open_document_stream(self.files, self.encoding, self.arg_name).select_columns([self.text_column])
        index = empty = 0
        try:
            for batch in reader.iter(batch_size=DOCUMENTS_PER_BATCH):
                for document in map(as_document, batch[self.text_column]):
                    if document is None:
                        if not empty:
                            logger.warning("Skipping empty or missing documents of --%s.", self.arg_name)
                        empty += 1
                        continue
                    index += 1
                    if index > self.skip_documents and index % n_shares == share:
                        yield document
        except ValueError:
            raise
        except Exception as exc:
            raise read_error(exc, self.files, self.arg_name, self.encoding) from exc

    def shuffled(self, documents):
        if self.shuffle_buffer_size < 2:
            yield from documents
            return
        rng, buffer = random.Random(self.seed * 100_003 + self.epoch), []
        for document in documents:
            if len(buffer) < self.shuffle_buffer_size:
                buffer.append(document)
                continue
            slot = rng.randrange(len(buffer))
            yield buffer[slot]
            buffer[slot] = document
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self):
        packer, batch, produced = BlockPacker(self.block_size), [], 0
        for document in chain(self.shuffled(self.documents()), [None]):
            if document is not None:
                batch.append(document)
            if len(batch) == DOCUMENTS_PER_BATCH or (document is None and batch):
                for block in packer.add(self.encoder(batch)):
                    if self.max_blocks is not None and produced >= self.max_blocks:
                        return
                    produced += 1
                    yield {"input_ids": block}
                batch = []


def pack_in_memory(documents: list[str], encoder: DocumentEncoder, block_size: int, what: str) -> datasets.Dataset:
    """Blocks of a small list of documents (the held-out part of a stream)."""
    tokens = encoder(documents)
    blocks = BlockPacker(block_size).add(tokens)
    if not len(blocks):
        raise too_small_error(
            what, len(tokens), len(documents), block_size,
            "Raise --streaming_validation_documents, pass --validation_file, or lower --block_size.",
        )  # fmt: skip
    return datasets.Dataset.from_dict({"input_ids": blocks})


# ---- model side ------------------------------------------------------------------------------------------------


def add_missing_special_tokens(tokenizer, from_scratch: bool) -> list[str]:
    """Give the tokenizer an eos (always) and, from scratch, a bos and a pad distinct from eos.

    A pad equal to eos is the zero_nlp / seed bug: collators mask padding out of the loss, so every eos is
    masked too and the model never learns to stop. Our blocks are never padded, so a pre-trained checkpoint
    whose pad is its eos (Qwen2) keeps its vocabulary: adding a token would change its embedding matrix.
    """
    wanted = {}
    if tokenizer.eos_token is None:
        wanted["eos_token"] = "[EOS]"
    if from_scratch:
        if tokenizer.bos_token is None:
            wanted["bos_token"] = "[BOS]"
        if tokenizer.pad_token is None or tokenizer.pad_token == (tokenizer.eos_token or wanted.get("eos_token")):
            wanted["pad_token"] = "[PAD]" if tokenizer.eos_token != "[PAD]" else "<pad>"
    if wanted:
        tokenizer.add_special_tokens(wanted)
        logger.info("Added special tokens to the tokenizer: %s", wanted)
    return sorted(wanted)


def document_start_token(tokenizer) -> int | None:
    """bos when the tokenizer itself starts every text with it (Llama), else None (GPT-2, Qwen2, BERT vocab)."""
    if tokenizer.bos_token_id is None:
        return None
    ids = tokenizer("中文", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id if ids and ids[0] == tokenizer.bos_token_id else None


def max_positions(config) -> int | None:
    """The longest sequence the architecture can take (None for ALiBi models such as Bloom)."""
    for name in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def lora_adapter_dir(path: str | None) -> str | None:
    """`path` when it is the output of a LoRA run (adapter weights only), else None."""
    return path if path and (Path(path) / "adapter_config.json").is_file() else None


def collate_blocks(features: list[dict]) -> dict:
    """Stack full blocks; labels are the input ids themselves (the model shifts them), eos included.

    >>> batch = collate_blocks([{"input_ids": [5, 6, 2]}, {"input_ids": [7, 2, 8]}])
    >>> batch["labels"].tolist()
    [[5, 6, 2], [7, 2, 8]]
    """
    input_ids = torch.as_tensor(np.asarray([f["input_ids"] for f in features]), dtype=torch.long)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def argmax_logits(logits, labels):
    """Keep only the predicted ids: accumulating full (batch, length, vocab) logits would exhaust memory."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def compute_token_accuracy(eval_pred) -> dict:
    return {"token_accuracy": next_token_accuracy(eval_pred.predictions, eval_pred.label_ids)}


def generate_samples(model, tokenizer, prompts: list[str], start_id: int, max_new_tokens: int) -> list[tuple]:
    """Greedy continuations of each prompt, started like a new document (after eos, or bos for Llama)."""
    model.eval()
    samples = []
    for prompt in prompts:
        ids = [start_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        input_ids = torch.tensor([ids], device=model.device)
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
        new_ids = output[0, len(ids) :].tolist()
        stopped = tokenizer.eos_token_id in new_ids
        text = strip_tokenizer_spaces(tokenizer.decode(new_ids, skip_special_tokens=True))
        samples.append((prompt, text, stopped))
    return samples


def write_samples(samples: list[tuple], path: Path) -> None:
    lines = []
    for prompt, continuation, stopped in samples:
        lines += [f"prompt: {prompt}", f"sample: {prompt}{continuation}" + (" [eos]" if stopped else ""), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    logger.info("Generated samples written to %s:\n%s", path, "\n".join(lines))


# ---- main -------------------------------------------------------------------------------------------------------


def validate(model_args, data_args, finetuning_args, clm_args, training_args) -> list[str]:
    """Every problem with the arguments, found before anything is loaded."""
    problems = common_problems(model_args, data_args, training_args)
    problems += finetuning_problems(finetuning_args, ("full", "lora"))
    from_scratch = not model_args.model_name_or_path
    if from_scratch and not clm_args.model_type:
        problems.append(
            "Pass --model_name_or_path (continued pre-training) or --model_type with --tokenizer_name (from scratch)."
        )
    if model_args.model_name_or_path and clm_args.model_type:
        problems.append("--model_type builds a model from scratch; it cannot be combined with --model_name_or_path.")
    if clm_args.model_type and clm_args.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        import difflib

        close = difflib.get_close_matches(clm_args.model_type, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, n=3)
        problems.append(
            f"--model_type '{clm_args.model_type}' is not a causal-LM architecture"
            + (f"; did you mean {', '.join(close)}?" if close else "; e.g. gpt2, llama, qwen2, bloom.")
        )
    if from_scratch and clm_args.model_type and not model_args.tokenizer_name:
        problems.append("From scratch (--model_type) needs --tokenizer_name, e.g. bert-base-chinese.")
    if clm_args.config_overrides:
        if model_args.model_name_or_path:
            problems.append("--config_overrides applies to a model built from scratch (--model_type) only.")
        bad = [item for item in clm_args.config_overrides.split(",") if item.count("=") != 1]
        if bad:
            problems.append(f"--config_overrides must look like 'n_layer=6,n_embd=512'; bad part(s): {bad}.")
    if from_scratch and finetuning_args.finetuning_type == "lora":
        problems.append("--finetuning_type lora adapts a pre-trained --model_name_or_path; from scratch use full.")
    if clm_args.block_size is not None and clm_args.block_size < 2:
        problems.append(f"--block_size must be at least 2, got {clm_args.block_size}.")
    if clm_args.streaming and training_args.do_train and training_args.max_steps <= 0:
        problems.append(
            "--streaming reads the corpus as a stream of unknown length, so the run length must be given in "
            "steps: pass --max_steps N (tokens trained = N x batch size x GPUs x --block_size)."
        )
    if clm_args.streaming_validation_documents < 1:
        problems.append(
            f"--streaming_validation_documents must be at least 1, got {clm_args.streaming_validation_documents}."
        )
    if clm_args.shuffle_buffer_size < 0:
        problems.append(f"--shuffle_buffer_size must be 0 or more, got {clm_args.shuffle_buffer_size}.")
    if clm_args.sample_max_new_tokens < 0:
        problems.append(
            f"--sample_max_new_tokens must be 0 (no samples) or more, got {clm_args.sample_max_new_tokens}."
        )
    if training_args.do_predict:
        problems.append(
            "run_clm.py has no prediction step; to score a test corpus pass it as --validation_file with --do_eval."
        )
    return problems


def main(argv=None) -> dict:
    # 1. arguments, validated before anything heavy is loaded
    model_args, data_args, finetuning_args, clm_args, training_args = parse_args(ARGUMENT_CLASSES, argv)
    raise_if_problems(validate(model_args, data_args, finetuning_args, clm_args, training_args))
    from_scratch = not model_args.model_name_or_path
    adapter_dir = lora_adapter_dir(model_args.model_name_or_path)
    if adapter_dir:  # an output_dir of a LoRA run: its base model, plus the adapter on top
        model_args.tokenizer_name = model_args.tokenizer_name or adapter_dir
        config_file = Path(adapter_dir) / "adapter_config.json"
        model_args.model_name_or_path = json.loads(config_file.read_text(encoding="utf-8"))["base_model_name_or_path"]
        if training_args.do_train and finetuning_args.finetuning_type != "lora":
            raise ValueError(
                f"'{adapter_dir}' holds a LoRA adapter: continue training it with --finetuning_type lora."
            )

    # 2. logging, seed
    setup_run(training_args)

    # 3. data files and their text column
    sources = {}  # split -> (files, arg_name)
    if data_args.train_file and (training_args.do_train or not data_args.validation_file):
        sources["train"] = (resolve_data_files(data_args.train_file, "train_file"), "train_file")
    if data_args.validation_file and training_args.do_eval:
        sources["validation"] = (resolve_data_files(data_args.validation_file, "validation_file"), "validation_file")
    text_columns = {}
    for split, (files, arg_name) in sources.items():
        stream = open_document_stream(files, data_args.file_encoding, arg_name)
        try:
            text_columns[split] = find_text_column(stream, data_args.text_column, arg_name, files)
        except ValueError:
            raise
        except Exception as exc:
            raise read_error(exc, files, arg_name, data_args.file_encoding) from exc
    hold_out = training_args.do_eval and "validation" not in sources

    # 4. tokenizer and config: they decide the token ids and the block size
    hub = model_args.hub_kwargs()
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, **hub)
    added_tokens = add_missing_special_tokens(tokenizer, from_scratch)
    if "eos_token" in added_tokens and finetuning_args.finetuning_type == "lora":
        raise ValueError(
            "The tokenizer has no eos token, and LoRA cannot train the new embedding row one would need. Use "
            "--finetuning_type full, or a --tokenizer_name that has an eos token."
        )
    if model_args.config_name or model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.config_name or model_args.model_name_or_path, **hub)
    else:
        config = AutoConfig.for_model(clm_args.model_type)
    if clm_args.config_overrides:
        try:
            config.update_from_string(clm_args.config_overrides)
        except (ValueError, AttributeError) as exc:
            keys = ", ".join(sorted(k for k in config.to_dict() if not k.startswith("_"))[:40])
            raise ValueError(
                f"--config_overrides '{clm_args.config_overrides}': {exc}. Config keys: {keys}."
            ) from None
    positions = max_positions(config)
    block_size = clm_args.block_size or min(1024, positions or 1024)
    if positions and block_size > positions:
        fix = "--config_overrides n_positions=..." if from_scratch else "a smaller --block_size"
        raise ValueError(f"--block_size {block_size} exceeds the model's {positions} positions; use {fix}.")
    encoder = DocumentEncoder(tokenizer, document_start_token(tokenizer), tokenizer.eos_token_id)
    logger.info(
        "Documents are encoded as %s<tokens>%s and packed into blocks of %d tokens.",
        tokenizer.bos_token if encoder.bos_id is not None else "",
        tokenizer.eos_token,
        block_size,
    )

    # tokenize and pack (main process first; under DDP the other ranks then find the cache)
    cache_root = Path(clm_args.tokenized_cache_dir or Path(datasets.config.HF_DATASETS_CACHE) / "run_clm")
    processed = {}
    with training_args.main_process_first(desc="tokenizing and packing"):
        for split, (files, arg_name) in sources.items():
            if split == "train" and clm_args.streaming:
                continue
            holdout = data_args.validation_split_percentage if split == "train" and hold_out else 0
            parts = load_or_build_blocks(
                files, arg_name, text_columns[split], data_args.file_encoding, encoder, block_size, len(tokenizer),
                cache_root, holdout, training_args.seed, data_args.preprocessing_num_workers or 1,
                data_args.overwrite_cache,
            )  # fmt: skip
            processed[split] = parts["main"]
            if "heldout" in parts:
                processed["validation"] = parts["heldout"]
    if clm_args.streaming and "train" in sources:
        files, arg_name = sources["train"]
        skip = 0
        if hold_out:
            skip = clm_args.streaming_validation_documents
            reader = StreamedBlocks(
                files, arg_name, text_columns["train"], data_args.file_encoding, encoder, block_size
            )
            documents = list(islice(reader.documents(), skip))
            what = f"The first {skip} documents of --train_file, held out for evaluation,"
            processed["validation"] = pack_in_memory(documents, encoder, block_size, what)
            logger.info("Streaming: the first %d documents of --train_file are held out for evaluation.", skip)
        processed["train"] = StreamedBlocks(
            files, arg_name, text_columns["train"], data_args.file_encoding, encoder, block_size, skip,
            clm_args.shuffle_buffer_size, training_args.seed, data_args.max_train_samples,
        )  # fmt: skip
        if data_args.preprocessing_num_workers:
            logger.info("--streaming tokenizes on the fly: --preprocessing_num_workers is not used there.")
    elif "train" in processed:
        processed["train"] = take_first(processed["train"], data_args.max_train_samples)
    if "validation" in processed:
        processed["validation"] = take_first(processed["validation"], data_args.max_eval_samples)
    if not training_args.do_train:
        processed.pop("train", None)

    # 5. model
    if from_scratch:
        config.vocab_size = len(tokenizer)
        for name in ("bos", "eos", "pad"):
            setattr(config, f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_args.trust_remote_code)
        logger.info("Built a %s from scratch: %.1fM parameters.", config.model_type, model.num_parameters() / 1e6)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path, config=config, dtype=model_args.dtype, **hub
        )
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
    for settings in (model.config, model.generation_config):
        settings.eos_token_id = tokenizer.eos_token_id
        settings.pad_token_id = tokenizer.pad_token_id
        if tokenizer.bos_token_id is not None:
            settings.bos_token_id = tokenizer.bos_token_id
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=training_args.do_train)
    elif finetuning_args.finetuning_type == "lora":
        model = apply_lora(model, finetuning_args, "CAUSAL_LM")

    # 6-7. collator, metrics, trainer
    evaluating = training_args.do_eval and "validation" in processed
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=processed.get("train"),
        eval_dataset=processed.get("validation"),
        processing_class=tokenizer,
        data_collator=collate_blocks,
        compute_metrics=compute_token_accuracy if evaluating else None,
        preprocess_logits_for_metrics=argmax_logits if evaluating else None,
    )

    before = {}
    if evaluating and training_args.do_train:
        if trainer.is_deepspeed_enabled:
            logger.info("DeepSpeed: skipping the evaluation before training (the engine is built by train()).")
        else:
            metrics = trainer.evaluate()
            before = {
                "eval_loss_before": metrics["eval_loss"],
                "eval_perplexity_before": perplexity(metrics["eval_loss"]),
                "eval_token_accuracy_before": metrics["eval_token_accuracy"],
            }
            logger.info("Before training: %s", before)

    def add_perplexity(metrics: dict) -> None:
        metrics["eval_perplexity"] = perplexity(metrics["eval_loss"])
        metrics.update(before)

    # 8-10. train, evaluate (no predict step: a test corpus is scored as --validation_file)
    results = train_evaluate_predict(
        trainer,
        training_args,
        train_dataset=processed.get("train"),
        eval_dataset=processed.get("validation") if evaluating else None,
        after_eval=add_perplexity,
    )
    if training_args.do_train and clm_args.sample_prompts and clm_args.sample_max_new_tokens:
        # every rank generates (ZeRO-3 needs all of them in each forward); the main one writes
        start_id = encoder.bos_id if encoder.bos_id is not None else tokenizer.eos_token_id
        samples = generate_samples(
            trainer.model, tokenizer, clm_args.sample_prompts, start_id, clm_args.sample_max_new_tokens
        )
        if trainer.is_world_process_zero():
            write_samples(samples, Path(training_args.output_dir) / "generated_samples.txt")
    return results


if __name__ == "__main__":
    main()

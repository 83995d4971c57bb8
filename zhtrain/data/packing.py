"""Causal-LM documents into training blocks: tokenize, pack into --block_size rows, cache, or stream.

Every document gets an eos (and a bos where the tokenizer starts texts with one); the documents are
concatenated and cut into blocks of exactly `block_size` tokens, the remainder carried over to the next batch
(only the last partial block of a split is dropped, and logged). Packed blocks are cached as Arrow files keyed
by the data files (path, size, mtime), the tokenizer and the block size, built in a private folder and renamed
into place, so the next run (or the other ranks) memory-map them. `StreamedBlocks` packs on the fly instead,
for corpora larger than RAM or disk. A `BlockRecipe` says what decides the blocks.
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
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch

from zhtrain.data.files import is_blank, open_data_stream, read_error
from zhtrain.errors import UserError

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the cached block format changes, so old caches are not reused
DOCUMENTS_PER_BATCH = 1000  # documents per tokenizer call
TOKENS_PER_WRITE = 1 << 22  # blocks are buffered up to this many tokens per Arrow record batch


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
            # The Rust backend skips the Python-side bookkeeping of __call__ (faster: see BENCHMARKS.md); use it
            # only when it gives exactly the same ids for this tokenizer.
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


def as_document(value) -> str | None:
    """The text of a row, or None for an empty or missing value (csv NaN, json null, blank line)."""
    return None if is_blank(value) else str(value)


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


@dataclass
class BlockRecipe:
    """What decides the blocks of a split: its files, their text column and encoding, the encoder, the block size."""

    files: list[str]
    arg_name: str  # the flag the files came from (train_file, validation_file), for messages
    text_column: str
    encoding: str
    encoder: DocumentEncoder
    block_size: int

    def documents(self):
        """Batches of the files' text values in file order (empty ones included, as None), read lazily."""
        stream = open_data_stream(self.files, self.arg_name, self.encoding).select_columns([self.text_column])
        try:
            for batch in stream.iter(batch_size=DOCUMENTS_PER_BATCH):
                yield [as_document(value) for value in batch[self.text_column]]
        except UserError:
            raise
        except Exception as exc:  # datasets / pyarrow parse errors
            raise read_error(exc, self.files, self.arg_name, self.encoding) from exc

    def cache_recipe(self, holdout_percentage: float, seed: int) -> dict:
        """Everything the cached blocks depend on; its hash names the cache folder."""
        return {
            "version": CACHE_VERSION,
            "files": file_signature(self.files),
            "text_column": self.text_column,
            "encoding": self.encoding,
            "tokenizer": tokenizer_fingerprint(self.encoder.tokenizer),
            "document_tokens": [self.encoder.bos_id, self.encoder.eos_id],
            "block_size": self.block_size,
            "holdout_percentage": holdout_percentage,
            "holdout_seed": seed if holdout_percentage > 0 else None,
        }


def build_blocks(
    recipe: BlockRecipe, out_dir: Path, holdout_percentage: float = 0, seed: int = 0, workers: int = 1
) -> dict:
    """Tokenize and pack the files into out_dir/main.arrow (and out_dir/heldout.arrow); return the counts.

    A held-out document is chosen by a seeded draw per document, so the split never overlaps and does not
    depend on the number of workers. Documents keep their file order, so the result is deterministic.
    """
    stats = {
        "documents": 0,
        "empty_documents": 0,
        "heldout_documents": 0,
        "bytes": sum(os.path.getsize(f) for f in recipe.files),
    }
    vocab_size = len(recipe.encoder.tokenizer)
    writers = {"main": BlockWriter(out_dir / "main.arrow", recipe.block_size, vocab_size)}
    if holdout_percentage > 0:
        writers["heldout"] = BlockWriter(out_dir / "heldout.arrow", recipe.block_size, vocab_size)
    packers = {name: BlockPacker(recipe.block_size) for name in writers}
    tokens = dict.fromkeys(writers, 0)

    batches = split_documents(recipe.documents(), holdout_percentage, random.Random(seed), stats)
    for encoded in ordered_parallel(SplitEncoder(recipe.encoder), batches, workers):
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


def split_documents(batches, holdout_percentage: float, rng: random.Random, stats: dict):
    """(kept, held-out) document lists per batch: empty documents counted and left out, a seeded draw per document."""
    for documents in batches:
        kept, heldout = [], []
        for document in documents:
            if document is None:
                stats["empty_documents"] += 1
            elif holdout_percentage > 0 and rng.random() * 100 < holdout_percentage:
                heldout.append(document)
            else:
                kept.append(document)
        stats["documents"] += len(kept) + len(heldout)
        stats["heldout_documents"] += len(heldout)
        yield kept, heldout


def too_small_error(what: str, tokens: int, documents: int, block_size: int, fix: str) -> UserError:
    return UserError(
        f"{what} has only {tokens} tokens ({documents} documents) after tokenization: fewer than one "
        f"--block_size block of {block_size} tokens. {fix}"
    )


def load_or_build_blocks(
    recipe: BlockRecipe,
    cache_root: Path,
    holdout_percentage: float = 0,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
) -> dict[str, datasets.Dataset]:
    """The packed blocks of the files ("main", plus "heldout" when holding out), from the cache when possible."""
    key = recipe.cache_recipe(holdout_percentage, seed)
    target = cache_root / cache_key(key)
    if (target / "info.json").is_file() and not overwrite:
        info = json.loads((target / "info.json").read_text(encoding="utf-8"))
        logger.info(
            "Reusing the tokenized blocks of --%s from %s (%s); tokenization skipped.",
            recipe.arg_name,
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
            stats = build_blocks(recipe, building, holdout_percentage, seed, workers)
            stats["seconds"] = round(time.perf_counter() - start, 3)
            check_block_counts(recipe, stats, holdout_percentage)
            info = {"recipe": key, "stats": stats}
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
        log_build(recipe.arg_name, stats, recipe.block_size, target)
    return {
        part: datasets.Dataset.from_file(str(target / f"{part}.arrow"))
        for part in ("main", "heldout")
        if (target / f"{part}.arrow").is_file()
    }


def check_block_counts(recipe: BlockRecipe, stats: dict, holdout_percentage: float) -> None:
    """Refuse a split (or its held-out part) too small for a single block, with the fix."""
    kept = stats["documents"] - stats["heldout_documents"]
    if stats["main_blocks"] == 0:
        raise too_small_error(
            f"`--{recipe.arg_name}` ({', '.join(recipe.files[:3])})", stats["main_tokens"], kept, recipe.block_size,
            "Add text, or lower --block_size.",
        )  # fmt: skip
    if holdout_percentage > 0 and stats["heldout_blocks"] == 0:
        raise too_small_error(
            f"The evaluation part held out of `--{recipe.arg_name}` (--validation_split_percentage "
            f"{holdout_percentage})", stats["heldout_tokens"], stats["heldout_documents"], recipe.block_size,
            "Raise --validation_split_percentage, pass --validation_file, or lower --block_size.",
        )  # fmt: skip


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

    def __init__(
        self,
        recipe: BlockRecipe,
        skip_documents: int = 0,
        shuffle_buffer_size: int = 0,
        seed: int = 0,
        max_blocks: int | None = None,
    ):
        super().__init__()
        self.recipe, self.skip_documents, self.shuffle_buffer_size = recipe, skip_documents, shuffle_buffer_size
        self.seed, self.max_blocks, self.epoch = seed, max_blocks, 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer: a new shuffle order per pass
        self.epoch = epoch

    def documents(self):
        worker = torch.utils.data.get_worker_info()
        share, n_shares = (worker.id, worker.num_workers) if worker else (0, 1)
        index = empty = 0
        for documents in self.recipe.documents():
            for document in documents:
                if document is None:
                    if not empty:
                        logger.warning("Skipping empty or missing documents of --%s.", self.recipe.arg_name)
                    empty += 1
                    continue
                index += 1
                if index > self.skip_documents and index % n_shares == share:
                    yield document

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
        packer, batch, produced = BlockPacker(self.recipe.block_size), [], 0
        for document in chain(self.shuffled(self.documents()), [None]):
            if document is not None:
                batch.append(document)
            if len(batch) == DOCUMENTS_PER_BATCH or (document is None and batch):
                for block in packer.add(self.recipe.encoder(batch)):
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
